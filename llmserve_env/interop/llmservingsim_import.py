"""``llmserve import llmservingsim``: an LLMServingSim setup (cluster config, trace,
profiles) as an llmserve scenario file plus converted profile folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from llmserve_env.config.errors import DataFileError
from llmserve_env.config.loader import validate_scenario
from llmserve_env.interop.llmservingsim_config import (
    ConvertedCluster,
    ImportOptions,
    convert_cluster,
)
from llmserve_env.perf.compiled import analytical_collectives
from llmserve_env.perf.importers import llmservingsim, llmservingsim_paper
from llmserve_env.perf.importers.common import ImportResult
from llmserve_env.perf.profile_format import write_profile


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


def convert_profile(folder: Path, converted: ConvertedCluster, index: int) -> ImportResult:
    """Convert one foreign profile folder, adding the config's link as collectives."""
    _, arch, _, tp, _, _ = converted.instances[index]
    if llmservingsim.is_tp_folder(folder):
        result = llmservingsim.read_tp_folder(folder, arch)
    else:
        result = llmservingsim_paper.read_tp_folder(folder, arch)
    if tp > 1 and converted.link_bw_gbps > 0:
        fill = analytical_collectives(tp, converted.link_bw_gbps, converted.link_latency_us)
        profile = result.profile.with_collectives(fill)
        prov = dict(profile.meta.provenance)
        prov["collectives"] = (
            f"ring alpha-beta from the cluster config: link_bw {converted.link_bw_gbps:g} GB/s, "
            f"link_latency {converted.link_latency_us * 1e3:g} ns"
        )
        result = ImportResult(
            replace(profile, meta=replace(profile.meta, provenance=prov)),
            result.relative_dir,
            result.warnings,
            result.source_files,
        )
    return result


def import_llmservingsim_setup(
    config: str | Path,
    dataset: str | Path,
    output: str | Path,
    options: ImportOptions,
    profiles: str | Path | None = None,
) -> ImportedSetup:
    """Write ``output`` (scenario YAML) and, with ``profiles``, converted profiles in
    ``<output folder>/profiles/``; every instance's ``perf`` points at its profile
    (``auto`` without ``profiles``).

    Raises:
        UnsupportedFeatureError: listing unsupported features with their config keys.
        DataFileError: malformed inputs or a missing profile.
        ScenarioError: when the resulting scenario does not validate.
    """
    out_path = Path(output)
    out_dir = out_path.parent
    dataset = Path(dataset)
    if not dataset.is_file():
        raise DataFileError(dataset, "trace file not found")
    converted = convert_cluster(config, dataset, options, relative_to=out_dir)
    setup = ImportedSetup(out_path, notes=list(converted.notes))
    groups = [g for node in converted.scenario["cluster"]["nodes"] for g in node["instances"]]
    written: dict[Path, Path] = {}
    for index, group in enumerate(groups):
        _, arch, _, tp, dtype, hardware = converted.instances[index]
        if profiles is None:
            group["perf"] = "auto"
            continue
        folder = find_llmservingsim_profile(profiles, hardware, arch.name, dtype, tp)
        if folder not in written:
            result = convert_profile(folder, converted, index)
            target = out_dir / "profiles" / result.relative_dir
            write_profile(result.profile, target)
            written[folder] = target
            setup.profile_dirs.append(target)
            setup.warnings.extend(result.warnings)
        group["perf"] = os.path.relpath(written[folder], out_dir)
    data = converted.scenario
    validate_scenario(data, source=str(out_path), base_dir=out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    header = [
        f"# Imported by `llmserve import llmservingsim` from {Path(config)}",
        f"# trace: {dataset}",
        "# LLMServingSim defaults kept: block 16, 2048 batched tokens, no batch-size cap",
        "# (max_num_seqs 1024), round-robin routing, 16-bit weights.",
        *(f"# {note}" for note in setup.notes),
    ]
    text = yaml.safe_dump(_ordered(data), sort_keys=False, width=100)
    out_path.write_text("\n".join(header) + "\n" + text, encoding="utf-8")
    return setup


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    order = ("name", "description", "seed", "cluster", "engine", "router", "workload")
    return {k: data[k] for k in order if k in data} | {
        k: v for k, v in data.items() if k not in order
    }
