"""Fork an episode mid-way and compare policies from the same state.

The episode runs to ``--at`` simulated seconds under a warm-up heuristic; then each
policy continues from a copy of that exact state (``env.unwrapped.fork()``, about a
millisecond) for ``--duration`` seconds. The branches replay the same future arrivals,
so the differences from the first policy (the baseline) are paired: they come from the
decisions, not from workload noise. The logic is
:func:`llmserve_env.env.training.what_if_at` (``llmserve whatif`` on the command line).

A policy is a heuristic name or the folder of a model saved by ``llmserve train`` or
``agents/train_ppo_routing.py``.

Examples::

    python agents/what_if.py
    python agents/what_if.py --at 30 --duration 10 --policy round_robin --policy least_kv_usage
    python agents/what_if.py --policy round_robin --policy runs/agents/train_ppo_routing
"""

from __future__ import annotations

import argparse
import sys

from _args import env_parser
from rich.console import Console

from llmserve_env.cli.agent_cmd import whatif_table
from llmserve_env.config.errors import LLMServeError
from llmserve_env.env.heuristics import HEURISTICS
from llmserve_env.env.registration import ENV_IDS
from llmserve_env.env.training import what_if_at
from llmserve_env.output import to_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = env_parser(__doc__, ENV_IDS, "LLMServe/Routing-Small-v0")
    parser.add_argument("--at", type=float, default=20.0, help="fork time, simulated s")
    parser.add_argument("--duration", type=float, default=20.0, help="simulated s each branch runs")
    parser.add_argument(
        "--policy",
        dest="policies",
        action="append",
        metavar="NAME_OR_MODEL",
        help=f"a heuristic ({', '.join(HEURISTICS)}) or a saved model's folder, repeatable; "
        "the first is the baseline (default: round_robin, least_loaded, join_shortest_queue)",
    )
    parser.add_argument("--warmup", default=None, help="heuristic that runs the episode to --at")
    parser.add_argument("--seed", type=int, default=0, help="the episode's seed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    policies = args.policies or ["round_robin", "least_loaded", "join_shortest_queue"]
    try:
        result = what_if_at(
            args.env_id,
            policies,
            args.at,
            args.duration,
            args.scenario,
            args.overrides,
            args.seed,
            args.warmup,
        )
    except LLMServeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if args.json:
        payload = {
            "env_id": args.env_id,
            "at_s": args.at,
            "duration_s": args.duration,
            "baseline": result.baseline,
            "results": result.results,
            "differences": result.differences,
        }
        print(to_json(payload, indent=None))
        return
    title = f"{args.env_id}: fork at {args.at:g} s, {args.duration:g} s per branch"
    table = whatif_table(result.results, result.differences, result.baseline, title)
    Console(width=None if sys.stdout.isatty() else 160).print(table)


if __name__ == "__main__":
    main()
