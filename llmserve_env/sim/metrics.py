"""Metrics: per-request records, a sampled time series, and the run summary.

Recording is cheap (one tuple per ended request, one row per instance per sample);
all statistics are computed once, at the end, with numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from llmserve_env.sim.request import RejectReason, Request, RequestStatus
from llmserve_env.sim.stats import InstanceStats, ItlHistogram

REQUEST_COLUMNS = (
    "request_id",
    "status",
    "reject_reason",
    "instance_id",
    "session_id",
    "priority",
    "arrival_s",
    "first_scheduled_s",
    "first_token_s",
    "last_token_s",
    "finish_s",
    "num_prompt_tokens",
    "max_output_tokens",
    "num_output_tokens",
    "num_cached_tokens",
    "num_preemptions",
    "queueing_ms",
    "ttft_ms",
    "tpot_ms",
    "itl_max_ms",
    "e2e_ms",
    "energy_j",
)

TIMESERIES_COLUMNS = (
    "time_s",
    "instance_id",
    "num_running",
    "num_waiting",
    "kv_usage_frac",
    "prompt_tokens",
    "generation_tokens",
    "prompt_throughput_tok_s",
    "generation_throughput_tok_s",
    "prefix_hit_rate",
    "num_preemptions",
    "power_w",
    "energy_j",
    "power_state",
    "clock_frac",
)


# Lower-case names of the enums' members, looked up per recorded request (an enum's
# ``name`` is a Python-level property, slow from compiled code).
_STATUS_NAMES: dict[RequestStatus, str] = {s: s.name.lower() for s in RequestStatus}
_REASON_NAMES: dict[RejectReason, str] = {r: r.name.lower() for r in RejectReason}


def _ms(value: float) -> float:
    return value * 1e3


@dataclass(frozen=True, slots=True)
class SLO:
    """Latency objectives in seconds (``None``: not checked)."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def ttft_ok(self, ttft_s: float) -> bool:
        """Within the TTFT objective (or none set)."""
        return self.ttft_s is None or ttft_s <= self.ttft_s

    def tpot_ok(self, tpot_s: float) -> bool:
        """Within the TPOT objective (or none set; a one-token answer has no TPOT)."""
        return self.tpot_s is None or math.isnan(tpot_s) or tpot_s <= self.tpot_s

    def e2e_ok(self, e2e_s: float) -> bool:
        """Within the end-to-end objective (or none set)."""
        return self.e2e_s is None or e2e_s <= self.e2e_s

    def met(self, ttft_s: float, tpot_s: float, e2e_s: float) -> bool:
        """Whether a finished request met every objective."""
        return self.ttft_ok(ttft_s) and self.tpot_ok(tpot_s) and self.e2e_ok(e2e_s)


class MetricsRecorder:
    """Collects what the summary and the output tables need.

    Args:
        slo: Latency objectives for attainment and goodput.

    Attributes:
        recent_tpot_s: Per instance id, a moving average (weight 0.2 for the newest) of
            the TPOT of the requests that finished there (what TPOT governors read).
    """

    def __init__(self, slo: SLO) -> None:
        self.slo = slo
        self.rows: list[tuple[Any, ...]] = []
        self.series: list[tuple[Any, ...]] = []
        self._last_counts: dict[int, tuple[float, int, int, int, int, float]] = {}
        self.num_finished = 0
        self.num_rejected = 0
        self.num_unfinished = 0
        self.num_slo_met = 0
        self.num_ttft_violations = 0
        self.num_tpot_violations = 0
        self.num_e2e_violations = 0
        self.recent_tpot_s: dict[int, float] = {}

    def record(self, request: Request) -> None:
        """Record a request that reached a terminal state (a finished one also updates
        its instance's moving TPOT, :attr:`recent_tpot_s`)."""
        status = request.status
        if status == RequestStatus.FINISHED:
            tpot = request.tpot_s
            if tpot == tpot:  # not NaN: a moving average per instance for governors
                prev = self.recent_tpot_s.get(request.instance_id)
                self.recent_tpot_s[request.instance_id] = (
                    tpot if prev is None else 0.8 * prev + 0.2 * tpot
                )
            self.num_finished += 1
            slo = self.slo
            ttft_ok = slo.ttft_ok(request.ttft_s)
            tpot_ok = slo.tpot_ok(request.tpot_s)
            e2e_ok = slo.e2e_ok(request.e2e_s)
            if ttft_ok and tpot_ok and e2e_ok:
                self.num_slo_met += 1
            self.num_ttft_violations += not ttft_ok
            self.num_tpot_violations += not tpot_ok
            self.num_e2e_violations += not e2e_ok
        elif status == RequestStatus.REJECTED:
            self.num_rejected += 1
        else:
            self.num_unfinished += 1
        self.rows.append(
            (
                request.request_id,
                _STATUS_NAMES[status],
                _REASON_NAMES[request.reject_reason],
                request.instance_id,
                request.session_id,
                request.priority,
                request.arrival_s,
                request.first_scheduled_s,
                request.first_token_s,
                request.last_token_s,
                request.finish_s,
                request.num_prompt_tokens,
                request.max_output_tokens,
                request.num_output_tokens,
                max(request.num_cached_tokens, 0),
                request.num_preemptions,
                _ms(request.queueing_s),
                _ms(request.ttft_s),
                _ms(request.tpot_s),
                _ms(request.itl_max_s),
                _ms(request.e2e_s),
                request.energy_j,
            )
        )

    def sample(
        self,
        time_s: float,
        instance_id: int,
        stats: InstanceStats,
        running: int,
        waiting: int,
        kv: float,
        *,
        power_w: float = 0.0,
        energy_j: float = 0.0,
        power_state: int = 0,
        clock: float = 1.0,
    ) -> None:
        """Append one time-series row for one instance.

        ``power_w`` is the draw at ``time_s`` and ``energy_j`` the energy used so far;
        the row's ``power_w`` is the average over the interval since the previous
        sample (``energy_j`` difference over time, as a power meter reports it), or
        the draw at ``time_s`` for the first sample.
        """
        prev = self._last_counts.get(instance_id, (0.0, 0, 0, 0, 0, 0.0))
        dt = time_s - prev[0]
        if dt > 0:
            power_w = (energy_j - prev[5]) / dt
        d_prompt = stats.prompt_tokens - prev[1]
        d_gen = stats.generation_tokens - prev[2]
        d_query = stats.prefix_query_tokens - prev[3]
        d_hit = stats.prefix_hit_tokens - prev[4]
        self._last_counts[instance_id] = (
            time_s,
            stats.prompt_tokens,
            stats.generation_tokens,
            stats.prefix_query_tokens,
            stats.prefix_hit_tokens,
            energy_j,
        )
        self.series.append(
            (
                time_s,
                instance_id,
                running,
                waiting,
                kv,
                stats.prompt_tokens,
                stats.generation_tokens,
                d_prompt / dt if dt > 0 else 0.0,
                d_gen / dt if dt > 0 else 0.0,
                d_hit / d_query if d_query else 0.0,
                stats.num_preemptions,
                power_w,
                energy_j,
                power_state,
                clock,
            )
        )

    def clone(self) -> MetricsRecorder:
        """An independent copy (recorded rows are immutable tuples and are shared)."""
        other = MetricsRecorder(self.slo)
        other.rows = list(self.rows)
        other.series = list(self.series)
        other._last_counts = dict(self._last_counts)
        other.num_finished = self.num_finished
        other.num_rejected = self.num_rejected
        other.num_unfinished = self.num_unfinished
        other.num_slo_met = self.num_slo_met
        other.num_ttft_violations = self.num_ttft_violations
        other.num_tpot_violations = self.num_tpot_violations
        other.num_e2e_violations = self.num_e2e_violations
        other.recent_tpot_s = dict(self.recent_tpot_s)
        return other

    def request_table(self) -> dict[str, np.ndarray]:
        """Per-request columns (see ``REQUEST_COLUMNS``), in the order requests ended."""
        if not self.rows:
            return {name: np.empty(0) for name in REQUEST_COLUMNS}
        columns = list(zip(*self.rows, strict=True))
        return {name: np.asarray(col) for name, col in zip(REQUEST_COLUMNS, columns, strict=True)}

    def timeseries_table(self) -> dict[str, np.ndarray]:
        """Time-series columns (see ``TIMESERIES_COLUMNS``)."""
        if not self.series:
            return {name: np.empty(0) for name in TIMESERIES_COLUMNS}
        columns = list(zip(*self.series, strict=True))
        return {
            name: np.asarray(col) for name, col in zip(TIMESERIES_COLUMNS, columns, strict=True)
        }


def latency_stats(prefix: str, values_ms: np.ndarray) -> dict[str, float | None]:
    """Mean, p50, p90 and p99 of ``values_ms`` (NaNs dropped) as ``mean_<prefix>_ms``...
    (``None`` for an empty column)."""
    values_ms = values_ms[~np.isnan(values_ms)]
    if len(values_ms) == 0:
        return {
            f"mean_{prefix}_ms": None,
            f"p50_{prefix}_ms": None,
            f"p90_{prefix}_ms": None,
            f"p99_{prefix}_ms": None,
        }
    p50, p90, p99 = np.percentile(values_ms, [50, 90, 99])
    return {
        f"mean_{prefix}_ms": float(values_ms.mean()),
        f"p50_{prefix}_ms": float(p50),
        f"p90_{prefix}_ms": float(p90),
        f"p99_{prefix}_ms": float(p99),
    }


def summarize(
    recorder: MetricsRecorder,
    itl: ItlHistogram,
    *,
    num_arrived: int,
    instance_stats: list[InstanceStats],
    wall_time_s: float,
    end_time_s: float,
) -> dict[str, Any]:
    """The run summary: counts, throughput, latency statistics, SLO attainment.

    ``makespan_s`` runs from the first arrival to the last token of the run (or the
    horizon when requests were left unfinished).
    """
    table = recorder.request_table()
    status = table["status"]
    finished = status == "finished"
    arrival = table["arrival_s"].astype(np.float64) if len(status) else np.empty(0)
    first_arrival = float(arrival.min()) if len(arrival) else 0.0
    if recorder.num_unfinished:
        end = end_time_s
    else:
        ends = table["finish_s"].astype(np.float64)[finished] if len(status) else np.empty(0)
        end = float(ends.max()) if len(ends) else first_arrival
    makespan = max(end - first_arrival, 0.0)
    out_tokens = int(table["num_output_tokens"][finished].sum()) if len(status) else 0
    prompt_tokens = int(table["num_prompt_tokens"][finished].sum()) if len(status) else 0
    all_out = int(sum(s.generation_tokens for s in instance_stats))
    hits = sum(s.prefix_hit_tokens for s in instance_stats)
    queries = sum(s.prefix_query_tokens for s in instance_stats)
    summary: dict[str, Any] = {
        "num_arrived": num_arrived,
        "num_finished": recorder.num_finished,
        "num_rejected": recorder.num_rejected,
        "num_unfinished": recorder.num_unfinished,
        "makespan_s": makespan,
        "throughput_tok_s": out_tokens / makespan if makespan > 0 else 0.0,
        "total_throughput_tok_s": (out_tokens + prompt_tokens) / makespan if makespan > 0 else 0.0,
        "request_throughput_rps": recorder.num_finished / makespan if makespan > 0 else 0.0,
        "num_output_tokens": out_tokens,
        "num_prompt_tokens": prompt_tokens,
        "num_generated_tokens": all_out,
    }
    for name in ("ttft", "tpot", "e2e", "queueing"):
        column = table[f"{name}_ms"][finished].astype(np.float64) if len(status) else np.empty(0)
        summary.update(latency_stats(name, column))
    summary.update(
        {
            "mean_itl_ms": _ms(itl.mean()) if itl.count else None,
            "p50_itl_ms": _ms(itl.percentile(50)) if itl.count else None,
            "p90_itl_ms": _ms(itl.percentile(90)) if itl.count else None,
            "p99_itl_ms": _ms(itl.percentile(99)) if itl.count else None,
            "max_itl_ms": _ms(itl.max_s) if itl.count else None,
        }
    )
    slo = recorder.slo
    summary["slo_ttft_ms"] = None if slo.ttft_s is None else slo.ttft_s * 1e3
    summary["slo_tpot_ms"] = None if slo.tpot_s is None else slo.tpot_s * 1e3
    summary["slo_e2e_ms"] = None if slo.e2e_s is None else slo.e2e_s * 1e3
    summary["slo_attainment"] = recorder.num_slo_met / num_arrived if num_arrived else None
    summary["goodput_rps"] = recorder.num_slo_met / makespan if makespan > 0 else 0.0
    summary["num_preemptions"] = int(sum(s.num_preemptions for s in instance_stats))
    summary["prefix_hit_rate"] = hits / queries if queries else 0.0
    summary["num_iterations"] = int(sum(s.num_iterations for s in instance_stats))
    summary["simulated_time_s"] = end_time_s
    summary["wall_time_s"] = wall_time_s
    summary["sim_speed_requests_per_s"] = num_arrived / wall_time_s if wall_time_s > 0 else None
    return summary
