"""Whole forward passes against the profile (``--check-iterations``), and the profiler's
cold-weight timing, on CPU with the tiny catalog model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.helpers import TINY_LLAMA, tiny_moe_config

torch = pytest.importorskip("torch", reason="the profiler needs PyTorch")

from llmserve_env.perf.compiled import compile_profile  # noqa: E402
from llmserve_env.perf.iteration_check import (  # noqa: E402
    IterationCase,
    check_iterations,
    default_cases,
)
from llmserve_env.perf.model_arch import load_model_arch  # noqa: E402
from llmserve_env.perf.profile_model import ProfileLatencyModel  # noqa: E402
from llmserve_env.perf.profiler import ProfileGrid, ProfilerOptions, profile_model  # noqa: E402
from llmserve_env.perf.profiler_torch import Timer, cold_calls  # noqa: E402

TINY = TINY_LLAMA
GRID = ProfileGrid(
    tokens=(1, 8, 64, 256),
    seqs=(1, 8, 32),
    prefill_chunks=(16, 64, 256),
    prefill_contexts=(0, 128),
    decode_batches=(1, 8, 32),
    decode_contexts=(16, 128),
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_profile():  # type: ignore[no-untyped-def]
    torch.set_num_threads(1)
    arch = load_model_arch(str(TINY))
    options = ProfilerOptions(device="cpu", dtype="fp32", grid=GRID, warmup=1, repeat=2)
    return arch, options, profile_model(arch, options)


def test_default_cases_stay_inside_the_grid() -> None:
    cases = default_cases(GRID)
    labels = [c.label for c in cases]
    assert len(set(labels)) == len(labels)
    for case in cases:
        assert case.num_tokens <= max(GRID.tokens)
        assert all(
            min(GRID.prefill_chunks) <= n <= max(GRID.prefill_chunks) for n in case.prefill_new
        )
        assert all(c <= max(GRID.prefill_contexts) for c in case.prefill_ctx)
        assert case.num_decodes <= max(GRID.decode_batches)
        if case.num_decodes:
            assert min(GRID.decode_contexts) < case.decode_kv <= max(GRID.decode_contexts) + 1
    # Points between the grid's rows, so the check exercises interpolation, not only rows.
    assert any(n not in GRID.prefill_chunks for c in cases for n in c.prefill_new)
    assert any(c.num_decodes not in (0, *GRID.decode_batches) for c in cases)
    assert any(c.prefill_new and c.num_decodes for c in cases)  # a mixed batch
    assert any(len(c.prefill_new) == 2 for c in cases)
    assert any(ctx > 0 for c in cases for ctx in c.prefill_ctx)


def test_a_grid_of_single_rows_gives_each_case_once() -> None:
    grid = ProfileGrid(
        tokens=(16,),
        seqs=(1,),
        prefill_chunks=(16,),
        prefill_contexts=(0,),
        decode_batches=(1,),
        decode_contexts=(16,),
    )
    labels = [c.label for c in default_cases(grid)]
    assert labels == ["prefill 16", "decode 1 x 17", "prefill 16 + decode 1 x 17"]


def test_cases_validate_their_shape() -> None:
    with pytest.raises(ValueError, match="one cached context per prefill chunk"):
        IterationCase("bad", (16,), ())
    with pytest.raises(ValueError, match="KV length"):
        IterationCase("bad", num_decodes=4)
    with pytest.raises(ValueError, match="no tokens"):
        IterationCase("empty")
    case = IterationCase("mix", (16, 8), (0, 32), num_decodes=3, decode_kv=100)
    shape = case.shape()
    assert case.num_tokens == 27 and case.num_seqs == 5
    assert shape.num_decodes == 3 and shape.decode_kv_sum == 300
    assert shape.decode_kv_max == shape.decode_kv_min == 100


def test_check_runs_every_case_and_predicts_with_the_profile(tiny_profile) -> None:  # type: ignore[no-untyped-def]
    arch, options, profile = tiny_profile
    check = check_iterations(profile, arch, options)
    cases = default_cases(GRID)
    assert [r.case for r in check.results] == cases
    assert check.num_layers == arch.num_layers and check.device == "cpu"
    model = ProfileLatencyModel(compile_profile(profile), arch)
    for r in check.results:
        assert r.measured_s > 0 and r.graph_s is None  # no CUDA graphs on the CPU
        assert r.predicted_s == model.iteration_time_s(r.case.shape())
        assert r.err_pct == pytest.approx(100 * (r.predicted_s / r.measured_s - 1))
    data = json.loads(json.dumps(check.as_dict()))
    assert len(data["cases"]) == len(cases)
    assert data["mape_pct"] == pytest.approx(check.mape_pct())
    assert data["setting"]["cuda_graphs"] is False and "graph_mape_pct" not in data


def test_layer_count_sets_the_prediction(tiny_profile) -> None:  # type: ignore[no-untyped-def]
    arch, options, profile = tiny_profile
    case = [IterationCase("decode", num_decodes=8, decode_kv=64)]
    one = check_iterations(profile, arch, options, cases=case, num_layers=1).results[0]
    four = check_iterations(profile, arch, options, cases=case, num_layers=4).results[0]
    # Per-layer operators scale with the layers; embedding, head and sampler do not.
    assert one.predicted_s < four.predicted_s < 4 * one.predicted_s


def test_moe_model_checks(tmp_path: Path) -> None:
    arch = load_model_arch(str(tiny_moe_config(tmp_path)))
    grid = replace(GRID, tokens=(1, 8, 64), prefill_chunks=(16, 64), decode_batches=(1, 8))
    options = ProfilerOptions(device="cpu", dtype="fp32", grid=grid, warmup=0, repeat=1)
    profile = profile_model(arch, options)
    check = check_iterations(profile, arch, options)
    assert check.results and all(r.measured_s > 0 and r.predicted_s > 0 for r in check.results)


def test_tensor_parallel_profile_is_refused() -> None:
    arch = load_model_arch(str(TINY))
    options = ProfilerOptions(
        device="cpu", dtype="fp32", tp=2, grid=ProfileGrid.quick().bounded(16, 16), repeat=1
    )
    with pytest.raises(ValueError, match="tp is 2"):
        check_iterations(profile_model(arch, options), arch, options)


def test_cold_calls_cycle_through_copies() -> None:
    w = torch.randn(64, 64)  # 16 KiB
    size = w.numel() * w.element_size()
    same = cold_calls(lambda t: t, [w], 0)
    assert len(same) == 1 and same[0]() is w
    calls = cold_calls(lambda t: t, [w], int(3.5 * size))
    outs = [call() for call in calls]
    assert len(calls) == 4 and outs[0] is w
    assert len({o.data_ptr() for o in outs}) == 4  # distinct memory
    assert all(torch.equal(o, w) for o in outs)
    assert len(cold_calls(lambda t: t, [w], 1000 * size, limit=8)) == 8
    # Several tensors are copied together, the budget counting both.
    pairs = cold_calls(lambda a, b: (a, b), [w, w.clone()], 4 * size)
    assert len(pairs) == 2


def test_timer_calls_each_copy_in_turn_and_flushes() -> None:
    hits = [0, 0, 0]

    def bump(i: int) -> None:
        hits[i] += 1

    calls = [lambda i=i: bump(i) for i in range(3)]
    Timer(torch, torch.device("cpu"), warmup=2, repeat=7)(calls)
    assert hits == [3, 3, 3]
    flushed = Timer(torch, torch.device("cpu"), warmup=0, repeat=2, flush_bytes=1 << 16)
    assert flushed(lambda: None) >= 0


def test_profile_records_cold_setting() -> None:
    arch = load_model_arch(str(TINY))
    grid = ProfileGrid.quick().bounded(16, 16)
    cpu = torch.device("cpu")
    assert ProfilerOptions().cold_bytes(torch, cpu) == 256 * 2**20
    assert ProfilerOptions(cold_mib=0).cold_bytes(torch, cpu) == 0
    with pytest.raises(ValueError, match="cold_mib"):
        ProfilerOptions(cold_mib=-1)
    options = ProfilerOptions(device="cpu", dtype="fp32", grid=grid, repeat=1, cold_mib=8)
    assert profile_model(arch, options).meta.provenance["cold_mib"] == 8


def test_cli_check_iterations(tmp_path: Path) -> None:
    from llmserve_env.cli.main import main

    out = tmp_path / "checked"
    args = ["profile", str(TINY), "-o", str(out), "--device", "cpu", "--dtype", "fp32"]
    args += ["--quick", "--max-tokens", "64", "--repeat", "2", "--warmup", "0", "--threads", "1"]
    result = CliRunner().invoke(main, [*args, "--check-iterations", "--check-layers", "1"])
    assert result.exit_code == 0, result.output
    assert "mean absolute error" in result.output
    report = json.loads((out / "iteration_check.json").read_text())
    assert report["num_layers"] == 1 and report["cases"]
    assert not list(out.glob("*.tmp"))
    args[3] = str(tmp_path / "refused")
    refused = CliRunner().invoke(main, [*args, "--tp", "2", "--check-iterations"])
    assert refused.exit_code != 0 and "--tp 1" in refused.output
    assert not (tmp_path / "refused").exists()  # refused before profiling
    alone = CliRunner().invoke(main, [*args, "--check-layers", "2"])
    assert alone.exit_code != 0 and "only applies with --check-iterations" in alone.output
    assert not (tmp_path / "refused").exists()


def test_a_case_too_large_for_memory_is_skipped_not_fatal(tiny_profile) -> None:  # type: ignore[no-untyped-def]
    arch, options, profile = tiny_profile
    fits = IterationCase("decode", num_decodes=8, decode_kv=64)
    huge = IterationCase("huge", num_decodes=4, decode_kv=2**40)  # a ~PiB KV cache
    lines: list[str] = []
    check = check_iterations(profile, arch, options, cases=[huge, fits], log=lines.append)
    assert [r.case for r in check.results] == [fits]
    assert [case for case, _ in check.skipped] == [huge]
    assert "allocate" in check.skipped[0][1]
    assert any(line.startswith("huge: skipped, out of memory") for line in lines)
    data = json.loads(json.dumps(check.as_dict()))
    assert [row["label"] for row in data["skipped"]] == ["huge"]
    assert [row["label"] for row in data["cases"]] == ["decode"]
