"""Fit the roofline model's derates per device family against measured operator times.

For every measured GEMM (``m x k`` activations times ``k x n`` weights) and attention
call, the roofline charges ``max(FLOPs / (peak x eff), bytes / (bandwidth x eff_mem)) +
t0`` with the device's datasheet peak and bandwidth (``profiles/devices.yaml``). This
script grid-searches, per device family, the constants that minimise the mean absolute
log error:

- ``eff_gemm``, ``eff_mem`` and the per-kernel floor ``t0_gemm`` on GEMMs (QKV, O,
  gate-up and down projections, and NVIDIA's GEMM sweeps);
- ``eff_attn``, ``t0_attn`` and ``prefill_token`` (time per new query token) on
  prefill attention (FLOP-bound);
- ``eff_decode_mem`` (the bandwidth decode attention reaches on the KV cache) and
  ``decode_seq`` (time per decoding sequence) on decode attention, with the prefill
  fit's ``eff_attn`` and ``t0_attn``.

Sources (each skipped when absent):

- aiconfigurator-core GEMM and attention tables (vLLM, bf16) of A100, H100, H200, B200,
  GB200, L40S and RTX PRO 6000 (``pip install llmserve-env[nvidia]``);
- LLMServingSim paper-v0 ``layers.csv`` (ns) and ``attention.csv`` of A6000, H100,
  RTX3090 and TPU-v6e;
- LLMServingSim current ``dense.csv`` and ``attention.csv`` (us) of RTX PRO 6000 and
  RTX 4090;
- Vidur ``mlp.csv`` of A100 and H100.

Usage::

    python benchmarks/calibration/fit_roofline.py [--max-per-source 4000]

Prints per-family constants and per-device errors as markdown; the constants go into
``llmserve_env/perf/roofline.py`` (``FAMILY_CALIBRATIONS``) by hand, with this output
quoted in VALIDATION.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from common import markdown_table, shared_or_exit

from llmserve_env.perf.hardware import DeviceSpec, resolve_device
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.roofline import device_family

BF16 = 2.0


@dataclass
class Observations:
    """Measured operator times of one device from one source (seconds)."""

    device: str
    source: str
    gemm: list[tuple[float, float, float, float]] = field(default_factory=list)  # m n k t
    # flops, bytes, units (new tokens of prefill rows, sequences of decode rows), time
    prefill: list[tuple[float, float, float, float]] = field(default_factory=list)
    decode: list[tuple[float, float, float, float]] = field(default_factory=list)


# --------------------------------------------------------------------------- sources


def _thin(rows: list, limit: int, seed: int = 0) -> list:
    if len(rows) <= limit:
        return rows
    pick = np.random.default_rng(seed).choice(len(rows), size=limit, replace=False)
    return [rows[i] for i in sorted(pick)]


def _attn_prefill(
    b: float, q: float, ctx: float, heads: float, kvh: float, hd: float
) -> tuple[float, float]:
    """FLOPs and bytes of causal prefill attention: ``b`` chunks of ``q`` tokens after ``ctx``."""
    pairs = b * q * (ctx + (q + 1) / 2.0)
    flops = 4.0 * pairs * heads * hd
    nbytes = b * (2.0 * q * heads * hd + 2.0 * (ctx + q) * kvh * hd) * BF16
    return flops, nbytes


def _attn_decode(b: float, kv: float, heads: float, kvh: float, hd: float) -> tuple[float, float]:
    flops = 4.0 * b * kv * heads * hd
    nbytes = b * (2.0 * kv * kvh * hd + 2.0 * heads * hd) * BF16
    return flops, nbytes


def aiconfigurator_sources(limit: int) -> list[Observations]:
    """GEMM and attention sweeps of aiconfigurator-core (vLLM, bf16)."""
    try:
        import aiconfigurator_core
        import pandas as pd
    except ImportError:
        print("note: aiconfigurator-core not installed; its sources are skipped", file=sys.stderr)
        return []
    from llmserve_env.perf.aiconfig import SYSTEMS

    root = Path(aiconfigurator_core.__file__).parent / "systems" / "data"
    out = []
    for device, system in SYSTEMS.items():
        obs = Observations(device, "aiconfigurator")
        gemm = sorted((root / system / "gemm" / "vllm").glob("*/gemm_perf.parquet"))
        if gemm:
            g = pd.read_parquet(gemm[-1])
            g = g[(g.gemm_dtype == "bfloat16") & (g.n >= 512) & (g.k >= 512) & (g.n <= 32768)]
            rows = list(zip(g.m, g.n, g.k, g.latency * 1e-3, strict=True))
            obs.gemm = [tuple(map(float, r)) for r in _thin(rows, limit)]  # type: ignore[misc]
        attn = sorted((root / system / "attention" / "vllm").glob("*"))
        if attn:
            ctx = pd.read_parquet(attn[-1] / "context_attention_perf.parquet")
            ctx = ctx[(ctx.kv_cache_dtype == "bfloat16") & (ctx.get("window_size", 0) == 0)]
            rows = []
            for b, isl, h, kvh, hd, t in zip(
                ctx.batch_size,
                ctx.isl,
                ctx.num_heads,
                ctx.num_key_value_heads,
                ctx.head_dim,
                ctx.latency,
                strict=True,
            ):
                rows.append((*_attn_prefill(b, isl, 0, h, kvh, hd), b * isl, t * 1e-3))
            obs.prefill = _thin(rows, limit)
            gen = pd.read_parquet(attn[-1] / "generation_attention_perf.parquet")
            gen = gen[(gen.kv_cache_dtype == "bfloat16") & (gen.get("window_size", 0) == 0)]
            rows = []
            for b, s, h, kvh, hd, t in zip(
                gen.batch_size,
                gen.step,
                gen.num_heads,
                gen.num_key_value_heads,
                gen.head_dim,
                gen.latency,
                strict=True,
            ):
                rows.append((*_attn_decode(b, s + 1, h, kvh, hd), b, t * 1e-3))
            obs.decode = _thin(rows, limit)
        out.append(obs)
    return out


def _llama_gemms(model: str, tp: int, moe_mlp: bool = False) -> dict[str, tuple[int, int]]:
    """``(n, k)`` of each projection of one layer shard, by vLLM / HF layer names."""
    a = load_model_arch(model)
    q, kv = a.num_heads * a.head_dim // tp, a.num_kv_heads * a.head_dim // tp
    inter = a.intermediate_size // tp
    h = a.hidden_size
    shapes = {
        "q_proj": (q, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, q),
        "qkv_proj": (q + 2 * kv, h),
        "attn_pre_proj": (q + 2 * kv, h),
        "attn_post_proj": (h, q),
    }
    if not moe_mlp:
        shapes |= {
            "gate_proj": (inter, h),
            "up_proj": (inter, h),
            "down_proj": (h, inter),
            "gate_up_proj": (2 * inter, h),
            "mlp_up_proj": (2 * inter, h),
            "mlp_down_proj": (h, inter),
        }
    return shapes


def paper_sources(shared: Path, limit: int) -> list[Observations]:
    """LLMServingSim 2.0 paper profiles: layers.csv (ns) and attention.csv."""
    root = shared / "llmservingsim" / "paper-v0" / "perf_models"
    devices = {
        "A6000": "RTX-A6000",
        "H100": "H100-SXM",
        "RTX3090": "RTX3090",
        "TPU-v6e-1": "TPU-v6e",
    }
    by_device: dict[str, Observations] = {}
    for layers in sorted(root.glob("*/*/*/tp*/layers.csv")):
        tp_dir = layers.parent
        hw = tp_dir.parents[2].name
        model = f"{tp_dir.parents[1].name}/{tp_dir.parent.name}"
        tp = int(tp_dir.name[2:])
        obs = by_device.setdefault(hw, Observations(devices[hw], "llmservingsim-paper"))
        shapes = _llama_gemms(model, tp, moe_mlp=load_model_arch(model).is_moe)
        with layers.open(newline="") as handle:
            for row in csv.DictReader(handle):
                shape = shapes.get(row["layer_name"])
                if shape is not None:
                    obs.gemm.append(
                        (float(row["input"]), *map(float, shape), float(row["latency(ns)"]) * 1e-9)
                    )
        attention = tp_dir / "attention.csv"
        if attention.is_file():
            arch = load_model_arch(model)
            heads, kvh = arch.num_heads / tp, max(1, arch.num_kv_heads // tp)
            with attention.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    tpu_export = "mean_ns" in row
                    if tpu_export:
                        t = float(row["p50_ns"]) * 1e-9
                    else:
                        col = "prefill" if row["is_prefill"] == "True" else "decode"
                        t = float(row[f"time_stats.attn_{col}.median"]) * 1e-3
                    b, kv = float(row["batch_size"]), float(row["kv_cache_size"])
                    if row["is_prefill"] == "True":
                        chunk = float(row["prefill_chunk_size"])
                        obs.prefill.append(
                            (*_attn_prefill(b, chunk, kv, heads, kvh, arch.head_dim), b * chunk, t)
                        )
                    elif tpu_export or kv >= b:
                        # The GPU profiles' kv_cache_size reads as the KV of the whole
                        # decode batch (per request, their large batches would read
                        # faster than the device's bandwidth); the TPU export's as each
                        # request's (per batch, a batch of 128 would read 3 GB/s). GPU
                        # rows with fewer KV tokens than decodes (2-3 us: a kernel that
                        # read nothing) are not fitted.
                        per_request = kv if tpu_export else kv / b
                        obs.decode.append(
                            (*_attn_decode(b, per_request + 1, heads, kvh, arch.head_dim), b, t)
                        )
    for obs in by_device.values():
        obs.gemm, obs.prefill, obs.decode = (
            _thin(x, limit) for x in (obs.gemm, obs.prefill, obs.decode)
        )
    return list(by_device.values())


def current_sources(shared: Path, limit: int) -> list[Observations]:
    """LLMServingSim (vLLM 0.19 profiler) dense.csv and attention.csv (us)."""
    root = shared / "llmservingsim" / "current" / "perf"
    devices = {"RTXPRO6000": "RTX-PRO-6000", "RTX4090": "RTX4090"}
    by_device: dict[str, Observations] = {}
    for dense in sorted(root.glob("*/*/*/bf16/tp*/dense.csv")):
        tp_dir = dense.parent
        hw = tp_dir.parents[3].name
        model = f"{tp_dir.parents[2].name}/{tp_dir.parents[1].name}"
        tp = int(tp_dir.name[2:])
        arch = load_model_arch(model)
        obs = by_device.setdefault(hw, Observations(devices[hw], "llmservingsim-current"))
        shapes = _llama_gemms(model, tp, moe_mlp=arch.is_moe)
        with dense.open(newline="") as handle:
            for row in csv.DictReader(handle):
                shape = shapes.get(row["layer"])
                if shape is not None:
                    obs.gemm.append(
                        (float(row["tokens"]), *map(float, shape), float(row["time_us"]) * 1e-6)
                    )
        heads, kvh = arch.num_heads / tp, max(1, arch.num_kv_heads // tp)
        with (tp_dir / "attention.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                chunk, kvp = float(row["prefill_chunk"]), float(row["kv_prefill"])
                nd, kvd = float(row["n_decode"]), float(row["kv_decode"])
                t = float(row["time_us"]) * 1e-6
                if nd == 0 and chunk > 0:
                    obs.prefill.append(
                        (*_attn_prefill(1, chunk, kvp, heads, kvh, arch.head_dim), chunk, t)
                    )
                elif chunk == 0 and nd > 0:
                    obs.decode.append(
                        (*_attn_decode(nd, kvd + 1, heads, kvh, arch.head_dim), nd, t)
                    )
    for obs in by_device.values():
        obs.gemm, obs.prefill, obs.decode = (
            _thin(x, limit) for x in (obs.gemm, obs.prefill, obs.decode)
        )
    return list(by_device.values())


def vidur_sources(shared: Path, limit: int) -> list[Observations]:
    """Vidur mlp.csv: projection GEMMs by tokens and TP (ms)."""
    root = shared / "profiles" / "vidur" / "compute"
    out = []
    for hw, device in (("a100", "A100-SXM-80GB"), ("h100", "H100-SXM")):
        obs = Observations(device, "vidur")
        for path in sorted((root / hw).glob("*/*/mlp.csv")):
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    tp = float(row["num_tensor_parallel_workers"])
                    h, heads = float(row["n_embd"]), float(row["n_head"])
                    kvh, inter = float(row["n_kv_head"]), float(row["n_expanded_embd"])
                    hd = h / heads
                    gated = row["use_gated_mlp"] == "True"
                    shapes = {
                        "attn_pre_proj": ((heads + 2 * kvh) * hd / tp, h),
                        "attn_post_proj": (h, heads * hd / tp),
                        "mlp_up_proj": ((2 if gated else 1) * inter / tp, h),
                        "mlp_down_proj": (h, inter / tp),
                    }
                    m = float(row["num_tokens"])
                    for op, (n, k) in shapes.items():
                        value = row.get(f"time_stats.{op}.median")
                        if value:
                            obs.gemm.append((m, n, k, float(value) * 1e-3))
        obs.gemm = _thin(obs.gemm, limit)
        out.append(obs)
    return out


# --------------------------------------------------------------------------- fitting

EFF = np.round(np.arange(0.20, 1.001, 0.02), 2)
FLOORS = np.array([0.0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30]) * 1e-6
TOKEN_COSTS = np.array([0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4]) * 1e-6
SEQ_COSTS = np.array([0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6]) * 1e-6


def _gemm_arrays(obs: list[Observations], specs: dict[str, DeviceSpec]) -> dict[str, np.ndarray]:
    m, n, k, t, peak, bw = [], [], [], [], [], []
    for o in obs:
        spec = specs[o.device]
        for mm, nn, kk, tt in o.gemm:
            m.append(mm), n.append(nn), k.append(kk), t.append(tt)
            peak.append(spec.peak_flops("bf16")), bw.append(spec.mem_bw_gbps * 1e9)
    m_, n_, k_ = np.array(m), np.array(n), np.array(k)
    return {
        "flops": 2 * m_ * n_ * k_ / np.array(peak),
        "bytes": (n_ * k_ + m_ * k_ + m_ * n_) * BF16 / np.array(bw),
        "t": np.array(t),
    }


def _attn_arrays(
    rows: list[tuple[str, tuple[float, ...]]], specs: dict[str, DeviceSpec]
) -> dict[str, np.ndarray]:
    """FLOPs at peak and bytes at full bandwidth (seconds), the units (new tokens of
    prefill rows, sequences of decode rows) and the measured time."""
    flops = np.array([r[1][0] / specs[r[0]].peak_flops("bf16") for r in rows])
    nbytes = np.array([r[1][1] / (specs[r[0]].mem_bw_gbps * 1e9) for r in rows])
    units = np.array([r[1][2] for r in rows])
    t = np.array([r[1][3] for r in rows])
    return {"flops": flops, "bytes": nbytes, "units": units, "t": t}


def _log_err(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    return np.abs(np.log(pred / true))


def _best_eff(pred: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    """``(error, derate)`` of the best row of ``pred`` (one row per entry of ``EFF``)."""
    err = _log_err(pred, t[None, :]).mean(axis=1)
    i = int(np.argmin(err))
    return float(err[i]), float(EFF[i])


def fit_gemm(data: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """``(eff_gemm, eff_mem, t0)`` minimising the mean absolute log error."""
    best = (np.inf, 0.0, 0.0, 0.0)
    compute = data["flops"][None, :] / EFF[:, None]  # [eff, obs]
    memory = data["bytes"][None, :] / EFF[:, None]
    for t0 in FLOORS:
        for j, e_mem in enumerate(EFF):
            err, eff = _best_eff(np.maximum(compute, memory[j][None, :]) + t0, data["t"])
            if err < best[0]:
                best = (err, eff, float(e_mem), float(t0))
    return best[1], best[2], best[3]


def attention_time(
    data: dict[str, np.ndarray], eff_attn: float, eff_mem: float, t0_attn: float, per_unit: float
) -> np.ndarray:
    """The roofline's attention: the larger of its FLOPs and its KV reads at ``eff_mem``,
    plus the kernel floor and ``per_unit`` per unit (prefill: new token; decode:
    sequence)."""
    roof = np.maximum(data["flops"] / eff_attn, data["bytes"] / eff_mem)
    return roof + t0_attn + per_unit * data["units"]


def fit_attn(data: dict[str, np.ndarray], eff_mem: float) -> tuple[float, float, float]:
    """``(eff_attn, t0, prefill_token)`` on prefill attention, bandwidth at ``eff_mem``."""
    best = (np.inf, 0.0, 0.0, 0.0)
    memory = data["bytes"] / eff_mem
    compute = data["flops"][None, :] / EFF[:, None]
    for t0 in FLOORS:
        for token in TOKEN_COSTS:
            pred = np.maximum(compute, memory[None, :]) + t0 + token * data["units"][None, :]
            err, eff = _best_eff(pred, data["t"])
            if err < best[0]:
                best = (err, eff, float(t0), float(token))
    return best[1], best[2], best[3]


def fit_decode(data: dict[str, np.ndarray], eff_attn: float, t0_attn: float) -> tuple[float, float]:
    """``(eff_decode_mem, decode_seq)`` on decode attention, with the prefill fit's
    compute derate and kernel floor (one attention kernel runs both)."""
    best = (np.inf, 0.0, 0.0)
    compute = data["flops"][None, :] / eff_attn
    memory = data["bytes"][None, :] / EFF[:, None]
    for seq in SEQ_COSTS:
        err, eff = _best_eff(
            np.maximum(compute, memory) + t0_attn + seq * data["units"][None, :], data["t"]
        )
        if err < best[0]:
            best = (err, eff, float(seq))
    return best[1], best[2]


def comm_fits() -> list[list[object]]:
    """Alpha-beta fits of vLLM's measured all-reduce (CUDA-graph custom all-reduce, bf16)
    per aiconfigurator system: ``(latency per ring step, fraction of link bandwidth)``."""
    try:
        import aiconfigurator_core
        import pandas as pd
    except ImportError:
        return []
    from llmserve_env.perf.aiconfig import SYSTEMS
    from llmserve_env.perf.comm import ring_factors

    root = Path(aiconfigurator_core.__file__).parent / "systems" / "data"
    rows: list[list[object]] = []
    alphas = np.array([0.0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8]) * 1e-6
    bases = np.array([0.0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20]) * 1e-6
    for device, system in SYSTEMS.items():
        files = sorted((root / system / "comm" / "vllm").glob("*/custom_allreduce_perf.parquet"))
        if not files:
            continue
        frame = pd.read_parquet(files[-1])
        frame = frame[frame.get("backend", "vllm_graph") == "vllm_graph"]
        spec = resolve_device(device)
        n = frame.num_gpus.to_numpy(dtype=float)
        nbytes = frame.message_size.to_numpy(dtype=float) * BF16
        t = frame.latency.to_numpy(dtype=float) * 1e-3
        steps = np.array([ring_factors("all_reduce", int(g))[0] for g in n], dtype=float)
        factor = np.array([ring_factors("all_reduce", int(g))[1] for g in n])
        best = (np.inf, 0.0, 0.0, 0.0)
        link = spec.scaleup_bw_gbps * 1e9
        for base in bases:
            for alpha in alphas:
                pred = base + steps * alpha + factor * nbytes[None, :] / (link * EFF[:, None])
                err, eff = _best_eff(pred, t)
                if err < best[0]:
                    best = (err, float(base), float(alpha), eff)
        _, base, alpha, eff = best
        pred = base + steps * alpha + factor * nbytes / (link * eff)
        rows.append(
            [device_family(spec), device, base * 1e6, alpha * 1e6, eff, len(t), mape(pred, t)]
        )
    return rows


def mape(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute percentage error (%)."""
    return float(np.mean(np.abs(pred - true) / true) * 100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-per-source", type=int, default=4000)
    parser.add_argument("--json", type=Path, default=None, help="also write the fits as JSON")
    args = parser.parse_args()
    shared = shared_or_exit()
    sources = (
        aiconfigurator_sources(args.max_per_source)
        + paper_sources(shared, args.max_per_source)
        + current_sources(shared, args.max_per_source)
        + vidur_sources(shared, args.max_per_source)
    )
    specs = {o.device: resolve_device(o.device) for o in sources}
    families: dict[str, list[Observations]] = defaultdict(list)
    for o in sources:
        families[device_family(specs[o.device])].append(o)
    fam_rows, dev_rows, fits = [], [], {}
    for family, obs in sorted(families.items()):
        gemm = _gemm_arrays(obs, specs)
        eff_gemm, eff_mem, t0_gemm = fit_gemm(gemm)
        pre_rows = [(o.device, r) for o in obs for r in o.prefill]
        eff_attn, t0_attn, pre_token = (0.0, 0.0, 0.0)
        if pre_rows:
            eff_attn, t0_attn, pre_token = fit_attn(_attn_arrays(pre_rows, specs), eff_mem)
        dec_rows = [(o.device, r) for o in obs for r in o.decode]
        eff_dec, dec_seq = (0.0, 0.0)
        if dec_rows and eff_attn:
            eff_dec, dec_seq = fit_decode(_attn_arrays(dec_rows, specs), eff_attn, t0_attn)
        fits[family] = {
            "eff_gemm": eff_gemm,
            "eff_mem": eff_mem,
            "eff_attn": eff_attn,
            "eff_decode_mem": eff_dec,
            "t0_gemm_us": t0_gemm * 1e6,
            "t0_attn_us": t0_attn * 1e6,
            "prefill_token_us": pre_token * 1e6,
            "decode_seq_us": dec_seq * 1e6,
            "devices": sorted({o.device for o in obs}),
            "sources": sorted({o.source for o in obs}),
        }
        for o in obs:
            g = _gemm_arrays([o], specs)
            pred = np.maximum(g["flops"] / eff_gemm, g["bytes"] / eff_mem) + t0_gemm
            row: list[object] = [family, o.device, o.source, len(o.gemm), mape(pred, g["t"])]
            for rows, read_eff, per_unit in (
                (o.prefill, eff_mem, pre_token),
                (o.decode, eff_dec, dec_seq),
            ):
                if rows and eff_attn and read_eff:
                    a = _attn_arrays([(o.device, r) for r in rows], specs)
                    p = attention_time(a, eff_attn, read_eff, t0_attn, per_unit)
                    row += [len(rows), mape(p, a["t"])]
                else:
                    row += [0, "-"]
            dev_rows.append(row)
        all_err = []
        g_pred = np.maximum(gemm["flops"] / eff_gemm, gemm["bytes"] / eff_mem) + t0_gemm
        all_err.append(mape(g_pred, gemm["t"]))
        fam_rows.append(
            [
                family,
                ", ".join(fits[family]["devices"]),
                eff_gemm,
                eff_attn or "-",
                eff_mem,
                eff_dec or "-",
                t0_gemm * 1e6,
                t0_attn * 1e6,
                pre_token * 1e6 if eff_attn else "-",
                dec_seq * 1e6 if eff_dec else "-",
                all_err[0],
            ]
        )
    print("### Fitted constants per family\n")
    print(
        markdown_table(
            [
                "family",
                "devices",
                "eff_gemm",
                "eff_attn",
                "eff_mem",
                "eff_decode_mem",
                "t0_gemm us",
                "t0_attn us",
                "prefill us/token",
                "decode us/seq",
                "GEMM MAPE %",
            ],
            fam_rows,
        )
    )
    print("\n### Error per device and source (MAPE of operator times, %)\n")
    print(
        markdown_table(
            [
                "family",
                "device",
                "source",
                "GEMMs",
                "GEMM err %",
                "prefill attn",
                "err %",
                "decode attn",
                "err %",
            ],
            dev_rows,
        )
    )
    comm = comm_fits()
    if comm:
        print("\n### TP all-reduce (vLLM custom all-reduce, aiconfigurator), alpha-beta fit\n")
        print(
            markdown_table(
                [
                    "family",
                    "device",
                    "base us",
                    "latency per step us",
                    "link efficiency",
                    "points",
                    "MAPE %",
                ],
                comm,
            )
        )
    if args.json:
        args.json.write_text(json.dumps(fits, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
