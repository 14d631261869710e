"""Helpers shared by the importers: results, provenance, model lookup, file hashing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch, load_model_arch
from llmserve_env.perf.profile_format import Profile


@dataclass(frozen=True)
class ImportResult:
    """One converted profile.

    Attributes:
        profile: The profile in llmserve format.
        relative_dir: Where it belongs below an output root
            (``<device>/<org>/<model>/<dtype>/tp<N>``).
        warnings: Things the user should know (operators dropped, values derived).
        source_files: The files it was converted from (for provenance and cache keys).
        source_dir: The folder (or file) converted, where a refusal of the converted
            profile is located.
    """

    profile: Profile
    relative_dir: Path
    warnings: list[str] = field(default_factory=list)
    source_files: list[Path] = field(default_factory=list)
    source_dir: Path | None = None


def package_version() -> str:
    """This package's version, for provenance."""
    try:
        return version("llmserve-env")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "unknown"


def file_records(files: Iterable[Path], root: Path | None = None) -> list[dict[str, str]]:
    """``[{path, sha256}]`` for provenance (paths relative to ``root`` when given)."""
    out = []
    for path in files:
        shown = path
        if root is not None:
            try:
                shown = path.relative_to(root)
            except ValueError:
                shown = path
        out.append({"path": str(shown), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    return out


def files_digest(files: Iterable[Path], tag: str) -> str:
    """A digest over file names and contents plus an importer tag (for cache keys)."""
    digest = hashlib.sha256(tag.encode())
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def converted_now() -> str:
    """ISO timestamp for ``provenance.converted_at``."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def device_name(raw: str) -> str:
    """The catalog's canonical name for a device, or ``raw`` when the catalog lacks it."""
    try:
        return resolve_device(raw).name
    except KeyError:
        return raw


def model_arch_for(model: str, where: Path, arch: ModelArch | None) -> ModelArch:
    """The architecture of ``model`` from the catalog unless given.

    Raises:
        DataFileError: when the catalog does not know the model.
    """
    if arch is not None:
        return arch
    try:
        return load_model_arch(model)
    except KeyError as exc:
        raise DataFileError(
            where,
            f"model {model!r} is not in the model catalog, so its layer count and width are "
            "unknown; add its HuggingFace config.json to profiles/models/ or pass the "
            "architecture explicitly",
        ) from exc


def bytes_per_token(arch: ModelArch, dtype: str) -> int:
    """Activation bytes per token of one tensor-parallel collective."""
    return arch.hidden_size * DTYPE_BYTES.get(dtype, 2)


def provenance(**items: Any) -> dict[str, Any]:
    """A provenance mapping with the converter's name, version and date added."""
    return {
        **{k: v for k, v in items.items() if v is not None},
        "converted_by": f"llmserve-env {package_version()}",
        "converted_at": converted_now(),
    }


def find_folders(src: str | Path, is_folder: Callable[[Path], bool], expected: str) -> list[Path]:
    """``src`` itself if ``is_folder`` accepts it, else every ``tp*`` folder below it
    that it accepts, sorted.

    Raises:
        DataFileError: ``src`` is not a folder, or none is found (``expected`` says
            what the layout should be).
    """
    root = Path(src)
    if is_folder(root):
        return [root]
    if not root.is_dir():
        raise DataFileError(root, "no such folder")
    found = sorted(p for p in root.rglob("tp*") if is_folder(p))
    if not found:
        raise DataFileError(root, expected)
    return found


def flat_curve_warnings(profile: Profile) -> list[str]:
    """Operators measured at one size only: interpolation makes them the same time for
    every batch (say so; a real profile has a curve)."""
    out = []
    for table, curves in (("dense", profile.dense), ("per_sequence", profile.per_sequence)):
        for op, curve in curves.items():
            if len(curve.x) == 1:
                out.append(
                    f"{op} ({table}) is measured at one size ({int(curve.x[0])}) only: "
                    "it takes that time at every batch size"
                )
    return out
