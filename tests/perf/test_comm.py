"""Collectives: alpha-beta with ring factors, measured tables, Vidur and NCCL loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.comm import (
    COLLECTIVES,
    AlphaBetaComm,
    CollectiveTable,
    alpha_beta_for,
    ring_factors,
)
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.roofline import calibration_for


def test_ring_factors() -> None:
    assert ring_factors("all_reduce", 4) == (6, 1.5)
    assert ring_factors("all_gather", 4) == (3, 0.75)
    assert ring_factors("reduce_scatter", 8) == (7, 7 / 8)
    assert ring_factors("all_to_all", 2) == (1, 0.5)
    assert ring_factors("send_recv", 2) == (1, 1.0)
    assert ring_factors("all_reduce", 1) == (0, 0.0)
    with pytest.raises(ValueError, match="unknown collective"):
        ring_factors("broadcast", 2)
    with pytest.raises(ValueError, match="num_devices"):
        ring_factors("all_reduce", 0)


def test_alpha_beta_by_hand() -> None:
    comm = AlphaBetaComm(bandwidth_gbps=100.0, latency_s=1e-6, efficiency=0.5, base_s=2e-6)
    # all-reduce over 4: base + 6 steps + 1.5 x 1 MB at 50 GB/s
    expected = 2e-6 + 6e-6 + 1.5 * 1e6 / 50e9
    assert comm.time_s("all_reduce", 1e6, 4) == pytest.approx(expected)
    assert comm.time_s("all_reduce", 1e6, 1) == 0.0
    assert comm.time_s("send_recv", 1e6, 2) == pytest.approx(2e-6 + 1e-6 + 1e6 / 50e9)
    assert comm.time_s("all_gather", 0.0, 8) == 0.0
    sizes = np.array([0.0, 1e3, 1e6, 1e9])
    vec = comm.times_s("all_reduce", sizes, 4)
    assert vec == pytest.approx([comm.time_s("all_reduce", s, 4) for s in sizes])


@pytest.mark.parametrize("op", COLLECTIVES)
def test_alpha_beta_monotone_in_bytes_and_devices(op: str) -> None:
    comm = AlphaBetaComm(bandwidth_gbps=450.0, latency_s=1e-6, efficiency=0.7)
    sizes = np.geomspace(1e3, 1e9, 25)
    times = comm.times_s(op, sizes, 8)
    assert np.all(np.diff(times) > 0)
    if op != "send_recv":
        assert comm.time_s(op, 1e8, 8) > comm.time_s(op, 1e8, 2)


def test_alpha_beta_rejects_bad_figures() -> None:
    with pytest.raises(ValueError, match="bandwidth"):
        AlphaBetaComm(0.0, 1e-6)
    with pytest.raises(ValueError, match="efficiency"):
        AlphaBetaComm(100.0, 1e-6, efficiency=1.5)
    with pytest.raises(ValueError, match="latency"):
        AlphaBetaComm(100.0, -1.0)


def test_alpha_beta_for_uses_family_constants() -> None:
    device = resolve_device("H100")
    comm = alpha_beta_for(device)
    cal = calibration_for(device)
    assert comm.bandwidth_gbps == device.scaleup_bw_gbps
    assert (comm.latency_s, comm.efficiency, comm.base_s) == (
        cal.comm_latency_s,
        cal.comm_eff,
        cal.comm_base_s,
    )


def _table() -> CollectiveTable:
    sizes = np.array([1e3, 1e4, 1e5, 1e6])
    times = np.array([10e-6, 12e-6, 20e-6, 100e-6])
    fallback = AlphaBetaComm(100.0, 1e-6, 1.0)
    return CollectiveTable({("all_reduce", 4): (sizes, times)}, fallback=fallback, source="test")


def test_table_interpolates_in_log_log_space() -> None:
    table = _table()
    assert table.time_s("all_reduce", 1e4, 4) == pytest.approx(12e-6)
    # Geometric midpoint of sizes -> geometric midpoint of times.
    assert table.time_s("all_reduce", np.sqrt(1e5 * 1e6), 4) == pytest.approx(
        np.sqrt(20e-6 * 100e-6)
    )
    # Latency-bound below, bandwidth-bound above the measured range.
    assert table.time_s("all_reduce", 10.0, 4) == pytest.approx(10e-6)
    assert table.time_s("all_reduce", 4e6, 4) == pytest.approx(400e-6)
    assert table.time_s("all_reduce", 0.0, 4) == 0.0
    assert table.time_s("all_reduce", 1e6, 1) == 0.0


def test_table_falls_back_and_reports_missing() -> None:
    table = _table()
    assert table.has("all_reduce", 4) and not table.has("all_reduce", 8)
    # The fallback, but never below the measured 4-device curve.
    assert table.time_s("all_reduce", 1e6, 8) == pytest.approx(
        max(
            AlphaBetaComm(100.0, 1e-6, 1.0).time_s("all_reduce", 1e6, 8),
            table.time_s("all_reduce", 1e6, 4),
        )
    )
    bare = CollectiveTable({("all_reduce", 4): (np.array([1.0, 2.0]), np.array([1.0, 2.0]))})
    with pytest.raises(KeyError, match="no measured all_gather"):
        bare.time_s("all_gather", 1e6, 4)


def test_table_cleans_noise_and_rejects_bad_curves() -> None:
    noisy = CollectiveTable(
        {("all_gather", 2): (np.array([1.0, 2.0, 4.0]), np.array([3.0, 2.0, 5.0]))}
    )
    assert noisy.time_s("all_gather", 2.0, 2) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="increasing"):
        CollectiveTable({("all_gather", 2): (np.array([2.0, 1.0]), np.array([1.0, 2.0]))})
    with pytest.raises(ValueError, match="positive"):
        CollectiveTable({("all_gather", 2): (np.array([1.0, 2.0]), np.array([0.0, 2.0]))})


def test_vidur_loader(shared: Path) -> None:
    table = CollectiveTable.from_vidur(shared / "profiles" / "vidur" / "network" / "h100_dgx")
    assert table.has("all_reduce", 8) and table.has("send_recv", 2)
    times = table.times_s("all_reduce", np.geomspace(1e4, 6e7, 20), 8)
    assert np.all(times > 0) and np.all(np.diff(times) >= 0)
    # 64 MB across 8 H100s over NVLink: a few hundred microseconds.
    assert 1e-4 < table.time_s("all_reduce", 64e6, 8) < 1e-3


def test_vidur_loader_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="neither"):
        CollectiveTable.from_vidur(tmp_path)


def test_aiconfigurator_nccl_table() -> None:
    pytest.importorskip("aiconfigurator_core", reason="aiconfigurator-core is not installed")
    from llmserve_env.perf.aiconfig import collective_table

    table = collective_table("H100")
    assert table is not None
    for op in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all"):
        assert table.has(op, 8)
    small, large = table.time_s("all_reduce", 16e3, 8), table.time_s("all_reduce", 512e6, 8)
    assert 1e-6 < small < 1e-4 < large
    assert collective_table("MI300X") is None


def test_table_points_are_the_cleaned_measurements() -> None:
    sizes = np.array([1e3, 2e3, 4e3])
    table = CollectiveTable({("all_reduce", 2): (sizes, np.array([2e-6, 1e-6, 3e-6]))})
    x, t = table.points("all_reduce", 2)
    assert x.tolist() == sizes.tolist()
    assert t == pytest.approx([2e-6, 2e-6, 3e-6])  # a dip in the measurements is levelled
    with pytest.raises(KeyError):
        table.points("all_gather", 2)


def test_aiconfigurator_vllm_all_reduce_table() -> None:
    pytest.importorskip("aiconfigurator_core", reason="aiconfigurator-core is not installed")
    import pandas as pd

    from llmserve_env.perf.aiconfig import SYSTEMS, _engine, vllm_collective_table

    table = vllm_collective_table("RTX PRO 6000 Blackwell Server", "0.19.0")
    assert table is not None
    assert "rtx_pro_6000_server/vllm/0.19.0 (all_reduce x2" in table.source
    assert "/nccl/" in table.source  # the other collectives and device counts
    database, _, _ = _engine(SYSTEMS["RTX-PRO-6000"])
    path = (
        Path(database.systems_root)
        / database.system_spec["data_dir"]
        / "comm/vllm/0.19.0/custom_allreduce_perf.parquet"
    )
    frame = pd.read_parquet(path)
    rows = frame[(frame.backend == "vllm_graph") & (frame.num_gpus == 2)]
    rows = rows.sort_values("message_size")
    # BF16 elements -> bytes, ms -> s; the table passes through every measured point.
    sizes = rows.message_size.to_numpy(dtype=float) * 2
    expected = np.maximum.accumulate(rows.latency.to_numpy(dtype=float) * 1e-3)
    assert table.times_s("all_reduce", sizes, 2) == pytest.approx(expected, rel=1e-9)
    assert table.has("all_gather", 2) and table.has("all_reduce", 8)
    # The newest release at or before the one asked for; none before the first.
    newer = vllm_collective_table("RTX-PRO-6000", "0.20.1")
    assert newer is not None and "/vllm/0.19.0 " in newer.source
    newest = vllm_collective_table("RTX-PRO-6000")
    assert newest is not None and "/vllm/0.19.0 " not in newest.source
    assert vllm_collective_table("RTX-PRO-6000", "0.10.2") is None
    assert vllm_collective_table("RTX4090", "0.19.0") is None


def test_an_unmeasured_device_count_is_never_faster_than_a_smaller_measured_one() -> None:
    sizes = np.array([1e3, 1e6, 1e9])
    measured = {("all_reduce", 8): (sizes, np.array([20e-6, 25e-6, 5e-3]))}
    cheap = AlphaBetaComm(bandwidth_gbps=10_000.0, latency_s=1e-7)  # far faster than measured
    table = CollectiveTable(measured, fallback=cheap)
    at16 = table.times_s("all_reduce", sizes, 16)
    assert np.all(at16 >= table.times_s("all_reduce", sizes, 8))
    # Below the smallest measured count the fallback stands as it is.
    assert table.time_s("all_reduce", 1e6, 4) == pytest.approx(cheap.time_s("all_reduce", 1e6, 4))
