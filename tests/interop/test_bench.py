"""Validation against real vLLM runs: loading, latency definitions, one full comparison."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.interop.bench import bench_workload, load_bench_run, validate_run

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


def test_validate_one_run(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))
    report = validate_run(shared / RUN)
    assert report.totals["output_tokens_sim"] == report.totals["output_tokens_vllm"] == 195753
    for metric in ("ttft", "tpot", "e2e"):
        err = report.latency[metric]["mean"]["err_pct"]
        assert math.isfinite(err) and abs(err) < 15.0, (metric, err)
    assert report.throughput["mape_steady_pct"] < 25.0
    data = report.as_dict()
    json.dumps(data)
    assert set(data["latency_ms"]) == {"ttft", "tpot", "e2e", "queueing"}


def test_expert_parallel_run_is_refused_unless_approximated(shared: Path) -> None:
    from llmserve_env.interop.llmservingsim_config import UnsupportedFeatureError

    with pytest.raises(UnsupportedFeatureError, match="expert parallelism"):
        validate_run(shared / "llmservingsim/current/bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507")
