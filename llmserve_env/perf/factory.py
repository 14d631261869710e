"""Choose and build an instance's latency model from its ``perf`` setting.

``perf`` is one of:

- a path to a profile folder: the llmserve format (``profiles/README.md``), or an
  LLMServingSim profile folder (``.../<dtype>/tp<N>`` of the vLLM-0.19 profiler, or
  ``perf_models/<HW>/<org>/<model>/tp<N>`` of the 2.0 paper), converted in memory;
- ``analytical``: the roofline model;
- ``auto``: a profile we measured, shipped under
  ``profiles/measured/<device>/<org>/<model>/<dtype>/tp<N>/``, if there is one; else
  NVIDIA aiconfigurator tables (``llmserve_env.perf.aiconfig``, when installed and
  covering the case); else the roofline model.

A profile without collective measurements for its ``tp`` gets ring-algorithm
alpha-beta collectives over the device's scale-up link with its family's fitted
constants (:func:`~llmserve_env.perf.comm.alpha_beta_for`: a fixed cost per collective,
a latency per ring step, a link efficiency), the ones the roofline model charges.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from types import ModuleType

from llmserve_env.config.errors import DataFileError
from llmserve_env.paths import profiles_dir
from llmserve_env.perf.base import LatencyModel
from llmserve_env.perf.comm import CommModel, alpha_beta_for
from llmserve_env.perf.compiled import (
    NO_FILL,
    CompiledProfile,
    analytical_collectives,
    cached_compile,
)
from llmserve_env.perf.cudagraph import TokenPadding
from llmserve_env.perf.expert_parallel import ExpertParallel
from llmserve_env.perf.hardware import DeviceSpec, resolve_device
from llmserve_env.perf.importers import llmservingsim, llmservingsim_paper
from llmserve_env.perf.importers.common import files_digest
from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.profile_format import (
    LayerSequence,
    Profile,
    ProfileMeta,
    check_written,
    collective_of,
    is_profile_folder,
    profile_digest,
    read_meta,
    read_profile,
)
from llmserve_env.perf.profile_model import ProfileLatencyModel
from llmserve_env.perf.roofline import RooflineModel


def measured_dir() -> Path:
    """Root of the shipped measured profiles."""
    return profiles_dir() / "measured"


def find_measured_profile(device: DeviceSpec, model: str, dtype: str, tp: int) -> Path | None:
    """The shipped profile folder for this case, or ``None``."""
    folder = measured_dir() / device.name / model / dtype / f"tp{tp}"
    return folder if is_profile_folder(folder) else None


def _short(name: str) -> str:
    """A model's name without its organisation or folders: the file stem of a config
    path, its folder's name for a ``config.json`` (``.../Llama-3.1-8B/config.json`` and
    ``Llama-3.1-8B.json`` are both ``llama-3.1-8b``), and the repository's name for a
    HuggingFace cache snapshot (``.../models--meta-llama--Llama-3.1-8B/snapshots/<commit>/
    config.json``)."""
    parts = name.replace("\\", "/").rstrip("/").split("/")
    last = parts[-1]
    if last.lower() == "config.json":
        # The folders as written, with either separator (a profile records the path of
        # the machine that measured it), not a symlink's target: a cache snapshot's
        # config.json links into the repository's blobs/. A bare or relative
        # "config.json" is named for the current folder.
        if len(parts) < 2 or parts[-2] in ("", ".", ".."):
            parts = Path(os.path.abspath(Path(name).expanduser())).as_posix().split("/")
        if len(parts) >= 4 and parts[-3] == "snapshots" and parts[-4].startswith("models--"):
            last = parts[-4].split("--")[-1]
        else:
            last = parts[-2]
    elif last.lower().endswith(".json"):
        last = last[: -len(".json")]
    return last.lower()


def _has_moe(sequence: LayerSequence) -> bool:
    return any(op == "moe" or op.startswith("moe_") for op in sequence.layer)


def _check_meta(
    meta: ProfileMeta, where: Path, arch: ModelArch, device: DeviceSpec, tp: int, dtype: str
) -> None:
    """The profile must describe the instance it is used for."""
    problems = []
    if meta.tp != tp:
        problems.append(f"it was measured at tp={meta.tp} but the instance has tp={tp}")
    if _short(meta.model) != _short(arch.name):
        problems.append(f"it is for model {meta.model!r} but the instance runs {arch.name!r}")
    elif _has_moe(meta.sequence) != arch.is_moe:
        kind = "mixture-of-experts" if arch.is_moe else "dense"
        has = "has no" if arch.is_moe else "has an"
        problems.append(f"{arch.name!r} is a {kind} model, and the profile {has} MoE block")
    if meta.dtype != dtype:
        problems.append(f"it is for dtype {meta.dtype!r} but the instance uses {dtype!r}")
    try:
        profiled = resolve_device(meta.device).name
    except KeyError:
        profiled = meta.device
    if profiled != device.name:
        problems.append(
            f"it was measured on {meta.device!r} but the instance runs on {device.name!r}"
        )
    if problems:
        raise DataFileError(where, "profile does not match the instance: " + "; ".join(problems))


def _missing_collectives(meta: ProfileMeta, have: Collection[tuple[str, int]]) -> list[str]:
    """The collectives the sequence runs at the profile's ``tp`` that ``have`` lacks (none
    at ``tp`` 1, where they cost nothing)."""
    tp, sequence = meta.tp, meta.sequence
    if tp == 1:
        return []
    names = [collective_of(op) for op in sequence.prologue + sequence.layer + sequence.head]
    return list(dict.fromkeys(c[0] for c in names if c is not None and (c[0], tp) not in have))


def _measured_collectives(folder: Path) -> set[tuple[str, int]]:
    """The ``(op, num_gpus)`` pairs of a profile folder's ``collectives.csv`` (empty when
    it has none or they cannot be read; reading the profile then says why)."""
    try:
        with (folder / "collectives.csv").open(encoding="utf-8", newline="") as handle:
            return {(row["op"], int(float(row["num_gpus"]))) for row in csv.DictReader(handle)}
    except (OSError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        return set()


def _with_collectives(profile: Profile, device: DeviceSpec) -> Profile:
    tp = profile.meta.tp
    needed = _missing_collectives(profile.meta, profile.collectives)
    if not needed:
        return profile
    return profile.with_collectives(
        analytical_collectives(tp, alpha_beta_for(device), tuple(needed))
    )


def _arch_key(arch: ModelArch) -> str:
    """The model's dimensions, which a foreign folder's conversion reads (layer count,
    collective and logits bytes): two configs of one name may differ in them."""
    dims = {k: v for k, v in dataclasses.asdict(arch).items() if k != "name"}
    return hashlib.sha256(json.dumps(dims, sort_keys=True).encode()).hexdigest()[:16]


def _fill_key(device: DeviceSpec, missing: list[str]) -> str:
    """What :func:`_with_collectives` adds depends on: nothing when no collective is
    ``missing`` (the key a written profile's check compiles under, so a run after it
    finds the tables cached)."""
    if not missing:
        return NO_FILL
    return f"collectives:{alpha_beta_for(device)!r}"


def load_profile_tables(
    path: str | Path, arch: ModelArch, device: DeviceSpec, tp: int, dtype: str
) -> CompiledProfile:
    """Compiled tables of the profile folder ``path`` (any supported format), checked
    against the instance.

    Raises:
        DataFileError: a malformed folder, or one that describes another instance.
    """
    folder = Path(path)
    build: Callable[[], Profile]
    if is_profile_folder(folder):
        meta = read_meta(folder / "meta.yaml")
        key = profile_digest(folder)
        # At tp 1 nothing is missing: no collectives.csv to read.
        have = _measured_collectives(folder) if meta.tp > 1 else set()
        missing = _missing_collectives(meta, have)

        def build() -> Profile:
            return _with_collectives(read_profile(folder), device)

    elif llmservingsim.is_tp_folder(folder):
        result = llmservingsim.read_tp_folder(folder, arch)
        meta = result.profile.meta
        key = f"{files_digest(result.source_files, llmservingsim.TAG)}:{_arch_key(arch)}"
        converted = result.profile
        missing = _missing_collectives(meta, converted.collectives)

        def build() -> Profile:
            check_written(converted, folder, "converts to an invalid profile", compile_it=False)
            return _with_collectives(converted, device)

    elif llmservingsim_paper.is_tp_folder(folder):
        paper = llmservingsim_paper.read_tp_folder(folder, arch)
        meta = paper.profile.meta
        key = f"{files_digest(paper.source_files, llmservingsim_paper.TAG)}:{_arch_key(arch)}"
        converted_paper = paper.profile
        missing = _missing_collectives(meta, converted_paper.collectives)

        def build() -> Profile:
            check_written(
                converted_paper, folder, "converts to an invalid profile", compile_it=False
            )
            return _with_collectives(converted_paper, device)

    else:
        raise DataFileError(
            folder,
            "not a profile folder: expected meta.yaml with 'format: llmserve-profile', or an "
            "LLMServingSim profile folder (.../<dtype>/tp<N> or perf_models/.../tp<N>)",
        )
    _check_meta(meta, folder, arch, device, tp, dtype)
    return cached_compile(f"{key}:{_fill_key(device, missing)}", build)


def _aiconfig() -> ModuleType | None:
    """The aiconfigurator-backed module, or ``None`` where it cannot be imported."""
    try:
        return importlib.import_module("llmserve_env.perf.aiconfig")
    except ImportError:
        return None


def _aiconfigurator(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    expert_parallel_size: int = 1,
    reasons: list[str] | None = None,
) -> LatencyModel | None:
    module = _aiconfig()
    if module is None:
        return None
    model: LatencyModel | None = module.aiconfigurator_model(
        arch, device, tp, dtype, expert_parallel_size=expert_parallel_size, reasons=reasons
    )
    return model


def _roofline(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    reasons: list[str],
    expert_parallel: ExpertParallel | None = None,
    measured_collectives: bool = False,
) -> RooflineModel:
    """The roofline model, named for reports. ``perf: auto`` falling back to it on a
    device aiconfigurator-core covers passes why (``reasons``) and asks for that device's
    measured vLLM collectives (``measured_collectives``), used where there are any."""
    module = _aiconfig() if measured_collectives and tp > 1 else None
    comm: CommModel | None = None if module is None else module.vllm_collective_table(device)
    roofline = RooflineModel(
        arch, device, tp=tp, dtype=dtype, comm=comm, expert_parallel=expert_parallel
    )
    if comm is not None:
        roofline.name += " with measured collectives"
    if reasons:
        roofline.name += f" (no aiconfigurator tables: {reasons[0]})"
    return roofline


def latency_source(model: LatencyModel) -> str:
    """What a latency model is built from, for reports: a profile folder,
    ``aiconfigurator:<device>`` or ``roofline:<device>`` (with why ``auto`` fell back)."""
    name = getattr(model, "name", "")
    return str(name) if name else type(model).__name__


def _unpadded(
    model: LatencyModel, what: str, perf_setting: str, capture_sizes: tuple[int, ...]
) -> LatencyModel:
    """``model``, refusing capture sizes: only measured eager profiles are padded."""
    if capture_sizes:
        raise ValueError(
            f"engine.cudagraph_capture_sizes applies to measured profile folders only; "
            f"perf {perf_setting!r} resolved to {what} (name a profile folder, or leave "
            "cudagraph_capture_sizes out)"
        )
    return model


def make_latency_model(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    perf_setting: str,
    capture_sizes: tuple[int, ...] = (),
    expert_parallel_size: int = 1,
) -> LatencyModel:
    """The latency model for an instance, by its ``perf`` setting (see the module doc).

    Args:
        arch: The model.
        device: The accelerator.
        tp: Tensor-parallel degree.
        dtype: Weight and activation type.
        perf_setting: ``analytical``, ``auto`` or a profile folder.
        capture_sizes: vLLM's CUDA-graph capture sizes the token-parallel operators pad
            to (:mod:`llmserve_env.perf.cudagraph`); empty for none.
        expert_parallel_size: Data-parallel ranks the model's experts are split over
            (:mod:`llmserve_env.perf.expert_parallel`; 1: none). Needs a profile-driven
            model with an MoE table.

    Raises:
        DataFileError: a profile folder that is malformed or describes another instance.
        ValueError: capture sizes for a model that is not profile-driven, or a ``tp``
            vLLM cannot shard the model over.
    """
    if (why := arch.tensor_parallel_problem(tp)) is not None:
        raise ValueError(f"{arch.name}: {why}")
    if expert_parallel_size > 1:
        return _expert_parallel_model(
            arch, device, tp, dtype, perf_setting, capture_sizes, expert_parallel_size
        )
    padding = TokenPadding(capture_sizes) if capture_sizes else None
    match perf_setting:
        case "analytical":
            roofline = RooflineModel(arch, device, tp=tp, dtype=dtype)
            return _unpadded(roofline, "the roofline model", perf_setting, capture_sizes)
        case "auto":
            folder = find_measured_profile(device, arch.name, dtype, tp)
            if folder is not None:
                tables = load_profile_tables(folder, arch, device, tp, dtype)
                return ProfileLatencyModel(tables, arch, name=str(folder), padding=padding)
            reasons: list[str] = []
            model = _aiconfigurator(arch, device, tp, dtype, reasons=reasons)
            if model is not None:
                return _unpadded(model, "aiconfigurator-core's tables", perf_setting, capture_sizes)
            roofline = _roofline(arch, device, tp, dtype, reasons, measured_collectives=True)
            return _unpadded(roofline, "the roofline model", perf_setting, capture_sizes)
        case _:
            tables = load_profile_tables(perf_setting, arch, device, tp, dtype)
            return ProfileLatencyModel(tables, arch, name=str(perf_setting), padding=padding)


def expert_parallel_comm(device: DeviceSpec) -> CommModel:
    """Collectives between expert-parallel ranks on ``device``: NVIDIA's measured NCCL
    curves where aiconfigurator-core has them, else the device's alpha-beta link model."""
    module = _aiconfig()
    table = None if module is None else module.collective_table(device)
    return alpha_beta_for(device) if table is None else table


def _expert_parallel_model(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    perf_setting: str,
    capture_sizes: tuple[int, ...],
    dp_size: int,
) -> LatencyModel:
    """One rank of a DP+EP engine, its experts split over ``dp_size`` ranks, by the
    ``perf`` setting as :func:`make_latency_model` resolves it: a profile folder's MoE
    table; for ``auto`` a shipped profile, else aiconfigurator-core's tables timed for
    this expert-parallel layout, else the roofline model; for ``analytical`` the
    roofline model."""
    ep = ExpertParallel.for_model(arch, dtype, dp_size, expert_parallel_comm(device))
    folder: str | Path | None = perf_setting
    reasons: list[str] = []
    if perf_setting == "auto":
        folder = find_measured_profile(device, arch.name, dtype, tp)
        measured = (
            None
            if folder is not None
            else _aiconfigurator(arch, device, tp, dtype, dp_size, reasons=reasons)
        )
        if isinstance(measured, ProfileLatencyModel):
            model = ProfileLatencyModel(
                measured.tables, arch, name=measured.name, expert_parallel=ep
            )
            return _unpadded(model, "aiconfigurator-core's tables", perf_setting, capture_sizes)
    if folder is None or perf_setting == "analytical":
        roofline = _roofline(arch, device, tp, dtype, reasons, expert_parallel=ep)
        return _unpadded(roofline, "the roofline model", perf_setting, capture_sizes)
    padding = TokenPadding(capture_sizes) if capture_sizes else None
    tables = load_profile_tables(folder, arch, device, tp, dtype)
    if tables.moe is None:
        raise ValueError(
            f"expert parallelism needs the profile's MoE table (tokens x active experts); "
            f"{folder} has none"
        )
    return ProfileLatencyModel(tables, arch, name=str(folder), padding=padding, expert_parallel=ep)
