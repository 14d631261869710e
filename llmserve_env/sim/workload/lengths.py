"""Token-length distributions: fixed, uniform, lognormal and empirical (from a CSV column).

Every sampled length is an ``int64`` of at least 1 (a request always has a token).
"""

from __future__ import annotations

import csv
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError
from llmserve_env.config.schema import EmpiricalLength, FixedLength, LognormalLength, UniformLength

LengthDist = FixedLength | UniformLength | LognormalLength | EmpiricalLength


def sample_lengths(cfg: LengthDist, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
    """Draw ``n`` token lengths from a length distribution.

    - ``fixed``: ``value`` every time (no draw).
    - ``uniform``: integers in ``[min, max]``, both ends included.
    - ``lognormal``: mean ``mean`` and coefficient of variation ``cv`` before clipping
      (``sigma^2 = ln(1 + cv^2)``, ``mu = ln(mean) - sigma^2 / 2``), rounded to the
      nearest integer and clipped to ``[min, max]``.
    - ``empirical``: values of the CSV column resampled with replacement, rounded and
      clipped to ``[min, max]``.

    Args:
        cfg: The length distribution from the scenario.
        rng: The generator to draw from (the simulation's ``lengths`` stream).
        n: How many lengths to draw.

    Returns:
        ``n`` lengths, each at least 1.

    Raises:
        ValueError: If ``n`` is negative.
        DataFileError: If the empirical CSV file or column is unusable.
    """
    if n < 0:
        raise ValueError(f"cannot draw a negative number of lengths ({n})")
    match cfg:
        case FixedLength():
            values = np.full(n, cfg.value, dtype=np.int64)
        case UniformLength():
            values = rng.integers(cfg.min, cfg.max, size=n, endpoint=True, dtype=np.int64)
        case LognormalLength():
            sigma2 = math.log1p(cfg.cv**2)
            draws = rng.lognormal(math.log(cfg.mean) - sigma2 / 2, math.sqrt(sigma2), size=n)
            values = np.clip(np.rint(draws), cfg.min, cfg.max).astype(np.int64)
        case EmpiricalLength():
            table = load_length_column(cfg.path, cfg.column)
            values = np.clip(table[rng.integers(0, len(table), size=n)], cfg.min, cfg.max)
    return np.maximum(values, 1)


def load_length_column(path: str | Path, column: str) -> NDArray[np.int64]:
    """Read one column of token counts from a CSV file with a header row.

    Non-integer values are rounded to the nearest integer. The result is cached per
    ``(path, column)`` and read-only, so repeated draws do not re-read the file.

    Args:
        path: The CSV file, e.g. Vidur's ``*_stats_*.csv`` length tables.
        column: The column name, e.g. ``num_prefill_tokens``.

    Returns:
        The column's values in file order.

    Raises:
        DataFileError: If the file cannot be read, has no such column, has no rows, or
            holds a value that is not a finite non-negative number (naming the line).
    """
    return _load_length_column(str(path), column)


@lru_cache(maxsize=32)
def _load_length_column(path: str, column: str) -> NDArray[np.int64]:
    values: list[float] = []
    line = 1
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise DataFileError(path, "empty file (expected a header row)", line=1)
            if column not in header:
                raise DataFileError(
                    path, f"no column {column!r} (found columns {', '.join(header)})", line=1
                )
            index = header.index(column)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                text = row[index] if index < len(row) else ""
                try:
                    value = float(text)
                except ValueError:
                    value = math.nan
                if not (math.isfinite(value) and value >= 0):
                    raise DataFileError(
                        path,
                        f"{column}: expected a non-negative number, got {text!r}",
                        line=line,
                    )
                values.append(value)
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataFileError(path, "not UTF-8 text", line=line + 1) from None
    except csv.Error as exc:
        raise DataFileError(path, f"malformed CSV: {exc}", line=line + 1) from None
    if not values:
        raise DataFileError(path, f"column {column!r} has no values (the file has only a header)")
    result = np.rint(np.asarray(values)).astype(np.int64)
    result.setflags(write=False)
    return result
