"""LLMServingSim's own ``sim.log``: its per-interval throughput and queue series.

LLMServingSim (``python -m serving``) prints a heartbeat block every ``--log-interval``
seconds of simulated time::

    [12.0s] Avg prompt throughput: 4784.0 tokens/s, Avg generation throughput: 3682.0 tokens/s
            ├─Running Instance[0]: 128 reqs, Waiting: 1 reqs, Total # 1 NPUs, ...
            ├─Running Instance[1]: 127 reqs, Waiting: 0 reqs, Total # 1 NPUs, ...
            └─Node[0]: Total CPU Memory Usage 0.00 MB, 0.000 % Used

and, at the end, ``Total generated tokens: N``. :func:`load_llmservingsim_log` reads
these into per-tick series; :func:`compare_llmservingsim_log` scores its generation
throughput against a vLLM bench run with the definitions of our ``llmserve validate``
(:func:`~llmserve_env.interop.bench.throughput_errors`), so LLMServingSim's published
runs and ours can be set side by side.

What a tick covers (LLMServingSim ``serving/__main__.py``): the tokens of every
iteration that completes are added to a running count when its completion event is
handled; the block labelled ``[k s]`` is printed, and the count reset, at the first
completion event on an instance's first NPU later than ``k`` seconds, after that event's
tokens were added. So tick ``k`` holds the tokens of the iterations that completed in
about ``(k - interval, k]`` (each edge late by at most one iteration), which is the bin
of ``timeseries.csv``'s row ``t = k`` (vLLM's ``[k - 1, k)``) and of our simulator's
step ending at ``k``. Running and waiting are the scheduler's counts at that event
(waiting counts only requests that have arrived), summed over instances as both
LLMServingSim's and vLLM's series are. The iterations after the last tick, up to the
end of the run, are never printed; when the log has its ``Total generated tokens``
line the remainder is put in one more bin after the last tick.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError
from llmserve_env.interop.bench import BenchRun, output_lag, throughput_errors

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

_NUMBER = r"(\d+(?:\.\d*)?)"
_TICK = re.compile(r"^\s*\[" + _NUMBER + r"s\]")
_THROUGHPUT = re.compile(
    r"Avg prompt throughput:\s*" + _NUMBER + r" tokens/s,\s*"
    r"Avg generation throughput:\s*" + _NUMBER + r" tokens/s"
)
_INSTANCE = re.compile(r"Running Instance\\?\[(\d+)\]:\s*(\d+) reqs, Waiting:\s*(\d+) reqs")
_INTERVAL = re.compile(r"Log interval \(s\)\s*:\s*" + _NUMBER)
_TOTAL_GEN = re.compile(r"^\s*Total generated tokens:\s*(\d+)\s*$")


@dataclass(frozen=True)
class LLMServingSimLog:
    """The heartbeat series of one LLMServingSim ``sim.log``.

    Attributes:
        path: The file.
        t: Tick labels (s of simulated time), increasing.
        prompt_throughput: Prompt tokens per second of each tick.
        gen_throughput: Generated tokens per second of each tick.
        running: Running requests, one column per instance (``[tick, instance]``).
        waiting: Arrived requests waiting, one column per instance.
        interval_s: The log interval (its ``Log interval (s)`` header, else the spacing
            of the ticks).
        total_generated: ``Total generated tokens`` of the closing summary, when the log
            has one.
    """

    path: Path
    t: FloatArray
    prompt_throughput: FloatArray
    gen_throughput: FloatArray
    running: IntArray
    waiting: IntArray
    interval_s: float
    total_generated: int | None = None

    @property
    def num_instances(self) -> int:
        """Instances listed under each tick."""
        return int(self.running.shape[1])

    def residual_tokens(self) -> float:
        """Generated tokens after the last tick (``Total generated tokens`` less the
        ticks' tokens), 0 when the log has no total."""
        if self.total_generated is None:
            return 0.0
        return float(self.total_generated - self.gen_throughput.sum() * self.interval_s)

    def generation_bins(self) -> tuple[FloatArray, FloatArray]:
        """Generated tokens per second by bin: the ticks, plus one bin after the last
        tick holding :meth:`residual_tokens` when there are any.

        Returns:
            ``(t, tokens_per_s)``, ``t`` being each bin's end.
        """
        residual = self.residual_tokens()
        if residual <= 0.0:
            return self.t.copy(), self.gen_throughput.copy()
        t = np.append(self.t, self.t[-1] + self.interval_s)
        return t, np.append(self.gen_throughput, residual / self.interval_s)


def load_llmservingsim_log(path: str | Path) -> LLMServingSimLog:
    """Read the heartbeat blocks of an LLMServingSim ``sim.log``.

    Lines other than the tick lines (``[k s] Avg prompt throughput: ...``), their
    ``Running Instance[i]: ...`` lines, the ``Log interval (s)`` header and the
    ``Total generated tokens`` summary line are ignored.

    Raises:
        DataFileError: the file is missing, has no tick, or has a malformed tick or
            instance line, ticks out of order, or ticks listing different instances
            (file and line named).
    """
    log_path = Path(path)
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataFileError(log_path, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(log_path, f"not UTF-8 text: {exc.reason}") from exc
    ticks: list[tuple[float, float, float]] = []
    tick_lines: list[int] = []
    counts: list[dict[int, tuple[int, int]]] = []
    interval: float | None = None
    total: int | None = None
    for line_no, line in enumerate(lines, start=1):
        tick = _TICK.match(line)
        if tick is not None:
            values = _THROUGHPUT.search(line, tick.end())
            if values is None:
                raise DataFileError(
                    log_path,
                    "tick line without 'Avg prompt throughput: X tokens/s, "
                    "Avg generation throughput: Y tokens/s'",
                    line=line_no,
                )
            t = float(tick[1])
            if ticks and t <= ticks[-1][0]:
                raise DataFileError(
                    log_path, f"tick {t:g}s does not follow {ticks[-1][0]:g}s", line=line_no
                )
            ticks.append((t, float(values[1]), float(values[2])))
            tick_lines.append(line_no)
            counts.append({})
            continue
        instance = _INSTANCE.search(line)
        if instance is not None:
            if not counts:
                raise DataFileError(log_path, "instance line before any tick", line=line_no)
            index = int(instance[1])
            if index in counts[-1]:
                raise DataFileError(
                    log_path, f"instance {index} listed twice under one tick", line=line_no
                )
            counts[-1][index] = (int(instance[2]), int(instance[3]))
            continue
        if "Running Instance" in line:
            raise DataFileError(
                log_path,
                "instance line without 'Running Instance[i]: N reqs, Waiting: M reqs'",
                line=line_no,
            )
        header = _INTERVAL.search(line)
        if header is not None and interval is None:
            interval = float(header[1])
            if interval <= 0:
                raise DataFileError(log_path, "log interval must be positive", line=line_no)
            continue
        summary = _TOTAL_GEN.match(line)
        if summary is not None:
            total = int(summary[1])
    if not ticks:
        raise DataFileError(log_path, "no '[k s] Avg prompt throughput: ...' tick lines")
    instances = sorted(counts[0])
    if not instances or instances != list(range(len(instances))):
        raise DataFileError(
            log_path,
            f"tick {ticks[0][0]:g}s lists instances {instances}, expected 0..n-1",
            line=tick_lines[0],
        )
    for tick_counts, (t, _, _), line_no in zip(counts, ticks, tick_lines, strict=True):
        if sorted(tick_counts) != instances:
            raise DataFileError(
                log_path,
                f"tick {t:g}s lists instances {sorted(tick_counts)}, the first tick {instances}",
                line=line_no,
            )
    times = np.array([tick[0] for tick in ticks], dtype=np.float64)
    if interval is None:
        steps = np.diff(times)
        interval = float(steps.min()) if len(steps) else float(times[0])
    return LLMServingSimLog(
        path=log_path,
        t=times,
        prompt_throughput=np.array([tick[1] for tick in ticks], dtype=np.float64),
        gen_throughput=np.array([tick[2] for tick in ticks], dtype=np.float64),
        running=np.array([[c[i][0] for i in instances] for c in counts], dtype=np.int64),
        waiting=np.array([[c[i][1] for i in instances] for c in counts], dtype=np.int64),
        interval_s=interval,
        total_generated=total,
    )


def compare_llmservingsim_log(
    run: BenchRun, log: LLMServingSimLog, shift_s: float = 0.0
) -> dict[str, float]:
    """Score an LLMServingSim log against a vLLM bench run the way ``llmserve validate``
    scores our simulator.

    The log's bin ending at ``k`` (see the module doc) is compared with
    ``timeseries.csv``'s row ``t = k + shift_s`` (a positive shift moves LLMServingSim's
    series later); a row with no bin gets 0 tokens, 0 running and 0 waiting, as in
    :func:`~llmserve_env.interop.bench.compare`.

    Args:
        run: The bench run.
        log: LLMServingSim's log of the same run.
        shift_s: Shift of the log's series (s, a multiple of the tick).

    Returns:
        :func:`~llmserve_env.interop.bench.throughput_errors`'s and
        :func:`~llmserve_env.interop.bench.output_lag`'s figures, plus
        ``running_mae`` and ``waiting_mae`` (mean absolute difference in requests over
        the rows of ``timeseries.csv``), ``output_tokens`` (the log's generated tokens,
        residual included) and ``residual_tokens``.

    Raises:
        ValueError: the log's interval is not the bench run's tick (``meta.json``'s
            ``tick_seconds``, default 1 s).
    """
    tick_s = float(run.meta.get("tick_seconds") or 1.0)
    if not math.isclose(log.interval_s, tick_s, rel_tol=1e-9):
        raise ValueError(
            f"{log.path}: log interval {log.interval_s:g}s, the bench run's tick {tick_s:g}s; "
            "rerun LLMServingSim with --log-interval matching the bench tick"
        )

    def key(t: float) -> int:
        return round(t / tick_s)

    bin_t, bin_gen = log.generation_bins()
    gen_by_bin = {key(float(t) + shift_s): float(v) for t, v in zip(bin_t, bin_gen, strict=True)}
    queues = {
        key(float(t) + shift_s): (float(r), float(w))
        for t, r, w in zip(log.t, log.running.sum(axis=1), log.waiting.sum(axis=1), strict=True)
    }
    bench_t = run.timeseries["t"]
    sim_gen = np.array([gen_by_bin.get(key(float(t)), 0.0) for t in bench_t])
    sim_queues = np.array([queues.get(key(float(t)), (0.0, 0.0)) for t in bench_t])
    result = throughput_errors(run.timeseries["gen_throughput"], sim_gen)
    ends = sorted(gen_by_bin)
    result |= output_lag(
        bench_t,
        run.timeseries["gen_throughput"],
        np.array(ends, dtype=float) * tick_s,
        np.array([gen_by_bin[k] for k in ends]),
        tick_s,
    )
    result["running_mae"] = float(np.abs(sim_queues[:, 0] - run.timeseries["running"]).mean())
    result["waiting_mae"] = float(np.abs(sim_queues[:, 1] - run.timeseries["waiting"]).mean())
    result["output_tokens"] = float(bin_gen.sum() * log.interval_s)
    result["residual_tokens"] = log.residual_tokens()
    return result
