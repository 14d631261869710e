"""Simulator speed on the benchmark scenario (one core).

Runs ``scenarios/benchmark/h100-llama3.1-8b-10k.yaml`` (10,000 requests) a few times
in this process and prints wall time, simulated requests per wall-second and engine
iterations per wall-second. Usage::

    python benchmarks/bench_sim.py [--repeat 5] [--scenario NAME] [--set KEY=VALUE] [--json]

Whole-process timings (start-up included) are taken from outside with a timer such as
``/usr/bin/time -v llmserve run benchmark/h100-llama3.1-8b-10k --no-output``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from llmserve_env.build import build_simulation, load_scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="benchmark/h100-llama3.1-8b-10k")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scenario override, e.g. power.enabled=false (repeatable)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    scenario = load_scenario(args.scenario, args.overrides)
    rows = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        sim = build_simulation(scenario)
        built = time.perf_counter()
        summary = sim.run()
        done = time.perf_counter()
        rows.append(
            {
                "build_s": built - start,
                "run_s": done - built,
                "requests": summary["num_arrived"],
                "iterations": summary["num_iterations"],
            }
        )
    run_s = [r["run_s"] for r in rows]
    median = statistics.median(run_s)
    result = {
        "scenario": args.scenario,
        "overrides": args.overrides,
        "repeats": args.repeat,
        "run_s_min": min(run_s),
        "run_s_median": median,
        "run_s_max": max(run_s),
        "requests": rows[0]["requests"],
        "iterations": rows[0]["iterations"],
        "requests_per_wall_s_median": rows[0]["requests"] / median,
        "iterations_per_wall_s_median": rows[0]["iterations"] / median,
        "build_s_median": statistics.median(r["build_s"] for r in rows),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>30}: {value:,.3f}" if isinstance(value, float) else f"{key:>30}: {value}")


if __name__ == "__main__":
    main()
