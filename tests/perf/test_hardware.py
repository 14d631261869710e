"""The device catalog: the issue's devices are there, figures parse strictly."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.hardware import DeviceSpec, device_catalog, resolve_device

REQUIRED = (
    "A100-SXM-80GB",
    "H100-SXM",
    "H200",
    "B200",
    "GB200",
    "MI300X",
    "RTX-A6000",
    "L40S",
    "RTX-PRO-6000",
    "L4",
    "TPU-v5e",
    "TPU-v6e",
    "Gaudi2",
    "Gaudi3",
)

_FIGURES = """\
  vendor: custom
  bf16_tflops: 100
  fp8_tflops: null
  mem_gib: 16
  mem_bw_gbps: 1000
  scaleup_bw_gbps: 50
  host_bw_gbps: 32
  tdp_w: 300
  idle_w: 30
"""


def test_catalog_has_every_required_device_and_a_pim_one() -> None:
    catalog = device_catalog()
    assert set(REQUIRED) <= set(catalog)
    pim = [spec for spec in catalog.values() if spec.has_pim]
    assert [spec.name for spec in pim] == ["MI100-HBM-PIM"]
    spec = pim[0]
    assert spec.pim_tflops == pytest.approx(4 * 1.2)
    # The in-memory units read the banks faster than the external interface does.
    assert spec.pim_bw_gbps == pytest.approx(4 * spec.mem_bw_gbps)
    assert resolve_device("hbm-pim") is spec
    assert not resolve_device("H100").has_pim


def test_pim_figures_go_together() -> None:
    base = resolve_device("MI100-HBM-PIM")
    with pytest.raises(ValueError, match="pim_tflops and pim_bw_gbps go together"):
        DeviceSpec(**{**_spec_kwargs(base), "pim_bw_gbps": None})
    with pytest.raises(ValueError, match="pim_bw_gbps must be > 0"):
        DeviceSpec(**{**_spec_kwargs(base), "pim_bw_gbps": 0.0})


def test_bad_catalog_entries_name_the_file_and_device(tmp_path: Path) -> None:
    path = tmp_path / "devices.yaml"
    path.write_text("my-pim:\n" + _FIGURES + "  pim_tflops: 2\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"devices\.yaml.*my-pim.*go together"):
        device_catalog(path)
    path.write_text("my-npu:\n" + _FIGURES + "  pim_gflops: 2\n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"my-npu: unknown keys \['pim_gflops'\].*pim_tflops"):
        device_catalog(path)
    path.write_text("my-npu:\n" + _FIGURES.replace("  idle_w: 30\n", ""), encoding="utf-8")
    with pytest.raises(DataFileError, match=r"my-npu: missing keys \['idle_w'\]"):
        device_catalog(path)
    path.write_text("ok:\n" + _FIGURES + "  pim_tflops: 2\n  pim_bw_gbps: 4000\n", "utf-8")
    assert device_catalog(path)["ok"].has_pim


def _spec_kwargs(spec: DeviceSpec) -> dict[str, object]:
    return {name: getattr(spec, name) for name in DeviceSpec.__dataclass_fields__}
