"""``llmserve import llmservingsim`` and ``llmserve validate``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.table import Table

_err = Console(stderr=True)

_collectives_option = click.option(
    "--collectives",
    type=click.Choice(["measured", "link"]),  # llmservingsim_import.COLLECTIVE_SOURCES
    default="measured",
    show_default=True,
    help="Tensor-parallel collectives: NVIDIA's measured tables (aiconfigurator-core: "
    "vLLM's all-reduce, NCCL) where they cover the device and tp, the config's link "
    "(link_bw, link_latency) as a ring alpha-beta model for the rest; 'link' uses the "
    "link for all (LLMServingSim's model).",
)


@click.group("import")
def import_group() -> None:
    """Import another simulator's setup as a scenario."""


@import_group.command("llmservingsim")
@click.argument("cluster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--dataset",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="LLMServingSim trace (JSON lines).",
)
@click.option(
    "--profiles",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="LLMServingSim profile root (perf/ or perf_models/); converted next to the "
    "scenario. Without it every instance uses perf: auto.",
)
@click.option(
    "--num-reqs", type=click.IntRange(min=1), default=None, help="Use the first N requests."
)
@click.option("--enable-prefix-caching", is_flag=True, help="Turn prefix caching on.")
@click.option(
    "--prefix-storage",
    type=click.Choice(["CPU", "CXL"]),
    default=None,
    help="Second-tier prefix store (not supported: refused).",
)
@click.option("--enable-prefix-sharing", is_flag=True, help="Not supported: refused.")
@_collectives_option
@click.option("--max-num-batched-tokens", type=int, default=None)
@click.option("--max-num-seqs", type=int, default=None)
@click.option("--block-size", type=int, default=None)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Scenario YAML to write.",
)
def import_llmservingsim(
    cluster: Path,
    dataset: Path,
    profiles: Path | None,
    num_reqs: int | None,
    enable_prefix_caching: bool,
    prefix_storage: str | None,
    enable_prefix_sharing: bool,
    collectives: str,
    max_num_batched_tokens: int | None,
    max_num_seqs: int | None,
    block_size: int | None,
    output: Path,
) -> None:
    """Turn an LLMServingSim CLUSTER config and its trace into a scenario file."""
    from llmserve_env.interop.llmservingsim_config import ImportOptions
    from llmserve_env.interop.llmservingsim_import import import_llmservingsim_setup

    options = ImportOptions(
        num_reqs=num_reqs,
        enable_prefix_caching=enable_prefix_caching,
        prefix_storage=prefix_storage,
        enable_prefix_sharing=enable_prefix_sharing,
        max_num_batched_tokens=max_num_batched_tokens,
        max_num_seqs=max_num_seqs,
        block_size=block_size,
    )
    setup = import_llmservingsim_setup(cluster, dataset, output, options, profiles, collectives)
    for warning in setup.warnings:
        _err.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for note in setup.notes:  # also in the scenario's header
        _err.print(f"note: {note}", highlight=False)
    for folder in setup.profile_dirs:
        click.echo(f"wrote {folder}")
    click.echo(f"wrote {setup.scenario_path}")


# --------------------------------------------------------------------------- validate


def _pct(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:+.1f} %"


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.1f}"


def _report_table(report: Any) -> Table:
    table = Table(title=f"vLLM vs llmserve: {report.run}", show_header=True, header_style="bold")
    for column in ("metric", "stat", "vLLM", "sim", "error"):
        table.add_column(column, justify="left" if column in ("metric", "stat") else "right")
    for metric in ("ttft", "tpot", "e2e", "queueing"):
        for stat in ("mean", "p50", "p90", "p99"):
            row = report.latency[metric][stat]
            table.add_row(
                f"{metric.upper()} (ms)" if stat == "mean" else "",
                stat,
                _num(row["vllm"]),
                _num(row["sim"]),
                _pct(row["err_pct"]),
            )
    t = report.totals
    tp = report.throughput
    table.add_row(
        "output throughput (tok/s)",
        "total",
        _num(t["output_throughput_vllm"]),
        _num(t["output_throughput_sim"]),
        _pct(t["output_throughput_err_pct"]),
    )
    table.add_row(
        "makespan (s)",
        "",
        _num(t["makespan_s_vllm"]),
        _num(t["makespan_s_sim"]),
        _pct(t["makespan_err_pct"]),
    )
    table.add_row(
        "output tokens", "", _num(t["output_tokens_vllm"]), _num(t["output_tokens_sim"]), ""
    )

    def share(value: float) -> str:  # a MAPE of no bins (vLLM's series all zero) is "-"
        return f"{value:.1f} %" if math.isfinite(value) else "-"

    table.add_row("per-second output throughput", "MAPE", "", "", share(tp["mape_pct"]))
    table.add_row("", "MAPE, bins >= 10 % of peak", "", "", share(tp["mape_steady_pct"]))
    table.add_row("", "WAPE", "", "", share(tp["wape_pct"]))
    # When the simulation has produced as many output tokens as vLLM had at each share
    # of its total: seconds behind (+) or ahead (-).
    for i, key in enumerate(k for k in tp if k.startswith("lag_s_")):
        value = tp[key]
        table.add_row(
            "" if i else "output lag, sim behind (+)",
            f"at {key.removeprefix('lag_s_')} % of tokens",
            "",
            "",
            f"{value:+.2f} s" if math.isfinite(value) else "-",
        )
    return table


def _write_report(report: Any, data: dict[str, Any], output: Path) -> list[Path]:
    """``report.json`` and the plots, written to a staging folder and moved into
    ``output`` only when all of them were written (nothing half-written is left)."""
    import shutil
    import tempfile

    from llmserve_env.config.errors import DataFileError

    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".validate-", dir=output))
    try:
        (staging / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        staged = [staging / "report.json", *write_plots(report, staging)]
        blocked = [p.name for p in staged if (output / p.name).is_dir()]
        if blocked:
            raise DataFileError(
                output, f"{', '.join(blocked)}: a folder of that name is in the way"
            )
        return [p.replace(output / p.name) for p in staged]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_plots(report: Any, directory: Path) -> list[Path]:
    """Throughput, queue and output-lag plots, and the latency CDFs, as PNG (needs
    matplotlib; none without it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _err.print("[yellow]note:[/] matplotlib not installed: no plots", highlight=False)
        return []
    s = report.series
    written = []
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(s["t"], s["gen_vllm"], label="vLLM")
    axes[0].plot(s["t"], s["gen_sim"], label="llmserve", linestyle="--")
    axes[0].set_ylabel("output tokens / s")
    axes[0].legend()
    axes[1].plot(s["t"], s["running_vllm"], label="running (vLLM)")
    axes[1].plot(s["t"], s["running_sim"], label="running (llmserve)", linestyle="--")
    axes[1].plot(s["t"], s["waiting_vllm"], label="waiting (vLLM)")
    axes[1].plot(s["t"], s["waiting_sim"], label="waiting (llmserve)", linestyle="--")
    axes[1].set_ylabel("requests")
    axes[1].legend()
    axes[2].plot(s["t"], s["lag_s"], label="llmserve behind vLLM (+) at the same output")
    axes[2].axhline(0.0, color="grey", linewidth=0.8)
    axes[2].set_xlabel("time (s)")
    axes[2].set_ylabel("output lag (s)")
    axes[2].legend()
    fig.suptitle(Path(report.run).name)
    fig.tight_layout()
    path = directory / "throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax, metric in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
        for label, values, style in (
            ("vLLM", report.samples[f"{metric}_vllm"], "-"),
            ("llmserve", report.samples[f"{metric}_sim"], "--"),
        ):
            v = sorted(x for x in values if math.isfinite(x))
            ax.plot(v, [(i + 1) / len(v) for i in range(len(v))], style, label=label)
        ax.set_xlabel(f"{metric.upper()} (ms)")
        ax.set_ylabel("CDF")
        ax.legend()
    fig.tight_layout()
    path = directory / "latency_cdf.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--profiles",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="LLMServingSim profile root (perf/); default: the perf/ folder next to bench/.",
)
@click.option(
    "--dataset",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The trace; default: meta.json's dataset_path, looked up from RUN_DIR upwards.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write report.json and plots (PNG) here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option(
    "--approximate-ep",
    is_flag=True,
    help="Simulate each data-parallel rank as an independent instance holding every "
    "expert, instead of vLLM's data + expert parallelism (the older approximation, kept "
    "for comparison; it also admits expert-parallel layouts the engine refuses).",
)
@_collectives_option
@click.option(
    "--cudagraph-padding",
    is_flag=True,
    help="Pad token counts to the CUDA-graph capture sizes vLLM ran with (vLLM 0.19's "
    "defaults unless meta.json says otherwise); off by default, see VALIDATION.md.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an engine knob, e.g. gpu_memory_utilization=0.85 (repeatable).",
)
def validate(
    run_dir: Path,
    profiles: Path | None,
    dataset: Path | None,
    output: Path | None,
    as_json: bool,
    approximate_ep: bool,
    collectives: str,
    cudagraph_padding: bool,
    overrides: tuple[str, ...],
) -> None:
    """Simulate a real vLLM run (LLMServingSim bench layout) and report the error."""
    from llmserve_env.interop.bench import validate_run
    from llmserve_env.output import file_in_the_way

    engine: dict[str, Any] = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        if not value.strip():
            raise click.BadParameter(f"{key.strip()}: no value given", param_hint="--set")
        engine[key.strip()] = yaml.safe_load(value)
    # refuse before simulating, not after
    if output is not None and (blocker := file_in_the_way(output)) is not None:
        raise click.BadParameter(f"{blocker} is a file, not a folder", param_hint="-o")
    report = validate_run(
        run_dir,
        profiles=profiles,
        dataset=dataset,
        allow_unsupported=approximate_ep,
        overrides=engine or None,
        collectives=collectives,
        cudagraph_padding=cudagraph_padding,
    )
    data = report.as_dict()
    if output is not None:
        for path in _write_report(report, data, output):
            _err.print(f"wrote {path}", highlight=False)
    if as_json:
        click.echo(json.dumps(data))
        return
    Console(width=None if sys.stdout.isatty() else 120).print(_report_table(report))
    for note in report.notes:
        _err.print(f"note: {note}", highlight=False)
