"""Shared helpers of the calibration and validation scripts.

The scripts read public reference data from ``../shared/reference`` (next to the
repository) and exit cleanly, with status 0 and a message, when it is absent.
"""

from __future__ import annotations

import math
import sys
from collections import deque
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmserve_env.build import build_simulation
from llmserve_env.config.loader import validate_scenario
from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.sim.request import Request

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "reference"


def shared_or_exit() -> Path:
    """The reference-data folder; exits with status 0 when it is absent."""
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} (public reference data) is not present")
        sys.exit(0)
    return SHARED


def ape(pred: float, true: float) -> float:
    """Absolute percentage error."""
    return abs(pred - true) / abs(true) * 100.0


def summarise(errors: Sequence[float]) -> str:
    """``mean / median / max`` of absolute percentage errors."""
    if not errors:
        return "n/a"
    arr = np.asarray(errors)
    return f"{arr.mean():.1f} % / {np.median(arr):.1f} % / {arr.max():.1f} %"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table."""

    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def closed_loop(
    model: LatencyModel,
    *,
    model_name: str,
    device: str,
    tp: int,
    dtype: str,
    concurrency: int,
    isl: int,
    osl: int,
    num_requests: int | None = None,
) -> tuple[float, float]:
    """Mean TTFT and TPOT (ms) of a closed-loop benchmark at ``concurrency``, simulated.

    A benchmark client keeps ``concurrency`` requests in flight: it sends the next one
    the moment one finishes (the simulation runs with external routing; the client
    routes). With fixed lengths, requests started together stay in lock-step forever
    (real runs drift apart through jitter), so the first ``concurrency`` requests are
    sent evenly spread over one estimated request lifetime. Requests of the first and
    last ``concurrency`` sends (ramp-up and drain) are left out of the means.
    """
    n = num_requests or max(4 * concurrency, 64)
    scenario = validate_scenario(
        {
            "name": "closed-loop",
            "seed": 0,
            "cluster": {
                "nodes": [
                    {
                        "instances": [
                            {"model": model_name, "device": device, "tp": tp, "dtype": dtype}
                        ]
                    }
                ]
            },
            "engine": {"enable_prefix_caching": False},
            "workload": {
                "kind": "synthetic",
                "arrival": {"process": "burst"},
                "prompt_tokens": {"dist": "fixed", "value": isl},
                "output_tokens": {"dist": "fixed", "value": osl},
                "num_requests": n,
            },
            "output": {"per_request": True, "timeseries": False},
        }
    )
    sim = build_simulation(scenario, external_routing=True)
    finished: list[Request] = []
    record = sim.instances[0].on_finish

    def on_finish(request: Request) -> None:
        record(request)
        finished.append(request)
        sim.kernel.halt()  # let the client send the next request now

    for inst in sim.instances:
        inst.latency = model
        inst.on_finish = on_finish
    kv = np.full(1, concurrency * (isl + osl / 2.0))
    lifetime_s = model.iteration_time_s(BatchShape((isl,), (0,))) + osl * float(
        model.decode_times_s(concurrency, kv, kv / concurrency, kv / concurrency)[0]
    )
    gap_s = lifetime_s / concurrency
    next_start = 0.0
    waiting: deque[Request] = deque()
    in_flight = sent = 0
    while len(finished) < n:
        ramping = sent < concurrency
        sim.run_until(next_start if ramping else math.inf)
        waiting.extend(sim.pending)
        sim.pending.clear()
        in_flight = sent - len(finished)
        while waiting and (
            (ramping and sim.now >= next_start) or (not ramping and in_flight < concurrency)
        ):
            request = waiting.popleft()
            request.arrival_s = sim.now
            sim.route(request, 0)
            sent += 1
            in_flight += 1
            if ramping:
                next_start += gap_s
                ramping = sent < concurrency
        if not len(sim.kernel) and in_flight == 0 and not waiting and len(finished) < n:
            raise RuntimeError("closed loop stalled")
    order = sorted(finished, key=lambda r: r.arrival_s)
    keep = order[concurrency : max(len(order) - concurrency, concurrency + 1)]
    table = {r.request_id: r for r in keep}
    rows = sim.metrics.request_table()
    mask = np.isin(rows["request_id"], list(table))
    return float(np.nanmean(rows["ttft_ms"][mask])), float(np.nanmean(rows["tpot_ms"][mask]))
