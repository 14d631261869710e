"""Latency model vs real vLLM: the LLMServingSim bench runs, plus sensitivity variants.

Prints the markdown tables of VALIDATION.md ("Latency model vs real vLLM"). Needs
``../shared/reference/llmservingsim/current`` (bench runs, profiles, traces). Usage::

    python benchmarks/validation/llmservingsim_bench.py            # the main table
    python benchmarks/validation/llmservingsim_bench.py --variants # + sensitivity runs

The main table simulates each run with vLLM's async scheduling and whole-sequence
admission (``scheduler_reserve_full_isl``) as ``meta.json`` says it ran (both on for all
four: vLLM 0.19.0). Each variant changes one thing and is not a
calibration: ``no-skew`` drops the decode skew correction; ``overhead-1ms`` adds 1 ms
per iteration; ``kv-0.88`` / ``kv-0.92`` change ``gpu_memory_utilization``;
``no-async`` turns the engine's ``async_scheduling`` knob off; ``cudagraph`` pads the
token-parallel operators to vLLM 0.19's default CUDA-graph capture sizes
(``llmserve validate --cudagraph-padding``); ``link-collectives`` (the
TP2 run only: the others have no collectives) takes the tensor-parallel all-reduce from
the cluster config's link (16 GB/s, 20 us per ring step) instead of aiconfigurator's
measured vLLM 0.19.0 table (``llmserve validate --collectives link``); ``model-kv``
(the RTX 4090 run only: the one whose ``meta.json`` records vLLM's ``num_gpu_blocks``,
which the main table uses) sizes the KV cache with the memory model instead
(``llmserve validate --set num_gpu_blocks_override=null``); ``no-full-isl`` (the RTX
4090 run only: the others never fill their KV caches, so the admission check never
bites) admits a request when its first chunk fits, as before the engine had the check
(``llmserve validate --set scheduler_reserve_full_isl=false``).
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
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.simulation import Simulation

ROOT = Path(__file__).resolve().parents[2].parent / "shared/reference/llmservingsim/current"
RUNS = {
    "RTX PRO 6000, Llama-3.1-8B": "bench/RTXPRO6000/Llama-3.1-8B",
    "RTX 4090, Llama-3.1-8B": "bench/RTX4090/Llama-3.1-8B",
    "RTX PRO 6000, Qwen3-32B TP2": "bench/RTXPRO6000/Qwen3-32B",
    "RTX PRO 6000, Qwen3-30B-A3B DP2+EP (approx.)": "bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507",
}


def _tables(inst: Instance, **changes: Any) -> None:
    latency: Any = inst.latency
    latency.tables = dataclasses.replace(latency.tables, **changes)
    latency._decode_cache.clear()


@dataclasses.dataclass(frozen=True)
class Variant:
    """One sensitivity run: engine overrides, a hook on the built simulation, where the
    collectives come from, the runs it applies to (``None``: the first three), and
    whether vLLM's CUDA-graph padding is modelled."""

    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    hook: Callable[[Simulation], None] | None = None
    collectives: str = "measured"
    runs: tuple[str, ...] | None = None
    cudagraph_padding: bool = False


VARIANTS: dict[str, Variant] = {
    "no-skew": Variant(hook=lambda sim: [_tables(i, skew=None) for i in sim.instances] and None),
    "overhead-1ms": Variant(
        hook=lambda sim: [_tables(i, overhead_us=1000.0) for i in sim.instances] and None
    ),
    "kv-0.88": Variant({"gpu_memory_utilization": 0.88}),
    "kv-0.92": Variant({"gpu_memory_utilization": 0.92}),
    "no-async": Variant({"async_scheduling": False}),
    "cudagraph": Variant(cudagraph_padding=True),
    "link-collectives": Variant(collectives="link", runs=("RTX PRO 6000, Qwen3-32B TP2",)),
    "model-kv": Variant({"num_gpu_blocks_override": None}, runs=("RTX 4090, Llama-3.1-8B",)),
    "no-full-isl": Variant({"scheduler_reserve_full_isl": False}, runs=("RTX 4090, Llama-3.1-8B",)),
}


def run(path: Path, variant: Variant) -> tuple[ValidationReport, float]:
    bench = load_bench_run(path)
    overrides = dict(variant.overrides)
    setup = bench_setup(
        bench,
        find_profiles_root(path),
        allow_unsupported=True,
        overrides=overrides or None,
        collectives=variant.collectives,
        cudagraph_padding=variant.cudagraph_padding,
    )
    sim = build_simulation(setup.scenario, workload=setup.workload)
    if variant.hook is not None:
        variant.hook(sim)
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
        rep, wall = run(ROOT / rel, Variant())
        print(_row(name, rep, wall))
    if args.variants:
        print()
        print(head.replace("| run |", "| run, variant |"))
        for name, rel in list(RUNS.items())[:3]:
            for label, variant in VARIANTS.items():
                if variant.runs is not None and name not in variant.runs:
                    continue
                rep, wall = run(ROOT / rel, variant)
                print(_row(f"{name}, {label}", rep, wall))


if __name__ == "__main__":
    main()
