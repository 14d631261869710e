"""Train MaskablePPO (or PPO) on LLMServe/Routing-Small-v0 and compare it with heuristics.

The agent places each arriving request on one of four instances. Training goes through
:func:`llmserve_env.env.training.train` (observations normalised by ``VecNormalize``,
statistics saved beside the model); the comparison through
:func:`~llmserve_env.env.training.evaluate_policies`, which loads the saved model and
scores it on the same seeded episodes as the heuristics.

The default budget is a smoke run (seconds); a few thousand steps are far too few to
beat the heuristics. For a real run, try ``--timesteps 200000 --n-envs 2``.

Examples::

    python agents/train_ppo_routing.py
    python agents/train_ppo_routing.py --algo ppo --timesteps 20000 --out runs/agents/ppo
    python agents/train_ppo_routing.py --set env.horizon_s=20 --episodes 3
"""

from __future__ import annotations

import argparse
import sys

from _args import env_parser
from rich.console import Console

from llmserve_env.cli.agent_cmd import results_table
from llmserve_env.config.errors import LLMServeError
from llmserve_env.env.heuristics import HEURISTICS
from llmserve_env.env.registration import ENV_IDS
from llmserve_env.env.training import ALGOS, evaluate_policies, train
from llmserve_env.output import to_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = env_parser(__doc__, ENV_IDS, "LLMServe/Routing-Small-v0")
    parser.add_argument("--algo", default="maskable_ppo", choices=ALGOS)
    parser.add_argument("--timesteps", type=int, default=2048, help="training steps (default 2048)")
    parser.add_argument("--n-envs", type=int, default=1, help="parallel training environments")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", default="runs/agents/train_ppo_routing", help="folder for the saved model"
    )
    parser.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        choices=list(HEURISTICS),
        help="heuristic to compare with, repeatable "
        "(default: round_robin, least_loaded, join_shortest_queue)",
    )
    parser.add_argument("--episodes", type=int, default=1, help="evaluation episodes per policy")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch  # here, so that --help does not wait for it

    # Small MLPs gain nothing from intra-op threads; leave the cores to the simulator.
    torch.set_num_threads(1)
    baselines = args.baselines or ["round_robin", "least_loaded", "join_shortest_queue"]
    try:
        model = train(
            args.algo,
            args.env_id,
            args.scenario,
            args.overrides,
            timesteps=args.timesteps,
            n_envs=args.n_envs,
            seed=args.seed,
            out=args.out,
        )
        print(f"saved {model}", file=sys.stderr)
        # A saved model is a policy spec like a heuristic name: its folder's path.
        results = evaluate_policies(
            args.env_id,
            [str(model.parent), *baselines],
            args.scenario,
            args.overrides,
            n_episodes=args.episodes,
            seed=args.seed + 1000,  # episodes the agent did not train on
        )
    except LLMServeError as exc:
        raise SystemExit(f"error: {exc}") from exc
    # Label the model by its algorithm rather than its path.
    results = {(args.algo if k == str(model.parent) else k): v for k, v in results.items()}
    if args.json:
        print(
            to_json({"env_id": args.env_id, "model": str(model), "policies": results}, indent=None)
        )
        return
    title = f"{args.algo} after {args.timesteps} steps vs heuristics on {args.env_id}"
    Console(width=None if sys.stdout.isatty() else 160).print(results_table(results, title))


if __name__ == "__main__":
    main()
