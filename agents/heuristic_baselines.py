"""Score the built-in routing heuristics on one scenario, on the same seeded episodes.

Every heuristic sees the same arrivals (episode ``k`` uses seed ``seed + k``), so the
table compares policies, not workload samples. This is ``llmserve eval`` with every
heuristic preselected; the logic is :func:`llmserve_env.env.training.evaluate_policies`.

Examples::

    python agents/heuristic_baselines.py
    python agents/heuristic_baselines.py --env-id LLMServe/Cluster-Small-v0 --episodes 3
    python agents/heuristic_baselines.py --scenario cluster-4x-h100 --set env.horizon_s=30 \\
        --policy least_loaded --policy join_shortest_queue --json
"""

from __future__ import annotations

import argparse
import sys

from _args import add_evaluation_options, env_parser
from rich.console import Console

from llmserve_env.cli.agent_cmd import results_table
from llmserve_env.config.errors import LLMServeError
from llmserve_env.env.heuristics import HEURISTICS
from llmserve_env.env.registration import ENV_IDS
from llmserve_env.env.training import evaluate_policies
from llmserve_env.output import to_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = env_parser(__doc__, ENV_IDS, "LLMServe/Routing-Small-v0")
    parser.add_argument(
        "--policy",
        dest="policies",
        action="append",
        choices=list(HEURISTICS),
        help="heuristic to score, repeatable (default: all of them)",
    )
    add_evaluation_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    policies = args.policies or list(HEURISTICS)
    try:
        results = evaluate_policies(
            args.env_id, policies, args.scenario, args.overrides, args.episodes, args.seed
        )
    except LLMServeError as exc:  # a bad scenario or override: its message, no traceback
        raise SystemExit(f"error: {exc}") from exc
    if args.json:
        print(to_json({"env_id": args.env_id, "policies": results}, indent=None))
        return
    title = f"{args.env_id}: {args.episodes} episode(s) from seed {args.seed}"
    Console(width=None if sys.stdout.isatty() else 160).print(results_table(results, title))


if __name__ == "__main__":
    main()
