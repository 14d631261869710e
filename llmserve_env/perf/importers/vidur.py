"""Import Vidur's profiles (microsoft/vidur ``data/profiling``).

- ``compute/<gpu>/<org>/<model>/mlp.csv``: per-operator timing statistics in
  milliseconds (``time_stats.<op>.median``) by ``num_tokens`` and
  ``num_tensor_parallel_workers``; operators ``emb``, ``input_layernorm``,
  ``attn_pre_proj``, ``attn_rope``, ``attn_post_proj``, ``post_attention_layernorm``,
  ``mlp_up_proj``, ``mlp_act``, ``mlp_down_proj``, ``add``.
- ``compute/.../attention.csv`` when present (Vidur's attention profile:
  ``time_stats.attn_prefill.median`` / ``time_stats.attn_decode.median`` in ms by
  ``batch_size``, ``prefill_chunk_size``, ``kv_cache_size``, ``is_prefill``).
- ``network/<topology>/{all_reduce,send_recv}.csv``: collective timings in ms by
  ``num_workers`` and ``size`` (bytes); only the rows with every worker on one node
  (``devices_per_node == num_workers``) are the instance's collectives
  (:func:`~llmserve_env.perf.comm.read_vidur_network`).

Conversion: medians (repeated sizes averaged), times x 1000 to microseconds; operator names kept (``emb``
becomes ``embedding``), layer sequence as Vidur charges it (two residual ``add`` per
layer, all-reduce after the two row-parallel projections). Vidur has no LM head, and
the published data set has no attention file, so the importer fills both by roofline
(:mod:`llmserve_env.perf.analytical_ops`, with that device family's calibrated derates)
for the named device and says so in the
profile's provenance; with an ``attention.csv`` the attention grid holds its prefill
and decode points (no mixed batches: Vidur times them apart, so mixed points are
their sums, as Vidur charges them).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf import analytical_ops
from llmserve_env.perf.comm import read_vidur_network
from llmserve_env.perf.csv_table import read_csv_columns
from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.importers.common import (
    ImportResult,
    bytes_per_token,
    file_records,
    model_arch_for,
    provenance,
)
from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    LayerSequence,
    Profile,
    ProfileMeta,
)
from llmserve_env.perf.roofline import device_family

_OPS = (
    "emb",
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)
_SEQUENCE = LayerSequence(
    ("embedding",),
    (
        "input_layernorm",
        "attn_pre_proj",
        "attn_rope",
        "attention",
        "attn_post_proj",
        "all_reduce",
        "add",
        "post_attention_layernorm",
        "mlp_up_proj",
        "mlp_act",
        "mlp_down_proj",
        "all_reduce",
        "add",
    ),
    ("lm_head",),
)


# Vidur's shape columns and the architecture field each must equal (its ``vocab_size``
# is the padded embedding, 32,768 for Llama-2's 32,000, so it is not compared).
_SHAPE_COLUMNS = {
    "n_head": "num_heads",
    "n_kv_head": "num_kv_heads",
    "n_embd": "hidden_size",
    "n_expanded_embd": "intermediate_size",
}


def _median_curves(path: Path, tp: int, arch: ModelArch) -> dict[str, Curve]:
    columns = [f"time_stats.{op}.median" for op in _OPS]
    cols = read_csv_columns(
        path,
        numeric=(*columns, "num_tokens", "num_tensor_parallel_workers", *_SHAPE_COLUMNS),
        optional=tuple(_SHAPE_COLUMNS),
        integer=("num_tokens", "num_tensor_parallel_workers", *_SHAPE_COLUMNS),
        at_least_one=("num_tokens",),
        require_rows=True,
    )
    for column, field in _SHAPE_COLUMNS.items():
        if column not in cols.numbers:
            continue
        found = sorted({int(v) for v in cols.numbers[column]})
        expected = int(getattr(arch, field))
        if found != [expected]:
            raise DataFileError(
                path,
                f"column {column} is {found}, but {arch.name} has {field} {expected}: "
                "this file profiles another model (pass the --model it was measured for)",
            )
    mask = cols.numbers["num_tensor_parallel_workers"] == tp
    if not mask.any():
        have = sorted({int(v) for v in cols.numbers["num_tensor_parallel_workers"]})
        raise DataFileError(path, f"no rows for {tp} tensor-parallel workers; the file has {have}")
    tokens = cols.numbers["num_tokens"][mask]
    x, inverse = np.unique(tokens, return_inverse=True)
    counts = np.bincount(inverse)
    out = {}
    for op, col in zip(_OPS, columns, strict=True):
        name = "embedding" if op == "emb" else op
        # Repeated measurements of one size (the published files have some) are averaged.
        sums = np.bincount(inverse, weights=cols.numbers[col][mask])
        out[name] = Curve(x, sums / counts * 1e3)
    return out


def _network(folder: Path, tp: int) -> tuple[dict[tuple[str, int], Curve], list[Path]]:
    out: dict[tuple[str, int], Curve] = {}
    files = []
    for op in ("all_reduce", "send_recv"):
        path = folder / f"{op}.csv"
        if not path.is_file():
            continue
        files.append(path)
        curves = read_vidur_network(path, op)
        if tp in curves:
            sizes, ms = curves[tp]
            out[(op, tp)] = Curve(sizes, ms * 1e3)
    if not files:
        raise DataFileError(folder, "no all_reduce.csv or send_recv.csv here")
    if ("all_reduce", tp) not in out:
        # Without it a TP profile would load with analytical all-reduces, unannounced.
        raise DataFileError(
            folder / "all_reduce.csv",
            f"no single-node rows for {tp} GPUs (num_workers == devices_per_node == {tp})",
        )
    return out, files


def _attention_file(path: Path, tp: int) -> AttentionPoints:
    """Vidur's attention profile: prefill rows carry ``time_stats.attn_prefill.*``,
    decode rows ``time_stats.attn_decode.*`` (the other phase's cells are empty)."""
    pre_col, dec_col = "time_stats.attn_prefill.median", "time_stats.attn_decode.median"
    cols = read_csv_columns(
        path,
        numeric=(
            "batch_size",
            "prefill_chunk_size",
            "kv_cache_size",
            "num_tensor_parallel_workers",
        ),
        text=("is_prefill",),
        integer=("batch_size", "prefill_chunk_size", "kv_cache_size"),
    )
    raw = _raw_columns(path, (pre_col, dec_col))
    n = cols.numbers
    prefill: dict[tuple[int, int], float] = {}
    decode: dict[tuple[int, int], float] = {}
    for i, line in enumerate(cols.lines):
        if int(n["num_tensor_parallel_workers"][i]) != tp:
            continue
        is_prefill = cols.text["is_prefill"][i].strip().lower() == "true"
        column = pre_col if is_prefill else dec_col
        cell = raw[column][i]
        try:
            value = float(cell) * 1e3
        except ValueError:
            value = float("nan")
        if not np.isfinite(value) or value <= 0:
            raise DataFileError(
                path,
                f"column {column!r}: expected a time above 0 (ms), got {cell!r}",
                line=int(line),
            )
        if is_prefill:
            prefill.setdefault((int(n["prefill_chunk_size"][i]), int(n["kv_cache_size"][i])), value)
        else:
            decode.setdefault((int(n["batch_size"][i]), int(n["kv_cache_size"][i])), value)
    if not prefill or not decode:
        raise DataFileError(path, f"no prefill and decode rows for tp={tp}")
    # Keep the points nearest to powers of two on every axis: the 4-D grid is the
    # product of its axes, so all of Vidur's points would make it millions of cells.
    pcs = _thin({pc for pc, _ in prefill})
    kps = _thin({kp for _, kp in prefill})
    nds = _thin({nd for nd, _ in decode})
    kds = _thin({kd for _, kd in decode if kd > 0})
    pre = {k: t for k, t in prefill.items() if k[0] in pcs and k[1] in kps}
    dec = {k: t for k, t in decode.items() if k[0] in nds and k[1] in kds}
    rows = [(pc, kp, 0, 0, t) for (pc, kp), t in pre.items()]
    rows += [(0, 0, nd, kd, t) for (nd, kd), t in dec.items()]
    for (pc, kp), t_pre in pre.items():
        for (nd, kd), t_dec in dec.items():
            rows.append((pc, kp, nd, kd, t_pre + t_dec))
    a = np.array(rows, dtype=np.float64)
    return AttentionPoints(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4])


def _thin(values: set[int]) -> set[int]:
    """The values nearest to each power of two (and 0 when present)."""
    ordered = np.array(sorted(values), dtype=np.float64)
    keep = {0} & values
    positive = ordered[ordered > 0]
    if len(positive):
        for k in range(int(np.log2(positive[-1])) + 2):
            keep.add(int(positive[np.argmin(np.abs(np.log2(positive) - k))]))
    return keep


def _raw_columns(path: Path, names: tuple[str, ...]) -> dict[str, list[str]]:
    """Text of some columns, empty cells kept (rows as :func:`read_csv_columns` reads)."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [name for name in names if name not in header]
        if missing:
            raise DataFileError(path, f"missing column(s) {', '.join(missing)}", line=1)
        index = {name: header.index(name) for name in names}
        out: dict[str, list[str]] = {name: [] for name in names}
        for row in reader:
            if not row or all(not cell.strip() for cell in row):
                continue
            for name, i in index.items():
                out[name].append(row[i].strip() if i < len(row) else "")
    return out


def import_vidur(
    mlp_csv: str | Path,
    *,
    model: str,
    device: DeviceSpec,
    tp: int,
    network: str | Path | None = None,
    attention_csv: str | Path | None = None,
    dtype: str = "bf16",
    arch: ModelArch | None = None,
) -> ImportResult:
    """Convert one Vidur compute profile (and optionally its network profile).

    Args:
        mlp_csv: ``compute/<gpu>/<org>/<model>/mlp.csv`` (or its folder).
        model: Catalog name of the model.
        device: The device it was measured on (also used for the roofline fills).
        tp: Tensor-parallel degree to take.
        network: ``network/<topology>/`` folder (needed for ``tp > 1``).
        attention_csv: Vidur attention profile, if any.
        dtype: Data type of the measurement (Vidur profiles 16-bit).
        arch: Model architecture (catalog lookup when omitted).

    Raises:
        DataFileError: malformed files (file, line and column named).
    """
    path = Path(mlp_csv)
    if path.is_dir():
        path = path / "mlp.csv"
    arch = model_arch_for(model, path, arch)
    dense = _median_curves(path, tp, arch)
    files = [path]
    # The roofline fills use the device family's fitted constants; say which.
    roofline = f"roofline ({device_family(device)} calibration)"
    warnings = [f"Vidur times no LM head: lm_head filled by {roofline}"]
    collectives: dict[tuple[str, int], Curve] = {}
    if network is not None and tp > 1:
        collectives, net_files = _network(Path(network), tp)
        files += net_files
        gpu = Path(network).name.split("_")[0].lower()  # Vidur's folders: a100_dgx, ...
        if re.fullmatch(r"[a-z]+\d+", gpu) and gpu not in device.name.lower():
            warnings.append(
                f"network folder {Path(network).name!r} looks measured on {gpu.upper()}, "
                f"not {device.name}: its collectives are that machine's"
            )
    elif tp > 1:
        warnings.append("no network profile: collectives are left to the device's link model")
    attn_path = Path(attention_csv) if attention_csv else path.parent / "attention.csv"
    if attn_path.is_file():
        attention = _attention_file(attn_path, tp)
        files.append(attn_path)
        attn_note = "attention from Vidur's attention.csv (prefill + decode added)"
    else:
        attention = analytical_ops.attention_points(arch, device, tp, dtype)
        attn_note = f"attention filled by {roofline} (no attention.csv)"
        warnings.append(attn_note)
    meta = ProfileMeta(
        device=device.name,
        model=arch.name,
        dtype=dtype,
        tp=tp,
        num_layers=arch.num_layers,
        sequence=_SEQUENCE,
        source="vidur",
        collective_bytes_per_token=bytes_per_token(arch, dtype),
        provenance=provenance(
            tool="Vidur profiler (microsoft/vidur data/profiling)",
            original_files=file_records(files),
            notes=f"medians; {attn_note}; lm_head filled by {roofline}",
        ),
    )
    profile = Profile(
        meta=meta,
        dense=dense,
        per_sequence={"lm_head": analytical_ops.lm_head_curve(arch, device, tp, dtype)},
        attention=attention,
        collectives=collectives,
    )
    relative = Path(device.name) / arch.name / dtype / f"tp{tp}"
    return ImportResult(profile, relative, warnings, files, source_dir=Path(mlp_csv))
