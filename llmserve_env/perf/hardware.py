"""The accelerator catalog (``profiles/devices.yaml``)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmserve_env.config.errors import DataFileError
from llmserve_env.paths import profiles_dir

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """Datasheet figures of one accelerator (per device).

    Attributes:
        name: Canonical catalog name.
        vendor: ``nvidia``, ``amd``, ``google``, ``intel`` or ``custom``.
        bf16_tflops: Dense BF16 tensor peak (TFLOP/s).
        fp8_tflops: Dense FP8 peak, ``None`` when the device has no FP8 units.
        mem_gib: Device memory (GiB).
        mem_bw_gbps: Device memory bandwidth (GB/s).
        scaleup_bw_gbps: Scale-up link bandwidth per direction (GB/s).
        host_bw_gbps: Host link bandwidth per direction (GB/s).
        tdp_w: Board power limit (W).
        idle_w: Idle power with a model loaded (W).
        aliases: Other names that resolve to this device.
        cuda_mem_gib: Total memory the CUDA driver reports (``cudaMemGetInfo``, what
            vLLM's ``gpu_memory_utilization`` applies to), where measured; it is below
            ``mem_gib`` by the driver's reservation. ``None``: ``mem_gib``.
        pim_tflops: Processing-in-memory: peak FLOP/s (TFLOP/s, 16-bit) of the compute
            units inside the device memory, ``None`` for memory without them.
        pim_bw_gbps: Processing-in-memory: the internal (bank-level) bandwidth those
            units stream the memory at (GB/s), above ``mem_bw_gbps``; set together
            with ``pim_tflops``.
    """

    name: str
    vendor: str
    bf16_tflops: float
    fp8_tflops: float | None
    mem_gib: float
    mem_bw_gbps: float
    scaleup_bw_gbps: float
    host_bw_gbps: float
    tdp_w: float
    idle_w: float
    aliases: tuple[str, ...] = field(default=())
    cuda_mem_gib: float | None = None
    pim_tflops: float | None = None
    pim_bw_gbps: float | None = None

    def __post_init__(self) -> None:
        if (self.pim_tflops is None) != (self.pim_bw_gbps is None):
            raise ValueError(
                f"{self.name}: pim_tflops and pim_bw_gbps go together (processing-in-memory "
                f"units and the internal bandwidth they read at); got pim_tflops="
                f"{self.pim_tflops}, pim_bw_gbps={self.pim_bw_gbps}"
            )
        if self.pim_tflops is not None and self.pim_tflops <= 0:
            raise ValueError(f"{self.name}: pim_tflops must be > 0, got {self.pim_tflops}")
        if self.pim_bw_gbps is not None and self.pim_bw_gbps <= 0:
            raise ValueError(f"{self.name}: pim_bw_gbps must be > 0, got {self.pim_bw_gbps}")

    @property
    def has_pim(self) -> bool:
        """Whether the device memory computes (processing-in-memory units)."""
        return self.pim_tflops is not None

    @property
    def mem_bytes(self) -> float:
        """Device memory in bytes."""
        return self.mem_gib * GIB

    @property
    def cuda_mem_bytes(self) -> float:
        """Total device memory as CUDA reports it, in bytes (``mem_bytes`` where not
        measured)."""
        return (self.mem_gib if self.cuda_mem_gib is None else self.cuda_mem_gib) * GIB

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype`` (FP8 falls back to BF16 where absent)."""
        if dtype == "fp8" and self.fp8_tflops:
            return self.fp8_tflops * 1e12
        return self.bf16_tflops * 1e12


_FIELDS = (
    "vendor",
    "bf16_tflops",
    "fp8_tflops",
    "mem_gib",
    "mem_bw_gbps",
    "scaleup_bw_gbps",
    "host_bw_gbps",
    "tdp_w",
    "idle_w",
)
_OPTIONAL_FIELDS = ("aliases", "cuda_mem_gib", "pim_tflops", "pim_bw_gbps")


def _optional_float(raw: dict[str, Any], key: str) -> float | None:
    return None if raw.get(key) is None else float(raw[key])


def _parse_device(name: str, raw: Any, path: Path) -> DeviceSpec:
    if not isinstance(raw, dict):
        raise DataFileError(path, f"{name}: expected a mapping of device figures")
    unknown = set(raw) - {*_FIELDS, *_OPTIONAL_FIELDS}
    if unknown:
        raise DataFileError(
            path,
            f"{name}: unknown keys {sorted(unknown)}; allowed: {(*_FIELDS, *_OPTIONAL_FIELDS)}",
        )
    missing = [key for key in _FIELDS if key not in raw]
    if missing:
        raise DataFileError(path, f"{name}: missing keys {missing}")
    try:
        return DeviceSpec(
            name=name,
            vendor=str(raw["vendor"]),
            bf16_tflops=float(raw["bf16_tflops"]),
            fp8_tflops=None if raw["fp8_tflops"] is None else float(raw["fp8_tflops"]),
            mem_gib=float(raw["mem_gib"]),
            mem_bw_gbps=float(raw["mem_bw_gbps"]),
            scaleup_bw_gbps=float(raw["scaleup_bw_gbps"]),
            host_bw_gbps=float(raw["host_bw_gbps"]),
            tdp_w=float(raw["tdp_w"]),
            idle_w=float(raw["idle_w"]),
            aliases=tuple(str(a) for a in raw.get("aliases") or ()),
            cuda_mem_gib=_optional_float(raw, "cuda_mem_gib"),
            pim_tflops=_optional_float(raw, "pim_tflops"),
            pim_bw_gbps=_optional_float(raw, "pim_bw_gbps"),
        )
    except (TypeError, ValueError) as exc:
        raise DataFileError(path, f"{name}: {exc}") from exc


@functools.cache
def device_catalog(path: Path | None = None) -> dict[str, DeviceSpec]:
    """Load the device catalog, keyed by canonical name."""
    path = path or profiles_dir() / "devices.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFileError(path, "device catalog not found") from exc
    except yaml.YAMLError as exc:
        raise DataFileError(path, f"YAML error: {exc}") from exc
    if not isinstance(raw, dict):
        raise DataFileError(path, "expected a mapping of device name to figures")
    return {name: _parse_device(name, spec, path) for name, spec in raw.items()}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def resolve_device(name: str) -> DeviceSpec:
    """Look a device up by name or alias (case, spaces and dashes ignored).

    Raises:
        KeyError: naming the known devices.
    """
    catalog = device_catalog()
    wanted = _norm(name)
    for spec in catalog.values():
        if wanted == _norm(spec.name) or any(wanted == _norm(a) for a in spec.aliases):
            return spec
    raise KeyError(f"unknown device {name!r}; known devices: {', '.join(sorted(catalog))}")
