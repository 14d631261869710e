"""Collectives of imported tensor-parallel profiles: NVIDIA's measured tables where they
cover the device, the cluster config's link (ring alpha-beta) otherwise or when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmserve_env.interop.bench import bench_setup, find_profiles_root, load_bench_run
from llmserve_env.interop.llmservingsim_config import ImportOptions, convert_cluster
from llmserve_env.interop.llmservingsim_import import convert_profile, find_llmservingsim_profile
from llmserve_env.perf import aiconfig
from llmserve_env.perf.comm import AlphaBetaComm
from llmserve_env.perf.compiled import analytical_collectives
from llmserve_env.perf.profile_format import read_meta

RUN = Path("llmservingsim/current/bench/RTXPRO6000/Qwen3-32B")
PAPER = Path("llmservingsim/paper-v0")

needs_aiconfigurator = pytest.mark.skipif(
    aiconfig.aiconfigurator_version() is None, reason="aiconfigurator-core is not installed"
)


def _qwen32b_tp2(shared: Path) -> tuple[Path, object]:
    run = shared / RUN
    converted = convert_cluster(run / "config.json", run / "vllm/requests.jsonl", ImportOptions())
    folder = find_llmservingsim_profile(
        shared / "llmservingsim/current/perf", "RTXPRO6000", "Qwen/Qwen3-32B", "bf16", 2
    )
    return folder, converted


@needs_aiconfigurator
def test_tp2_all_reduce_comes_from_vllms_measured_table(shared: Path) -> None:
    folder, converted = _qwen32b_tp2(shared)
    profile = convert_profile(folder, converted, 0).profile  # type: ignore[arg-type]
    prov = profile.meta.provenance
    assert prov["vllm_version"] == "0.19.0"  # from the profile's meta.yaml
    assert prov["collectives"].startswith("measured: measured (all_reduce, all_gather")
    assert "rtx_pro_6000_server/vllm/0.19.0" in prov["collectives"]
    # send_recv is not measured: the config's link (16 GB/s, 20 us) fills it.
    assert (
        "ring alpha-beta (send_recv) from the cluster config: link_bw 16 GB/s"
        in (prov["collectives"])
    )
    table = aiconfig.vllm_collective_table("RTX-PRO-6000", "0.19.0")
    assert table is not None
    curve = profile.collectives[("all_reduce", 2)]
    assert curve.time_us == pytest.approx(table.times_s("all_reduce", curve.x, 2) * 1e6)
    # One token of Qwen3-32B (5,120 x 2 bytes) and a 2,048-token prefill chunk.
    one, chunk = np.interp([10240.0, 2048 * 10240.0], curve.x, curve.time_us)
    assert 15.0 < one < 25.0  # the link model: 40.6 us
    assert 1300.0 < chunk < 1500.0  # the link model: 1,351 us


def test_link_choice_keeps_the_ring_alpha_beta_of_the_config(shared: Path) -> None:
    folder, converted = _qwen32b_tp2(shared)
    profile = convert_profile(folder, converted, 0, "link").profile  # type: ignore[arg-type]
    expected = analytical_collectives(2, AlphaBetaComm(16.0, 20e-6, efficiency=1.0))
    for key, curve in expected.items():
        assert profile.collectives[key].time_us == pytest.approx(curve.time_us)
    assert profile.meta.provenance["collectives"] == (
        "link: ring alpha-beta (all_reduce, all_gather, reduce_scatter, all_to_all, "
        "send_recv) from the cluster config: link_bw 16 GB/s, link_latency 20000 ns"
    )
    with pytest.raises(ValueError, match="collectives must be one of measured, link; got 'nvlink'"):
        convert_profile(folder, converted, 0, "nvlink")  # type: ignore[arg-type]


def test_uncovered_device_falls_back_to_the_link(shared: Path) -> None:
    converted = convert_cluster(
        shared / PAPER / "evaluation/figure_6/config/power_config_tp2.json",
        shared / PAPER / "dataset/sharegpt_req300_rate10_llama.jsonl",
        ImportOptions(),
    )
    folder = find_llmservingsim_profile(
        shared / PAPER / "perf_models", "A6000", "meta-llama/Llama-3.1-8B", "bf16", 2
    )
    profile = convert_profile(folder, converted, 0).profile
    prov = profile.meta.provenance["collectives"]
    assert prov.startswith("measured: ")
    assert "has no measurements for" in prov or "not installed" in prov
    assert "ring alpha-beta (all_reduce, all_gather" in prov and "link_bw 112 GB/s" in prov
    curve = profile.collectives[("all_reduce", 2)]
    assert curve.time_us == pytest.approx(
        analytical_collectives(2, AlphaBetaComm(112.0, 0.0, efficiency=1.0))[
            ("all_reduce", 2)
        ].time_us
    )


@needs_aiconfigurator
def test_bench_setup_records_the_choice_in_the_profile(shared: Path) -> None:
    run = load_bench_run(shared / RUN)
    root = find_profiles_root(run.path)
    perf = {}
    for choice in ("measured", "link"):
        setup = bench_setup(run, root, collectives=choice)
        folder = Path(setup.scenario.cluster.nodes[0].instances[0].perf)
        perf[choice] = folder
        assert read_meta(folder / "meta.yaml").provenance["collectives"].startswith(f"{choice}: ")
    assert perf["measured"] != perf["link"]  # cached apart
    with pytest.raises(ValueError, match="collectives must be one of"):
        bench_setup(run, root, collectives="measure")
