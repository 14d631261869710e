"""Validation against real vLLM runs: loading, latency definitions, one full comparison."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.interop.bench import (
    BenchRun,
    bench_setup,
    bench_workload,
    lag_at,
    load_bench_run,
    output_lag,
    validate_run,
)

RUN = Path("llmservingsim/current/bench/RTXPRO6000/Llama-3.1-8B")


def test_latency_definitions(shared: Path) -> None:
    run = load_bench_run(shared / RUN)
    assert run.dataset is not None and run.dataset.name.startswith("sharegpt-llama")
    lat = run.latencies_ms()
    first = json.loads((shared / RUN / "vllm/requests.jsonl").read_text().splitlines()[0])
    assert lat["ttft"][0] == pytest.approx((first["first_token_ts"] - first["queued_ts"]) * 1e3)
    assert lat["tpot"][0] == pytest.approx(
        (first["last_token_ts"] - first["first_token_ts"]) / (first["output_toks"] - 1) * 1e3
    )
    assert lat["e2e"][0] == pytest.approx((first["last_token_ts"] - first["queued_ts"]) * 1e3)
    assert np.all(lat["ttft"] > 0) and np.all(lat["e2e"] >= lat["ttft"])


def test_workload_uses_engine_arrivals_on_the_trace_clock(shared: Path) -> None:
    run = load_bench_run(shared / RUN)
    workload, notes = bench_workload(run)
    assert len(workload) == 300 and not notes
    # trace time 0 + first arrival_time_ns (46.9 ms), then the engine's queued gaps
    assert workload.arrival_s[0] == pytest.approx(0.046926808)
    q = run.requests["queued_ts"]
    assert workload.arrival_s[1] - workload.arrival_s[0] == pytest.approx(q[1] - q[0])
    assert workload.contents is not None


def test_trace_found_by_its_recorded_hash(shared: Path) -> None:
    # The Qwen3-32B run names workloads/sharegpt-qwen3-32b-300-sps10.jsonl, which is not
    # shipped; its dataset_hash is the SHA-256 of the Qwen3-30B-A3B trace (same
    # tokenizer, same 300 requests), so that file is the trace and brings token ids.
    run = load_bench_run(shared / "llmservingsim/current/bench/RTXPRO6000/Qwen3-32B")
    assert run.dataset is not None
    assert run.dataset.name == "sharegpt-qwen3-30b-a3b-300-sps10.jsonl"
    assert "dataset_hash" in run.dataset_note
    workload, notes = bench_workload(run)
    assert workload.contents is not None and run.dataset_note in notes


def test_trace_under_another_name_needs_the_same_hash(shared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "bench/GPU/model"
    shutil.copytree(shared / RUN, run_dir)
    named = json.loads((run_dir / "vllm/meta.json").read_text())["dataset_path"]
    workloads = tmp_path / Path(named).parent
    workloads.mkdir(parents=True)
    trace = (shared / "llmservingsim/current" / named).read_bytes()
    (workloads / "changed.jsonl").write_bytes(trace.replace(b"}", b" }", 1))
    assert load_bench_run(run_dir).dataset is None  # named file absent, no digest matches
    (workloads / "renamed.jsonl").write_bytes(trace)
    run = load_bench_run(run_dir)
    assert run.dataset == workloads / "renamed.jsonl" and run.dataset_note
    (workloads / Path(named).name).write_bytes(trace)
    run = load_bench_run(run_dir)  # the named file wins, without a note
    assert run.dataset == workloads / Path(named).name and not run.dataset_note


def test_malformed_requests_file(shared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(shared / RUN, run_dir)
    path = run_dir / "vllm/requests.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = lines[4].replace('"first_token_ts": ', '"first_token_ts": "x", "_": ')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFileError, match=r"requests\.jsonl:5: 'first_token_ts': expected a number"
    ):
        load_bench_run(run_dir)


def _edit_request(run_dir: Path, index: int, **values: object) -> None:
    path = run_dir / "vllm/requests.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[index])
    record.update(values)
    lines[index] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"queued_ts": -1e9}, r"requests span .* but timeseries\.csv covers"),
        ({"first_token_ts": 1.0}, r":4: 'first_token_ts' \(1\.0\) is before 'scheduled_ts'"),
        ({"last_token_ts": 0.5}, r":4: 'last_token_ts' \(0\.5\) is before"),
        ({"output_toks": 0}, r":4: 'output_toks': expected a whole number of at least 1"),
        ({"input_toks": 12.5}, r":4: 'input_toks': expected a whole number"),
        ({"queued_ts": float("nan")}, r":4: 'queued_ts': expected a finite number"),
        (
            {"output_toks": 10**12},
            r":4: \d+ input \+ 1000000000000 output tokens exceed the run's max_model_len 131072 \(meta-llama/Llama-3\.1-8B's max_position_embeddings\)",
        ),
    ],
)
def test_bad_request_timestamps_and_counts_are_refused(
    shared: Path, tmp_path: Path, values: dict, message: str
) -> None:
    """Each of these used to run: a queued_ts of -1e9 for an effectively endless time
    (the simulation stepped through 10^9 s), the others with wrong figures."""
    run_dir = tmp_path / "run"
    shutil.copytree(shared / RUN, run_dir)
    _edit_request(
        run_dir, 3 if "queued_ts" not in values or values["queued_ts"] != -1e9 else 0, **values
    )
    with pytest.raises(DataFileError, match=message):
        load_bench_run(run_dir)


def test_bad_meta_and_timeseries_are_refused(shared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(shared / RUN, run_dir)
    ts = run_dir / "vllm/timeseries.csv"
    good_ts = ts.read_text()
    ts.write_text(good_ts.splitlines()[0] + "\n")
    with pytest.raises(DataFileError, match=r"timeseries\.csv: no data rows"):
        load_bench_run(run_dir)
    ts.write_text(good_ts)
    meta = run_dir / "vllm/meta.json"
    good = json.loads(meta.read_text())
    meta.write_text("[]")
    with pytest.raises(DataFileError, match=r"meta\.json: expected a JSON object, got list"):
        load_bench_run(run_dir)
    for key, value, message in (
        ("tick_seconds", 0, r"tick_seconds: expected a number of seconds above 0, got 0"),
        ("block_size", "16", r"engine_kwargs\.block_size: expected int, got '16'"),
    ):
        data = json.loads(json.dumps(good))
        if key == "tick_seconds":
            data[key] = value
        else:
            data["engine_kwargs"][key] = value
        meta.write_text(json.dumps(data))
        run = load_bench_run(run_dir)
        with pytest.raises(DataFileError, match=message):
            run.tick_seconds() if key == "tick_seconds" else bench_setup(run, None)


def test_meta_that_contradicts_the_config_is_refused(shared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(shared / RUN, run_dir)
    meta = run_dir / "vllm/meta.json"
    good = json.loads(meta.read_text())
    cases = (
        ({"engine_kwargs": "abc"}, r"meta\.json: engine_kwargs: expected an object, got 'abc'"),
        (
            {"kv_cache": {"num_gpu_blocks": -5}},
            r"kv_cache\.num_gpu_blocks: expected a whole number",
        ),
        (
            {"engine_kwargs": {**good["engine_kwargs"], "tensor_parallel_size": 2}},
            r"tensor_parallel_size is 2, but config\.json .* has tp 1",
        ),
        (
            {"engine_kwargs": {**good["engine_kwargs"], "model": "foo/bar"}},
            r"vLLM ran model 'foo/bar', but config\.json .* has 'meta-llama/Llama-3\.1-8B'",
        ),
    )
    for change, message in cases:
        meta.write_text(json.dumps({**good, **change}))
        with pytest.raises(DataFileError, match=message):
            run = load_bench_run(run_dir)
            run.num_gpu_blocks()
            bench_setup(run, None)


def test_meta_that_records_two_block_sizes_is_refused(shared: Path) -> None:
    run = load_bench_run(shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B")
    assert run.cache_setting("block_size", int, 16)[0] == 16
    meta = json.loads(json.dumps(run.meta))
    meta.setdefault("kv_cache", {})["block_size"] = 32
    with pytest.raises(
        DataFileError,
        match=r"contradicts itself: resolved_config\.cache_config\.block_size = 16, "
        r"kv_cache\.block_size = 32",
    ):
        dataclasses.replace(run, meta=meta).cache_setting("block_size", int, 16)


def test_meta_cache_settings_reach_the_scenario(shared: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(shared / RUN, run_dir)
    meta = run_dir / "vllm/meta.json"
    data = json.loads(meta.read_text())
    data["engine_kwargs"].update(block_size=32, enable_prefix_caching=False)
    data["tick_seconds"] = 0.5
    meta.write_text(json.dumps(data))
    setup = bench_setup(load_bench_run(run_dir), None)
    engine = setup.scenario.engine
    assert engine.block_size == 32 and engine.enable_prefix_caching is False
    assert setup.scenario.simulation.sample_interval_s == 0.5
    assert any("block size 32 (meta.json engine_kwargs.block_size)" in n for n in setup.notes)


@pytest.mark.slow
def test_unfinished_requests_are_left_out_of_both_sides(shared: Path) -> None:
    rtx4090 = shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B"
    report = validate_run(rtx4090, overrides={"max_model_len": 2000})
    note = next(n for n in report.notes if "did not finish" in n)
    assert note.startswith("43 of 300 requests did not finish") and "prompt_too_long" in note
    run = load_bench_run(rtx4090)
    lengths = run.requests["input_toks"] + run.requests["output_toks"]
    kept = run.latencies_ms()["e2e"][lengths <= 2000]
    assert report.latency["e2e"]["mean"]["vllm"] == pytest.approx(float(np.mean(kept)))
    with pytest.raises(DataFileError, match=r"no request of 300 finished .*prompt_too_long"):
        validate_run(rtx4090, overrides={"max_model_len": 10})


def test_output_lag_compares_when_each_run_reached_the_same_output() -> None:
    ends = np.arange(1.0, 11.0)
    real = np.full(10, 100.0)  # 1,000 tokens, 100 in each second
    # The same series one bin later is one second behind at every share.
    later = output_lag(ends, real, ends + 1.0, real)
    assert later == pytest.approx(
        {"lag_s_25": 1.0, "lag_s_50": 1.0, "lag_s_75": 1.0, "lag_s_90": 1.0}
    )
    # Twice the rate gets to 250 tokens at 1.25 s, vLLM at 2.5 s: 1.25 s ahead.
    fast = output_lag(ends, real, ends[:5], np.full(5, 200.0))
    assert fast["lag_s_25"] == pytest.approx(-1.25) and fast["lag_s_90"] == pytest.approx(-4.5)
    # A simulation that never gets to a share has no lag there; nor does no output.
    short = output_lag(ends, real, ends[:6], real[:6])
    assert short["lag_s_50"] == pytest.approx(0.0) and np.isnan(short["lag_s_75"])
    assert all(np.isnan(v) for v in output_lag(ends, np.zeros(10), ends, real).values())
    # Bins with no tokens: a count is reached inside the bin that holds its tokens.
    gappy = np.array([0.0, 300.0, 0.0, 0.0, 700.0] + [0.0] * 5)
    lags = lag_at(ends, real, ends, gappy, np.array([150.0, 300.0, 650.0]))
    assert lags == pytest.approx([1.5 - 1.5, 2.0 - 3.0, 4.5 - 6.5])
    # Any tick: a series against itself lags by nothing, its last bins included.
    rates = np.round(np.random.default_rng(0).uniform(0, 1000, 50), 1)
    rates[-5:] = 0.0
    tenths = np.arange(1, 51) * 0.1
    same = lag_at(tenths, rates, tenths, rates, np.cumsum(rates * 0.1), 0.1)
    assert np.all(np.abs(same) < 1e-9)


def test_validate_one_run(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))
    report = validate_run(shared / RUN)
    assert report.totals["output_tokens_sim"] == report.totals["output_tokens_vllm"] == 195753
    # The figures VALIDATION.md quotes for this run (deterministic: a change to the
    # engine or the latency model that moves them must update the write-up too).
    quoted = {"ttft": -6.4, "tpot": -1.4, "e2e": -2.7}
    for metric, figure in quoted.items():
        err = report.latency[metric]["mean"]["err_pct"]
        assert err == pytest.approx(figure, abs=0.06), (metric, err)
    assert report.throughput["mape_steady_pct"] == pytest.approx(13.0, abs=0.06)
    lags = [report.throughput[f"lag_s_{share}"] for share in (25, 50, 75, 90)]
    assert lags == pytest.approx([-0.64, -0.97, -0.55, -0.64], abs=0.006)
    assert len(report.series["lag_s"]) == len(report.series["t"])
    data = report.as_dict()
    json.dumps(data, allow_nan=False)  # NaN (no lag before any output) is null
    assert set(data["latency_ms"]) == {"ttft", "tpot", "e2e", "queueing"}
    series = data["series"]
    assert series["t"][:2] == [1.0, 2.0] and len(series["gen_sim"]) == len(series["t"])
    # The lag at the bin that holds vLLM's median token is the reported 50 % lag, near.
    cum = np.cumsum(series["gen_vllm"])
    middle = int(np.searchsorted(cum, cum[-1] / 2))
    assert series["lag_s"][middle] == pytest.approx(lags[1], abs=0.5)


def test_expert_parallel_run_is_simulated_with_lockstep_ranks(shared: Path) -> None:
    path = shared / "llmservingsim/current/bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507"
    setup = bench_setup(load_bench_run(path), None)
    (group,) = [g for node in setup.scenario.cluster.nodes for g in node.instances]
    assert (group.data_parallel_size, group.enable_expert_parallel) == (2, True)
    assert setup.scenario.router.policy == "vllm_data_parallel"
    report = validate_run(path)
    assert report.totals["output_tokens_sim"] == report.totals["output_tokens_vllm"]
    # Native DP+EP: TPOT and e2e within a few percent of vLLM (VALIDATION.md); the
    # approximation (independent ranks holding every expert) is ~20 % slow on both.
    approx = validate_run(path, allow_unsupported=True)
    for metric in ("tpot", "e2e"):
        native = report.latency[metric]["mean"]["err_pct"]
        assert abs(native) < 6.0, (metric, native)
        assert approx.latency[metric]["mean"]["err_pct"] > native + 10.0, metric


def test_async_scheduling_follows_what_the_run_recorded(shared: Path) -> None:
    # This run's meta.json records only the vLLM version (0.19.0: on by default) ...
    run = load_bench_run(shared / RUN)
    assert run.async_scheduling() == (True, "the default of vLLM 0.19.0")
    # ... the RTX 4090 one also vLLM's resolved config, which wins.
    rtx4090 = load_bench_run(shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B")
    on, source = rtx4090.async_scheduling()
    assert on and "resolved_config" in source

    def meta(**fields: object) -> BenchRun:
        return dataclasses.replace(run, meta=fields)

    assert meta(vllm_version="0.11.1").async_scheduling()[0] is False
    assert meta(vllm_version="v0.14.0rc1").async_scheduling()[0] is True
    assert meta().async_scheduling() == (False, "meta.json records no vllm_version: assumed off")
    asked_off = meta(vllm_version="0.19.0", engine_kwargs={"async_scheduling": False})
    assert asked_off.async_scheduling() == (False, "meta.json engine_kwargs.async_scheduling")
    resolved_off = meta(
        vllm_version="0.19.0",
        engine_kwargs={"async_scheduling": True},
        resolved_config={"scheduler_config": {"async_scheduling": False}},
    )
    assert resolved_off.async_scheduling()[0] is False


def test_whole_sequence_admission_follows_what_the_run_recorded(shared: Path) -> None:
    rtx4090 = load_bench_run(shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B")
    assert rtx4090.scheduler_reserve_full_isl() == (
        True,
        "meta.json resolved_config.scheduler_config.scheduler_reserve_full_isl",
    )
    run = load_bench_run(shared / RUN)  # records only its vLLM version
    assert run.scheduler_reserve_full_isl() == (True, "the default of vLLM 0.19.0")

    def meta(**fields: object) -> BenchRun:
        return dataclasses.replace(run, meta=fields)

    assert meta(vllm_version="0.18.1").scheduler_reserve_full_isl()[0] is False
    assert meta().scheduler_reserve_full_isl()[0] is False
    off = meta(vllm_version="0.19.0", engine_kwargs={"scheduler_reserve_full_isl": False})
    assert off.scheduler_reserve_full_isl() == (
        False,
        "meta.json engine_kwargs.scheduler_reserve_full_isl",
    )
    setup = bench_setup(rtx4090, None)
    assert setup.scenario.engine.scheduler_reserve_full_isl is True
    assert any("whole-sequence admission on" in note for note in setup.notes)
    overridden = bench_setup(rtx4090, None, overrides={"scheduler_reserve_full_isl": False})
    groups = [g for node in overridden.scenario.cluster.nodes for g in node.instances]
    assert all(
        g.engine is not None and g.engine.scheduler_reserve_full_isl is False for g in groups
    )


def test_bench_setup_turns_the_knob_on_where_vllm_had_it(shared: Path) -> None:
    run = load_bench_run(shared / RUN)
    setup = bench_setup(run, None)
    assert setup.scenario.engine.async_scheduling is True
    assert "vLLM async scheduling on (the default of vLLM 0.19.0)" in setup.notes
    off = bench_setup(run, None, overrides={"async_scheduling": False})
    group = off.scenario.cluster.nodes[0].instances[0]
    assert group.engine.async_scheduling is False
    assert any("override" in note for note in off.notes)


def test_cudagraph_padding_follows_the_run(shared: Path) -> None:
    run = load_bench_run(shared / RUN)
    assert run.cudagraph_capture_sizes() == (
        "auto",
        "the default capture sizes of vLLM 0.19.0",
    )

    def meta(**fields: object) -> BenchRun:
        return dataclasses.replace(run, meta=fields)

    # the RTX 4090 run records vLLM's resolved sizes: the default list for 256 sequences
    from llmserve_env.perf.cudagraph import default_capture_sizes

    rtx4090 = load_bench_run(shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B")
    sizes, source = rtx4090.cudagraph_capture_sizes()
    assert tuple(sizes or ()) == default_capture_sizes(256, 2048)
    assert source == "meta.json resolved_config.compilation_config.cudagraph_capture_sizes"
    eager_resolved = meta(resolved_config={"model_config": {"enforce_eager": True}})
    assert eager_resolved.cudagraph_capture_sizes()[0] is None
    eager = meta(vllm_version="0.19.0", engine_kwargs={"enforce_eager": True})
    assert eager.cudagraph_capture_sizes() == (None, "meta.json engine_kwargs.enforce_eager")
    listed = meta(
        vllm_version="0.19.0",
        engine_kwargs={"compilation_config": {"cudagraph_capture_sizes": [1, 8, 32]}},
    )
    assert listed.cudagraph_capture_sizes()[0] == [1, 8, 32]
    none_mode = meta(engine_kwargs={"compilation_config": {"cudagraph_mode": "NONE"}})
    assert none_mode.cudagraph_capture_sizes()[0] is None
    assert meta(vllm_version="0.11.1").cudagraph_capture_sizes()[0] is None
    assert meta().cudagraph_capture_sizes()[0] is None
    # off unless asked for; asked for, the engine gets the run's sizes and a note
    assert bench_setup(run, None).scenario.engine.cudagraph_capture_sizes is None
    setup = bench_setup(run, None, cudagraph_padding=True)
    assert setup.scenario.engine.cudagraph_capture_sizes == "auto"
    assert any(note.startswith("CUDA-graph padding auto") for note in setup.notes)


def test_kv_cache_has_the_blocks_vllm_recorded(shared: Path) -> None:
    rtx4090 = load_bench_run(shared / "llmservingsim/current/bench/RTX4090/Llama-3.1-8B")
    assert rtx4090.num_gpu_blocks() == (
        2588,
        "meta.json resolved_config.cache_config.num_gpu_blocks",
    )
    setup = bench_setup(rtx4090, None)
    assert setup.scenario.engine.num_gpu_blocks_override == 2588
    assert (
        "KV cache: 2588 blocks (meta.json resolved_config.cache_config.num_gpu_blocks)"
        in setup.notes
    )
    # An override of None goes back to the memory model, and the note says so.
    modelled = bench_setup(rtx4090, None, overrides={"num_gpu_blocks_override": None})
    assert modelled.scenario.cluster.nodes[0].instances[0].engine.num_gpu_blocks_override is None
    assert any("the memory model (override)" in note for note in modelled.notes)
    # The RTX PRO 6000 runs record nothing: the memory model sizes their caches.
    run = load_bench_run(shared / RUN)
    assert run.num_gpu_blocks() == (None, "meta.json records no num_gpu_blocks")
    assert bench_setup(run, None).scenario.engine.num_gpu_blocks_override is None

    def meta(**fields: object) -> BenchRun:
        return dataclasses.replace(run, meta=fields)

    assert meta(kv_cache={"num_gpu_blocks": 100}).num_gpu_blocks()[0] == 100
    assert meta(kv_cache={"num_gpu_blocks": None}).num_gpu_blocks()[0] is None
    with pytest.raises(DataFileError, match=r"cache_config\.num_gpu_blocks: expected a whole"):
        meta(resolved_config={"cache_config": {"num_gpu_blocks": True}}).num_gpu_blocks()


def test_a_relative_run_folder_finds_its_trace_and_profiles(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`llmserve validate .` from inside the run used to miss perf/ and the trace (the
    parents of a relative path stop at '.'), and fell back to perf: auto silently."""
    from llmserve_env.interop.bench import find_profiles_root

    monkeypatch.chdir(shared / RUN)
    run = load_bench_run(".")
    assert run.dataset is not None
    assert find_profiles_root(Path(".")) == (shared / "llmservingsim/current/perf").resolve()
