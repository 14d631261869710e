"""An analytical roofline latency model for any device and model.

Every operator of an iteration is charged ``max(FLOPs / (peak x eff_compute),
bytes / (bandwidth x eff_memory))``; the layer sequence is that of a decoder-only
transformer (QKV and O projections, attention, gated MLP or routed experts, norms),
plus the LM head, tensor-parallel all-reduces (ring, alpha-beta) and a fixed
per-iteration overhead. The floors are physical: a decode step never beats reading the
weights and the attended KV at the device's bandwidth.

The efficiency factors are calibration constants (see VALIDATION.md for how they were
fitted against measured profiles); they default to values typical of vLLM on recent
NVIDIA GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmserve_env.perf.base import BatchShape, FloatArray
from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch


@dataclass(frozen=True, slots=True)
class RooflineCalibration:
    """Derates and overheads of the roofline model.

    Attributes:
        eff_gemm: Fraction of peak FLOP/s dense GEMMs reach.
        eff_attn: Fraction of peak FLOP/s attention kernels reach.
        eff_mem: Fraction of peak memory bandwidth streaming kernels reach.
        overhead_s: Fixed time per iteration (scheduling, launch, sampling, sync).
        per_layer_overhead_s: Fixed time per decoder layer (kernel launch gaps).
        comm_latency_s: Latency term of one collective step.
        comm_eff: Fraction of link bandwidth collectives reach.
    """

    eff_gemm: float = 0.70
    eff_attn: float = 0.45
    eff_mem: float = 0.82
    overhead_s: float = 0.8e-3
    per_layer_overhead_s: float = 10e-6
    comm_latency_s: float = 8e-6
    comm_eff: float = 0.75


class RooflineModel:
    """Latency from first principles: FLOPs and bytes per operator on one device.

    Args:
        arch: Model dimensions.
        device: Accelerator figures.
        tp: Tensor-parallel degree (weights and heads split ``tp`` ways).
        dtype: Weight/activation data type (``bf16``, ``fp16``, ``fp8``).
        kv_dtype: KV-cache data type.
        calibration: Derates and overheads.
    """

    def __init__(
        self,
        arch: ModelArch,
        device: DeviceSpec,
        tp: int = 1,
        dtype: str = "bf16",
        kv_dtype: str | None = None,
        calibration: RooflineCalibration | None = None,
    ) -> None:
        self.arch = arch
        self.device = device
        self.tp = tp
        self.dtype = dtype
        self.calibration = calibration or RooflineCalibration()
        cal = self.calibration
        wb = DTYPE_BYTES[dtype]
        kvb = DTYPE_BYTES[kv_dtype or dtype]
        self._flops_gemm = device.peak_flops(dtype) * cal.eff_gemm
        self._flops_attn = device.peak_flops(dtype) * cal.eff_attn
        self._bw = device.mem_bw_gbps * 1e9 * cal.eff_mem
        layers = arch.num_layers
        h = arch.hidden_size
        # Per-GPU weight bytes of the dense (always-touched) linear layers of all layers.
        self._attn_w_bytes = layers * arch.attn_params_per_layer * wb / tp
        self._attn_w_params = layers * arch.attn_params_per_layer / tp
        self._mlp_w_params_active = layers * arch.active_mlp_params_per_layer / tp
        self._mlp_w_bytes_dense = (
            0.0 if arch.is_moe else layers * arch.mlp_params_per_layer * wb / tp
        )
        self._expert_bytes = (
            layers * 3 * h * arch.moe_intermediate_size * wb / tp if arch.is_moe else 0.0
        )
        self._lm_head_params = arch.vocab_size * h / tp
        self._lm_head_bytes = self._lm_head_params * wb
        # Attention per layer per GPU.
        self._q_width = arch.num_heads * arch.head_dim / tp
        self._kv_bytes_per_token_all_layers = (
            2 * layers * arch.num_kv_heads * arch.head_dim * kvb / tp
        )
        # Elementwise traffic (norms, rotary, activation, residual) per token, all layers.
        inter = (
            arch.moe_intermediate_size * arch.experts_per_token
            if arch.is_moe
            else arch.intermediate_size
        )
        self._elementwise_bytes_per_token = layers * (8 * h + 3 * inter / tp) * wb
        # Tensor-parallel all-reduce: two per layer, ring algorithm.
        if tp > 1:
            link = device.scaleup_bw_gbps * 1e9 * cal.comm_eff
            self._ar_bytes_factor = 2 * layers * 2 * (tp - 1) / tp * h * wb / link
            self._ar_fixed = 2 * layers * 2 * (tp - 1) * cal.comm_latency_s
        else:
            self._ar_bytes_factor = 0.0
            self._ar_fixed = 0.0
        self._fixed = cal.overhead_s + layers * cal.per_layer_overhead_s
        self._decode_cache: dict[int, tuple[float, float, float]] = {}

    # ------------------------------------------------------------------ pieces

    def _roof(self, flops: float, nbytes: float, peak: float) -> float:
        return max(flops / peak, nbytes / self._bw)

    def _experts_bytes(self, num_tokens: int) -> float:
        """Bytes of expert weights read for ``num_tokens`` routed tokens (expected distinct
        experts hit under uniform routing)."""
        arch = self.arch
        if not arch.is_moe or num_tokens <= 0:
            return 0.0
        miss = (1.0 - arch.experts_per_token / arch.num_experts) ** num_tokens
        active = arch.num_experts * (1.0 - miss)
        return active * self._expert_bytes

    def _linear_time(self, num_tokens: int, num_seqs: int) -> float:
        """All weight-bearing layers: attention projections, MLP/experts, LM head."""
        flops = 2.0 * num_tokens * (self._attn_w_params + self._mlp_w_params_active)
        nbytes = (
            self._attn_w_bytes
            + self._mlp_w_bytes_dense
            + self._experts_bytes(num_tokens)
            + num_tokens * self._elementwise_bytes_per_token
        )
        body = self._roof(flops, nbytes, self._flops_gemm)
        head = self._roof(
            2.0 * num_seqs * self._lm_head_params, self._lm_head_bytes, self._flops_gemm
        )
        comm = self._ar_fixed + self._ar_bytes_factor * num_tokens if num_tokens else 0.0
        return body + head + comm

    def _attn_coeffs(self) -> tuple[float, float]:
        """Seconds per attended KV token in decode: (flop-bound, byte-bound)."""
        layers = self.arch.num_layers
        flops_per_kv = 4.0 * layers * self._q_width
        return flops_per_kv / self._flops_attn, self._kv_bytes_per_token_all_layers / self._bw

    # ------------------------------------------------------------------ protocol

    def iteration_time_s(self, batch: BatchShape) -> float:
        """Seconds one iteration with this batch takes."""
        num_tokens = batch.num_tokens
        if num_tokens == 0:
            return 0.0
        total = self._fixed + self._linear_time(num_tokens, batch.num_seqs)
        layers = self.arch.num_layers
        if batch.prefill_new:
            flops = 0.0
            kv_tokens = 0.0
            for new, ctx in zip(batch.prefill_new, batch.prefill_ctx, strict=True):
                flops += new * (ctx + (new + 1) / 2.0)
                kv_tokens += ctx + new
            flops *= 4.0 * layers * self._q_width
            nbytes = kv_tokens * self._kv_bytes_per_token_all_layers
            total += self._roof(flops, nbytes, self._flops_attn)
        if batch.num_decodes:
            per_flop, per_byte = self._attn_coeffs()
            total += batch.decode_kv_sum * max(per_flop, per_byte)
        return total

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray
    ) -> FloatArray:
        """Latencies of consecutive decode-only iterations (vectorised)."""
        cached = self._decode_cache.get(num_decodes)
        if cached is None:
            per_flop, per_byte = self._attn_coeffs()
            base = self._fixed + self._linear_time(num_decodes, num_decodes)
            cached = (base, max(per_flop, per_byte), 0.0)
            if len(self._decode_cache) < 4096:
                self._decode_cache[num_decodes] = cached
        base, per_kv, _ = cached
        return base + per_kv * np.asarray(kv_sum, dtype=np.float64)
