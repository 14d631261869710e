"""Import LLMServingSim 2.0 paper-artifact profiles (tag ``ispass26-artifact``).

Layout: ``perf_models/<HW>/<org>/<model>/tp<N>/layers.csv`` with
``layer_name,input,kv_cache,tp_size,latency(ns)`` (one row per operator and token
count, ``kv_cache`` always 0) and ``predictions/attn_prefill_predictions.csv``
(``kv_cache_size,prefill_chunk_size,prediction`` in ns) and
``predictions/attn_decode_predictions.csv`` (``batch_size,kv_cache_size,prediction``
in ns). Conversion (times / 1000 to microseconds):

- every operator of ``layers.csv`` except ``attn``, ``lm_head``, ``gate`` and
  ``expert.*`` -> ``dense.csv``; ``lm_head`` (charged per sequence by LLMServingSim)
  -> ``per_sequence.csv``;
- attention: LLMServingSim 2.0 charges prefill and decode attention separately and
  adds them, so the 4-D grid is filled with ``prefill(chunk, context) +
  decode(decodes, context)`` on a subset of the prediction grids (chunks 32, 64, 96,
  then every 128 to 2048, then doubling; contexts 0 and doubling from 64; decodes
  doubling); duplicate keys keep the first row, as LLMServingSim does;
- MoE (``gate`` and ``expert.w1/w2/w3`` per expert's token count): one block for ``T``
  tokens hitting ``e`` experts is ``gate(T) + e * (w1 + w2 + w3)(T * k / e)``.

Operator names keep LLMServingSim's (``input_layernorm``, ``q_proj``, ``rope``, ...);
the sequence is that of its trace generator (rope skipped on TPUs, which fold it into
attention).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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
from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    LayerSequence,
    MoePoints,
    Profile,
    ProfileMeta,
)
from llmserve_env.perf.tables import PiecewiseLinear

TAG = "llmservingsim-paper-1"
"""Importer identity for cache keys."""

_LATENCY = "latency(ns)"
_PER_SEQUENCE = ("lm_head",)
_MOE_OPS = ("gate", "expert.w1", "expert.w2", "expert.w3")


def is_tp_folder(path: Path) -> bool:
    """Whether ``path`` is a paper-artifact ``tp<N>`` folder (it holds ``layers.csv``)."""
    return (
        path.is_dir()
        and path.name.startswith("tp")
        and path.name[2:].isdigit()
        and (path / "layers.csv").is_file()
    )


def find_tp_folders(src: str | Path) -> list[Path]:
    """Every paper-artifact ``tp<N>`` folder at or below ``src``.

    Raises:
        DataFileError: when there is none.
    """
    return find_folders(
        src,
        is_tp_folder,
        "no LLMServingSim 2.0 profile here: expected <HW>/<org>/<model>/tp<N>/layers.csv",
    )


def source_files(tp_dir: Path) -> list[Path]:
    """The files a tp folder's conversion reads."""
    files = [tp_dir / "layers.csv"]
    for name in ("attn_prefill_predictions.csv", "attn_decode_predictions.csv"):
        path = tp_dir / "predictions" / name
        if path.is_file():
            files.append(path)
    return files


def _layers(path: Path, tp: int) -> tuple[dict[str, Curve], list[str]]:
    cols = read_csv_columns(
        path,
        numeric=("input", "kv_cache", "tp_size", _LATENCY),
        text=("layer_name",),
        integer=("input", "kv_cache", "tp_size"),
        optional=("tp_size",),
    )
    by_op: dict[str, dict[float, float]] = {}
    duplicates = zeros = 0
    tp_size = cols.numbers.get("tp_size")
    for i, line in enumerate(cols.lines):
        if tp_size is not None and tp_size[i] != tp:
            raise DataFileError(
                path,
                f"column 'tp_size': {int(tp_size[i])} in the folder of tp {tp} ({path.parent.name})",
                line=int(line),
            )
        zeros += cols.numbers[_LATENCY][i] == 0
        if cols.numbers["kv_cache"][i] != 0:
            raise DataFileError(
                path,
                "column 'kv_cache': rows with a KV cache are not supported "
                f"(got {int(cols.numbers['kv_cache'][i])})",
                line=int(line),
            )
        tokens = float(cols.numbers["input"][i])
        if tokens < 1:
            raise DataFileError(path, "column 'input': must be at least 1", line=int(line))
        table = by_op.setdefault(cols.text["layer_name"][i], {})
        if tokens in table:
            duplicates += 1
            continue  # LLMServingSim keeps the first occurrence
        table[tokens] = float(cols.numbers[_LATENCY][i]) / 1e3
    warnings = []
    if zeros:
        warnings.append(f"{path}: {zeros} row(s) with a latency of 0 ns (free operators)")
    if duplicates:
        warnings.append(f"{path}: {duplicates} duplicate row(s) ignored (the first one kept)")
    curves = {}
    for op, table in by_op.items():
        keys = sorted(table)
        curves[op] = Curve(np.array(keys), np.array([table[k] for k in keys]))
    return curves, warnings


def _grid2(path: Path, a: str, b: str) -> dict[tuple[int, int], float]:
    cols = read_csv_columns(path, numeric=(a, b, "prediction"), integer=(a, b))
    out: dict[tuple[int, int], float] = {}
    for i in range(len(cols)):
        key = (int(cols.numbers[a][i]), int(cols.numbers[b][i]))
        out.setdefault(key, float(cols.numbers["prediction"][i]) / 1e3)
    return out


def _subset(values: list[int], keep: list[int]) -> list[int]:
    have = set(values)
    return [v for v in keep if v in have]


def _attention(tp_dir: Path) -> AttentionPoints:
    pre_path = tp_dir / "predictions" / "attn_prefill_predictions.csv"
    dec_path = tp_dir / "predictions" / "attn_decode_predictions.csv"
    for path in (pre_path, dec_path):
        if not path.is_file():
            raise DataFileError(
                path,
                "file not found: this LLMServingSim 2.0 profile has no attention predictions, "
                "so its attention latency is unknown",
            )
    prefill = _grid2(pre_path, "kv_cache_size", "prefill_chunk_size")
    decode = _grid2(dec_path, "batch_size", "kv_cache_size")
    chunk_keep = [32, 64, 96] + list(range(128, 2049, 128)) + [2**i for i in range(12, 18)]
    ctx_keep = [0] + [64 * 2**i for i in range(16)]
    pcs = _subset(sorted({c for _, c in prefill}), chunk_keep)
    kps = _subset(sorted({k for k, _ in prefill}), ctx_keep)
    nds = _subset(sorted({n for n, _ in decode}), [2**i for i in range(12)])
    kds = _subset(sorted({k for _, k in decode if k > 0}), [64 * 2**i for i in range(16)])
    for path, axes in ((pre_path, (pcs, kps)), (dec_path, (nds, kds))):
        if not all(axes):
            raise DataFileError(path, "the prediction grid holds none of the expected points")
    rows: list[tuple[int, int, int, int, float]] = []
    for pc in pcs:
        for kp in kps:
            p = prefill.get((kp, pc))
            if p is None:
                continue
            rows.append((pc, kp, 0, 0, p))
            for nd in nds:
                for kd in kds:
                    d = decode.get((nd, kd))
                    if d is not None:
                        rows.append((pc, kp, nd, kd, p + d))
    for nd in nds:
        for kd in kds:
            d = decode.get((nd, kd))
            if d is not None:
                rows.append((0, 0, nd, kd, d))
    arr = np.array(rows, dtype=np.float64)
    return AttentionPoints(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], arr[:, 4])


def _moe(curves: dict[str, Curve], arch: ModelArch, path: Path) -> MoePoints:
    missing = [op for op in _MOE_OPS if op not in curves]
    if missing:
        raise DataFileError(path, f"MoE model without operator(s) {', '.join(missing)}")
    gate = PiecewiseLinear.from_points(curves["gate"].x, curves["gate"].time_us)
    experts = [PiecewiseLinear.from_points(curves[op].x, curves[op].time_us) for op in _MOE_OPS[1:]]
    tokens = [2**i for i in range(12)]
    counts = sorted({*(2**i for i in range(arch.num_experts.bit_length())), arch.num_experts})
    counts = [e for e in counts if 1 <= e <= arch.num_experts]
    rows = []
    for t in tokens:
        for e in counts:
            per_expert = max(1.0, t * arch.experts_per_token / e)
            time = gate(t) + e * sum(w(per_expert) for w in experts)
            rows.append((t, e, time))
    arr = np.array(rows, dtype=np.float64)
    return MoePoints(arr[:, 0], arr[:, 1], arr[:, 2])


def read_tp_folder(tp_dir: str | Path, arch: ModelArch | None = None) -> ImportResult:
    """Convert one paper-artifact ``tp<N>`` folder.

    Raises:
        DataFileError: A malformed or missing file (file, line and column named).
    """
    tp_dir = Path(tp_dir)
    if not is_tp_folder(tp_dir):
        raise DataFileError(tp_dir, "not an LLMServingSim 2.0 tp<N> folder (needs layers.csv)")
    hardware = tp_dir.parents[2].name
    model = f"{tp_dir.parents[1].name}/{tp_dir.parents[0].name}"
    tp = int(tp_dir.name[2:])
    arch = model_arch_for(model, tp_dir / "layers.csv", arch)
    curves, warnings = _layers(tp_dir / "layers.csv", tp)
    attention = _attention(tp_dir)
    is_tpu = "tpu" in hardware.lower()
    pre = ["input_layernorm", "q_proj", "k_proj", "v_proj"]
    if not is_tpu:
        pre.append("rope")
    if arch.is_moe:
        mlp = ["moe", "all_reduce"]
        moe = _moe(curves, arch, tp_dir / "layers.csv")
    else:
        mlp = ["gate_proj", "up_proj", "act_fn", "down_proj", "all_reduce"]
        moe = None
    layer = [*pre, "attention", "o_proj", "all_reduce", "post_layernorm", *mlp]
    sequence = LayerSequence(("embedding",), tuple(layer), ("final_layernorm", "lm_head"))
    skip = {"attn", *_PER_SEQUENCE, *_MOE_OPS}
    dense = {op: c for op, c in curves.items() if op not in skip}
    per_seq = {op: curves[op] for op in _PER_SEQUENCE if op in curves}
    needed = {op for op in sequence.prologue + sequence.layer + sequence.head}
    missing = sorted(needed - set(dense) - set(per_seq) - {"attention", "moe", "all_reduce"})
    if missing and is_tpu:
        # XLA fuses these on TPUs; LLMServingSim charges absent TPU rows 1 ns.
        warnings.append(
            f"{tp_dir}: operator(s) {', '.join(missing)} are not in the TPU profile "
            "(fused by XLA) and are left out, as LLMServingSim does"
        )
        sequence = LayerSequence(
            *(
                tuple(op for op in part if op not in missing)
                for part in (sequence.prologue, sequence.layer, sequence.head)
            )
        )
    elif missing:
        raise DataFileError(
            tp_dir / "layers.csv", f"operator(s) {', '.join(missing)} missing from the profile"
        )
    files = source_files(tp_dir)
    device = device_name(hardware)
    dtype = "bf16"
    meta = ProfileMeta(
        device=device,
        model=model,
        dtype=dtype,
        tp=tp,
        num_layers=arch.num_layers,
        sequence=sequence,
        source="llmservingsim-paper",
        collective_bytes_per_token=bytes_per_token(arch, dtype),
        provenance=provenance(
            tool="LLMServingSim 2.0 (ispass26-artifact) layer profiler",
            hardware=hardware,
            original_files=file_records(files, tp_dir.parents[3]),
            notes=(
                "16-bit weights (the paper's setting); attention = prefill + decode "
                "predictions added, as LLMServingSim 2.0 does"
                + ("; MoE block derived from gate and per-expert w1/w2/w3" if moe else "")
            ),
        ),
    )
    profile = Profile(
        meta=meta,
        dense=dense,
        per_sequence=per_seq,
        attention=attention,
        moe=moe,
        path=tp_dir,
    )
    relative = Path(device) / model / dtype / f"tp{tp}"
    return ImportResult(profile, relative, warnings, files, source_dir=tp_dir)


def import_llmservingsim_paper(
    src: str | Path, arch: ModelArch | None = None
) -> list[ImportResult]:
    """Convert every paper-artifact profile at or below ``src``."""
    return [read_tp_folder(tp_dir, arch) for tp_dir in find_tp_folders(src)]
