"""Roofline estimates of single operators, to complete profiles that lack them.

Vidur's published profiles time the token-parallel operators only; an import fills the
attention grid and the LM head from these estimates and says so in the profile's
provenance. The estimates follow :mod:`llmserve_env.perf.roofline` per layer and grid
point (one maximum of FLOPs and KV reads per point, a fixed launch floor instead of the
family's kernel floor, the weights' data type for the KV) with its derates: the device
family's (:func:`~llmserve_env.perf.roofline.calibration_for`) unless a calibration is
given.
"""

from __future__ import annotations

import numpy as np

from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch
from llmserve_env.perf.profile_format import AttentionPoints, Curve
from llmserve_env.perf.roofline import RooflineCalibration, calibration_for

LAUNCH_US = 5.0
"""Floor of one kernel launch (microseconds)."""


def attention_points(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    calibration: RooflineCalibration | None = None,
) -> AttentionPoints:
    """One attention layer on the 4-D grid (chunks and contexts doubling from 16,
    decodes doubling to 256), by roofline: ``max(FLOPs / (peak x eff_attn), KV read
    time)`` plus a launch floor, ``decode_seq_s`` per decode and ``prefill_token_s`` per
    new prefill token, the prefill's KV read at
    ``bandwidth x eff_mem`` and the decodes' at ``bandwidth x eff_decode_mem``."""
    cal = calibration or calibration_for(device)
    flops_rate = device.peak_flops(dtype) * cal.eff_attn
    bw = device.mem_bw_gbps * 1e9 * cal.eff_mem
    decode_bw = device.mem_bw_gbps * 1e9 * cal.eff_decode_mem
    q_width = arch.num_heads * arch.head_dim / tp
    kv_per_token = 2 * arch.kv_heads_per_gpu(tp) * arch.head_dim * DTYPE_BYTES[dtype]
    chunks = [0] + [16 * 2**i for i in range(8)]
    contexts = [0] + [16 * 2**i for i in range(11)]
    decodes = [0] + [2**i for i in range(9)]
    rows = []
    for pc in chunks:
        for kp in contexts if pc else [0]:
            for nd in decodes:
                for kd in contexts[1:] if nd else [0]:
                    if pc == 0 and nd == 0:
                        continue
                    flops = 4.0 * q_width * (pc * (kp + (pc + 1) / 2.0) + nd * (kd + 1))
                    read_s = kv_per_token * ((kp + pc) if pc else 0) / bw
                    read_s += kv_per_token * nd * (kd + 1) / decode_bw
                    t = max(flops / flops_rate, read_s) + nd * cal.decode_seq_s
                    t += pc * cal.prefill_token_s
                    t = t * 1e6 + LAUNCH_US
                    rows.append((pc, kp, nd, kd, t))
    a = np.array(rows, dtype=np.float64)
    return AttentionPoints(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4])


def lm_head_curve(
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    calibration: RooflineCalibration | None = None,
) -> Curve:
    """The LM head (last token of each sequence) vs sequences, by roofline."""
    cal = calibration or calibration_for(device)
    params = arch.vocab_size * arch.hidden_size / tp
    seqs = np.array([2.0**i for i in range(11)])
    flops = 2.0 * seqs * params / (device.peak_flops(dtype) * cal.eff_gemm)
    nbytes = params * DTYPE_BYTES[dtype] / (device.mem_bw_gbps * 1e9 * cal.eff_mem)
    return Curve(seqs, np.maximum(flops, nbytes) * 1e6 + LAUNCH_US)
