"""Loaders for public LLM-serving trace formats.

============== ========== ============================================= ==================
format         file       fields (time unit)                            content
============== ========== ============================================= ==================
llmservingsim  JSON lines ``arrival_time_ns`` (ns), ``input_toks``,     token ids
                          ``output_toks``, optional ``input_tok_ids``,
                          ``output_tok_ids``
azure          CSV        ``TIMESTAMP`` (date-time), ``ContextTokens``, none
                          ``GeneratedTokens``
mooncake       JSON lines ``timestamp`` (ms), ``input_length``,         512-token segments
                          ``output_length``, ``hash_ids``
vidur          CSV        ``arrived_at`` (s), ``num_prefill_tokens``,   none
                          ``num_decode_tokens``
============== ========== ============================================= ==================

Every loader returns a :class:`WorkloadData` sorted by arrival, with times in seconds
from the first arrival. A length of 0 in a file becomes 1, because a request always has
at least one prompt token and one output token. Blank lines are ignored; any other line
that does not parse raises :class:`DataFileError` with its 1-based line number (CSV
header = line 1). Vidur's ``*_stats_*.csv`` files hold lengths without arrival times:
they are length tables for the ``empirical`` length distribution, not traces.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError
from llmserve_env.config.schema import TraceWorkload
from llmserve_env.sim.request import TokenContent
from llmserve_env.sim.workload.base import WorkloadData

TraceFormatName = Literal["llmservingsim", "azure", "mooncake", "vidur"]

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake ``hash_ids`` block."""

_JSON_KEYS: dict[TraceFormatName, tuple[str, ...]] = {
    "llmservingsim": ("input_toks", "output_toks", "arrival_time_ns"),
    "mooncake": ("timestamp", "input_length", "output_length", "hash_ids"),
}
_CSV_COLUMNS: dict[TraceFormatName, tuple[str, ...]] = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "vidur": ("arrived_at", "num_prefill_tokens", "num_decode_tokens"),
}
_LENGTH_TABLE_COLUMNS = ("num_prefill_tokens", "num_decode_tokens")
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


# --------------------------------------------------------------------------- reading


def _json_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line number, object)`` for every non-blank line of a JSON lines file."""
    line_no = 0
    try:
        with path.open(encoding="utf-8-sig") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFileError(
                        path,
                        f"invalid JSON: {exc.msg} (column {exc.colno}); "
                        "expected one JSON object per line",
                        line=line_no,
                    ) from None
                if not isinstance(record, dict):
                    raise DataFileError(
                        path,
                        f"expected one JSON object per line, got a {type(record).__name__}",
                        line=line_no,
                    )
                yield line_no, record
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataFileError(path, "not UTF-8 text", line=line_no + 1) from None


def _csv_rows(path: Path, fmt: TraceFormatName) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line number, values of fmt's columns)`` for every data row of a CSV file."""
    line_no = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            if not header:
                raise DataFileError(path, "empty file (expected a header row)", line=1)
            if problem := _columns_problem(header, fmt):
                raise DataFileError(path, problem, line=1)
            index = [header.index(name) for name in _CSV_COLUMNS[fmt]]
            for row in reader:
                line_no = reader.line_num
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataFileError(
                        path,
                        f"expected {len(header)} columns as in the header, got {len(row)}",
                        line=line_no,
                    )
                yield line_no, [row[i] for i in index]
    except OSError as exc:
        raise DataFileError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataFileError(path, "not UTF-8 text", line=line_no + 1) from None
    except csv.Error as exc:
        raise DataFileError(path, f"malformed CSV: {exc}", line=line_no + 1) from None


def _columns_problem(header: list[str], fmt: TraceFormatName | None) -> str | None:
    """Why ``header`` is not a trace of ``fmt`` (any CSV format when ``None``), or ``None``."""
    candidates = list(_CSV_COLUMNS) if fmt is None else [fmt]
    if any(all(name in header for name in _CSV_COLUMNS[c]) for c in candidates):
        return None
    if all(name in header for name in _LENGTH_TABLE_COLUMNS) and "arrived_at" not in header:
        return (
            f"a length table (columns {', '.join(header)}) with no arrival times, not a "
            "trace; use it with the 'empirical' length distribution "
            "(dist: empirical, column: num_prefill_tokens or num_decode_tokens)"
        )
    return f"found columns {', '.join(header)}; " + _needs(header, candidates, _CSV_COLUMNS)


def _needs(
    found: list[str],
    candidates: list[TraceFormatName],
    required: dict[TraceFormatName, tuple[str, ...]],
) -> str:
    """What each candidate format needs and which of it is missing from ``found``."""
    parts = []
    for name in candidates:
        missing = [key for key in required[name] if key not in found]
        parts.append(f"{name} needs {', '.join(required[name])} (missing {', '.join(missing)})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- fields


def _field(record: dict[str, Any], key: str, path: Path, line: int) -> Any:
    if key not in record:
        raise DataFileError(
            path, f"missing key {key!r} (record has {', '.join(map(repr, record))})", line=line
        )
    return record[key]


def _number(value: object) -> float | None:
    """``value`` as a float if it is a JSON number or a numeric string, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def _count(value: object, key: str, path: Path, line: int) -> int:
    """A non-negative integer (an integral float such as ``12.0`` is accepted)."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        return int(value)
    number = _number(value)
    if number is not None and number >= 0 and number.is_integer():
        return int(number)
    raise DataFileError(path, f"{key}: expected a non-negative integer, got {value!r}", line=line)


def _time(value: object, key: str, path: Path, line: int) -> float:
    """A finite non-negative number."""
    number = _number(value)
    if number is None or not math.isfinite(number) or number < 0:
        raise DataFileError(
            path, f"{key}: expected a non-negative number, got {value!r}", line=line
        )
    return number


def _int_list(value: object, key: str, path: Path, line: int) -> list[int]:
    if not isinstance(value, list) or not all(type(x) is int for x in value):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise DataFileError(path, f"{key}: expected a list of integers, got {shown}", line=line)
    return value


def _workload(
    path: Path,
    arrival: list[float] | NDArray[np.float64],
    prompt: list[int],
    output: list[int],
    contents: list[TokenContent | None] | None = None,
) -> WorkloadData:
    """Shift times to start at 0, raise lengths of 0 to 1, sort by arrival."""
    if len(arrival) == 0:
        raise DataFileError(path, "no requests in the file")
    times = np.asarray(arrival, dtype=np.float64)
    return WorkloadData.from_arrays(
        times - times.min(),
        np.maximum(np.asarray(prompt, dtype=np.int64), 1),
        np.maximum(np.asarray(output, dtype=np.int64), 1),
        contents=contents,
        source=str(path),
    )


# --------------------------------------------------------------------------- loaders


def load_llmservingsim_jsonl(path: str | Path) -> WorkloadData:
    """Load an LLMServingSim trace (JSON lines).

    Each line has ``input_toks``, ``output_toks`` and ``arrival_time_ns``, and optionally
    ``input_tok_ids`` and ``output_tok_ids``. Token ids (prompt then output) become the
    request's content, cut to ``input_toks + output_toks`` tokens; the lengths always
    come from ``input_toks`` and ``output_toks``. Output ids without input ids are
    ignored, as their position in the sequence is unknown.

    Args:
        path: The ``.jsonl`` file.

    Returns:
        The requests, times in seconds from the first arrival.

    Raises:
        DataFileError: If the file cannot be read or a line is malformed.
    """
    path = Path(path)
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    contents: list[TokenContent | None] = []
    for line, record in _json_records(path):
        num_in = _count(_field(record, "input_toks", path, line), "input_toks", path, line)
        num_out = _count(_field(record, "output_toks", path, line), "output_toks", path, line)
        time_ns = _field(record, "arrival_time_ns", path, line)
        arrival.append(_time(time_ns, "arrival_time_ns", path, line) * 1e-9)
        prompt.append(num_in)
        output.append(num_out)
        content = None
        if record.get("input_tok_ids") is not None:
            ids = _int_list(record["input_tok_ids"], "input_tok_ids", path, line)
            if record.get("output_tok_ids") is not None:
                ids = ids + _int_list(record["output_tok_ids"], "output_tok_ids", path, line)
            if ids:
                content = TokenContent(tokens=np.array(ids[: num_in + num_out], dtype=np.int64))
        contents.append(content)
    return _workload(path, arrival, prompt, output, contents)


def load_mooncake_jsonl(path: str | Path) -> WorkloadData:
    """Load a Mooncake trace (JSON lines).

    Each line has ``timestamp`` (ms), ``input_length``, ``output_length`` and
    ``hash_ids``, the ids of the prompt's 512-token blocks. The content is one
    ``(hash_id, 512)`` segment per block, the last one shortened so the content ends
    with the prompt; a prompt longer than its blocks has content for the blocks only.

    Args:
        path: The ``.jsonl`` file.

    Returns:
        The requests, times in seconds from the first arrival.

    Raises:
        DataFileError: If the file cannot be read or a line is malformed.
    """
    path = Path(path)
    block = MOONCAKE_BLOCK_TOKENS
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    contents: list[TokenContent | None] = []
    for line, record in _json_records(path):
        arrival.append(_time(_field(record, "timestamp", path, line), "timestamp", path, line))
        num_in = _count(_field(record, "input_length", path, line), "input_length", path, line)
        num_out = _count(_field(record, "output_length", path, line), "output_length", path, line)
        hash_ids = _int_list(_field(record, "hash_ids", path, line), "hash_ids", path, line)
        prompt.append(num_in)
        output.append(num_out)
        full, rest = divmod(min(num_in, block * len(hash_ids)), block)
        segments = list(zip(hash_ids[:full], repeat(block)))
        if rest:
            segments.append((hash_ids[full], rest))
        contents.append(TokenContent(segments=tuple(segments)) if segments else None)
    return _workload(path, np.asarray(arrival) * 1e-3, prompt, output, contents)


def load_azure_csv(path: str | Path) -> WorkloadData:
    """Load an Azure LLM inference trace (2023 or 2024 CSV).

    Columns ``TIMESTAMP`` (``2023-11-16 18:17:03.9799600``; ISO date-time, any number of
    fractional digits), ``ContextTokens`` and ``GeneratedTokens``.

    Args:
        path: The ``.csv`` file.

    Returns:
        The requests, times in seconds from the first arrival.

    Raises:
        DataFileError: If the file cannot be read or a row is malformed.
    """
    path = Path(path)
    whole_s: list[int] = []
    frac_s: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for line, (stamp, context, generated) in _csv_rows(path, "azure"):
        seconds, fraction = _parse_timestamp(stamp, path, line)
        whole_s.append(seconds)
        frac_s.append(fraction)
        prompt.append(_count(context, "ContextTokens", path, line))
        output.append(_count(generated, "GeneratedTokens", path, line))
    if not whole_s:
        raise DataFileError(path, "no requests in the file")
    # Whole seconds since year 1 exceed float precision for sub-microsecond parts:
    # subtract in integers first.
    whole = np.asarray(whole_s, dtype=np.int64)
    arrival = (whole - whole.min()).astype(np.float64) + np.asarray(frac_s)
    return _workload(path, arrival, prompt, output)


def _parse_timestamp(text: str, path: Path, line: int) -> tuple[int, float]:
    """``(whole seconds since 0001-01-01, fraction of a second)`` of an ISO date-time."""
    # Split off the fraction ourselves: fromisoformat keeps only 6 digits of it.
    head, dot, rest = text.strip().partition(".")
    digits = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    try:
        if dot and not digits:
            raise ValueError
        stamp = datetime.fromisoformat(head + rest[len(digits) :])  # date-time and zone
    except ValueError:
        raise DataFileError(
            path,
            f"TIMESTAMP: expected a date-time like '2023-11-16 18:17:03.9799600', got {text!r}",
            line=line,
        ) from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC).replace(tzinfo=None)
    seconds = stamp.toordinal() * 86400 + stamp.hour * 3600 + stamp.minute * 60 + stamp.second
    return seconds, float(f"0.{digits}") if digits else 0.0


def load_vidur_csv(path: str | Path) -> WorkloadData:
    """Load a Vidur request trace (CSV with ``arrived_at`` in seconds).

    Columns ``arrived_at``, ``num_prefill_tokens`` and ``num_decode_tokens``; other
    columns are ignored.

    Args:
        path: The ``.csv`` file.

    Returns:
        The requests, times in seconds from the first arrival.

    Raises:
        DataFileError: If the file cannot be read, is a length table without arrival
            times, or a row is malformed.
    """
    path = Path(path)
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    for line, (arrived, prefill, decode) in _csv_rows(path, "vidur"):
        arrival.append(_time(arrived, "arrived_at", path, line))
        prompt.append(_count(prefill, "num_prefill_tokens", path, line))
        output.append(_count(decode, "num_decode_tokens", path, line))
    return _workload(path, arrival, prompt, output)


# --------------------------------------------------------------------------- entry points


def detect_format(path: str | Path) -> TraceFormatName:
    """Tell a trace's format from its extension and its header or first record.

    ``.jsonl``, ``.json`` and ``.ndjson`` files are JSON lines, ``.csv`` files CSV; other
    files are JSON lines when they start with ``{``.

    Args:
        path: The trace file.

    Returns:
        ``"llmservingsim"``, ``"azure"``, ``"mooncake"`` or ``"vidur"``.

    Raises:
        DataFileError: If the file is empty, unreadable, or matches no format (the
            message lists what was found and what each format needs).
    """
    path = Path(path)
    try:
        with path.open(encoding="utf-8-sig") as f:
            head = f.read(1024).lstrip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFileError(path, f"cannot read: {exc}") from None
    if not head:
        raise DataFileError(path, "empty file")
    is_json = path.suffix.lower() in _JSON_SUFFIXES
    if not is_json and path.suffix.lower() != ".csv":
        is_json = head.startswith("{")
    if is_json:
        for _, record in _json_records(path):
            keys = list(record)
            for name, required in _JSON_KEYS.items():
                if all(key in keys for key in required):
                    return name
            raise DataFileError(
                path,
                f"unknown trace format: first record has keys {', '.join(keys)}; "
                + _needs(keys, list(_JSON_KEYS), _JSON_KEYS),
            )
    with path.open(newline="", encoding="utf-8-sig") as f:
        header = [name.strip() for name in next(csv.reader(f), [])]
    if problem := _columns_problem(header, None):
        raise DataFileError(path, f"unknown trace format: {problem}", line=1)
    return next(n for n, cols in _CSV_COLUMNS.items() if all(c in header for c in cols))


def load_trace(cfg: TraceWorkload) -> WorkloadData:
    """Load the trace of a scenario's ``workload`` section and cut it to size.

    Steps, in order: detect the format (``format: auto``); scale times by
    ``time_scale / rate_scale``; drop requests before ``start_s`` and subtract
    ``start_s``, so ``start_s`` and ``duration_s`` are both in scaled (simulated)
    seconds; keep arrivals before ``duration_s``; keep the first ``num_requests``; clip
    lengths to ``max_prompt_tokens`` / ``max_output_tokens``. Contents are kept whole
    (prefix caching only hashes blocks the request has). Lengths of 0 in the file
    become 1. ``priority`` is left to the caller.

    Args:
        cfg: The validated workload section (``path`` already resolved).

    Returns:
        The requests; ``meta`` has ``format``, ``num_requests_in_file`` and ``notes``
        (what the cuts did that the scenario may not expect: a ``num_requests`` above
        the requests left, with no ``duration_s`` window).

    Raises:
        DataFileError: If the file is malformed, matches no format, or no request is
            left after the cuts.
    """
    path = Path(cfg.path)
    fmt: TraceFormatName = detect_format(path) if cfg.format == "auto" else cfg.format
    match fmt:
        case "llmservingsim":
            data = load_llmservingsim_jsonl(path)
        case "azure":
            data = load_azure_csv(path)
        case "mooncake":
            data = load_mooncake_jsonl(path)
        case "vidur":
            data = load_vidur_csv(path)
    arrival = data.arrival_s * (cfg.time_scale / cfg.rate_scale) - cfg.start_s
    keep = arrival >= 0.0
    if cfg.duration_s is not None:
        keep &= arrival < cfg.duration_s
    index = np.flatnonzero(keep)[: cfg.num_requests]
    if len(index) == 0:
        raise DataFileError(
            path,
            f"no requests left after start_s={cfg.start_s} and duration_s={cfg.duration_s} "
            f"(the scaled trace spans 0 to {arrival[-1] + cfg.start_s:.6g} s)",
        )
    notes: list[str] = []
    if cfg.num_requests is not None and cfg.duration_s is None and len(index) < cfg.num_requests:
        # With duration_s, num_requests is a cap on the window and may well not bind.
        cuts = f" after start_s={cfg.start_s:g}" if cfg.start_s else ""
        notes.append(
            f"workload.num_requests is {cfg.num_requests}, but {path} has {len(index)} "
            f"requests{cuts}: all {len(index)} are replayed"
        )
    prompt = data.prompt_tokens[index]
    output = data.output_tokens[index]
    if cfg.max_prompt_tokens is not None:
        prompt = np.minimum(prompt, cfg.max_prompt_tokens)
    if cfg.max_output_tokens is not None:
        output = np.minimum(output, cfg.max_output_tokens)
    contents = None
    if data.contents is not None:
        contents = tuple(data.contents[i] for i in index)
        if all(c is None for c in contents):
            contents = None
    return replace(
        data,
        arrival_s=arrival[index],
        prompt_tokens=prompt,
        output_tokens=output,
        priority=data.priority[index],
        session_id=data.session_id[index],
        contents=contents,
        meta={"format": fmt, "num_requests_in_file": len(data), "notes": notes},
    )
