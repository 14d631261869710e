"""``llmserve eval``, ``llmserve train`` and ``llmserve whatif``: agents on the environment.

The logic lives in :mod:`llmserve_env.env.training`; these commands parse options and
print tables. Errors from there (:class:`~llmserve_env.config.errors.LLMServeError`) become
exit status 2 in the ``llmserve`` group.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from llmserve_env.env.heuristics import HEURISTICS
from llmserve_env.env.training import ALGOS

F = TypeVar("F", bound=Callable[..., Any])

_err = Console(stderr=True)

# (metric key, column title, scale, format) for result tables.
METRIC_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("return", "return", 1.0, "{:.2f}"),
    ("slo_attainment", "SLO attain. %", 100.0, "{:.1f}"),
    ("goodput_rps", "goodput req/s", 1.0, "{:.2f}"),
    ("mean_ttft_ms", "TTFT mean ms", 1.0, "{:.1f}"),
    ("p99_ttft_ms", "TTFT p99 ms", 1.0, "{:.1f}"),
    ("mean_tpot_ms", "TPOT mean ms", 1.0, "{:.2f}"),
    ("p99_tpot_ms", "TPOT p99 ms", 1.0, "{:.2f}"),
    ("energy_j", "energy kJ", 1e-3, "{:.1f}"),
)

# What-if rows: figures of the branch alone (after the fork), see ``what_if``.
BRANCH_COLUMNS: tuple[tuple[str, str, float, str], ...] = (
    ("return", "return", 1.0, "{:.2f}"),
    ("branch_num_arrived", "arrived", 1.0, "{:.0f}"),
    ("branch_num_ended", "ended", 1.0, "{:.0f}"),
    ("branch_slo_attainment", "SLO attain. % (ended)", 100.0, "{:.1f}"),
    ("branch_throughput_tok_s", "output tok/s", 1.0, "{:.0f}"),
    ("branch_mean_ttft_ms", "TTFT mean ms", 1.0, "{:.1f}"),
    ("branch_p99_ttft_ms", "TTFT p99 ms", 1.0, "{:.1f}"),
    ("branch_mean_tpot_ms", "TPOT mean ms", 1.0, "{:.2f}"),
    ("branch_p99_tpot_ms", "TPOT p99 ms", 1.0, "{:.2f}"),
    ("branch_mean_e2e_ms", "e2e mean ms", 1.0, "{:.1f}"),
    ("branch_energy_j", "energy kJ", 1e-3, "{:.2f}"),
)


def _print(renderable: Any) -> None:
    """Print on the current stdout: the terminal's width, or wide when piped."""
    Console(width=None if sys.stdout.isatty() else 160).print(renderable)


def _fmt(metrics: Mapping[str, float], key: str, scale: float, pattern: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else pattern.format(value * scale)


def results_table(results: Mapping[str, Mapping[str, Any]], title: str) -> Table:
    """One row per policy: means over episodes (``±`` the std of the return)."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("policy", no_wrap=True)
    for _, name, _, _ in METRIC_COLUMNS:
        table.add_column(name, justify="right")
    for label, result in results.items():
        mean, std = result["mean"], result["std"]
        cells = [_fmt(mean, key, scale, pattern) for key, _, scale, pattern in METRIC_COLUMNS]
        if len(result["episodes"]) > 1:
            cells[0] += f" ± {std['return']:.2f}"
        table.add_row(label, *cells)
    return table


def whatif_table(
    results: Mapping[str, Mapping[str, float]],
    differences: Mapping[str, Mapping[str, float]],
    baseline: str,
    title: str,
) -> Table:
    """One row per branch figure: the baseline's value, each other policy's value and
    its paired difference from the baseline."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column(f"{baseline} (baseline)", justify="right")
    others = [name for name in results if name != baseline]
    for name in others:
        table.add_column(name, justify="right")
        table.add_column("Δ", justify="right")
    for key, title_, scale, pattern in BRANCH_COLUMNS:
        row = [title_, _fmt(results[baseline], key, scale, pattern)]
        for name in others:
            row.append(_fmt(results[name], key, scale, pattern))
            delta = differences[name].get(key)
            row.append("-" if delta is None else pattern.replace("{:", "{:+").format(delta * scale))
        table.add_row(*row)
    return table


def env_options(func: F) -> F:
    """``--scenario`` and ``--set``, shared by the commands."""
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a scenario key (dotted path), repeatable; passed as the env's overrides.",
    )(func)
    return click.option(
        "--scenario",
        default=None,
        help="Scenario name or YAML path (default: the environment id's own).",
    )(func)


_policy_option = click.option(
    "--policy",
    "policies",
    multiple=True,
    required=True,
    metavar="NAME_OR_MODEL",
    help=f"A heuristic ({', '.join(HEURISTICS)}) or a model saved by `llmserve train` "
    "(its model.zip or folder); repeatable.",
)


# --------------------------------------------------------------------------- eval


@click.command("eval")
@click.argument("env_id")
@env_options
@_policy_option
@click.option("--episodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the first episode (then +1...)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def eval_cmd(
    env_id: str,
    scenario: str | None,
    overrides: tuple[str, ...],
    policies: tuple[str, ...],
    episodes: int,
    seed: int,
    as_json: bool,
) -> None:
    """Score heuristics and saved models on ENV_ID through one evaluation path.

    Every policy sees the same seeded episodes (the same arrivals).
    """
    from llmserve_env.env.training import evaluate_policies
    from llmserve_env.output import to_json

    results = evaluate_policies(env_id, policies, scenario, overrides, episodes, seed)
    if as_json:
        payload = {
            "env_id": env_id,
            "scenario": scenario,
            "overrides": list(overrides),
            "episodes": episodes,
            "seed": seed,
            "policies": results,
        }
        click.echo(to_json(payload, indent=None))
    else:
        title = (
            f"{env_id} ({scenario or 'default scenario'}), {episodes} episode(s) from seed {seed}"
        )
        _print(results_table(results, title))


# --------------------------------------------------------------------------- train


@click.command("train")
@click.option("--algo", type=click.Choice(ALGOS), default="ppo", show_default=True)
@click.option("--env-id", default="LLMServe/Routing-Small-v0", show_default=True)
@env_options
@click.option("--timesteps", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option("--n-envs", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: runs/agents/<algo>).",
)
@click.option("--no-normalize", is_flag=True, help="Do not wrap in VecNormalize.")
@click.option("--verbose", "-v", is_flag=True, help="Print SB3's training statistics.")
def train_cmd(
    algo: str,
    env_id: str,
    scenario: str | None,
    overrides: tuple[str, ...],
    timesteps: int,
    n_envs: int,
    seed: int,
    out: Path | None,
    no_normalize: bool,
    verbose: bool,
) -> None:
    """Train an SB3 agent (needs the `rl` extra) and save it for `llmserve eval`."""
    from llmserve_env.env.training import train

    out = out or Path("runs") / "agents" / algo
    model = train(
        algo,
        env_id,
        scenario,
        overrides,
        timesteps,
        n_envs,
        seed,
        out,
        normalize=not no_normalize,
        verbose=int(verbose),
    )
    _err.print(f"saved {model}", highlight=False)
    click.echo(str(model))


# --------------------------------------------------------------------------- whatif


@click.command("whatif")
@click.argument("env_id")
@env_options
@click.option(
    "--at", "at_s", type=click.FloatRange(min=0.0), required=True, help="Fork time (simulated s)."
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Simulated seconds per branch (default: to the episode's end).",
)
@_policy_option
@click.option("--seed", type=int, default=0, show_default=True, help="The episode's seed.")
@click.option(
    "--warmup",
    default=None,
    help="Heuristic that runs the episode to --at (default: the scenario's router policy).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def whatif_cmd(
    env_id: str,
    scenario: str | None,
    overrides: tuple[str, ...],
    at_s: float,
    duration_s: float | None,
    policies: tuple[str, ...],
    seed: int,
    warmup: str | None,
    as_json: bool,
) -> None:
    """Run ENV_ID to --at, fork, and compare policies on the same future arrivals.

    The first --policy is the baseline; the others are shown with paired differences.
    """
    from llmserve_env.env.training import what_if_at
    from llmserve_env.output import to_json

    result = what_if_at(env_id, policies, at_s, duration_s, scenario, overrides, seed, warmup)
    if as_json:
        payload = {
            "env_id": env_id,
            "scenario": scenario,
            "overrides": list(overrides),
            "at_s": at_s,
            "duration_s": duration_s,
            "seed": seed,
            "baseline": result.baseline,
            "results": result.results,
            "differences": result.differences,
        }
        click.echo(to_json(payload, indent=None))
    else:
        span = f"for {duration_s:g} s" if duration_s is not None else "to the episode's end"
        title = f"{env_id}: fork at {at_s:g} s, branches run {span} (figures after the fork)"
        _print(whatif_table(result.results, result.differences, result.baseline, title))
