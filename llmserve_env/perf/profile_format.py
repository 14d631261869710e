"""The llmserve latency-profile format (version 1): typed in-memory form, read and write.

A profile folder holds ``meta.yaml`` and CSV tables with units in their column names
(``profiles/README.md`` is the specification). :func:`read_profile` parses and checks a
folder into a :class:`Profile`; :func:`write_profile` writes one. Importers of other
projects' profiles build a :class:`Profile` and write it with :func:`write_profile`;
compilation into lookup tables lives in :mod:`llmserve_env.perf.tables`.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.csv_table import CsvColumns, read_csv_columns, write_csv
from llmserve_env.perf.model_arch import DTYPE_BYTES

FORMAT_NAME = "llmserve-profile"
FORMAT_VERSION = 1

SECTIONS = ("prologue", "layer", "head")
"""Sections of the layer sequence: once, ``num_layers`` times, once."""

COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
"""Operator names that are looked up in ``collectives.csv``."""

PER_SEQ_SUFFIX = "@seq"
"""Suffix of a collective in the layer sequence whose message scales with the number of
sequences (``num_seqs * collective_bytes_per_seq`` bytes, e.g. ``all_gather@seq`` for
the vocabulary-parallel logits) instead of the number of tokens."""


def collective_of(op: str) -> tuple[str, bool] | None:
    """The ``collectives.csv`` name of a sequence operator and whether its message is
    per sequence (:data:`PER_SEQ_SUFFIX`), or ``None`` for an operator that is not a
    collective."""
    per_seq = op.endswith(PER_SEQ_SUFFIX)
    name = op[: -len(PER_SEQ_SUFFIX)] if per_seq else op
    return (name, per_seq) if name in COLLECTIVE_OPS else None


SOURCES = (
    "llmserve-profiler",
    "llmservingsim-current",
    "llmservingsim-paper",
    "vidur",
    "aiconfigurator",
    "synthetic",
)
"""Where a profile's numbers come from (``meta.yaml: source``)."""

DENSE_COLUMNS = ("op", "num_tokens", "time_us")
PER_SEQUENCE_COLUMNS = ("op", "num_seqs", "time_us")
ATTENTION_COLUMNS = (
    "prefill_chunk_tokens",
    "prefill_context_tokens",
    "num_decodes",
    "decode_context_tokens",
    "time_us",
)
SKEW_COLUMNS = (
    "prefill_chunk_tokens",
    "prefill_context_tokens",
    "num_decodes",
    "decode_max_context_tokens",
    "alpha",
)
SKEW_RATE_COLUMN = "decode_skew_rate"
"""Optional fifth key of ``attention_skew.csv``, written before ``alpha``."""
MOE_COLUMNS = ("num_tokens", "num_active_experts", "time_us")
COLLECTIVE_COLUMNS = ("op", "num_gpus", "size_bytes", "time_us")

FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class Curve:
    """Measured latency of one operator along one axis (tokens, sequences or bytes).

    Attributes:
        x: Axis values, strictly increasing.
        time_us: Latency at each value (microseconds).
    """

    x: FloatArray
    time_us: FloatArray

    def __post_init__(self) -> None:
        if len(self.x) == 0 or len(self.x) != len(self.time_us):
            raise ValueError("a curve needs one or more points and as many times as points")
        if np.any(np.diff(self.x) <= 0):
            raise ValueError("curve points must be strictly increasing")


@dataclass(frozen=True)
class AttentionPoints:
    """Measured attention-layer latencies on the 4-D mixed-batch grid (any subset of it).

    Attributes:
        prefill_chunk_tokens: New tokens of the batch's one prefill chunk (0: none).
        prefill_context_tokens: Tokens of that request already cached.
        num_decodes: Decoding requests (0: none).
        decode_context_tokens: Cached tokens of every decode.
        time_us: One attention-layer call (microseconds).
    """

    prefill_chunk_tokens: FloatArray
    prefill_context_tokens: FloatArray
    num_decodes: FloatArray
    decode_context_tokens: FloatArray
    time_us: FloatArray

    def __len__(self) -> int:
        return len(self.time_us)


@dataclass(frozen=True)
class SkewTable:
    """Decode-length skew correction factors, bucketed on four or five keys.

    Attributes:
        prefill_chunk_tokens: Bucket key: the prefill chunk of the batch.
        prefill_context_tokens: Bucket key: that chunk's cached tokens.
        num_decodes: Bucket key: decoding requests.
        decode_max_context_tokens: Bucket key: the longest decode's cached tokens.
        alpha: Share of the gap between the time at the longest and at the mean decode
            length that a skewed batch pays.
        decode_skew_rate: Optional bucket key: the skew rate
            ``(mean - min) / (max - min)`` of the decode lengths (upper bucket edges,
            >= 0); ``None``: one bucket for every skew rate.
    """

    prefill_chunk_tokens: FloatArray
    prefill_context_tokens: FloatArray
    num_decodes: FloatArray
    decode_max_context_tokens: FloatArray
    alpha: FloatArray
    decode_skew_rate: FloatArray | None = None


@dataclass(frozen=True)
class MoePoints:
    """Measured MoE-block latencies.

    Attributes:
        num_tokens: Tokens routed through the block.
        num_active_experts: Distinct experts they hit.
        time_us: One MoE block (microseconds).
    """

    num_tokens: FloatArray
    num_active_experts: FloatArray
    time_us: FloatArray


@dataclass(frozen=True)
class LayerSequence:
    """The operators of one iteration: ``prologue`` once, ``layer`` per decoder layer,
    ``head`` once. An operator listed twice runs twice."""

    prologue: tuple[str, ...]
    layer: tuple[str, ...]
    head: tuple[str, ...]

    def counts(self, num_layers: int) -> dict[str, int]:
        """How many times each operator runs in one iteration."""
        out: dict[str, int] = {}
        for op in self.prologue + self.head:
            out[op] = out.get(op, 0) + 1
        for op in self.layer:
            out[op] = out.get(op, 0) + num_layers
        return out

    def as_dict(self) -> dict[str, list[str]]:
        """Plain data for ``meta.yaml``."""
        return {"prologue": list(self.prologue), "layer": list(self.layer), "head": list(self.head)}


@dataclass(frozen=True)
class ProfileMeta:
    """The contents of ``meta.yaml`` (see ``profiles/README.md``)."""

    device: str
    model: str
    dtype: str
    tp: int
    num_layers: int
    sequence: LayerSequence
    source: str
    collective_bytes_per_token: int = 0
    overhead_us: float = 0.0
    kv_dtype: str | None = None
    collective_bytes_per_seq: int = 0
    skew_alpha_default: float = 0.0
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``meta.yaml``, in the documented key order."""
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "device": self.device,
            "model": self.model,
            "dtype": self.dtype,
        }
        if self.kv_dtype is not None:
            data["kv_dtype"] = self.kv_dtype
        data |= {
            "tp": self.tp,
            "num_layers": self.num_layers,
            "collective_bytes_per_token": self.collective_bytes_per_token,
        }
        if self.collective_bytes_per_seq:
            data["collective_bytes_per_seq"] = self.collective_bytes_per_seq
        data |= {
            "overhead_us": float(self.overhead_us),
            "source": self.source,
            "provenance": _plain(self.provenance),
            "units": {"time": "us", "size": "bytes"},
            "sequence": self.sequence.as_dict(),
        }
        if self.skew_alpha_default:
            data["attention"] = {"skew_alpha_default": float(self.skew_alpha_default)}
        return data


@dataclass(frozen=True)
class Profile:
    """A latency profile of one (device, model, dtype, tp).

    Attributes:
        meta: What was measured and the layer sequence.
        dense: Token-parallel operators: op -> latency vs ``num_tokens``.
        per_sequence: Per-sequence operators: op -> latency vs ``num_seqs``.
        attention: The attention grid (``None`` only in partial imports).
        attention_skew: Optional skew correction.
        moe: MoE block latencies (MoE models).
        collectives: ``(op, num_gpus)`` -> latency vs ``size_bytes``.
        path: The folder it was read from, if any.
    """

    meta: ProfileMeta
    dense: Mapping[str, Curve]
    per_sequence: Mapping[str, Curve] = field(default_factory=dict)
    attention: AttentionPoints | None = None
    attention_skew: SkewTable | None = None
    moe: MoePoints | None = None
    collectives: Mapping[tuple[str, int], Curve] = field(default_factory=dict)
    path: Path | None = None

    def table_of(self, op: str) -> str | None:
        """The table an operator of the sequence is looked up in, or ``None``."""
        if op == "attention":
            return "attention" if self.attention is not None else None
        if op == "moe":
            return "moe" if self.moe is not None else None
        if collective_of(op) is not None:
            return "collectives"
        if op in self.dense:
            return "dense"
        if op in self.per_sequence:
            return "per_sequence"
        return None

    def problems(self) -> list[str]:
        """Consistency problems (empty when the profile is usable as it is)."""
        out: list[str] = []
        meta = self.meta
        both = sorted(set(self.dense) & set(self.per_sequence))
        if both:
            out.append(f"operator(s) {both} are in both dense.csv and per_sequence.csv")
        seen: set[str] = set()
        for section in SECTIONS:
            for op in getattr(meta.sequence, section):
                if op in seen:
                    continue
                seen.add(op)
                table = self.table_of(op)
                if table is None:
                    out.append(
                        f"sequence.{section}: operator {op!r} is in no table "
                        f"(dense.csv, per_sequence.csv, attention.csv, moe.csv)"
                    )
                elif table == "collectives":
                    name, per_seq = collective_of(op) or (op, False)
                    if meta.tp > 1 and (name, meta.tp) not in self.collectives:
                        out.append(
                            f"sequence.{section}: collective {name!r} has no rows for "
                            f"num_gpus={meta.tp} in collectives.csv"
                        )
                    key = "collective_bytes_per_seq" if per_seq else "collective_bytes_per_token"
                    if getattr(meta, key) <= 0:
                        what = "per-sequence collectives" if per_seq else "collectives"
                        out.append(f"{key} must be > 0 when the sequence has {what}")
        if "attention" not in seen:
            out.append("the sequence has no 'attention' operator")
        return out

    def with_collectives(self, collectives: Mapping[tuple[str, int], Curve]) -> Profile:
        """A copy with collective rows added (existing rows win)."""
        merged = {**collectives, **self.collectives}
        return replace(self, collectives=merged)


# --------------------------------------------------------------------------- reading


def _meta_lines(text: str) -> dict[str, int]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, _ in node.value:
            lines[str(key.value)] = key.start_mark.line + 1
    return lines


_META_KEYS = {
    "format",
    "format_version",
    "device",
    "model",
    "dtype",
    "kv_dtype",
    "tp",
    "num_layers",
    "collective_bytes_per_token",
    "collective_bytes_per_seq",
    "overhead_us",
    "source",
    "provenance",
    "units",
    "sequence",
    "attention",
}


def read_meta(path: str | Path) -> ProfileMeta:
    """Parse and check ``meta.yaml``.

    Raises:
        DataFileError: naming the key and its line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataFileError(path, "meta.yaml not found: not a profile folder") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise DataFileError(path, f"YAML error: {exc.problem}", line=line) from exc
    if not isinstance(data, dict):
        raise DataFileError(path, "expected a mapping of keys")
    lines = _meta_lines(text)

    def fail(key: str, message: str) -> DataFileError:
        return DataFileError(path, f"{key}: {message}", line=lines.get(key))

    unknown = sorted(set(data) - _META_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(sorted(_META_KEYS))}")
    if data.get("format") != FORMAT_NAME:
        raise fail("format", f"expected {FORMAT_NAME!r}, got {data.get('format')!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise fail(
            "format_version",
            f"this version of llmserve-env reads version {FORMAT_VERSION}, "
            f"got {data.get('format_version')!r}",
        )
    for key in ("device", "model", "dtype", "tp", "num_layers", "source", "sequence"):
        if key not in data:
            raise DataFileError(path, f"missing key {key!r}")
    units = data.get("units", {"time": "us", "size": "bytes"})
    if units != {"time": "us", "size": "bytes"}:
        raise fail("units", f"must be {{time: us, size: bytes}}, got {units!r}")
    if data["source"] not in SOURCES:
        raise fail("source", f"unknown source {data['source']!r}; allowed: {', '.join(SOURCES)}")
    ints: dict[str, int] = {}
    for key in ("tp", "num_layers", "collective_bytes_per_token", "collective_bytes_per_seq"):
        value = data.get(key, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise fail(key, f"expected a whole number >= 0, got {value!r}")
        ints[key] = value
    if ints["tp"] < 1 or ints["num_layers"] < 1:
        raise fail("tp" if ints["tp"] < 1 else "num_layers", "must be at least 1")
    overhead = data.get("overhead_us", 0.0)
    if not isinstance(overhead, int | float) or isinstance(overhead, bool) or overhead < 0:
        raise fail("overhead_us", f"expected a number >= 0, got {overhead!r}")
    sequence = _parse_sequence(data["sequence"], lambda msg: fail("sequence", msg))
    attention = data.get("attention") or {}
    if not isinstance(attention, dict) or set(attention) - {"skew_alpha_default"}:
        raise fail("attention", "expected a mapping with only 'skew_alpha_default'")
    alpha = attention.get("skew_alpha_default", 0.0)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise fail("attention", f"skew_alpha_default must be a number, got {alpha!r}")
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise fail("provenance", "expected a mapping")
    for key in ("dtype", "kv_dtype"):
        if (key == "dtype" or data.get(key) is not None) and str(data[key]) not in DTYPE_BYTES:
            raise fail(key, f"{data[key]!r} is not one of {', '.join(DTYPE_BYTES)}")
    return ProfileMeta(
        device=str(data["device"]),
        model=str(data["model"]),
        dtype=str(data["dtype"]),
        kv_dtype=None if data.get("kv_dtype") is None else str(data["kv_dtype"]),
        tp=ints["tp"],
        num_layers=ints["num_layers"],
        collective_bytes_per_token=ints["collective_bytes_per_token"],
        collective_bytes_per_seq=ints["collective_bytes_per_seq"],
        overhead_us=float(overhead),
        source=str(data["source"]),
        provenance=provenance,
        sequence=sequence,
        skew_alpha_default=float(alpha),
    )


def _parse_sequence(raw: Any, fail: Any) -> LayerSequence:
    if not isinstance(raw, dict):
        raise fail("expected a mapping with prologue, layer and head lists")
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise fail(f"unknown section(s) {sorted(unknown)}; allowed: {', '.join(SECTIONS)}")
    parts: dict[str, tuple[str, ...]] = {}
    for section in SECTIONS:
        ops = raw.get(section) or []
        if not isinstance(ops, list) or not all(isinstance(op, str) and op for op in ops):
            raise fail(f"{section} must be a list of operator names")
        parts[section] = tuple(ops)
    if not parts["layer"]:
        raise fail("layer must list the operators of one decoder layer")
    return LayerSequence(**parts)


def _check_unique(cols: CsvColumns, keys: tuple[str, ...]) -> None:
    seen: dict[tuple[object, ...], int] = {}
    values = [cols.text[k] if k in cols.text else cols.numbers[k] for k in keys]
    for i, line in enumerate(cols.lines):
        key = tuple(v[i] for v in values)
        if key in seen:
            shown = ", ".join(f"{k}={v}" for k, v in zip(keys, key, strict=True))
            raise DataFileError(
                cols.path, f"duplicate row ({shown}); first at line {seen[key]}", line=int(line)
            )
        seen[key] = int(line)


def _curves(cols: CsvColumns, group: str, axis: str) -> dict[str, Curve]:
    _check_unique(cols, (group, axis))
    names = cols.text[group]
    x = cols.numbers[axis]
    t = cols.numbers["time_us"]
    out: dict[str, Curve] = {}
    for name in dict.fromkeys(names):
        mask = np.array([n == name for n in names])
        order = np.argsort(x[mask], kind="stable")
        out[name] = Curve(x[mask][order], t[mask][order])
    return out


def read_dense(path: Path) -> dict[str, Curve]:
    """Read ``dense.csv``."""
    cols = read_csv_columns(
        path,
        numeric=("num_tokens", "time_us"),
        text=("op",),
        integer=("num_tokens",),
        at_least_one=("num_tokens",),
    )
    return _curves(cols, "op", "num_tokens")


def read_per_sequence(path: Path) -> dict[str, Curve]:
    """Read ``per_sequence.csv``."""
    cols = read_csv_columns(
        path,
        numeric=("num_seqs", "time_us"),
        text=("op",),
        integer=("num_seqs",),
        at_least_one=("num_seqs",),
    )
    return _curves(cols, "op", "num_seqs")


def read_attention(path: Path) -> AttentionPoints:
    """Read ``attention.csv``."""
    keys = ATTENTION_COLUMNS[:4]
    cols = read_csv_columns(path, numeric=ATTENTION_COLUMNS, integer=keys)
    _check_unique(cols, keys)
    n = cols.numbers
    empty = np.flatnonzero((n["prefill_chunk_tokens"] == 0) & (n["num_decodes"] == 0))
    if len(empty):
        raise DataFileError(
            path,
            "a row with prefill_chunk_tokens=0 and num_decodes=0 describes an empty batch",
            line=int(cols.lines[empty[0]]),
        )
    prefill, decode = n["prefill_chunk_tokens"] > 0, n["num_decodes"] > 0
    if not prefill.any() or not decode.any():
        raise DataFileError(
            path,
            "needs prefill rows (prefill_chunk_tokens > 0) and decode rows (num_decodes > 0); "
            f"it has {int(prefill.sum())} and {int(decode.sum())}",
        )
    if len(np.unique(n["decode_context_tokens"][decode])) < 2:
        raise DataFileError(
            path,
            "decode rows at one decode_context_tokens value only: at least two are needed "
            "to interpolate decode attention over the KV length",
        )
    return AttentionPoints(*(n[c] for c in ATTENTION_COLUMNS))


def read_skew(path: Path) -> SkewTable:
    """Read ``attention_skew.csv`` (with or without the ``decode_skew_rate`` key)."""
    keys: tuple[str, ...] = SKEW_COLUMNS[:4]
    cols = read_csv_columns(
        path,
        numeric=(*SKEW_COLUMNS, SKEW_RATE_COLUMN),
        optional=(SKEW_RATE_COLUMN,),
        integer=keys,
        nonnegative=False,
    )
    rate = cols.numbers.get(SKEW_RATE_COLUMN)
    if rate is not None:
        keys = (*keys, SKEW_RATE_COLUMN)
    for key in keys:
        bad = np.flatnonzero(cols.numbers[key] < 0)
        if len(bad):
            raise DataFileError(
                path, f"column {key!r}: expected a value >= 0", line=int(cols.lines[bad[0]])
            )
    _check_unique(cols, keys)
    n = cols.numbers
    return SkewTable(
        prefill_chunk_tokens=n["prefill_chunk_tokens"],
        prefill_context_tokens=n["prefill_context_tokens"],
        num_decodes=n["num_decodes"],
        decode_max_context_tokens=n["decode_max_context_tokens"],
        alpha=n["alpha"],
        decode_skew_rate=rate,
    )


def read_moe(path: Path) -> MoePoints:
    """Read ``moe.csv``."""
    cols = read_csv_columns(
        path, numeric=MOE_COLUMNS, integer=MOE_COLUMNS[:2], at_least_one=MOE_COLUMNS[:2]
    )
    _check_unique(cols, MOE_COLUMNS[:2])
    return MoePoints(*(cols.numbers[c] for c in MOE_COLUMNS))


def read_collectives(path: Path) -> dict[tuple[str, int], Curve]:
    """Read ``collectives.csv``."""
    cols = read_csv_columns(
        path,
        numeric=("num_gpus", "size_bytes", "time_us"),
        text=("op",),
        integer=("num_gpus", "size_bytes"),
        at_least_one=("num_gpus",),
    )
    for i, op in enumerate(cols.text["op"]):
        if op not in COLLECTIVE_OPS:
            raise DataFileError(
                path,
                f"column 'op': unknown collective {op!r}; allowed: {', '.join(COLLECTIVE_OPS)}",
                line=int(cols.lines[i]),
            )
    _check_unique(cols, ("op", "num_gpus", "size_bytes"))
    out: dict[tuple[str, int], Curve] = {}
    ops = cols.text["op"]
    gpus = cols.numbers["num_gpus"].astype(np.int64)
    for key in dict.fromkeys(zip(ops, gpus.tolist(), strict=True)):
        mask = np.array([(o, g) == key for o, g in zip(ops, gpus.tolist(), strict=True)])
        x = cols.numbers["size_bytes"][mask]
        order = np.argsort(x, kind="stable")
        out[(key[0], int(key[1]))] = Curve(x[order], cols.numbers["time_us"][mask][order])
    return out


PROFILE_FILES = (
    "meta.yaml",
    "dense.csv",
    "per_sequence.csv",
    "attention.csv",
    "attention_skew.csv",
    "moe.csv",
    "collectives.csv",
)
"""Every file a profile folder may hold, in hashing order."""


def is_profile_folder(path: str | Path) -> bool:
    """Whether ``path`` is a folder in this format (its ``meta.yaml`` says so)."""
    meta = Path(path) / "meta.yaml"
    if not meta.is_file():
        return False
    try:
        data = yaml.safe_load(meta.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def read_profile(path: str | Path) -> Profile:
    """Read and check a profile folder.

    Raises:
        DataFileError: A missing or malformed file (file, line and column named), or an
            inconsistent profile (an operator of the sequence in no table).
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataFileError(folder, "profile folder not found")
    meta = read_meta(folder / "meta.yaml")
    dense = read_dense(folder / "dense.csv")
    optional = {name: folder / name for name in PROFILE_FILES[2:]}
    profile = Profile(
        meta=meta,
        dense=dense,
        per_sequence=(
            read_per_sequence(optional["per_sequence.csv"])
            if optional["per_sequence.csv"].is_file()
            else {}
        ),
        attention=read_attention(optional["attention.csv"]),
        attention_skew=(
            read_skew(optional["attention_skew.csv"])
            if optional["attention_skew.csv"].is_file()
            else None
        ),
        moe=read_moe(optional["moe.csv"]) if optional["moe.csv"].is_file() else None,
        collectives=(
            read_collectives(optional["collectives.csv"])
            if optional["collectives.csv"].is_file()
            else {}
        ),
        path=folder,
    )
    problems = [p for p in profile.problems() if "collectives.csv" not in p]
    if problems:
        raise DataFileError(folder / "meta.yaml", "; ".join(problems))
    return profile


def profile_digest(path: str | Path) -> str:
    """SHA-256 over the files of a profile folder (name and bytes of each present file)."""
    folder = Path(path)
    digest = hashlib.sha256()
    for name in PROFILE_FILES:
        file = folder / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- writing


def _write_skew(s: SkewTable, path: Path) -> None:
    keys = zip(
        s.prefill_chunk_tokens.astype(np.int64).tolist(),
        s.prefill_context_tokens.astype(np.int64).tolist(),
        s.num_decodes.astype(np.int64).tolist(),
        s.decode_max_context_tokens.astype(np.int64).tolist(),
        strict=True,
    )
    alpha = s.alpha.tolist()
    if s.decode_skew_rate is None:
        write_csv(path, SKEW_COLUMNS, ((*k, a) for k, a in zip(keys, alpha, strict=True)))
        return
    header = (*SKEW_COLUMNS[:4], SKEW_RATE_COLUMN, "alpha")
    rates = s.decode_skew_rate.tolist()
    rows = ((*k, r, a) for k, r, a in zip(keys, rates, alpha, strict=True))
    write_csv(path, header, rows)


def _plain(value: Any) -> Any:
    """Turn numpy scalars and tuples into plain YAML-safe data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _curve_rows(curves: Mapping[str, Curve]) -> Iterator[tuple[object, ...]]:
    for op, curve in curves.items():
        for x, t in zip(curve.x, curve.time_us, strict=True):
            yield op, int(x), float(t)


def _write_files(profile: Profile, folder: Path) -> None:
    text = yaml.safe_dump(profile.meta.as_dict(), sort_keys=False, width=100)
    (folder / "meta.yaml").write_text(text, encoding="utf-8")
    write_csv(folder / "dense.csv", DENSE_COLUMNS, _curve_rows(profile.dense))
    if profile.per_sequence:
        write_csv(
            folder / "per_sequence.csv", PER_SEQUENCE_COLUMNS, _curve_rows(profile.per_sequence)
        )
    if profile.attention is not None:
        a = profile.attention
        write_csv(
            folder / "attention.csv",
            ATTENTION_COLUMNS,
            (
                (int(p), int(c), int(n), int(k), float(t))
                for p, c, n, k, t in zip(
                    a.prefill_chunk_tokens,
                    a.prefill_context_tokens,
                    a.num_decodes,
                    a.decode_context_tokens,
                    a.time_us,
                    strict=True,
                )
            ),
        )
    if profile.attention_skew is not None:
        _write_skew(profile.attention_skew, folder / "attention_skew.csv")
    if profile.moe is not None:
        m = profile.moe
        write_csv(
            folder / "moe.csv",
            MOE_COLUMNS,
            (
                (int(t), int(e), float(u))
                for t, e, u in zip(m.num_tokens, m.num_active_experts, m.time_us, strict=True)
            ),
        )
    if profile.collectives:
        write_csv(
            folder / "collectives.csv",
            COLLECTIVE_COLUMNS,
            (
                (op, gpus, int(x), float(t))
                for (op, gpus), curve in profile.collectives.items()
                for x, t in zip(curve.x, curve.time_us, strict=True)
            ),
        )


def _check_folder(folder: Path, where: str | Path, problem: str, compile_it: bool = True) -> None:
    """Read the written ``folder`` back (and compile it): what this package would refuse
    to load is refused at ``where``, located at the file of the format."""
    # compiled imports this module
    from llmserve_env.perf.compiled import NO_FILL, cached_compile

    try:
        written = read_profile(folder)
        if compile_it and (written.meta.tp == 1 or written.collectives):
            # Compiled as written (a tensor-parallel one only with every collective its
            # sequence runs, else compiling refuses it) and cached under the key a run
            # loading the moved folder looks up (the digest is of the files' names and
            # bytes, not their place).
            cached_compile(f"{profile_digest(folder)}:{NO_FILL}", lambda: written)
    except (DataFileError, ValueError) as exc:
        message = str(exc).replace(f"{folder}/", "").replace(str(folder), "the profile")
        raise DataFileError(where, f"{problem}: {message}") from exc


def check_written(
    profile: Profile,
    where: str | Path = "profile",
    problem: str = "not a valid profile, nothing written",
    *,
    compile_it: bool = True,
) -> None:
    """Write ``profile`` to a scratch folder, read it back and (unless ``compile_it`` is
    off, for a caller that compiles it next) compile it, so that a profile this package
    would refuse to load is refused before it is written or used.

    Raises:
        DataFileError: at ``where``, with what reading or compiling the written folder
            found, located at the file of the format (``dense.csv:2: ...``).
    """
    with tempfile.TemporaryDirectory(prefix="llmserve-profile-") as scratch:
        _write_files(profile, Path(scratch))
        _check_folder(Path(scratch), where, problem, compile_it)


@dataclass
class StagedProfile:
    """A profile written and checked in a scratch folder beside its target folder, not
    yet in place (:func:`stage_profile`): :meth:`commit` moves it in, :meth:`discard`
    removes it and the folders made for it."""

    folder: Path
    staging: Path
    created: list[Path]
    """Folders made for it (the target and its missing parents), deepest first."""

    def commit(self) -> Path:
        """Move the files into the target folder (files of the format it does not have
        are removed there; other files are kept).

        Raises:
            DataFileError: the files cannot be moved (nothing is left staged).
        """
        try:
            self.folder.mkdir(exist_ok=True)
            for name in PROFILE_FILES:
                written = self.staging / name
                if written.is_file():
                    written.replace(self.folder / name)
                else:
                    (self.folder / name).unlink(missing_ok=True)
        except OSError as exc:
            self.discard()
            raise DataFileError(self.folder, f"cannot write the profile: {exc}") from exc
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.folder

    def discard(self) -> None:
        """Remove the staged files and the folders made for them."""
        shutil.rmtree(self.staging, ignore_errors=True)
        for created in self.created:
            shutil.rmtree(created, ignore_errors=True)


def stage_profile(
    profile: Profile, path: str | Path, *, source: str | Path | None = None
) -> StagedProfile:
    """Write ``profile`` to a scratch folder beside the folder ``path``, read it back and
    compile it there (:func:`check_written`'s check), without touching ``path``.

    Args:
        profile: The profile.
        path: Its target folder.
        source: What it was converted from, where a refusal is located (default: the
            target).

    Raises:
        DataFileError: the profile would not load (nothing is left staged), or ``path``
            is not a folder.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise DataFileError(folder, "exists and is not a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as exc:
        for created in missing[1:]:
            shutil.rmtree(created, ignore_errors=True)
        raise DataFileError(folder, f"cannot create the folder: {exc.strerror}") from exc
    staged = StagedProfile(folder, staging, missing)
    try:
        _write_files(profile, staging)
        if source is None:
            _check_folder(staging, folder, "not a valid profile, nothing written")
        else:
            _check_folder(staging, source, "converts to an invalid profile, nothing written")
    except (OSError, DataFileError) as exc:
        staged.discard()
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(folder, f"cannot write the profile: {exc}") from exc
    return staged


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write a profile folder (created if needed; files of the format are replaced).

    The profile is staged beside ``path`` and checked there (:func:`stage_profile`),
    then moved into place file by file, so a refused or failed write leaves an existing
    profile as it was; other files in the folder are kept.

    Returns:
        The folder.

    Raises:
        DataFileError: the profile would not load, or ``path`` is not a folder.
    """
    return stage_profile(profile, path).commit()
