"""``llmserve profile``: measure a model's operators on this machine into a profile folder."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from llmserve_env.config.errors import DataFileError


@click.command("profile")
@click.argument("model")
@click.option(
    "--output",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Profile folder to write (llmserve format, see profiles/README.md).",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cuda, cuda:N, cpu, or auto (CUDA when available).",
)
@click.option(
    "--dtype",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    default="bf16",
    show_default=True,
    help="Weights and activations (fp32 profiles are for inspection: scenarios run bf16, "
    "fp16 or fp8).",
)
@click.option(
    "--tp",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Time one tensor-parallel shard.",
)
@click.option("--quick", is_flag=True, help="A small grid (seconds on a CPU for a tiny model).")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Largest batch token count to time.",
)
@click.option(
    "--max-context",
    type=click.IntRange(min=0),
    default=None,
    help="Largest cached context to time.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="Untimed calls per point.",
)
@click.option(
    "--repeat",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Timed calls per point.",
)
@click.option(
    "--num-layers",
    type=click.IntRange(min=1),
    default=None,
    help="Layer count written to the profile (default: the model's; timing is per layer).",
)
@click.option(
    "--device-name",
    default=None,
    help="Device name for meta.yaml (default: the catalog name of the GPU, or 'cpu').",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads torch may use."
)
@click.option("--no-power", is_flag=True, help="Do not sample board power through NVML.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--cold-mib",
    type=click.IntRange(min=0),
    default=None,
    help="MiB of weight (and KV) copies each operator cycles through so that it reads "
    "them from memory, as in the model [default: 256, or twice the GPU's L2; 0: warm].",
)
@click.option(
    "--check-iterations",
    is_flag=True,
    help="Then run whole forward passes of the model for a set of batches and compare "
    "them with the profile's prediction (table, and iteration_check.json in the folder).",
)
@click.option(
    "--check-layers",
    type=click.IntRange(min=1),
    default=None,
    help="Layers of the model built for --check-iterations [default: the profile's].",
)
def profile(
    model: str,
    output: Path,
    device: str,
    dtype: str,
    tp: int,
    quick: bool,
    max_tokens: int | None,
    max_context: int | None,
    warmup: int,
    repeat: int,
    num_layers: int | None,
    device_name: str | None,
    threads: int | None,
    no_power: bool,
    seed: int,
    cold_mib: int | None,
    check_iterations: bool,
    check_layers: int | None,
) -> None:
    """Time every operator of MODEL (a catalog name or a HuggingFace config.json) in
    PyTorch with random weights, and write an llmserve profile folder.

    Use it in a scenario with ``perf: <folder>``; ``llmserve profiles check <folder>``
    summarises it. ``--check-iterations`` times whole forward passes of the model
    (every layer, residuals, KV writes) and reports how far the profile's prediction
    for each batch is from them.
    """
    from llmserve_env.output import file_in_the_way
    from llmserve_env.perf.hardware import resolve_device
    from llmserve_env.perf.model_arch import load_model_arch
    from llmserve_env.perf.profile_format import write_profile
    from llmserve_env.perf.profiler import (
        NOISY_SHARE,
        ProfileGrid,
        ProfilerOptions,
        profile_model,
        resolve_torch_device,
    )
    from llmserve_env.perf.profiler_torch import NOISY_SPREAD

    try:
        import torch
    except ImportError:
        click.echo("error: llmserve profile needs PyTorch (pip install torch)", err=True)
        sys.exit(2)
    if check_iterations and tp != 1:
        raise click.UsageError("--check-iterations runs one device: use it with --tp 1")
    if check_layers is not None and not check_iterations:
        raise click.UsageError("--check-layers only applies with --check-iterations")
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch_device = resolve_torch_device(torch, device)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--device") from exc
    try:
        arch = load_model_arch(model)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0]), param_hint="MODEL") from exc
    if (blocker := file_in_the_way(output)) is not None:  # refuse before profiling
        raise click.BadParameter(f"{blocker} is a file, not a folder", param_hint="--output")
    grid = (ProfileGrid.quick() if quick else ProfileGrid()).bounded(max_tokens, max_context)
    if kept := grid.above(max_tokens, max_context):
        click.echo(
            f"note: the grid keeps points above --max-tokens / --max-context: {'; '.join(kept)} "
            "(each axis needs one value, decode contexts two)",
            err=True,
        )
    try:
        options = ProfilerOptions(
            device=device,
            dtype=dtype,
            tp=tp,
            grid=grid,
            warmup=warmup,
            repeat=repeat,
            num_layers=num_layers,
            device_name=device_name,
            seed=seed,
            sample_power=not no_power,
            cold_mib=cold_mib,
        )
        result = profile_model(arch, options, log=lambda line: click.echo(f"  {line}", err=True))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    problems = [p for p in result.problems() if "collectives.csv" not in p]
    if problems:  # pragma: no cover - a bug in the profiler, not in the input
        raise DataFileError(output, "; ".join(problems))
    folder = write_profile(result, output)
    if not check_iterations:  # a check of an earlier profile in this folder is stale
        (folder / "iteration_check.json").unlink(missing_ok=True)
    meta = result.meta
    click.echo(
        f"wrote {folder}/ ({meta.model} on {meta.device}, {meta.dtype}, tp={meta.tp}, "
        f"{meta.provenance.get('duration_s', 0):.1f} s)"
    )
    try:
        resolve_device(meta.device)
    except KeyError:
        click.echo(
            f"note: meta.yaml records device {meta.device!r}, which the catalog lacks: a "
            f"scenario uses this profile on a device of that name described under `devices:`"
            ", or profile again with --device-name CATALOG_NAME",
            err=True,
        )
    else:
        if torch_device.type == "cpu" and meta.device != "cpu":
            click.echo(
                f"note: these are the CPU's times, recorded as device {meta.device!r} "
                "(--device-name); provenance.device_type says cpu",
                err=True,
            )
    noisy = meta.provenance.get("noisy_points") or {}
    if noisy and noisy["noisy"] >= 3 and noisy["noisy"] > NOISY_SHARE * noisy["of"]:
        click.echo(
            f"warning: {noisy['noisy']} of {noisy['of']} points varied between repeats by "
            f"more than {NOISY_SPREAD:.0%} of their median (interquartile range): the machine "
            "was busy or the timings are unstable; profile again on a quiet machine, with "
            "--threads or more --repeat",
            err=True,
        )
    if meta.dtype == "fp32":
        click.echo(
            "note: an fp32 profile is for inspection; a scenario's dtype is bf16, fp16 or fp8",
            err=True,
        )
    if check_iterations:
        _check(result, arch, options, check_layers, folder)


def _check(result: Any, arch: Any, options: Any, layers: int | None, folder: Path) -> None:
    """Run the iteration check, print its table, write ``iteration_check.json``."""
    from rich.console import Console
    from rich.table import Table

    from llmserve_env.output import write_json_atomic
    from llmserve_env.perf.iteration_check import check_iterations

    # Whole iterations keep their default cache setting whatever --cold-mib said.
    check = check_iterations(
        result,
        arch,
        replace(options, cold_mib=None),
        num_layers=layers,
        log=lambda line: click.echo(f"  {line}", err=True),
    )
    graphs = any(r.graph_s is not None for r in check.results)
    table = Table(title=f"whole iterations, {check.num_layers} layers, {check.device}")
    for column in ("batch", "tokens", "measured ms", "predicted ms", "error %"):
        table.add_column(column, justify="left" if column == "batch" else "right")
    if graphs:
        table.add_column("CUDA graph ms", justify="right")
        table.add_column("error vs graph %", justify="right")
    for r in check.results:
        row = [
            r.case.label,
            str(r.case.num_tokens),
            f"{r.measured_s * 1e3:.3f}",
            f"{r.predicted_s * 1e3:.3f}",
            f"{r.err_pct:+.1f}",
        ]
        if graphs:
            row += [
                "-" if r.graph_s is None else f"{r.graph_s * 1e3:.3f}",
                "-" if r.graph_err_pct is None else f"{r.graph_err_pct:+.1f}",
            ]
        table.add_row(*row)
    Console().print(table)
    for case, why in check.skipped:
        click.echo(f"skipped {case.label} ({case.num_tokens} tokens): out of memory: {why}")
    summary = f"mean absolute error {check.mape_pct():.1f} %"
    if graphs:
        summary += f" (against the CUDA graphs {check.mape_pct(graphs=True):.1f} %)"
    click.echo(summary)
    write_json_atomic(folder / "iteration_check.json", check.as_dict())
