"""The default NVIDIA latency model: NVIDIA's measured kernel database (aiconfigurator-core).

``aiconfigurator-core`` (``pip install llmserve-env[nvidia]``) ships silicon-measured
GEMM, attention (context and generation), MoE and NCCL / custom all-reduce tables for
A100, H100, H200, B200, GB200, L40S and RTX PRO 6000, collected under vLLM (and other
frameworks). Its compiled engine interpolates them and floors off-grid shapes at
speed-of-light. This module asks that engine, once per (model, device, tp, dtype), for
the time of every operator of our model on grids of batch compositions and writes the
answers as an llmserve profile (``profiles/README.md``, ``source: aiconfigurator``),
which :class:`~llmserve_env.perf.profile_model.ProfileLatencyModel` then serves like any
measured profile. The compiled tables are cached by the profile compiler under ``$LLMSERVE_CACHE``
(default ``~/.cache/llmserve``), keyed by the model's dimensions, the device, tp, dtypes
and the aiconfigurator version, so only the first build of a (model, device, tp, dtype)
touches aiconfigurator (about a second, most of it loading its database).

The operator list follows vLLM's Llama-style decoder, as aiconfigurator's own model
graphs do: per layer add+RMSNorm, fused QKV GEMM, attention (with rotary and KV write),
O GEMM, add+RMSNorm, then a fused gate-up GEMM, SiLU-and-mul and down GEMM, or for MoE
models a router GEMM and the fused-experts kernel (aiconfigurator's MoE tables are
measured per token count under a routing distribution, so the experts are a dense
operator here); under tensor parallelism an all-reduce after the O and down projections
(and the vocabulary-parallel embedding), measured as vLLM's custom all-reduce; then the
final norm, the LM head on one row per sequence and the all-gather of the logits shards.

Attention comes as two measured families, prefill (one chunk after a cached context)
and decode (a batch of equal lengths). Mixed batches are charged the sum of both parts:
vLLM V1 runs them in one varlen kernel, which measures at or above that sum.

Everything degrades to ``None`` when the package is absent or the device / dtype is not
covered, so callers fall back to the roofline model.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import hashlib
import itertools
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from llmserve_env.perf.base import FloatArray, LatencyModel
from llmserve_env.perf.comm import CollectiveTable, alpha_beta_for
from llmserve_env.perf.compiled import cached_compile, compile_profile
from llmserve_env.perf.hardware import DeviceSpec, resolve_device
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch, load_model_arch
from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    LayerSequence,
    Profile,
    ProfileMeta,
)
from llmserve_env.perf.profile_model import ProfileLatencyModel, expected_active_experts

logger = logging.getLogger(__name__)

SYSTEMS: dict[str, str] = {
    "A100-SXM-80GB": "a100_sxm",
    "H100-SXM": "h100_sxm",
    "H200": "h200_sxm",
    "B200": "b200_sxm",
    "GB200": "gb200",
    "L40S": "l40s",
    "RTX-PRO-6000": "rtx_pro_6000_server",
}
"""Our catalog names -> aiconfigurator system names (devices with measured vLLM data)."""

BACKEND = "vllm"
"""The framework whose kernels were measured (the ``current`` version of its data)."""

STEP_OVERHEAD_S = 0.0
"""Fixed CPU time added per engine iteration (scheduler, input preparation, sampler,
output processing). Fitted end to end against aiconfigurator's measured vLLM benchmarks
(VALIDATION.md, "Default NVIDIA model"): vLLM V1 overlaps that CPU work with the GPU,
and the kernel tables, timed one kernel at a time, already carry per-kernel floors that
CUDA graphs partly hide, so any added overhead raised the TPOT error (0 ms: 18.7 %,
1 ms: 19.6 %, 2 ms: 23.0 % mean absolute error over 279 cases)."""

QUERY_VERSION = 6
"""Bumped when the operator list, the grids or how an operator is charged change
(invalidates cached answers and compiled profiles). 2: the logits all-gather moves
16-bit logits (the padded vocabulary), not FP32, as the profile format's per-sequence
collective. 3: token- and sequence-parallel curves never fall as the size grows
(:func:`_padded`). 4: MoE blocks no faster than reading the experts they hit
(:func:`_expert_read_floor_us`). 5: FP8 MoE from vLLM's own ``Fp8MoEMethod`` table
(``fp8_block``) where measured (:data:`_MOE_QUANTS`). 6: attention grids never fall as
the chunk, the cached context, the decodes or their KV length grow
(:func:`_padded_grid`); a model whose FP8 experts come from the per-tensor table says so
in its name."""

# Grids: token counts, sequence counts, chunk x cached context, decodes x KV length.
TOKENS = (
    1,
    2,
    4,
    8,
    12,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    8192,
    12288,
    16384,
    24576,
    32768,
)
SEQS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
PREFILL_CHUNK = (1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
PREFILL_CTX = (0, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
DECODE_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
DECODE_KV = (1, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)

_QUANT = {"bf16": "bfloat16", "fp16": "bfloat16", "fp8": "fp8"}
_MOE_QUANTS = {"bf16": ("bfloat16",), "fp16": ("bfloat16",), "fp8": ("fp8_block", "fp8")}
"""aiconfigurator's MoE tables for each of our dtypes, the one vLLM's own method runs
first. For FP8 that is ``fp8_block``, measured with vLLM's ``Fp8MoEMethod``: the method
that ``--quantization fp8`` and the block-scaled FP8 checkpoints model vendors publish
(Qwen3-*-FP8, DeepSeek-V3) load. aiconfigurator's ``fp8`` table is ModelOpt's
per-tensor method, on Hopper through a FlashInfer CUTLASS kernel 2-4x slower than BF16
(H100, Mixtral-8x7B tp 2, 64 tokens: 1.24 ms against 0.56 ms BF16 and 0.29 ms
``fp8_block``); it serves the expert shapes with no ``fp8_block`` data: every shape on
systems with none (RTX PRO 6000), and shapes vLLM's 128 x 128 block FP8 cannot split
over the ``tp`` asked for (Qwen3-30B-A3B's 768-wide experts at tp 4: 192 per rank), where
a per-tensor checkpoint is what vLLM could run. The model's name then says so
(:func:`_fp8_moe_note`)."""
BLOCK_FP8 = 128
"""vLLM's block-FP8 weight block (``weight_block_size`` [128, 128] of the published
checkpoints): each rank's expert width must be a multiple of it."""
_MOE_DISTRIBUTIONS = ("power_law_1.01", "power_law_1.2", "balanced")
"""Routing distributions of the MoE tables, most realistic first (the first one measured
for the model's expert shape is used)."""


class AiconfigUnavailable(RuntimeError):
    """aiconfigurator-core is missing, or does not cover the device / dtype asked for."""


# --------------------------------------------------------------------------- discovery


def aiconfigurator_version() -> str | None:
    """Installed aiconfigurator-core version, or ``None`` when it is not installed."""
    try:
        return metadata.version("aiconfigurator-core")
    except metadata.PackageNotFoundError:
        return None


def aiconfigurator_system(device: DeviceSpec | str) -> str | None:
    """The aiconfigurator system name of a catalog device, or ``None`` if not covered."""
    if isinstance(device, str):
        try:
            device = resolve_device(device)
        except KeyError:
            return None
    return SYSTEMS.get(device.name)


@contextlib.contextmanager
def _quiet_sdk() -> Iterator[None]:
    """aiconfigurator logs a warning per reused data table; keep our users' logs clean."""
    sdk_logger = logging.getLogger("aiconfigurator_core")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        sdk_logger.setLevel(level)


@functools.cache
def _engine(system: str) -> tuple[Any, Any, str]:
    """``(database, engine handle, data version)`` of one system, loaded once."""
    try:
        from aiconfigurator_core.sdk import perf_database
        from aiconfigurator_core.sdk.engine import EngineHandle
    except ImportError as exc:
        raise AiconfigUnavailable("aiconfigurator-core is not installed") from exc
    with _quiet_sdk():
        database = perf_database.get_database(system, BACKEND, "current")
        if database is None:
            raise AiconfigUnavailable(f"aiconfigurator-core has no {BACKEND} data for {system}")
        handle = EngineHandle.for_database(database)
    return database, handle, str(database.version)


def _has_tensor_cores(database: Any, dtype: str) -> bool:
    gpu = database.system_spec.get("gpu", {})
    return float(gpu.get("fp8_tc_flops" if dtype == "fp8" else "bfloat16_tc_flops") or 0) > 0


# --------------------------------------------------------------------------- querying


def _op_lists(
    arch: ModelArch,
    tp: int,
    dtype: str,
    kv_dtype: str,
    database: Any,
    distribution: str,
    expert_parallel_size: int = 1,
    moe_quant: str = "bfloat16",
) -> dict[str, Any]:
    """aiconfigurator operators (one call each) of one model shard, by table."""
    from aiconfigurator_core.sdk import common
    from aiconfigurator_core.sdk import operations as ops

    # Attention ops need their kernel-lane order resolved against the database, as
    # aiconfigurator's own engine-spec builder does.
    from aiconfigurator_core.sdk.engine import _resolve_attention_lane_orders

    q = getattr(common.GEMMQuantMode, _QUANT[dtype])
    bf16 = common.GEMMQuantMode.bfloat16
    h, hd = arch.hidden_size, arch.head_dim
    heads, kv_heads = max(1, arch.num_heads // tp), arch.kv_heads_per_gpu(tp)
    dense = [
        ops.Embedding("embedding", 1, arch.vocab_size // tp, h, 0.3),
        ops.ElementWise("add_norm_1", 1, 2 * h, 2 * h, 0.8),
        ops.GEMM("qkv_gemm", 1, (heads + 2 * kv_heads) * hd, h, q),
        ops.GEMM("o_gemm", 1, h, heads * hd, q, low_precision_input=True),
        ops.ElementWise("add_norm_2", 1, 2 * h, 2 * h, 0.8),
        ops.ElementWise("final_norm", 1, h, h, 0.8),
    ]
    if arch.is_moe:
        moe_q = getattr(common.MoEQuantMode, moe_quant)
        dense += [
            ops.GEMM("router_gemm", 1, arch.num_experts, h, bf16),
            ops.MoE(
                "moe_experts",
                1,
                h,
                arch.moe_intermediate_size,
                arch.experts_per_token,
                arch.num_experts,
                tp,
                expert_parallel_size,
                moe_q,
                distribution,
                expert_parallel_size,
            ),
        ]
    else:
        inter = arch.intermediate_size // tp
        dense += [
            ops.GEMM("gate_up_gemm", 1, 2 * inter, h, q),
            ops.ElementWise("act_gate", 1, 2 * inter, inter, 0.8),
            ops.GEMM("down_gemm", 1, h, inter, q, low_precision_input=True),
        ]
    kv_q = getattr(common.KVCacheQuantMode, _QUANT[kv_dtype])
    context = ops.ContextAttention(
        "attention", 1, heads, kv_heads, kv_q, common.FMHAQuantMode.bfloat16, head_size=hd
    )
    generation = ops.GenerationAttention("attention", 1, heads, kv_heads, kv_q, head_size=hd)
    _resolve_attention_lane_orders([context, generation], database, None)
    return {
        "dense": dense,
        "per_seq": [ops.GEMM("lm_head", 1, arch.vocab_size // tp, h, bf16)],
        "all_reduce": [ops.CustomAllReduce("all_reduce", 1, h, tp)] if tp > 1 else [],
        "context": [context],
        "generation": [generation],
    }


def _query(
    arch: ModelArch, system: str, tp: int, dtype: str, kv_dtype: str, ep: int = 1
) -> dict[str, FloatArray]:
    """Ask aiconfigurator's engine for every operator over the grids (microseconds).

    Raises:
        AiconfigUnavailable: the package is missing, the dtype has no tensor cores, or
            aiconfigurator has no data for one of the model's operator shapes.
    """
    try:
        return _query_engine(arch, system, tp, dtype, kv_dtype, ep)
    except AiconfigUnavailable:
        raise
    except Exception as exc:  # the SDK's own errors: no data for a shape, and the like
        raise AiconfigUnavailable(
            f"aiconfigurator-core cannot evaluate {arch.name} on {system}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc


def _query_engine(
    arch: ModelArch, system: str, tp: int, dtype: str, kv_dtype: str, ep: int = 1
) -> dict[str, FloatArray]:
    from aiconfigurator_core.sdk.engine import build_ops_json

    database, handle, version = _engine(system)
    if not _has_tensor_cores(database, dtype):
        raise AiconfigUnavailable(f"{system} has no {dtype} tensor cores in aiconfigurator-core")

    def run(ops_json: str, *, context: bool, batch: int, s: int, prefix: int = 0) -> list[float]:
        rows = handle.evaluate_ops_json(
            ops_json, is_context=context, batch_size=batch, s=s, prefix=prefix
        )
        return [float(row[1]) * 1e3 for row in rows]  # the engine answers in ms

    with _quiet_sdk():
        # The first MoE table (quant mode, then routing distribution) measured for the
        # model's expert shape; a dense model has one candidate.
        candidates = list(
            itertools.product(_MOE_QUANTS[dtype], _MOE_DISTRIBUTIONS)
            if arch.is_moe
            else [("bfloat16", _MOE_DISTRIBUTIONS[0])]
        )
        for i, (moe_quant, distribution) in enumerate(candidates):
            lists = _op_lists(arch, tp, dtype, kv_dtype, database, distribution, ep, moe_quant)
            js = {name: str(build_ops_json(items)) for name, items in lists.items() if items}
            try:
                first = handle.evaluate_ops_json(js["dense"], is_context=True, batch_size=1, s=1)
                break
            except Exception:
                if i == len(candidates) - 1:
                    raise
        out: dict[str, FloatArray] = {
            "dense_us": np.array([run(js["dense"], context=True, batch=1, s=m) for m in TOKENS]).T,
            "per_seq_us": np.array(
                [run(js["per_seq"], context=True, batch=1, s=n) for n in SEQS]
            ).T,
            "context_us": np.array(
                [
                    [
                        run(js["context"], context=True, batch=1, s=c, prefix=p)[0]
                        for p in PREFILL_CTX
                    ]
                    for c in PREFILL_CHUNK
                ]
            ),
            "generation_us": np.array(
                [
                    [run(js["generation"], context=False, batch=b, s=kv)[0] for kv in DECODE_KV]
                    for b in DECODE_BATCH
                ]
            ),
        }
        if "all_reduce" in js:
            out["all_reduce_us"] = np.array(
                [run(js["all_reduce"], context=True, batch=1, s=m)[0] for m in TOKENS]
            )
    out["dense_names"] = np.array([str(row[0]) for row in first])
    out["data_version"] = np.array(version)
    out["moe_distribution"] = np.array(distribution if arch.is_moe else "")
    out["moe_quant"] = np.array(moe_quant if arch.is_moe else "")
    return out


def _cache_key(
    arch: ModelArch, system: str, tp: int, dtype: str, kv_dtype: str, ep: int = 1
) -> str:
    key: dict[str, Any] = {
        "arch": {k: v for k, v in asdict(arch).items() if k != "name"},
        "system": system,
        "tp": tp,
        "dtype": dtype,
        "kv_dtype": kv_dtype,
        "aiconfigurator": aiconfigurator_version(),
        "query_version": QUERY_VERSION,
        "overhead_s": STEP_OVERHEAD_S,
    }
    if ep > 1:
        key["expert_parallel_size"] = ep
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- the profile


def _fp8_moe_note(arch: ModelArch, system: str, tp: int, raw: dict[str, FloatArray]) -> str:
    """Why FP8 experts were timed with ModelOpt's per-tensor table, not vLLM's block FP8
    (``fp8_block``, :data:`_MOE_QUANTS`); empty when they were not."""
    if str(raw["moe_quant"]) != "fp8":
        return ""
    width = arch.moe_intermediate_size // tp
    if width % BLOCK_FP8:
        why = (
            f"vLLM's {BLOCK_FP8} x {BLOCK_FP8} block FP8 cannot split the "
            f"{arch.moe_intermediate_size}-wide experts over tp {tp} ({width} per rank)"
        )
    else:
        why = f"aiconfigurator-core has no fp8_block data for these experts on {system}"
    return f"FP8 experts timed with ModelOpt's per-tensor kernels: {why}"


def _padded(times_us: FloatArray) -> FloatArray:
    """A curve over increasing sizes, never above its value at a larger size.

    Some of aiconfigurator's kernel entries are slower at a small size than at a larger
    one (B200's FP8 ``qkv_gemm``: 26.1 us at 1 token, 10.7 us at 8), which would make a
    batch faster as it grows. A smaller batch can always run the larger one's kernel
    padded, so each point takes the least time at its size or above.
    """
    return np.minimum.accumulate(np.asarray(times_us, dtype=np.float64)[::-1])[::-1]


def _expert_read_floor_us(
    arch: ModelArch, device: DeviceSpec, tp: int, dtype: str, tokens: FloatArray
) -> FloatArray:
    """The least time an MoE block can take: reading the experts ``tokens`` tokens hit
    (their ``1/tp`` shards) once at the device's peak memory bandwidth, microseconds.

    Some of aiconfigurator's MoE entries are below it (L40S, Qwen3-30B-A3B, one token:
    34 us for eight 9.4 MB experts, 87 us at 864 GB/s), as a kernel timed back to back
    on the same weights reads them from a 96 MB L2; in serving each layer's experts
    come from memory.
    """
    per_expert = 3 * arch.hidden_size * arch.moe_intermediate_size * DTYPE_BYTES[dtype] / tp
    hit = np.array(
        [expected_active_experts(n, arch.num_experts, arch.experts_per_token) for n in tokens]
    )
    return np.asarray(hit * per_expert / (device.mem_bw_gbps * 1e9) * 1e6, dtype=np.float64)


def _padded_grid(times_us: FloatArray) -> FloatArray:
    """A grid over increasing sizes on every axis, each point never above any point with
    every size at least as large (:func:`_padded` on each axis in turn).

    aiconfigurator's attention entries have the reversals its GEMMs have (H100,
    Llama-3.1-8B tp 8 FP8, a one-token chunk: 25.8 us with no cached context, 13.5 us
    after 128 cached tokens; GB200 decodes at 1,024 tokens of KV: 12.5, 11.0 and 11.1 us
    for 1, 2 and 4 of them), which would make an iteration faster as its work grows.
    """
    out = np.asarray(times_us, dtype=np.float64)
    for axis in range(out.ndim):
        out = np.flip(np.minimum.accumulate(np.flip(out, axis), axis=axis), axis)
    return out


def _attention_points(context_us: FloatArray, generation_us: FloatArray) -> AttentionPoints:
    """The 4-D attention grid: prefill-only and decode-only rows as measured (never
    falling as they grow, :func:`_padded_grid`), mixed rows as their sum. Decode KV
    length ``L`` is ``L - 1`` cached tokens plus the new one."""
    context_us, generation_us = _padded_grid(context_us), _padded_grid(generation_us)
    chunk = np.array(PREFILL_CHUNK, dtype=np.float64)
    ctx = np.array(PREFILL_CTX, dtype=np.float64)
    batch = np.array(DECODE_BATCH, dtype=np.float64)
    kd = np.array(DECODE_KV, dtype=np.float64) - 1.0
    parts: list[tuple[FloatArray, ...]] = []
    pc, kp = (a.ravel() for a in np.meshgrid(chunk, ctx, indexing="ij"))
    zeros = np.zeros_like(pc)
    parts.append((pc, kp, zeros, zeros, context_us.ravel()))
    nd, kk = (a.ravel() for a in np.meshgrid(batch, kd, indexing="ij"))
    zeros = np.zeros_like(nd)
    parts.append((zeros, zeros, nd, kk, generation_us.ravel()))
    mixed = np.add.outer(context_us, generation_us)  # [chunk, ctx, batch, kv]
    grids = np.meshgrid(chunk, ctx, batch, kd, indexing="ij")
    parts.append((*(g.ravel() for g in grids), mixed.ravel()))
    columns = [np.concatenate(cols) for cols in zip(*parts, strict=True)]
    return AttentionPoints(*columns)


def aiconfigurator_profile(
    arch: ModelArch | str,
    device: DeviceSpec | str,
    tp: int = 1,
    dtype: str = "bf16",
    *,
    kv_dtype: str | None = None,
    overhead_s: float | None = None,
    expert_parallel_size: int = 1,
) -> Profile:
    """An llmserve profile of (model, device, tp, dtype) from aiconfigurator's tables.

    Write it with :func:`~llmserve_env.perf.profile_format.write_profile` to inspect it.
    ``expert_parallel_size`` > 1 (an MoE model at ``tp`` 1): the ``moe_experts`` table
    is one rank's of that many data-parallel ranks with expert parallelism, by the
    rank's own token count (aiconfigurator's MoE with ``moe_ep`` and
    ``attention_dp``: the rank's experts over every rank's tokens); the dispatch and
    combine are left to the caller
    (:class:`~llmserve_env.perf.expert_parallel.ExpertParallel`).

    Raises:
        AiconfigUnavailable: the package is missing, or the device / dtype not covered.
        ValueError: a bad ``tp``.
    """
    arch = load_model_arch(arch) if isinstance(arch, str) else arch
    device = resolve_device(device) if isinstance(device, str) else device
    kv_dtype = kv_dtype or dtype
    if tp < 1:
        raise ValueError(f"tp must be >= 1, got {tp}")
    if aiconfigurator_version() is None:
        raise AiconfigUnavailable(
            "aiconfigurator-core is not installed (pip install llmserve-env[nvidia])"
        )
    for name, value in (("dtype", dtype), ("kv_dtype", kv_dtype)):
        if value not in _QUANT:
            raise AiconfigUnavailable(f"{name}={value!r} not covered; covered: {sorted(_QUANT)}")
    system = aiconfigurator_system(device)
    if system is None:
        raise AiconfigUnavailable(f"{device.name} is not covered; covered: {', '.join(SYSTEMS)}")
    ep = expert_parallel_size
    if ep > 1 and (not arch.is_moe or tp != 1):
        raise ValueError(
            f"expert_parallel_size {ep} needs an MoE model at tp 1 ({arch.name}, tp {tp})"
        )
    raw = _query(arch, system, tp, dtype, kv_dtype, ep)
    tokens = np.array(TOKENS, dtype=np.float64)
    seqs = np.array(SEQS, dtype=np.float64)
    measured = dict(zip(raw["dense_names"], raw["dense_us"], strict=True))
    if arch.is_moe and ep == 1 and "moe_experts" in measured:
        floor = _expert_read_floor_us(arch, device, tp, dtype, tokens)
        measured["moe_experts"] = np.maximum(measured["moe_experts"], floor)
    dense = {str(n): Curve(tokens, _padded(t)) for n, t in measured.items()}
    per_seq = {"lm_head": Curve(seqs, _padded(raw["per_seq_us"][0]))}
    collectives: dict[tuple[str, int], Curve] = {}
    ar: tuple[str, ...] = ()
    gather: tuple[str, ...] = ()
    bytes_per_token = arch.hidden_size * 2  # vLLM reduces activations in 16 bit
    # The logits shards (vocab/tp per row, in the 16-bit activation dtype: vLLM's
    # LogitsProcessor all-gathers the LM head's output before the sampler's float cast)
    # are all-gathered, num_seqs x vocab x 2 bytes in all.
    bytes_per_seq = arch.logits_bytes_per_seq()
    if tp > 1:
        ar = ("all_reduce",)
        gather = ("all_gather@seq",)
        collectives[("all_reduce", tp)] = Curve(
            tokens * bytes_per_token, _padded(raw["all_reduce_us"])
        )
        comm = collective_table(device) or alpha_beta_for(device)
        sizes = seqs * bytes_per_seq
        collectives[("all_gather", tp)] = Curve(sizes, comm.times_s("all_gather", sizes, tp) * 1e6)
    mlp = (
        ("router_gemm", "moe_experts") if arch.is_moe else ("gate_up_gemm", "act_gate", "down_gemm")
    )
    sequence = LayerSequence(
        prologue=("embedding", *ar),
        layer=("add_norm_1", "qkv_gemm", "attention", "o_gemm", *ar, "add_norm_2", *mlp, *ar),
        head=("final_norm", "lm_head", *gather),
    )
    meta = ProfileMeta(
        device=device.name,
        model=arch.name,
        dtype=dtype,
        kv_dtype=kv_dtype,
        tp=tp,
        num_layers=arch.num_layers,
        sequence=sequence,
        source="aiconfigurator",
        collective_bytes_per_token=bytes_per_token if tp > 1 else 0,
        collective_bytes_per_seq=bytes_per_seq if tp > 1 else 0,
        overhead_us=(STEP_OVERHEAD_S if overhead_s is None else overhead_s) * 1e6,
        provenance={
            "tool": f"aiconfigurator-core {aiconfigurator_version()}",
            "system": system,
            "engine": f"{BACKEND} {raw['data_version']}",
            "moe_distribution": str(raw["moe_distribution"]) or None,
            "moe_quant": str(raw["moe_quant"]) or None,
            **({"note": note} if (note := _fp8_moe_note(arch, system, tp, raw)) else {}),
            "query_key": _cache_key(arch, system, tp, dtype, kv_dtype, ep),
            **({"expert_parallel_size": ep} if ep > 1 else {}),
            "converted_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return Profile(
        meta=meta,
        dense=dense,
        per_sequence=per_seq,
        attention=_attention_points(raw["context_us"], raw["generation_us"]),
        collectives=collectives,
    )


@functools.lru_cache(maxsize=64)
def _model(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    kv_dtype: str,
    use_cache: bool,
    ep: int = 1,
) -> ProfileLatencyModel:
    def build() -> Profile:
        return aiconfigurator_profile(
            arch, device, tp, dtype, kv_dtype=kv_dtype, expert_parallel_size=ep
        )

    if use_cache:
        system = SYSTEMS[device.name]
        key = f"aiconfigurator:{_cache_key(arch, system, tp, dtype, kv_dtype, ep)}"
        compiled = cached_compile(key, build)
    else:
        compiled = compile_profile(build())
    name = f"aiconfigurator:{device.name}"
    return ProfileLatencyModel(
        compiled, arch, name=f"{name} ({compiled.note})" if compiled.note else name
    )


def aiconfigurator_model(
    arch: ModelArch | str,
    device: DeviceSpec | str,
    tp: int = 1,
    dtype: str = "bf16",
    *,
    kv_dtype: str | None = None,
    use_cache: bool = True,
    expert_parallel_size: int = 1,
    reasons: list[str] | None = None,
) -> LatencyModel | None:
    """The aiconfigurator-backed latency model, or ``None`` when it cannot be built.

    ``None`` (never an exception) when aiconfigurator-core is not installed, the device
    is not one it measured (see :data:`SYSTEMS`), or the dtype is not covered there
    (FP8 on A100, FP32 anywhere), so callers fall back to the roofline model.

    Args:
        arch: Model architecture, or a catalog name / config path.
        device: Catalog device, or its name.
        tp: Tensor-parallel degree.
        dtype: Weight / activation dtype (``bf16``, ``fp16``, ``fp8``).
        kv_dtype: KV-cache dtype (default: ``dtype``).
        use_cache: Read and write the on-disk caches.
        expert_parallel_size: Data-parallel ranks the experts are split over (the MoE
            table of one rank, :func:`aiconfigurator_profile`; 1: none).
        reasons: Gets why, when the answer is ``None`` for a device it covers (for one
            it does not, the roofline is simply the model, not a fallback).
    """
    try:
        arch = load_model_arch(arch) if isinstance(arch, str) else arch
        device = resolve_device(device) if isinstance(device, str) else device
        kv_dtype = kv_dtype or dtype
        if aiconfigurator_version() is None or aiconfigurator_system(device) is None:
            raise AiconfigUnavailable(f"aiconfigurator-core does not cover {device.name}")
        if dtype not in _QUANT or kv_dtype not in _QUANT:
            raise AiconfigUnavailable(f"dtype {dtype} / {kv_dtype} not covered")
        return _model(arch, device, tp, dtype, kv_dtype, use_cache, expert_parallel_size)
    except (AiconfigUnavailable, KeyError) as exc:
        logger.info("aiconfigurator model unavailable, falling back: %s", exc)
        covered = aiconfigurator_version() is not None and aiconfigurator_system(device)
        if reasons is not None and covered:
            why = str(exc.args[0]) if exc.args else type(exc).__name__
            reasons.append(why.split(" at /")[0][:200])  # the engine's end in a data path
        return None


# --------------------------------------------------------------------------- collectives

_NCCL_OPS = {
    "all_reduce": "all_reduce",
    "all_gather": "all_gather",
    "reduce_scatter": "reduce_scatter",
    "alltoall": "all_to_all",
}


@functools.cache
def collective_table(device: DeviceSpec | str) -> CollectiveTable | None:
    """NVIDIA's measured NCCL curves of a device (16-bit payloads), alpha-beta for what
    they lack; ``None`` without aiconfigurator-core or NCCL data for the device."""
    device = resolve_device(device) if isinstance(device, str) else device
    system = aiconfigurator_system(device)
    if system is None or aiconfigurator_version() is None:
        return None
    try:
        database, _, _ = _engine(system)
        import pandas as pd  # a dependency of aiconfigurator-core (with pyarrow)
    except (AiconfigUnavailable, ImportError):
        return None
    nccl_version = (database.system_spec.get("misc") or {}).get("nccl_version")
    root = Path(database.systems_root) / database.system_spec["data_dir"] / "comm" / "nccl"
    path = root / str(nccl_version) / "nccl_perf.parquet"
    if not path.is_file():
        found = sorted(root.glob("*/nccl_perf.parquet"))
        if not found:
            return None
        path = found[-1]
    columns = ["op_name", "nccl_dtype", "num_gpus", "message_size", "latency"]
    frame = pd.read_parquet(path, columns=columns)
    frame = frame[frame["nccl_dtype"] == "half"]
    curves: dict[tuple[str, int], tuple[FloatArray, FloatArray]] = {}
    for (op, n), group in frame.groupby(["op_name", "num_gpus"]):
        name = _NCCL_OPS.get(str(op))
        if name is None:
            continue
        by_size = group.groupby("message_size")["latency"].median().sort_index()
        # message_size counts elements (half: 2 bytes); latency is in ms.
        sizes = by_size.index.to_numpy(dtype=np.float64) * DTYPE_BYTES["bf16"]
        curves[(name, int(n))] = (sizes, by_size.to_numpy(dtype=np.float64) * 1e-3)
    if not curves:
        return None
    source = f"aiconfigurator:{system}/nccl/{path.parent.name}"
    return CollectiveTable(curves, fallback=alpha_beta_for(device), source=source)


def _release(version: str) -> tuple[int, ...]:
    """``"0.19.0"`` -> ``(0, 19, 0)`` (pre-release tags and unparsable parts are dropped)."""
    parts = []
    for piece in version.lstrip("v").split("."):
        digits = "".join(itertools.takewhile(str.isdigit, piece))
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


@functools.cache
def vllm_collective_table(
    device: DeviceSpec | str, vllm_version: str | None = None
) -> CollectiveTable | None:
    """Collectives as vLLM runs them on ``device``, from aiconfigurator's measurements.

    All-reduce comes from aiconfigurator's timing of vLLM's own
    ``tensor_model_parallel_all_reduce`` (``comm/vllm/<release>/custom_allreduce_perf``,
    BF16, CUDA-graph rows): whatever path vLLM takes there, its custom all-reduce where
    it applies and NCCL otherwise. The release is ``vllm_version`` when measured, else the
    newest measured one before it (``None``: the newest). Other collectives, and device
    counts that table lacks, come from the NCCL tables (:func:`collective_table`), the
    rest from the device's alpha-beta model. :attr:`CollectiveTable.source` says which
    file each measured collective comes from.

    Returns:
        The table, or ``None`` without aiconfigurator-core, without measurements for the
        device, or without a vLLM release at or before ``vllm_version``.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    nccl = collective_table(device)
    if nccl is None:
        return None
    system = SYSTEMS[device.name]
    database, _, _ = _engine(system)
    import pandas as pd  # present: collective_table() needed it

    root = Path(database.systems_root) / database.system_spec["data_dir"] / "comm" / "vllm"
    measured = {_release(p.parent.name): p for p in root.glob("*/custom_allreduce_perf.parquet")}
    wanted = _release(vllm_version) if vllm_version else None
    usable = sorted(r for r in measured if wanted is None or r <= wanted)
    if not usable:
        return None
    path = measured[usable[-1]]
    frame = pd.read_parquet(path, columns=["backend", "num_gpus", "message_size", "latency"])
    frame = frame[frame["backend"] == "vllm_graph"]
    curves: dict[tuple[str, int], tuple[FloatArray, FloatArray]] = {}
    for n, group in frame.groupby("num_gpus"):
        by_size = group.groupby("message_size")["latency"].median().sort_index()
        # message_size counts BF16 elements; latency is in ms.
        sizes = by_size.index.to_numpy(dtype=np.float64) * DTYPE_BYTES["bf16"]
        curves[("all_reduce", int(n))] = (sizes, by_size.to_numpy(dtype=np.float64) * 1e-3)
    if not curves:
        return None
    vllm_keys = set(curves)
    for op, n in nccl.keys():  # noqa: SIM118 (a CollectiveTable, not a dict)
        curves.setdefault((op, n), nccl.points(op, n))
    vllm_part = ", ".join(f"{op} x{n}" for op, n in sorted(vllm_keys))
    source = (
        f"aiconfigurator:{system}/vllm/{path.parent.name} ({vllm_part}: vLLM's all-reduce "
        f"under CUDA graphs) + {nccl.source} (the rest)"
    )
    return CollectiveTable(curves, fallback=nccl.fallback, source=source)
