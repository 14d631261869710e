"""Write your own routing policy and score it like any built-in heuristic or trained model.

A policy is anything with stable-baselines3's ``predict(observation, ...) -> (action,
state)``; :func:`llmserve_env.env.evaluation.evaluate` scores it over seeded episodes.
Observations are a ``Dict`` of named features (``env.unwrapped.features`` lists their
units and meaning), so a policy reads ``obs["num_waiting"]``, never a magic index. Code
that sees the flattened vector (SB3's ``FlattenObservation``, a hand-written network)
finds each feature at ``env.unwrapped.observation_layout[name]``.

The example policy, ``LeastWork``, routes a request to the instance with the fewest
outstanding requests, counting a nearly full KV cache as extra load, among the
instances the action mask allows.

Examples::

    python agents/custom_heuristic.py
    python agents/custom_heuristic.py --kv-weight 32 --episodes 3 --set env.horizon_s=30
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from _args import add_evaluation_options, env_parser
from rich.console import Console
from rich.table import Table

import llmserve_env  # noqa: F401 - registers the LLMServe/* ids
from llmserve_env.cli.agent_cmd import results_table
from llmserve_env.config.errors import LLMServeError
from llmserve_env.env.evaluation import evaluate
from llmserve_env.env.heuristics import HEURISTICS, make_heuristic
from llmserve_env.output import to_json

ROUTING_IDS = ("LLMServe/Routing-Small-v0", "LLMServe/Routing-v0")


class LeastWork:
    """Fewest waiting + running requests, plus ``kv_weight`` per unit of KV usage.

    Args:
        env: The routing environment it acts in (its routing head must be the only
            head the agent drives: one action dimension, the instance index).
        kv_weight: Requests' worth of load a full KV cache counts for.
    """

    def __init__(self, env: gym.Env[Any, Any], kv_weight: float = 16.0) -> None:
        base: Any = env.unwrapped
        if base.mode != "routing" or base.action_space.shape != (1,):
            raise ValueError(
                "LeastWork drives the routing head alone; subclass "
                "llmserve_env.env.heuristics.HeuristicPolicy and override route() "
                "to also fill the batching or power heads"
            )
        self.kv_weight = kv_weight
        self.num_rows = base.max_instances

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """SB3's protocol. ``evaluate`` passes ``action_masks`` because it is declared."""
        load = (
            observation["num_waiting"]
            + observation["num_running"]
            + self.kv_weight * observation["kv_usage_frac"]
        )
        legal = observation["instance_valid"] > 0
        if action_masks is not None:
            # The routing head's mask: one entry per instance row (and one for
            # "reject" when the scenario allows it, never chosen here).
            legal &= action_masks[: self.num_rows]
        return np.array([int(np.argmin(np.where(legal, load, np.inf)))]), state


def layout_table(env: gym.Env[Any, Any]) -> Table:
    """The observation's features in flattened order: indices, unit and meaning."""
    base: Any = env.unwrapped
    table = Table(title=f"observation layout of {env.spec.id if env.spec else 'the env'}")
    for column in ("feature", "flat indices", "unit", "meaning"):
        table.add_column(column)
    layout = base.observation_layout
    for feature in sorted(base.features, key=lambda f: layout[f.name].start):
        part = layout[feature.name]
        table.add_row(feature.name, f"{part.start}:{part.stop}", feature.unit, feature.description)
    return table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = env_parser(__doc__, ROUTING_IDS, ROUTING_IDS[0])
    parser.add_argument("--kv-weight", type=float, default=16.0, help="load of a full KV cache")
    parser.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        choices=list(HEURISTICS),
        help="heuristic to compare with, repeatable (default: round_robin, least_loaded)",
    )
    add_evaluation_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    kwargs: dict[str, Any] = {"overrides": args.overrides}
    if args.scenario is not None:
        kwargs["scenario"] = args.scenario
    try:
        env = gym.make(args.env_id, **kwargs)
    except LLMServeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    policies: dict[str, Any] = {"least_work (custom)": LeastWork(env, kv_weight=args.kv_weight)}
    for name in args.baselines or ["round_robin", "least_loaded"]:
        policies[name] = make_heuristic(name, env)
    # One evaluation path: the same seeded episodes for every policy.
    results = {
        name: evaluate(env, policy, n_episodes=args.episodes, seed=args.seed)
        for name, policy in policies.items()
    }
    if args.json:
        print(to_json({"env_id": args.env_id, "policies": results}, indent=None))
        return
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(layout_table(env))
    console.print(results_table(results, f"{args.env_id}: a custom policy vs heuristics"))


if __name__ == "__main__":
    main()
