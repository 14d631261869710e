"""``llmserve profiles``: import other projects' latency profiles, check profile folders."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

_err = Console(stderr=True)


@click.group()
def profiles() -> None:
    """Latency profiles: import and check (format: profiles/README.md)."""


@profiles.command("import")
@click.argument("kind", type=click.Choice(["llmservingsim", "llmservingsim-paper", "vidur"]))
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--output",
    "-o",
    "dest",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder: one profile goes there; several go below it as "
    "<device>/<org>/<model>/<dtype>/tp<N>.",
)
@click.option("--model", default=None, help="vidur: catalog name of the model (required).")
@click.option("--device", default=None, help="vidur: device it was measured on (required).")
@click.option("--tp", type=int, default=1, show_default=True, help="vidur: tensor-parallel degree.")
@click.option(
    "--network",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="vidur: network/<topology>/ folder with all_reduce.csv (for --tp > 1).",
)
def import_profiles(
    kind: str,
    src: Path,
    dest: Path,
    model: str | None,
    device: str | None,
    tp: int,
    network: Path | None,
) -> None:
    """Convert the profile(s) of KIND found at SRC into llmserve's format."""
    from llmserve_env.config.errors import DataFileError
    from llmserve_env.perf.hardware import resolve_device
    from llmserve_env.perf.importers import llmservingsim, llmservingsim_paper, vidur
    from llmserve_env.perf.importers.common import flat_curve_warnings
    from llmserve_env.perf.profile_format import StagedProfile, stage_profile

    source, target = src.resolve(), dest.resolve()
    if target == source or source in target.parents or target in source.parents:
        where = "contains" if target in source.parents else "is inside"
        raise click.BadParameter(
            f"{dest} {where} the source {src}; write the import elsewhere",
            param_hint="--output",
        )
    match kind:
        case "llmservingsim":
            results = llmservingsim.import_llmservingsim(src)
        case "llmservingsim-paper":
            results = llmservingsim_paper.import_llmservingsim_paper(src)
        case _:
            if model is None or device is None:
                raise click.UsageError("vidur needs --model and --device")
            try:
                spec = resolve_device(device)
            except KeyError as exc:
                raise DataFileError(device, str(exc.args[0])) from exc
            results = [vidur.import_vidur(src, model=model, device=spec, tp=tp, network=network)]
    targets = [dest if len(results) == 1 else dest / r.relative_dir for r in results]
    staged: list[StagedProfile] = []
    try:  # all or nothing: every profile is staged and checked before any is moved in
        for result, target in zip(results, targets, strict=True):
            source = result.source_dir or src
            staged.append(stage_profile(result.profile, target, source=source))
    except BaseException:
        for done in reversed(staged):
            done.discard()
        raise
    for i, (result, done) in enumerate(zip(results, staged, strict=True)):
        try:
            target = done.commit()
        except BaseException:
            for rest in reversed(staged[i + 1 :]):
                rest.discard()
            raise
        for warning in [*result.warnings, *flat_curve_warnings(result.profile)]:
            _err.print(f"[yellow]warning:[/] {warning}", highlight=False)
        click.echo(f"wrote {target}")


@profiles.command("check")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
def check_profile(folder: Path) -> None:
    """Read and compile the profile FOLDER; print its operators and sample latencies."""
    from llmserve_env.perf.compiled import compile_profile
    from llmserve_env.perf.profile_format import read_profile

    profile = read_profile(folder)
    meta = profile.meta
    compiled = compile_profile(profile) if meta.tp == 1 or profile.collectives else None
    table = Table(
        title=f"{meta.model} on {meta.device}, {meta.dtype}, tp={meta.tp} ({meta.source})",
        show_header=True,
        header_style="bold",
    )
    for column in ("operator", "table", "runs per iteration", "points"):
        table.add_column(column)
    for op, count in meta.sequence.counts(meta.num_layers).items():
        kind = profile.table_of(op) or "MISSING"
        if kind == "dense":
            points = str(len(profile.dense[op].x))
        elif kind == "per_sequence":
            points = str(len(profile.per_sequence[op].x))
        elif kind == "attention" and profile.attention is not None:
            points = str(len(profile.attention))
        elif kind == "moe" and profile.moe is not None:
            points = str(len(profile.moe.time_us))
        else:
            points = "-"
        table.add_row(op, kind, str(count), points)
    Console().print(table)
    for problem in profile.problems():
        _err.print(f"[yellow]note:[/] {problem}", highlight=False)
    if compiled is not None:
        from llmserve_env.perf.model_arch import load_model_arch
        from llmserve_env.perf.profile_model import ProfileLatencyModel

        try:
            arch = load_model_arch(meta.model)
        except KeyError:
            return
        model = ProfileLatencyModel(compiled, arch)
        import numpy as np

        from llmserve_env.perf.base import BatchShape

        prefill = model.iteration_time_s(BatchShape((2048,), (0,), 0, 0, 0))
        each = np.array([1025.0])
        decode = model.decode_times_s(32, 32 * each, each, each)[0]
        click.echo(
            f"prefill of 2048 tokens: {prefill * 1e3:.2f} ms; "
            f"32 decodes at 1k context: {decode * 1e3:.2f} ms"
        )
