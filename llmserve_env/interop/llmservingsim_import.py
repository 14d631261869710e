"""``llmserve import llmservingsim``: an LLMServingSim setup (cluster config, trace,
profiles) as an llmserve scenario file plus converted profile folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmserve_env.config.errors import DataFileError, ScenarioError
from llmserve_env.config.loader import validate_scenario
from llmserve_env.interop.llmservingsim_config import (
    ConvertedCluster,
    ImportOptions,
    convert_cluster,
)
from llmserve_env.output import file_in_the_way
from llmserve_env.perf.aiconfig import (
    aiconfigurator_system,
    aiconfigurator_version,
    vllm_collective_table,
)
from llmserve_env.perf.base import FloatArray
from llmserve_env.perf.compiled import analytical_collectives
from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.importers import llmservingsim, llmservingsim_paper
from llmserve_env.perf.importers.common import ImportResult, flat_curve_warnings
from llmserve_env.perf.profile_format import COLLECTIVE_OPS, Curve, Profile, write_profile


@dataclass
class ImportedSetup:
    """What an import wrote.

    Attributes:
        scenario_path: The scenario YAML.
        profile_dirs: Converted profile folders.
        notes: Conversions and approximations (also in the YAML header).
        warnings: Importer warnings (operators left out, ...).
    """

    scenario_path: Path
    profile_dirs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_llmservingsim_profile(
    root: str | Path, hardware: str, model: str, dtype: str, tp: int
) -> Path:
    """The LLMServingSim profile folder for one instance below ``root`` (either layout).

    Raises:
        DataFileError: naming the places looked at.
    """
    base = Path(root)
    if llmservingsim.is_tp_folder(base) or llmservingsim_paper.is_tp_folder(base):
        return base
    tried = []
    for prefix in (base, base / "perf", base / "perf_models"):
        for candidate in (
            prefix / hardware / model / dtype / f"tp{tp}",
            prefix / hardware / model / f"tp{tp}",
        ):
            tried.append(candidate)
            if llmservingsim.is_tp_folder(candidate) or llmservingsim_paper.is_tp_folder(candidate):
                return candidate
    raise DataFileError(
        base,
        f"no LLMServingSim profile for {hardware} / {model} / {dtype} / tp{tp}; looked at: "
        + ", ".join(str(p) for p in tried[:4]),
    )


COLLECTIVE_SOURCES = ("measured", "link")
"""Where an imported tensor-parallel profile's collectives come from: ``measured`` takes
NVIDIA's measured tables (aiconfigurator-core: vLLM's all-reduce of the profile's vLLM
release, NCCL for the other collectives) where they cover the device and ``tp``, and the
cluster config's link (``link_bw``, ``link_latency``) as a ring alpha-beta model for the
rest; ``link`` takes the config's link for all of them (LLMServingSim's own model)."""


def check_collective_source(choice: str) -> None:
    """Raise ``ValueError`` naming the allowed values unless ``choice`` is one of
    :data:`COLLECTIVE_SOURCES`."""
    if choice not in COLLECTIVE_SOURCES:
        raise ValueError(
            f"collectives must be one of {', '.join(COLLECTIVE_SOURCES)}; got {choice!r}"
        )


_SIZES: FloatArray = np.array([2.0**k for k in range(8, 31)], dtype=np.float64)
"""Message sizes (bytes) a measured table is sampled at: aiconfigurator's grid (128 to
512 Mi BF16 elements), so the profile's curve passes through every measured point."""


def _measured_collectives(
    profile: Profile, device: DeviceSpec, tp: int
) -> tuple[dict[tuple[str, int], Curve], str]:
    """The collectives of ``tp`` devices that aiconfigurator measured on ``device`` (none
    without aiconfigurator-core or data for it), and a provenance line."""
    if aiconfigurator_version() is None:
        return {}, "aiconfigurator-core is not installed"
    if aiconfigurator_system(device) is None:
        return {}, f"aiconfigurator-core has no measurements for {device.name}"
    version = profile.meta.provenance.get("vllm_version")
    table = vllm_collective_table(device, None if version is None else str(version))
    if table is None:
        return {}, f"aiconfigurator-core has no collectives of {device.name} by vLLM {version}"
    curves = {
        (op, tp): Curve(_SIZES, table.times_s(op, _SIZES, tp) * 1e6)
        for op in COLLECTIVE_OPS
        if table.has(op, tp)
    }
    if not curves:
        return {}, f"aiconfigurator-core measured no collectives over {tp} {device.name}"
    ops = ", ".join(op for op, _ in curves)
    return curves, f"measured ({ops}): {table.source}"


def convert_profile(
    folder: Path, converted: ConvertedCluster, index: int, collectives: str = "measured"
) -> ImportResult:
    """Convert one foreign profile folder and give it collectives for its ``tp``.

    Args:
        folder: The LLMServingSim profile folder (either layout).
        converted: The converted cluster (its link, and the instance's device).
        index: The instance group the profile is for.
        collectives: One of :data:`COLLECTIVE_SOURCES`; the choice is recorded in the
            profile's provenance (``collectives``).

    Raises:
        ValueError: an unknown ``collectives`` choice.
    """
    check_collective_source(collectives)
    _, arch, device, tp, _, _ = converted.instances[index]
    if llmservingsim.is_tp_folder(folder):
        result = llmservingsim.read_tp_folder(folder, arch)
    else:
        result = llmservingsim_paper.read_tp_folder(folder, arch)
    if tp == 1:
        return result
    profile = result.profile
    fill: dict[tuple[str, int], Curve] = {}
    lines = []
    if collectives == "measured":
        fill, line = _measured_collectives(profile, device, tp)
        lines.append(line)
    missing = [op for op in COLLECTIVE_OPS if (op, tp) not in fill]
    if missing and converted.link_bw_gbps > 0:
        link = analytical_collectives(tp, converted.link(), tuple(missing))
        fill.update(link)
        lines.append(
            f"ring alpha-beta ({', '.join(missing)}) from the cluster config: link_bw "
            f"{converted.link_bw_gbps:g} GB/s, link_latency {converted.link_latency_us * 1e3:g} ns"
        )
    if not fill:
        return result
    profile = profile.with_collectives(fill)
    prov = dict(profile.meta.provenance)
    prov["collectives"] = f"{collectives}: " + "; ".join(lines)
    return ImportResult(
        replace(profile, meta=replace(profile.meta, provenance=prov)),
        result.relative_dir,
        result.warnings,
        result.source_files,
        result.source_dir,
    )


def import_llmservingsim_setup(
    config: str | Path,
    dataset: str | Path,
    output: str | Path,
    options: ImportOptions,
    profiles: str | Path | None = None,
    collectives: str = "measured",
) -> ImportedSetup:
    """Write ``output`` (scenario YAML) and, with ``profiles``, converted profiles in
    ``<output folder>/profiles/``; every instance's ``perf`` points at its profile
    (``auto`` without ``profiles``). ``collectives`` (one of
    :data:`COLLECTIVE_SOURCES`) says where tensor-parallel profiles' collectives come
    from.

    Raises:
        UnsupportedFeatureError: listing unsupported features with their config keys.
        DataFileError: malformed inputs or a missing profile.
        ScenarioError: when the resulting scenario does not validate.
        ValueError: an unknown ``collectives`` choice.
    """
    from llmserve_env.build import SimulationFactory

    out_path = Path(output)
    out_dir = out_path.parent
    if (blocker := file_in_the_way(out_dir)) is not None:
        raise DataFileError(blocker, "is a file, not a folder (the output's folder)")
    dataset = Path(dataset)
    if not dataset.is_file():
        raise DataFileError(dataset, "trace file not found")
    converted = convert_cluster(config, dataset, options, relative_to=out_dir)
    setup = ImportedSetup(out_path, notes=list(converted.notes))
    groups = [g for node in converted.scenario["cluster"]["nodes"] for g in node["instances"]]
    # Profiles are written to a staging folder and the scenario validated against it;
    # only a valid import moves them into ``profiles/`` and writes the scenario, so a
    # refused one leaves nothing behind (and replaces nothing).
    first_new = _first_missing(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llmserve-import-", dir=out_dir))
    try:
        staged: dict[Path, Path] = {}  # source profile folder -> its relative target
        uses: list[tuple[dict[str, Any], Path]] = []  # instance group, its profile's target
        for index, group in enumerate(groups):
            _, arch, _, tp, dtype, hardware = converted.instances[index]
            if profiles is None:
                group["perf"] = "auto"
                continue
            folder = find_llmservingsim_profile(profiles, hardware, arch.name, dtype, tp)
            if folder not in staged:
                result = convert_profile(folder, converted, index, collectives)
                write_profile(result.profile, staging / result.relative_dir)
                staged[folder] = result.relative_dir
                setup.warnings.extend([*result.warnings, *flat_curve_warnings(result.profile)])
            group["perf"] = os.path.relpath(staging / staged[folder], out_dir)
            uses.append((group, staged[folder]))
        data = converted.scenario
        try:
            scenario = validate_scenario(data, source=f"{out_path} (as imported)", base_dir=out_dir)
            # What a run would refuse (a tp the model cannot be split over, a trace
            # with no requests) is refused now, not at `llmserve run`.
            factory = SimulationFactory(scenario)
            available = len(factory.workload(scenario.seed).arrival_s)
        except ScenarioError as exc:
            raise ScenarioError(
                [(_with_flag(where, options), msg) for where, msg in exc.problems],
                exc.source or f"{out_path} (as imported)",
            ) from None
        if options.num_reqs is not None and options.num_reqs > available:
            setup.notes.append(
                f"--num-reqs {options.num_reqs}: the trace has {available} requests; "
                f"all {available} are used"
            )
        for group, rel in uses:
            group["perf"] = os.path.relpath(out_dir / "profiles" / rel, out_dir)
        for rel in staged.values():
            target = out_dir / "profiles" / rel
            if target.exists():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            setup.profile_dirs.append(target)
        header = [
            f"# Imported by `llmserve import llmservingsim` from {Path(config)}",
            f"# trace: {dataset}",
            "# LLMServingSim defaults kept: block 16, 2048 batched tokens, no batch-size cap",
            "# (max_num_seqs 1024), round-robin routing, 16-bit weights.",
            *(f"# {note}" for note in setup.notes),
        ]
        text = yaml.safe_dump(_ordered(data), sort_keys=False, width=100)
        tmp = staging / out_path.name
        tmp.write_text("\n".join(header) + "\n" + text, encoding="utf-8")
        os.replace(tmp, out_path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if first_new is not None:
            shutil.rmtree(first_new, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    return setup


# Engine keys the import sets from its command-line flags.
_FLAGS = {
    "block_size": "--block-size",
    "max_num_batched_tokens": "--max-num-batched-tokens",
    "max_num_seqs": "--max-num-seqs",
}


def _with_flag(where: str, options: ImportOptions) -> str:
    """A problem's location, with the flag it came from when an engine knob set by a
    flag did (a value from the config itself keeps its location alone)."""
    key = where.rsplit(": ", 1)[-1].rsplit(".", 1)[-1]
    flagged = key in _FLAGS and "engine." in where and getattr(options, key) is not None
    return f"{where} (from {_FLAGS[key]})" if flagged else where


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet."""
    missing = None
    for path in (folder, *folder.parents):
        if path.exists():
            return missing
        missing = path
    return missing


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    order = ("name", "description", "seed", "cluster", "engine", "router", "workload")
    return {k: data[k] for k in order if k in data} | {
        k: v for k, v in data.items() if k not in order
    }
