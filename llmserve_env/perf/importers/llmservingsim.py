"""Import LLMServingSim's vLLM-0.19 profiles (the project's current format).

Layout: ``perf/<HW>/<org>/<model>/<dtype>/meta.yaml`` and, per TP degree,
``tp<N>/{dense,per_sequence,attention,moe,skew_fit}.csv`` (times in microseconds). The
profiler runs one decoder layer (``hf_overrides.num_hidden_layers: 1``); the layer count
comes from the model catalog. Conversion:

- ``dense.csv`` (``layer,tokens,time_us``) -> ``dense.csv`` (``op,num_tokens,time_us``);
- ``per_sequence.csv`` (``layer,sequences,time_us``) -> ``per_sequence.csv``;
- ``attention.csv`` (``prefill_chunk,kv_prefill,n_decode,kv_decode,time_us``) -> the
  same grid under our column names (one prefill of ``prefill_chunk`` new tokens with
  ``kv_prefill`` cached, plus ``n_decode`` decodes with ``kv_decode`` cached each);
- ``moe.csv`` (``tokens,activated_experts,time_us``) -> ``moe.csv``;
- ``skew_fit.csv`` (alpha per bucket of prefill chunk, decodes, skew rate, longest
  decode and prefill context; labels such as ``n<=8`` or ``sr<=40%`` defined by
  ``meta.yaml: skew_fit.bucket_axes``) -> ``attention_skew.csv`` keyed by prefill chunk,
  prefill context, decodes, longest decode and skew rate, each label replaced by its
  bucket's upper edge. LLMServingSim's buckets are ``(bins[i], bins[i+1]]`` with values
  above the last edge in the last bucket, which is how our bucket tables read upper
  edges. Its skew rate is ``(mean - min) / (max - min)`` of the batch's decode lengths
  (for the profiler's two-length batches, the share of long decodes, the ``ratio``
  column of ``skew.csv``), clamped to [0, 1]; a batch with one decode or all decodes of
  one length gets no correction (its longest decode is its mean). A bucket combination
  without a row uses ``alpha_default`` (``attention.skew_alpha_default``), as
  LLMServingSim does; rows with the same key (none in the shipped profiles) are merged
  by their sample-weighted mean.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.csv_table import read_csv_columns
from llmserve_env.perf.importers.common import (
    ImportResult,
    bytes_per_token,
    device_name,
    file_records,
    find_folders,
    model_arch_for,
    provenance,
)
from llmserve_env.perf.importers.sequences import FAMILIES, family_of, restrict
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch
from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    MoePoints,
    Profile,
    ProfileMeta,
    SkewTable,
)

TAG = "llmservingsim-current-5"
"""Importer identity for cache keys (bump when the conversion changes)."""

_CATEGORY_FILES = ("dense.csv", "per_sequence.csv", "attention.csv", "moe.csv", "skew_fit.csv")


def is_tp_folder(path: Path) -> bool:
    """Whether ``path`` is an LLMServingSim ``tp<N>`` folder (its parent has meta.yaml)."""
    return (
        path.is_dir()
        and path.name.startswith("tp")
        and path.name[2:].isdigit()
        and (path / "dense.csv").is_file()
        and (path.parent / "meta.yaml").is_file()
    )


def find_tp_folders(src: str | Path) -> list[Path]:
    """Every ``tp<N>`` profile folder at or below ``src``, sorted.

    Raises:
        DataFileError: when there is none.
    """
    return find_folders(
        src,
        is_tp_folder,
        "no LLMServingSim profile here: expected <HW>/<org>/<model>/<dtype>/meta.yaml "
        "with tp<N>/dense.csv, per_sequence.csv, attention.csv below it",
    )


def source_files(tp_dir: Path) -> list[Path]:
    """The files a tp folder's conversion reads."""
    files = [tp_dir.parent / "meta.yaml"]
    files += [tp_dir / name for name in _CATEGORY_FILES if (tp_dir / name).is_file()]
    return files


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text (byte {exc.start})") from exc
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
        raise DataFileError(path, f"YAML error: {exc.problem}", line=line) from exc
    if not isinstance(data, dict):
        raise DataFileError(path, "expected a mapping")
    for key in ("hardware", "model", "variant"):
        if key not in data:
            raise DataFileError(path, f"missing key {key!r} (not an LLMServingSim profile?)")
    return data


def _curves(path: Path, group: str, axis: str) -> dict[str, Curve]:
    cols = read_csv_columns(path, numeric=(axis, "time_us"), text=(group,), integer=(axis,))
    names = cols.text[group]
    x = cols.numbers[axis]
    t = cols.numbers["time_us"]
    out: dict[str, Curve] = {}
    for name in dict.fromkeys(names):
        idx = [i for i, n in enumerate(names) if n == name]
        by_x: dict[float, float] = {}
        for i in idx:
            if x[i] in by_x:
                raise DataFileError(
                    path,
                    f"duplicate row ({group}={name}, {axis}={int(x[i])})",
                    line=int(cols.lines[i]),
                )
            if x[i] < 1:
                raise DataFileError(
                    path, f"column {axis!r}: must be at least 1", line=int(cols.lines[i])
                )
            by_x[float(x[i])] = float(t[i])
        keys = sorted(by_x)
        out[name] = Curve(np.array(keys), np.array([by_x[k] for k in keys]))
    return out


def _attention(path: Path) -> AttentionPoints:
    names = ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode")
    cols = read_csv_columns(path, numeric=(*names, "time_us"), integer=names)
    n = cols.numbers
    seen: dict[tuple[float, ...], int] = {}
    for i, line in enumerate(cols.lines):
        key = tuple(float(n[c][i]) for c in names)
        if key in seen:
            raise DataFileError(
                path, f"duplicate grid point {key}; first at line {seen[key]}", line=int(line)
            )
        if key[0] == 0 and key[2] == 0:
            raise DataFileError(
                path, "prefill_chunk=0 and n_decode=0 describes an empty batch", line=int(line)
            )
        seen[key] = int(line)
    return AttentionPoints(
        n["prefill_chunk"], n["kv_prefill"], n["n_decode"], n["kv_decode"], n["time_us"]
    )


def _moe(path: Path) -> MoePoints:
    names = ("tokens", "activated_experts")
    cols = read_csv_columns(path, numeric=(*names, "time_us"), integer=names)
    for col in names:
        bad = np.flatnonzero(cols.numbers[col] < 1)
        if len(bad):
            raise DataFileError(
                path, f"column {col!r}: must be at least 1", line=int(cols.lines[bad[0]])
            )
    return MoePoints(
        cols.numbers["tokens"], cols.numbers["activated_experts"], cols.numbers["time_us"]
    )


def _label_edges(bins: list[float], labels: list[str], path: Path) -> dict[str, float]:
    """Upper edge of each bucket label (``(bins[i], bins[i+1]]``)."""
    if len(bins) != len(labels) + 1:
        raise DataFileError(path, f"bucket axes: {len(bins)} bins for {len(labels)} labels")
    edges = [float(b) for b in bins]
    if any(hi <= lo for lo, hi in pairwise(edges)):
        raise DataFileError(path, f"bucket axes: bins {bins} are not increasing")
    return {label: edges[i + 1] for i, label in enumerate(labels)}


def _skew(path: Path, axes: dict[str, Any], meta_path: Path) -> SkewTable:
    cols = read_csv_columns(
        path,
        numeric=("pc", "alpha", "n_samples"),
        text=("n_label", "kv_big_label", "kp_label", "skew_rate_label"),
        integer=("pc", "n_samples"),
        nonnegative=False,
    )
    try:
        n_edges = _label_edges(axes["n_bins"], axes["n_labels"], meta_path)
        kv_edges = _label_edges(axes["kv_big_bins"], axes["kv_big_labels"], meta_path)
        kp_edges = _label_edges(axes["kp_bins"], axes["kp_labels"], meta_path)
        sr_edges = _label_edges(axes["skew_rate_bins"], axes["skew_rate_labels"], meta_path)
    except (KeyError, TypeError, ValueError) as exc:
        raise DataFileError(
            meta_path, f"skew_fit.bucket_axes: missing or bad {exc} (bins are lists of numbers)"
        ) from exc
    bad = np.flatnonzero(cols.numbers["pc"] < 0)
    if len(bad):
        raise DataFileError(
            path, "column 'pc': expected a value >= 0", line=int(cols.lines[bad[0]])
        )
    if min(sr_edges.values()) < 0.0:
        raise DataFileError(meta_path, "skew_fit.bucket_axes: skew_rate_bins need upper edges >= 0")
    # key -> [weighted alpha sum, weight]
    sums: dict[tuple[float, ...], list[float]] = defaultdict(lambda: [0.0, 0.0])
    text = cols.text
    for i, line in enumerate(cols.lines):
        labels = (
            ("n_label", n_edges),
            ("kv_big_label", kv_edges),
            ("kp_label", kp_edges),
            ("skew_rate_label", sr_edges),
        )
        for column, edges in labels:
            label = text[column][i]
            if label not in edges:
                raise DataFileError(
                    path,
                    f"column {column!r}: label {label!r} is not in meta.yaml "
                    f"skew_fit.bucket_axes (allowed: {', '.join(edges)})",
                    line=int(line),
                )
        weight = max(float(cols.numbers["n_samples"][i]), 1.0)
        alpha = float(cols.numbers["alpha"][i])
        key = (
            float(cols.numbers["pc"][i]),
            max(kp_edges[text["kp_label"][i]], 0.0),
            n_edges[text["n_label"][i]],
            kv_edges[text["kv_big_label"][i]],
            sr_edges[text["skew_rate_label"][i]],
        )
        sums[key][0] += weight * alpha
        sums[key][1] += weight
    keys = sorted(sums)
    return SkewTable(
        np.array([k[0] for k in keys]),
        np.array([k[1] for k in keys]),
        np.array([k[2] for k in keys]),
        np.array([k[3] for k in keys]),
        np.array([sums[k][0] / sums[k][1] for k in keys]),
        decode_skew_rate=np.array([k[4] for k in keys]),
    )


def read_tp_folder(tp_dir: str | Path, arch: ModelArch | None = None) -> ImportResult:
    """Convert one LLMServingSim ``tp<N>`` folder.

    Args:
        tp_dir: The folder (``.../<dtype>/tp<N>``).
        arch: The model's architecture; looked up in the catalog by the profile's model
            name when omitted.

    Raises:
        DataFileError: A malformed or missing file (file, line and column named).
    """
    tp_dir = Path(tp_dir)
    if not is_tp_folder(tp_dir):
        raise DataFileError(
            tp_dir, "not an LLMServingSim tp<N> folder (needs dense.csv and ../meta.yaml)"
        )
    meta_path = tp_dir.parent / "meta.yaml"
    raw = _read_meta(meta_path)
    tp = int(tp_dir.name[2:])
    model = str(raw["model"])
    dtype = str(raw["variant"]).split("-")[0]
    if dtype not in DTYPE_BYTES:
        raise DataFileError(
            meta_path,
            f"variant {raw['variant']!r}: dtype {dtype!r} is not one of {', '.join(DTYPE_BYTES)}",
        )
    arch = model_arch_for(model, meta_path, arch)
    family_name = str(raw.get("architecture") or arch.architecture)
    try:
        family = family_of(family_name)
    except KeyError as exc:
        raise DataFileError(meta_path, f"architecture: {exc.args[0]}") from exc
    dense = _curves(tp_dir / "dense.csv", "layer", "tokens")
    per_seq_path = tp_dir / "per_sequence.csv"
    per_seq = _curves(per_seq_path, "layer", "sequences") if per_seq_path.is_file() else {}
    attention_path = tp_dir / "attention.csv"
    if not attention_path.is_file():
        raise DataFileError(attention_path, "file not found: the profile has no attention table")
    attention = _attention(attention_path)
    moe_path = tp_dir / "moe.csv"
    moe = _moe(moe_path) if moe_path.is_file() else None
    if moe is None and arch.is_moe:
        # LLMServingSim profiles MoE once, at tp=1, and reads it from there.
        shared_moe = tp_dir.parent / "tp1" / "moe.csv"
        if shared_moe.is_file():
            moe = _moe(shared_moe)
    warnings: list[str] = []
    fit = raw.get("skew_fit") or {}
    skew = None
    alpha_default = 0.0
    if isinstance(fit, dict) and fit.get("enabled"):
        per_tp = fit.get("per_tp") or {}
        if not isinstance(per_tp, dict):
            raise DataFileError(meta_path, "skew_fit.per_tp: expected a mapping of tp to fits")
        entry = per_tp.get(tp) or per_tp.get(str(tp)) or {}
        if not isinstance(entry, dict):
            raise DataFileError(meta_path, f"skew_fit.per_tp.{tp}: expected a mapping")
        value = entry.get("alpha_default", fit.get("alpha_default", 0.0)) or 0.0
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise DataFileError(
                meta_path, f"skew_fit alpha_default: expected a number, got {value!r}"
            )
        alpha_default = float(value)
        skew_path = tp_dir / "skew_fit.csv"
        axes = entry.get("bucket_axes") or fit.get("bucket_axes")
        if skew_path.is_file() and isinstance(axes, dict):
            skew = _skew(skew_path, axes, meta_path)
        elif skew_path.is_file():
            warnings.append(f"{meta_path}: skew_fit has no bucket_axes; skew table skipped")
    available = set(dense) | set(per_seq)
    sequence, dropped = restrict(FAMILIES[family], available)
    if dropped:
        # Leaving them out would make every iteration silently faster.
        raise DataFileError(
            tp_dir,
            f"operator(s) {', '.join(dropped)} of the {family} layer sequence are in neither "
            f"dense.csv nor per_sequence.csv (found: {', '.join(sorted(available)) or 'none'})",
        )
    if arch.is_moe and moe is None:
        raise DataFileError(tp_dir / "moe.csv", f"file not found: {model} is a MoE model")
    files = source_files(tp_dir)
    device = device_name(str(raw["hardware"]))
    meta = ProfileMeta(
        device=device,
        model=model,
        dtype=dtype,
        kv_dtype=None,
        tp=tp,
        num_layers=arch.num_layers,
        sequence=sequence,
        source="llmservingsim-current",
        collective_bytes_per_token=bytes_per_token(arch, dtype),
        collective_bytes_per_seq=arch.logits_bytes_per_seq(dtype),
        overhead_us=0.0,
        skew_alpha_default=alpha_default,
        provenance=provenance(
            tool=f"LLMServingSim profiler {raw.get('profiler_version', '?')}",
            engine=f"vLLM {raw.get('vllm_version', '?')}",
            vllm_version=None if raw.get("vllm_version") is None else str(raw["vllm_version"]),
            gpu=raw.get("gpu"),
            measured_at=raw.get("profiled_at"),
            original_files=file_records(files, tp_dir.parent.parent),
            notes=(
                "converted from LLMServingSim's per-category tables; one decoder layer "
                f"profiled, repeated {arch.num_layers} times"
            ),
        ),
    )
    profile = Profile(
        meta=meta,
        dense=dense,
        per_sequence=per_seq,
        attention=attention,
        attention_skew=skew,
        moe=moe,
        collectives={},
        path=tp_dir,
    )
    relative = Path(device) / model / dtype / f"tp{tp}"
    return ImportResult(profile, relative, warnings, files, source_dir=tp_dir)


def import_llmservingsim(src: str | Path, arch: ModelArch | None = None) -> list[ImportResult]:
    """Convert every LLMServingSim profile at or below ``src``."""
    return [read_tp_folder(tp_dir, arch) for tp_dir in find_tp_folders(src)]
