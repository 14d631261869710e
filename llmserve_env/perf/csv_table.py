"""Strict CSV reading for profile files: typed columns, errors with file, line and column.

Profiles are small (thousands of rows), so they are read once with the ``csv`` module
into numpy arrays; every problem is a :class:`DataFileError` that names the file, the
1-based line (the header is line 1) and the column.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError


@dataclass(frozen=True)
class CsvColumns:
    """The columns of a CSV file, read as text and as numbers.

    Attributes:
        path: The file.
        header: Column names as written.
        lines: 1-based line number of each data row.
        text: Text columns asked for, one list per column.
        numbers: Numeric columns asked for, one float64 array per column.
    """

    path: Path
    header: tuple[str, ...]
    lines: NDArray[np.int64]
    text: dict[str, list[str]]
    numbers: dict[str, NDArray[np.float64]]

    def __len__(self) -> int:
        return len(self.lines)


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            try:
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as exc:
                raise DataFileError(path, f"CSV error: {exc}", line=reader.line_num) from exc
    except FileNotFoundError as exc:
        raise DataFileError(path, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text: {exc.reason}") from exc


def read_csv_columns(
    path: str | Path,
    *,
    numeric: Sequence[str] = (),
    text: Sequence[str] = (),
    optional: Sequence[str] = (),
    nonnegative: bool = True,
    integer: Sequence[str] = (),
    at_least_one: Sequence[str] = (),
    require_rows: bool = False,
) -> CsvColumns:
    """Read the named columns of a CSV file with a header row.

    Args:
        path: The CSV file.
        numeric: Columns that must parse as finite numbers.
        text: Columns kept as text (must be non-empty).
        optional: Columns of ``numeric`` or ``text`` that may be absent from the header
            (then absent from the result).
        nonnegative: Reject negative numbers.
        integer: Numeric columns whose values must be whole numbers.
        at_least_one: Numeric columns whose values must be at least 1 (counts).
        require_rows: Refuse a file with a header and no data rows.

    Returns:
        The columns; other columns of the file are ignored.

    Raises:
        DataFileError: A missing file or column, a short row, or a bad value, naming the
            file, line and column.
    """
    path = Path(path)
    rows = _rows(path)
    first = next(rows, None)
    if first is None:
        raise DataFileError(path, "empty file; expected a header row")
    _, raw_header = first
    header = tuple(name.strip() for name in raw_header)
    index = {name: i for i, name in enumerate(header)}
    missing = [c for c in (*numeric, *text) if c not in index and c not in optional]
    if missing:
        raise DataFileError(
            path,
            f"missing column(s) {', '.join(missing)}; the header has: {', '.join(header)}",
            line=1,
        )
    num_cols = [c for c in numeric if c in index]
    text_cols = [c for c in text if c in index]
    whole = set(integer)
    counts = set(at_least_one)
    lines: list[int] = []
    nums: dict[str, list[float]] = {c: [] for c in num_cols}
    texts: dict[str, list[str]] = {c: [] for c in text_cols}
    for line_no, row in rows:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise DataFileError(
                path,
                f"row has {len(row)} field(s) but the header has {len(header)}",
                line=line_no,
            )
        for col in num_cols:
            cell = row[index[col]].strip()
            try:
                value = float(cell)
            except ValueError:
                raise DataFileError(
                    path, f"column {col!r}: expected a number, got {cell!r}", line=line_no
                ) from None
            if not math.isfinite(value):
                raise DataFileError(
                    path, f"column {col!r}: expected a finite number, got {cell!r}", line=line_no
                )
            if nonnegative and value < 0:
                raise DataFileError(
                    path, f"column {col!r}: expected a value >= 0, got {cell!r}", line=line_no
                )
            if col in whole and value != int(value):
                raise DataFileError(
                    path, f"column {col!r}: expected a whole number, got {cell!r}", line=line_no
                )
            if col in counts and value < 1:
                raise DataFileError(path, f"column {col!r}: must be at least 1", line=line_no)
            nums[col].append(value)
        for col in text_cols:
            cell = row[index[col]].strip()
            if not cell:
                raise DataFileError(path, f"column {col!r}: empty value", line=line_no)
            texts[col].append(cell)
        lines.append(line_no)
    if require_rows and not lines:
        raise DataFileError(path, "no data rows (only the header)")
    return CsvColumns(
        path=path,
        header=header,
        lines=np.asarray(lines, dtype=np.int64),
        text=texts,
        numbers={c: np.asarray(v, dtype=np.float64) for c, v in nums.items()},
    )


def write_csv(path: str | Path, header: Sequence[str], rows: Iterator[Sequence[object]]) -> None:
    """Write a CSV file with a header row (floats in their shortest exact form)."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            writer.writerow([_fmt(v) for v in row])


def _fmt(value: object) -> str:
    if isinstance(value, float | np.floating):
        number = float(value)
        if number == int(number) and abs(number) < 1e15:
            return str(int(number))
        return repr(number)
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)
