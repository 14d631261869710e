"""Writing run outputs: summary JSON and CSV tables, atomically.

Every file is written to a temporary name first and renamed into place only after all
of them were written, so a failed run never leaves half-written output behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _clean(value: Any) -> Any:
    """JSON-safe values: numpy scalars to Python, NaN/inf to ``None``."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(data: Mapping[str, Any], indent: int | None = 2) -> str:
    """Serialise a summary-like mapping (NaN becomes ``null``)."""
    return json.dumps(_clean(dict(data)), indent=indent, sort_keys=False)


def _write_csv(path: Path, table: Mapping[str, np.ndarray]) -> None:
    names = list(table)
    columns = [table[name].tolist() for name in names]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for row in zip(*columns, strict=True):
            writer.writerow(
                ""
                if isinstance(v, float) and math.isnan(v)
                else (f"{v:.9g}" if isinstance(v, float) else v)
                for v in row
            )


def write_outputs(
    directory: Path,
    summary: Mapping[str, Any],
    tables: Mapping[str, Mapping[str, np.ndarray]],
    extra_texts: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write ``summary.json``, one CSV per table and extra text files into ``directory``.

    Returns:
        The paths written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        target = directory / "summary.json"
        tmp = target.with_name(target.name + ".tmp")
        staged.append((tmp, target))
        tmp.write_text(to_json(summary) + "\n", encoding="utf-8")
        for name, table in tables.items():
            target = directory / f"{name}.csv"
            tmp = target.with_name(target.name + ".tmp")
            staged.append((tmp, target))
            _write_csv(tmp, table)
        for name, text in (extra_texts or {}).items():
            target = directory / name
            tmp = target.with_name(target.name + ".tmp")
            staged.append((tmp, target))
            tmp.write_text(text, encoding="utf-8")
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, target in staged:
        os.replace(tmp, target)
    return [target for _, target in staged]


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> Path:
    """Write one JSON file through a temporary name (NaN becomes ``null``)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(to_json(data) + "\n", encoding="utf-8")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stops ``folder`` from being a folder: ``folder`` itself or the
    nearest existing one above it, when that is not a folder (``None`` when nothing is
    in the way). Commands check this before their work, not when they write."""
    for above in (folder, *folder.parents):
        if above.exists():
            return None if above.is_dir() else above
    return None
