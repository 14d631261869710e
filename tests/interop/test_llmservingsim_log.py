"""LLMServingSim's sim.log: parsing its heartbeat blocks and scoring them against vLLM."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.interop.bench import BenchRun
from llmserve_env.interop.llmservingsim_log import (
    compare_llmservingsim_log,
    load_llmservingsim_log,
)

HEADER = """\
  • Cluster config             : bench/examples/GPU/model/config.json
  • Log interval (s)           : 1.0
▶ Starting simulation...

"""

TICKS = """\
[1.0s] Avg prompt throughput: 100.0 tokens/s, Avg generation throughput: 10.0 tokens/s
        ├─Running Instance[0]: 2 reqs, Waiting: 1 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
        ├─Running Instance[1]: 1 reqs, Waiting: 0 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
        └─Node[0]: Total CPU Memory Usage 0.00 MB, 0.000 % Used (Instance[0]: 0.00 %, Instance[1]: 0.00 %)
[2.0s] Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 30.0 tokens/s
        ├─Running Instance[0]: 2 reqs, Waiting: 0 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
        ├─Running Instance[1]: 2 reqs, Waiting: 0 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
        └─Node[0]: Total CPU Memory Usage 0.00 MB, 0.000 % Used (Instance[0]: 0.00 %, Instance[1]: 0.00 %)
[3.0s] Avg prompt throughput: 0.0 tokens/s, Avg generation throughput: 20.0 tokens/s
         ├─Running Instance[0]: 1 reqs, Waiting: 0 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
         ├─Running Instance[1]: 0 reqs, Waiting: 0 reqs, Total # 1 NPUs, Each NPU Memory Usage 1.00 MB (1.000 % Used)
         └─Node[0]: Total CPU Memory Usage 0.00 MB, 0.000 % Used (Instance[0]: 0.00 %, Instance[1]: 0.00 %)
"""

SUMMARY = """\
▶ Simulation results...
Total requests:                                                     3
Total generated tokens:                                             65
Throughput per 1 sec ([prompt_throughput], [gen_throughput]): [(100.0, 10.0), (0.0, 30.0), (0.0, 20.0)]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sim.log"
    path.write_text(text, encoding="utf-8")
    return path


def _bench(
    tmp_path: Path, gen: list[float], running: list[float], waiting: list[float]
) -> BenchRun:
    n = len(gen)
    return BenchRun(
        path=tmp_path,
        config_path=tmp_path / "config.json",
        meta={"tick_seconds": 1.0},
        requests={},
        timeseries={
            "t": np.arange(1.0, n + 1.0),
            "prompt_throughput": np.zeros(n),
            "gen_throughput": np.asarray(gen, dtype=float),
            "running": np.asarray(running, dtype=float),
            "waiting": np.asarray(waiting, dtype=float),
        },
        dataset=None,
    )


def test_parses_ticks_instances_and_the_total(tmp_path: Path) -> None:
    log = load_llmservingsim_log(_write(tmp_path, HEADER + TICKS + SUMMARY))
    assert log.interval_s == 1.0 and log.num_instances == 2
    assert log.t.tolist() == [1.0, 2.0, 3.0]
    assert log.prompt_throughput.tolist() == [100.0, 0.0, 0.0]
    assert log.gen_throughput.tolist() == [10.0, 30.0, 20.0]
    assert log.running.tolist() == [[2, 1], [2, 2], [1, 0]]
    assert log.waiting.tolist() == [[1, 0], [0, 0], [0, 0]]
    assert log.total_generated == 65 and log.residual_tokens() == 5.0
    # the 5 tokens after the last tick make one more bin
    t, gen = log.generation_bins()
    assert t.tolist() == [1.0, 2.0, 3.0, 4.0] and gen.tolist() == [10.0, 30.0, 20.0, 5.0]


def test_without_a_summary_there_is_no_residual_bin(tmp_path: Path) -> None:
    log = load_llmservingsim_log(_write(tmp_path, TICKS))
    assert log.total_generated is None and log.residual_tokens() == 0.0
    assert log.interval_s == 1.0  # from the tick spacing
    t, gen = log.generation_bins()
    assert t.tolist() == [1.0, 2.0, 3.0] and gen.tolist() == [10.0, 30.0, 20.0]


def test_scores_with_validate_definitions(tmp_path: Path) -> None:
    log = load_llmservingsim_log(_write(tmp_path, HEADER + TICKS + SUMMARY))
    # LLMServingSim 10, 30, 20, 5 tok/s (last bin: the residual) and 4, 1, 0 running,
    # 1, 0, 0 waiting (both instances summed; none after the last tick)
    bench = _bench(tmp_path, gen=[20.0, 25.0, 40.0, 2.0], running=[3, 3, 1, 0], waiting=[0] * 4)
    scores = compare_llmservingsim_log(bench, log)
    # APE 0.5, 0.2, 0.5, 1.5; the steady bins are those >= 10 % of the 40 tok/s peak
    assert scores["mape_pct"] == pytest.approx(100 * (0.5 + 0.2 + 0.5 + 1.5) / 4)
    assert scores["mape_steady_pct"] == pytest.approx(100 * (0.5 + 0.2 + 0.5) / 3)
    assert scores["wape_pct"] == pytest.approx(100 * (10 + 5 + 20 + 3) / (20 + 25 + 40 + 2))
    assert scores["num_bins"] == 4 and scores["num_bins_steady"] == 3
    assert scores["running_mae"] == pytest.approx(0.25)
    assert scores["waiting_mae"] == pytest.approx(0.25)
    assert scores["output_tokens"] == 65.0 and scores["residual_tokens"] == 5.0
    # 25 % of vLLM's 87 tokens (21.75): vLLM at 1 + 1.75 / 25 s, LLMServingSim at
    # 1 + 11.75 / 30 s; it never gets to 90 % (78.3 of its 65)
    assert scores["lag_s_25"] == pytest.approx(11.75 / 30 - 1.75 / 25)
    assert math.isnan(scores["lag_s_90"])
    # one second later: 0, 10, 30, 20 tok/s against the same rows
    later = compare_llmservingsim_log(bench, log, shift_s=1.0)
    assert later["mape_steady_pct"] == pytest.approx(100 * (1.0 + 0.6 + 0.25) / 3)


def test_interval_must_match_the_bench_tick(tmp_path: Path) -> None:
    text = HEADER.replace("Log interval (s)           : 1.0", "Log interval (s)           : 0.5")
    log = load_llmservingsim_log(_write(tmp_path, text + TICKS))
    bench = _bench(tmp_path, gen=[1.0], running=[0], waiting=[0])
    with pytest.raises(ValueError, match=re.escape("log interval 0.5s, the bench run's tick 1s")):
        compare_llmservingsim_log(bench, log)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("[1.0s] Avg prompt throughput: 1.0 tokens/s\n", 1, "tick line without"),
        (
            "  ├─Running Instance[0]: 1 reqs, Waiting: 0 reqs\n" + TICKS,
            1,
            "instance line before any tick",
        ),
        (
            TICKS.replace("Running Instance[1]: 2 reqs, Waiting", "Running Instance[1]: two reqs"),
            7,
            "instance line without",
        ),
        (TICKS.replace("[3.0s]", "[2.0s]"), 9, "tick 2s does not follow 2s"),
        (
            TICKS.replace("Running Instance[1]: 2 reqs", "Running Instance[0]: 2 reqs"),
            7,
            "instance 0 listed twice",
        ),
        (
            "\n".join(line for line in TICKS.splitlines() if "Instance[1]: 0 reqs" not in line),
            9,
            "tick 3s lists instances [0], the first tick [0, 1]",
        ),
    ],
)
def test_malformed_logs_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataFileError, match=re.escape(message)) as info:
        load_llmservingsim_log(path)
    assert info.value.path == str(path) and info.value.line == line


def test_missing_or_empty_log(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="file not found"):
        load_llmservingsim_log(tmp_path / "absent.log")
    with pytest.raises(DataFileError, match="no '\\[k s\\] Avg prompt throughput"):
        load_llmservingsim_log(_write(tmp_path, HEADER + SUMMARY))
