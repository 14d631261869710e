"""Latency model vs real vLLM: the LLMServingSim bench runs, plus sensitivity variants.

Prints the markdown tables of VALIDATION.md ("Latency model vs real vLLM"). Needs
``../shared/reference/llmservingsim/current`` (bench runs, profiles, traces). Usage::

    python benchmarks/validation/llmservingsim_bench.py            # the main table
    python benchmarks/validation/llmservingsim_bench.py --variants # + sensitivity runs

Each variant changes one thing and is not a calibration: ``no-skew`` drops the decode
skew correction; ``overhead-1ms`` adds 1 ms per iteration; ``async`` is a prototype of
vLLM's async scheduling (a waiting request is admitted one iteration later; finished
requests free their slot one iteration later), outside the engine; ``kv-0.88`` /
``kv-0.92`` change ``gpu_memory_utilization``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmserve_env.build import build_simulation
from llmserve_env.interop.bench import (
    ValidationReport,
    bench_setup,
    compare,
    find_profiles_root,
    load_bench_run,
)
from llmserve_env.sim.events import IterationDone
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.simulation import Simulation

ROOT = Path(__file__).resolve().parents[2].parent / "shared/reference/llmservingsim/current"
RUNS = {
    "RTX PRO 6000, Llama-3.1-8B": "bench/RTXPRO6000/Llama-3.1-8B",
    "RTX 4090, Llama-3.1-8B": "bench/RTX4090/Llama-3.1-8B",
    "RTX PRO 6000, Qwen3-32B TP2": "bench/RTXPRO6000/Qwen3-32B",
    "RTX PRO 6000, Qwen3-30B-A3B DP2+EP (approx.)": "bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507",
}


class _AsyncInstance(Instance):
    """Prototype of vLLM's async scheduling (scheduling one step ahead)."""

    def _init_async(self) -> None:
        self._prev_start = -1.0
        self._prev_end = -1.0
        self._freed_at = -1.0
        self._freed = 0

    def on_iteration_done(self, event: IterationDone) -> None:
        if event.generation == self.generation:
            if self._run:
                n = self._run_len
                self._prev_start = float(self._run_ends[n - 2]) if n >= 2 else self._run_start
            else:
                self._prev_start = self._iter_start
            self._prev_end = self.kernel.now
        super().on_iteration_done(event)

    def _finish(self, request: Any, now: float) -> None:
        super()._finish(request, now)
        if self._freed_at != now:
            self._freed_at, self._freed = now, 0
        self._freed += 1

    def _start_iteration(self, now: float) -> None:
        busy_before = self._prev_end == now
        cutoff = self._prev_start if busy_before else now
        items = self.waiting._items  # type: ignore[attr-defined]
        held = []
        while items and items[-1].arrival_s > cutoff and items[-1].num_preemptions == 0:
            held.append(items.pop())
        saved = self.params
        if busy_before and self._freed_at == now:
            self.params = dataclasses.replace(
                saved, max_num_seqs=max(1, saved.max_num_seqs - self._freed)
            )
        try:
            if held and not items and self.running:
                batch = self._schedule(now)  # one general iteration, no stretch
                if batch:
                    self._batch, self._iter_start, self.busy = batch, now, True
                    self.generation += 1
                    duration = self.latency.iteration_time_s(self._shape(batch))
                    self.kernel.schedule(
                        now + duration, IterationDone(self.instance_id, self.generation)
                    )
                return
            super()._start_iteration(now)
        finally:
            self.params = saved
            items.extend(reversed(held))


def _tables(inst: Instance, **changes: Any) -> None:
    latency: Any = inst.latency
    latency.tables = dataclasses.replace(latency.tables, **changes)
    latency._decode_cache.clear()


VARIANTS: dict[str, tuple[dict[str, Any], Callable[[Simulation], None] | None]] = {
    "no-skew": ({}, lambda sim: [_tables(i, skew=None) for i in sim.instances] and None),
    "overhead-1ms": (
        {},
        lambda sim: [_tables(i, overhead_us=1000.0) for i in sim.instances] and None,
    ),
    "kv-0.88": ({"gpu_memory_utilization": 0.88}, None),
    "kv-0.92": ({"gpu_memory_utilization": 0.92}, None),
}


def _async(sim: Simulation) -> None:
    for inst in sim.instances:
        inst.__class__ = _AsyncInstance
        inst._init_async()  # type: ignore[attr-defined]


VARIANTS["async"] = ({}, _async)


def run(
    path: Path, overrides: dict[str, Any], hook: Callable[[Simulation], None] | None
) -> tuple[ValidationReport, float]:
    bench = load_bench_run(path)
    setup = bench_setup(
        bench, find_profiles_root(path), allow_unsupported=True, overrides=overrides or None
    )
    sim = build_simulation(setup.scenario, workload=setup.workload)
    if hook is not None:
        hook(sim)
    start = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - start
    return compare(
        bench, sim.metrics.request_table(), sim.metrics.timeseries_table(), setup.notes
    ), wall


def _row(name: str, rep: ValidationReport, wall: float) -> str:
    lat = rep.latency
    cells = [name]
    for metric in ("ttft", "tpot", "e2e"):
        cells.append(
            " / ".join(f"{lat[metric][s]['err_pct']:+.1f}" for s in ("mean", "p50", "p90", "p99"))
        )
    tp = rep.throughput
    cells += [
        f"{tp['mape_pct']:.1f} / {tp['mape_steady_pct']:.1f} / {tp['wape_pct']:.1f}",
        f"{rep.totals['output_throughput_err_pct']:+.1f}",
        f"{wall:.2f}",
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", action="store_true", help="also run the sensitivity variants")
    args = parser.parse_args()
    head = (
        "| run | TTFT err % (mean / p50 / p90 / p99) | TPOT err % | e2e err % "
        "| per-s throughput MAPE / steady MAPE / WAPE % | output tok/s err % | sim wall s |\n"
        "|---|---|---|---|---|---|---|"
    )
    print(head)
    for name, rel in RUNS.items():
        rep, wall = run(ROOT / rel, {}, None)
        print(_row(name, rep, wall))
    if args.variants:
        print()
        print(head.replace("| run |", "| run, variant |"))
        for name, rel in list(RUNS.items())[:3]:
            for variant, (overrides, hook) in VARIANTS.items():
                rep, wall = run(ROOT / rel, overrides, hook)
                print(_row(f"{name}, {variant}", rep, wall))


if __name__ == "__main__":
    main()
