"""Latency model vs real vLLM: the LLMServingSim bench runs, plus sensitivity variants.

Prints the markdown tables of VALIDATION.md ("Latency model vs real vLLM"): the errors,
then the lag of each run's cumulative output (``output_lag``). Needs
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
(``llmserve validate --set scheduler_reserve_full_isl=false``); ``llmss-skew-key``
looks the skew correction of a batch with a prefill up as LLMServingSim does, by its
exact prefill chunk, so that every chunk between the profiled sizes gets
``alpha_default`` (not adopted: the profile's own skew measurements favour the bucket
lookup, VALIDATION.md's finding on LLMServingSim's composition); ``decode-only-skew``
(all four runs) applies the skew correction to decode-only batches only (not adopted:
it fixes the Qwen3-32B TP2 run and moves the other two RTX PRO 6000 runs away from
vLLM, VALIDATION.md's finding on the output lag).

LLMServingSim's own simulation of the same runs is scored next to ours when its logs are
given (they are not shipped: download ``bench/examples/<HW>/<model>/outputs/sim.log``
from the casys-kaist/LLMServingSim repository)::

    python benchmarks/validation/llmservingsim_bench.py \\
        --llmservingsim-log RTXPRO6000/Llama-3.1-8B=sim.log   # repeatable, or
    python benchmarks/validation/llmservingsim_bench.py --llmservingsim-examples DIR

``RUN`` is the run's folder below ``bench/``; ``DIR`` is LLMServingSim's
``bench/examples`` (``DIR/<run>/outputs/sim.log`` for each run found). The extra table
gives the per-second output-throughput MAPE / steady MAPE / WAPE of both simulators
with ``llmserve validate``'s definitions and bins
(:func:`~llmserve_env.interop.llmservingsim_log.compare_llmservingsim_log`), the same
with either series moved 1 s earlier or later, and the mean absolute error of the
running and waiting counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from llmserve_env.build import build_simulation
from llmserve_env.config.errors import DataFileError
from llmserve_env.interop.bench import (
    LAG_FRACTIONS,
    BenchRun,
    ValidationReport,
    bench_setup,
    compare,
    find_profiles_root,
    load_bench_run,
)
from llmserve_env.interop.llmservingsim_log import (
    LLMServingSimLog,
    compare_llmservingsim_log,
    load_llmservingsim_log,
)
from llmserve_env.perf.tables import BucketTable
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.simulation import Simulation

ROOT = Path(__file__).resolve().parents[2].parent / "shared/reference/llmservingsim/current"
RUNS = {
    "RTX PRO 6000, Llama-3.1-8B": "bench/RTXPRO6000/Llama-3.1-8B",
    "RTX 4090, Llama-3.1-8B": "bench/RTX4090/Llama-3.1-8B",
    "RTX PRO 6000, Qwen3-32B TP2": "bench/RTXPRO6000/Qwen3-32B",
    "RTX PRO 6000, Qwen3-30B-A3B DP2+EP": "bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507",
}
APPROXIMATED = {
    "RTX PRO 6000, Qwen3-30B-A3B, ranks as independent instances with every expert (approx.)": (
        "bench/RTXPRO6000/Qwen3-30B-A3B-Instruct-2507"
    ),
}
"""Runs also simulated with ``validate --approximate-ep``, for comparison."""


def _tables(inst: Instance, **changes: Any) -> None:
    latency: Any = inst.latency
    latency.tables = dataclasses.replace(latency.tables, **changes)
    latency._decode_cache.clear()


def _all_tables(sim: Simulation, **changes: Any) -> None:
    for inst in sim.instances:
        _tables(inst, **changes)


class _ProfiledChunkSkew:
    """LLMServingSim's skew key: a batch with a prefill gets its bucket's ``alpha`` only
    when its prefill chunk is one of the profiled chunk sizes, else ``alpha_default``
    (it keys the bucket by the exact chunk). Decode-only batches (chunk 0) are
    unchanged."""

    def __init__(self, table: BucketTable) -> None:
        self.table = table
        self.edges = table.edges
        self.default = table.default
        self._chunks = set(table.edges[0].tolist())

    def __call__(self, pc: float, kp: float, nd: float, kd_max: float, rate: float) -> float:
        if pc not in self._chunks:
            return self.default
        return self.table(pc, kp, nd, kd_max, rate)

    def many(self, *points: Any) -> Any:
        return self.table.many(*points)  # decode-only stretches: chunk 0, profiled


class _DecodeOnlySkew:
    """The skew correction on decode-only batches only: a batch with a prefill gets
    ``alpha`` 0 (the mixed batches' correction left out)."""

    def __init__(self, table: BucketTable) -> None:
        self.table = table
        self.edges = table.edges
        self.default = table.default

    def __call__(self, pc: float, kp: float, nd: float, kd_max: float, rate: float) -> float:
        return 0.0 if pc > 0 else self.table(pc, kp, nd, kd_max, rate)

    def many(self, *points: Any) -> Any:
        return self.table.many(*points)  # decode-only stretches


def _wrap_skew(wrapper: Callable[[BucketTable], Any]) -> Callable[[Simulation], None]:
    """A hook that replaces each instance's skew table (if any) by ``wrapper(table)``."""

    def hook(sim: Simulation) -> None:
        for inst in sim.instances:
            latency: Any = inst.latency
            skew = latency.tables.skew
            if skew is not None:
                _tables(inst, skew=wrapper(skew))

    return hook


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
    "no-skew": Variant(hook=lambda sim: _all_tables(sim, skew=None)),
    "overhead-1ms": Variant(hook=lambda sim: _all_tables(sim, overhead_us=1000.0)),
    "kv-0.88": Variant({"gpu_memory_utilization": 0.88}),
    "kv-0.92": Variant({"gpu_memory_utilization": 0.92}),
    "no-async": Variant({"async_scheduling": False}),
    "cudagraph": Variant(cudagraph_padding=True),
    "link-collectives": Variant(collectives="link", runs=("RTX PRO 6000, Qwen3-32B TP2",)),
    "model-kv": Variant({"num_gpu_blocks_override": None}, runs=("RTX 4090, Llama-3.1-8B",)),
    "no-full-isl": Variant({"scheduler_reserve_full_isl": False}, runs=("RTX 4090, Llama-3.1-8B",)),
    "llmss-skew-key": Variant(hook=_wrap_skew(_ProfiledChunkSkew)),
    "decode-only-skew": Variant(hook=_wrap_skew(_DecodeOnlySkew), runs=tuple(RUNS)),
}


SHIFTS_S = (-1.0, 1.0)
"""Shifts of a simulated series (s; positive: later) reported as sensitivity."""


@dataclasses.dataclass
class Outcome:
    """One simulated run: the report, its wall time, and the comparison of our series
    moved by each of :data:`SHIFTS_S`."""

    report: ValidationReport
    wall_s: float
    shifted: dict[float, ValidationReport] = dataclasses.field(default_factory=dict)


def _shifted(bench: BenchRun, shift_s: float) -> BenchRun:
    """The bench run with its ``timeseries.csv`` rows relabelled ``t - shift_s``, so that
    comparing with it moves the simulated series ``shift_s`` later."""
    series = dict(bench.timeseries)
    series["t"] = series["t"] - shift_s
    return dataclasses.replace(bench, timeseries=series)


def run(
    path: Path, variant: Variant, shifts: tuple[float, ...] = (), *, approximate: bool = False
) -> Outcome:
    bench = load_bench_run(path)
    overrides = dict(variant.overrides)
    setup = bench_setup(
        bench,
        find_profiles_root(path),
        allow_unsupported=approximate,
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
    requests, series = sim.metrics.request_table(), sim.metrics.timeseries_table()
    outcome = Outcome(compare(bench, requests, series, setup.notes), wall)
    for shift in shifts:
        outcome.shifted[shift] = compare(_shifted(bench, shift), requests, series, [])
    return outcome


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


LAG_SHARES = [round(100 * f) for f in LAG_FRACTIONS]
LAG_HEAD = (
    "| run | output lag, s (simulation behind +), at "
    + " / ".join(map(str, LAG_SHARES))
    + " % of vLLM's tokens |\n|---|---|"
)


def _lag_row(name: str, rep: ValidationReport) -> str:
    lags = " / ".join(f"{rep.throughput[f'lag_s_{share}']:+.2f}" for share in LAG_SHARES)
    return f"| {name} | {lags} |"


def _scores(tp: dict[str, float]) -> str:
    return f"{tp['mape_pct']:.1f} / {tp['mape_steady_pct']:.1f} / {tp['wape_pct']:.1f}"


def _mae(series: dict[str, list[float]], what: str) -> float:
    real = np.asarray(series[f"{what}_vllm"], dtype=float)
    return float(np.abs(np.asarray(series[f"{what}_sim"], dtype=float) - real).mean())


def _llmservingsim_logs(args: argparse.Namespace) -> dict[str, LLMServingSimLog]:
    """Run folder below ``bench/`` -> LLMServingSim's ``sim.log`` of it, read up front so
    that a bad flag or file stops the script before anything is simulated."""
    known = [str(Path(rel).relative_to("bench")) for rel in RUNS.values()]
    logs: dict[str, Path] = {}
    if args.llmservingsim_examples is not None:
        for key in known:
            path = args.llmservingsim_examples / key / "outputs" / "sim.log"
            if path.is_file():
                logs[key] = path
        if not logs:
            raise SystemExit(
                f"--llmservingsim-examples {args.llmservingsim_examples}: no "
                f"<run>/outputs/sim.log for any of {known}"
            )
    for item in args.llmservingsim_log:
        key, sep, path = item.partition("=")
        key = key.strip("/")
        if not sep or not path:
            raise SystemExit(f"--llmservingsim-log {item!r}: expected RUN=PATH")
        if key not in known:
            raise SystemExit(f"--llmservingsim-log {item!r}: RUN is one of {known}")
        logs[key] = Path(path)
    try:
        return {key: load_llmservingsim_log(path) for key, path in logs.items()}
    except DataFileError as exc:
        raise SystemExit(str(exc)) from exc


def _comparison(outcomes: dict[str, Outcome], logs: dict[str, LLMServingSimLog]) -> None:
    """Print our per-second scores next to LLMServingSim's (from its logs)."""
    print()
    print(
        "| run | simulator | per-s throughput MAPE / steady MAPE / WAPE % "
        "| same, series 1 s earlier | same, series 1 s later | running MAE | waiting MAE |\n"
        "|---|---|---|---|---|---|---|"
    )
    for name, rel in RUNS.items():
        key = str(Path(rel).relative_to("bench"))
        if key not in logs:
            continue
        ours = outcomes[name]
        cells = [
            name,
            "llmserve",
            _scores(ours.report.throughput),
            *(_scores(ours.shifted[shift].throughput) for shift in SHIFTS_S),
            f"{_mae(ours.report.series, 'running'):.1f}",
            f"{_mae(ours.report.series, 'waiting'):.1f}",
        ]
        print("| " + " | ".join(cells) + " |")
        bench = load_bench_run(ROOT / rel)
        log = logs[key]
        theirs = compare_llmservingsim_log(bench, log)
        cells = [
            name,
            f"LLMServingSim ({log.path})",
            _scores(theirs),
            *(_scores(compare_llmservingsim_log(bench, log, shift)) for shift in SHIFTS_S),
            f"{theirs['running_mae']:.1f}",
            f"{theirs['waiting_mae']:.1f}",
        ]
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", action="store_true", help="also run the sensitivity variants")
    parser.add_argument(
        "--llmservingsim-log",
        action="append",
        default=[],
        metavar="RUN=PATH",
        help="LLMServingSim's sim.log of a run (RUN: its folder below bench/, e.g. "
        "RTXPRO6000/Llama-3.1-8B); repeatable",
    )
    parser.add_argument(
        "--llmservingsim-examples",
        type=Path,
        metavar="DIR",
        help="LLMServingSim's bench/examples folder: DIR/<run>/outputs/sim.log per run",
    )
    args = parser.parse_args()
    logs = _llmservingsim_logs(args)
    head = (
        "| run | TTFT err % (mean / p50 / p90 / p99) | TPOT err % | e2e err % "
        "| per-s throughput MAPE / steady MAPE / WAPE % | output tok/s err % | sim wall s |\n"
        "|---|---|---|---|---|---|---|"
    )
    print(head)
    outcomes: dict[str, Outcome] = {}
    for name, rel in RUNS.items():
        outcomes[name] = run(ROOT / rel, Variant(), SHIFTS_S if logs else ())
        print(_row(name, outcomes[name].report, outcomes[name].wall_s))
    for name, rel in APPROXIMATED.items():
        outcome = run(ROOT / rel, Variant(), approximate=True)
        print(_row(name, outcome.report, outcome.wall_s))
    print()
    print(LAG_HEAD)
    for name, outcome in outcomes.items():
        print(_lag_row(name, outcome.report))
    if logs:
        _comparison(outcomes, logs)
    if args.variants:
        print()
        print(head.replace("| run |", "| run, variant |"))
        lag_rows = []
        for name, rel in RUNS.items():
            for label, variant in VARIANTS.items():
                if name not in (variant.runs or list(RUNS)[:3]):
                    continue
                outcome = run(ROOT / rel, variant)
                print(_row(f"{name}, {label}", outcome.report, outcome.wall_s))
                lag_rows.append(_lag_row(f"{name}, {label}", outcome.report))
        print()
        print(LAG_HEAD.replace("| run |", "| run, variant |"))
        print("\n".join(lag_rows))


if __name__ == "__main__":
    main()
