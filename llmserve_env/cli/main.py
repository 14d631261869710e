"""The ``llmserve`` command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, cast

import click
import yaml
from rich.console import Console
from rich.table import Table

from llmserve_env.config.errors import LLMServeError

_err = Console(stderr=True)


class _StdoutConsole:
    """A console on the current stdout: the terminal's width, or wide when piped."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        Console(width=None if sys.stdout.isatty() else 160).print(*objects, **kwargs)


_out = _StdoutConsole()


def _fail(exc: Exception) -> None:
    _err.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns the package's own errors into a clear message and exit status 2."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LLMServeError as exc:
            _fail(exc)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llmserve-env")
def main() -> None:
    """llmserve-env: a fast LLM-serving cluster simulator and Gymnasium environment."""


# --------------------------------------------------------------------------- run


def _summary_table(summary: dict[str, Any], title: str) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests arrived / finished", f"{summary['num_arrived']} / {summary['num_finished']}"),
        ("rejected / unfinished", f"{summary['num_rejected']} / {summary['num_unfinished']}"),
        ("makespan", f"{summary['makespan_s']:.2f} s"),
        ("output throughput", f"{summary['throughput_tok_s']:.1f} tok/s"),
        ("request throughput", f"{summary['request_throughput_rps']:.2f} req/s"),
    ]
    for name in ("ttft", "tpot", "itl", "e2e", "queueing"):
        mean, p99 = summary.get(f"mean_{name}_ms"), summary.get(f"p99_{name}_ms")
        if mean is not None:
            rows.append((f"{name.upper()} mean / p99", f"{mean:.1f} / {p99:.1f} ms"))
    if summary.get("slo_attainment") is not None and (
        summary.get("slo_ttft_ms") or summary.get("slo_tpot_ms") or summary.get("slo_e2e_ms")
    ):
        rows.append(("SLO attainment", f"{100 * summary['slo_attainment']:.1f} %"))
        rows.append(("goodput", f"{summary['goodput_rps']:.2f} req/s"))
    rows.append(("prefix hit rate", f"{100 * summary['prefix_hit_rate']:.1f} %"))
    rows.append(("preemptions", str(summary["num_preemptions"])))
    if summary.get("energy_j") is not None:
        rows.append(("energy", f"{summary['energy_j'] / 1e3:.1f} kJ"))
    speed = summary.get("sim_speed_requests_per_s")
    rows.append(
        (
            "wall time",
            f"{summary['wall_time_s']:.2f} s" + (f" ({speed:,.0f} req/s)" if speed else ""),
        )
    )
    for source in sorted(set((summary.get("latency_models") or {}).values())):
        rows.append(("latency model", source))
    for name, value in rows:
        table.add_row(name, value)
    return table


@main.command()
@click.argument("scenario")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a scenario key (dotted path), repeatable.",
)
@click.option("--seed", type=int, default=None, help="Replace the scenario's seed.")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: runs/<scenario name>).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the summary as one JSON object on stdout."
)
@click.option("--no-output", is_flag=True, help="Write no files.")
def run(
    scenario: str,
    overrides: tuple[str, ...],
    seed: int | None,
    output: Path | None,
    as_json: bool,
    no_output: bool,
) -> None:
    """Run SCENARIO (a shipped name or a YAML path) to completion."""
    from llmserve_env.build import build_simulation, load_scenario
    from llmserve_env.output import to_json, write_outputs
    from llmserve_env.perf.factory import latency_source

    cfg = load_scenario(scenario, overrides, seed=seed)
    start = time.perf_counter()
    sim = build_simulation(cfg)
    build_s = time.perf_counter() - start
    for note in cast("list[str]", sim.workload.meta.get("notes", [])):
        _err.print(f"note: {note}", highlight=False, soft_wrap=True)
    show_progress = _err.is_terminal and not as_json
    if show_progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} requests"),
            TextColumn("t={task.fields[sim_t]:.0f}s"),
            TimeElapsedColumn(),
            console=_err,
            transient=True,
        ) as bar:
            task = bar.add_task(cfg.name, total=len(sim.workload), sim_t=0.0)

            def progress(now: float, ended: int, total: int) -> None:
                bar.update(task, completed=ended, sim_t=now)

            summary = sim.run(progress=progress, chunk_s=10.0)
    else:
        summary = sim.run()
    summary = {"scenario": cfg.name, "seed": cfg.seed, **summary, "build_time_s": build_s}
    summary["latency_models"] = {inst.name: latency_source(inst.latency) for inst in sim.instances}
    if not no_output:
        directory = output or Path("runs") / cfg.name.replace("/", "_")
        tables = {}
        if cfg.output.per_request:
            tables["requests"] = sim.metrics.request_table()
        if cfg.output.timeseries:
            tables["timeseries"] = sim.metrics.timeseries_table()
        scenario_text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        write_outputs(directory, summary, tables, {"scenario.yaml": scenario_text})
        if not as_json:
            _err.print(f"outputs written to {directory}/", highlight=False)
    if as_json:
        click.echo(to_json(summary, indent=None))
    else:
        _out.print(_summary_table(summary, f"{cfg.name} (seed {cfg.seed})"))


# --------------------------------------------------------------------------- catalogs


@main.command()
def scenarios() -> None:
    """List the shipped scenarios."""
    from llmserve_env.build import scenario_description, scenario_names, scenario_path

    table = Table(show_header=True, header_style="bold")
    table.add_column("scenario")
    table.add_column("description")
    for name in scenario_names():
        table.add_row(name, scenario_description(scenario_path(name)))
    _out.print(table)


@main.command()
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write to a file instead of stdout.",
)
def schema(output: Path | None) -> None:
    """Print the JSON Schema of scenario files."""
    from llmserve_env.config.loader import scenario_json_schema

    text = json.dumps(scenario_json_schema(), indent=2)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
    else:
        click.echo(text)


@main.command()
def devices() -> None:
    """List the accelerator catalog."""
    from llmserve_env.perf.hardware import device_catalog

    table = Table(show_header=True, header_style="bold")
    for column in (
        "device",
        "BF16 TFLOP/s",
        "FP8 TFLOP/s",
        "memory GiB",
        "GB/s",
        "link GB/s",
        "TDP W",
        "idle W",
        "PIM TFLOP/s @ GB/s",
    ):
        table.add_column(column, justify="right" if column != "device" else "left")
    for spec in device_catalog().values():
        pim = f"{spec.pim_tflops:g} @ {spec.pim_bw_gbps:g}" if spec.has_pim else "-"
        table.add_row(
            spec.name,
            f"{spec.bf16_tflops:g}",
            "-" if spec.fp8_tflops is None else f"{spec.fp8_tflops:g}",
            f"{spec.mem_gib:g}",
            f"{spec.mem_bw_gbps:g}",
            f"{spec.scaleup_bw_gbps:g}",
            f"{spec.tdp_w:g}",
            f"{spec.idle_w:g}",
            pim,
        )
    _out.print(table)


@main.command()
def models() -> None:
    """List the model catalog."""
    from llmserve_env.perf.model_arch import load_model_arch, model_catalog

    table = Table(show_header=True, header_style="bold")
    for column in ("model", "params (B)", "layers", "hidden", "heads/kv", "experts", "context"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name in model_catalog():
        arch = load_model_arch(name)
        table.add_row(
            name,
            f"{arch.num_params / 1e9:.2f}",
            str(arch.num_layers),
            str(arch.hidden_size),
            f"{arch.num_heads}/{arch.num_kv_heads}",
            f"{arch.num_experts} (top {arch.experts_per_token})" if arch.is_moe else "-",
            str(arch.max_position_embeddings),
        )
    _out.print(table)


@main.command()
@click.argument("scenario")
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key."
)
def describe(scenario: str, overrides: tuple[str, ...]) -> None:
    """Validate SCENARIO and show its instances (KV capacity, resolved engine knobs)."""
    from llmserve_env.build import describe_instances, load_scenario

    cfg = load_scenario(scenario, overrides)
    rows = describe_instances(cfg)
    table = Table(title=f"{cfg.name}: {cfg.description}", show_header=True, header_style="bold")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()))
    _out.print(table)


from llmserve_env.cli.interop_cmd import import_group, validate  # noqa: E402
from llmserve_env.cli.profiles_cmd import profiles  # noqa: E402

main.add_command(profiles)
main.add_command(import_group)
main.add_command(validate)

from llmserve_env.cli.profile_cmd import profile  # noqa: E402

main.add_command(profile)

from llmserve_env.cli.agent_cmd import eval_cmd, train_cmd, whatif_cmd  # noqa: E402

main.add_command(eval_cmd)
main.add_command(train_cmd)
main.add_command(whatif_cmd)

if __name__ == "__main__":  # pragma: no cover
    main()
