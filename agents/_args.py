"""Command-line options the agent scripts share (environment id, scenario, overrides)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def env_parser(doc: str | None, env_ids: Sequence[str], default_id: str) -> argparse.ArgumentParser:
    """A parser with ``--env-id``, ``--scenario`` and repeatable ``--set KEY=VALUE``
    (into ``overrides``), described by the script's docstring."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default=default_id, choices=list(env_ids))
    parser.add_argument("--scenario", default=None, help="scenario name or YAML path")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="scenario override (dotted key), repeatable, e.g. env.horizon_s=30",
    )
    return parser


def add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    """``--episodes``, ``--seed`` (of the first episode) and ``--json``."""
    parser.add_argument("--episodes", type=int, default=1, help="seeded episodes per policy")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
