"""Device power: constants per accelerator, and power and DVFS latency per iteration.

Power of a device serving an iteration at relative clock ``f`` (``f_max`` = 1)::

    P = P_idle + P_compute * MFU(f) * f**2 + P_memory * MBU(f)

where ``MFU = FLOPs / (t * peak)`` and ``MBU = bytes / (t * bandwidth)`` are the
iteration's achieved compute and memory-bandwidth utilisation (peaks at ``f_max``),
``P_compute`` is the dynamic power of the compute units at full utilisation and maximum
clock, and ``P_memory`` that of the memory system at full bandwidth. Compute power is
activity x frequency x voltage^2 with voltage roughly proportional to frequency in the
DVFS range, hence ``f**3`` per unit of time, of which MFU already carries one factor
of ``f``. The result is capped at the board limit (TDP or a configured cap).

So a prefill-heavy iteration (MFU ~0.6-0.75) draws close to TDP, a small decode batch
(memory-bound, MBU ~0.7, MFU ~0) draws ``P_idle + 0.7 P_memory``, and decode power
grows with batch size as the GEMMs gain arithmetic intensity — the shape ML.ENERGY
measured (see VALIDATION.md).

DVFS: an iteration's time splits into a compute-bound part, which scales with
``1 / f``, and a memory-bound part plus fixed overhead, which do not. The split comes
from a per-operator-group roofline of the batch (linear layers, attention, LM head).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch

FloatArray = NDArray[np.float64]

DEFAULT_CLOCK_LEVELS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class DevicePowerSpec:
    """Power constants of one accelerator (per device).

    Defaults derive from the catalog's TDP and idle power; each can be overridden in
    the device catalog (``power:`` block) or a scenario.

    Attributes:
        idle_w: Model loaded, clocks idle (catalog ``idle_w``).
        tdp_w: Board power limit (catalog ``tdp_w``).
        standby_w: The tail after work, before clocks drop to idle (LLMServingSim's
            "standby"); default ``idle + 0.3 (TDP - idle)``.
        standby_s: Length of that tail (LLMServingSim uses 18 s).
        sleep_w: vLLM sleep level 1 (weights offloaded to host, KV dropped), default
            ``0.85 idle`` (assumed: memory mostly unused, clocks idle).
        deep_sleep_w: Sleep level 2 (weights and KV dropped), default ``0.7 idle``
            (assumed).
        off_w: Device powered off (0 W).
        compute_w: Dynamic compute power at MFU 1 and maximum clock, default
            ``(TDP - idle) / 0.75``: a prefill at MFU 0.75 reaches TDP.
        memory_w: Memory-system power at full bandwidth, default ``0.45 (TDP - idle)``
            (calibrated against SplitwiseSim's measured H100/A100 token power).
        clock_levels: Selectable clocks as fractions of the maximum.
        clock_change_s: Time a clock change stalls the engine.
        wake_fixed_s: Fixed part of waking from sleep level 1 (the weight reload from
            host memory is added at host-link bandwidth).
        deep_wake_fixed_s: Fixed part of waking from sleep level 2 (weights reload from
            storage).
        cold_start_s: Fixed part of a cold start from off (process, CUDA, graphs).
        storage_gbps: Storage read bandwidth for weight loads (GB/s).
    """

    idle_w: float
    tdp_w: float
    standby_w: float
    standby_s: float = 18.0
    sleep_w: float = 0.0
    deep_sleep_w: float = 0.0
    off_w: float = 0.0
    compute_w: float = 0.0
    memory_w: float = 0.0
    clock_levels: tuple[float, ...] = DEFAULT_CLOCK_LEVELS
    clock_change_s: float = 0.02
    wake_fixed_s: float = 0.5
    deep_wake_fixed_s: float = 2.0
    cold_start_s: float = 30.0
    storage_gbps: float = 3.0
    source: str = field(default="derived from catalog TDP and idle power", compare=False)

    @classmethod
    def for_device(
        cls, device: DeviceSpec, **overrides: float | tuple[float, ...]
    ) -> DevicePowerSpec:
        """Constants for ``device``: catalog figures, derived defaults, then overrides."""
        span = device.tdp_w - device.idle_w
        values: dict[str, object] = {
            "idle_w": device.idle_w,
            "tdp_w": device.tdp_w,
            "standby_w": device.idle_w + 0.3 * span,
            "sleep_w": 0.85 * device.idle_w,
            "deep_sleep_w": 0.7 * device.idle_w,
            "compute_w": span / 0.75,
            "memory_w": 0.45 * span,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        if not self.clock_levels or any(not 0.0 < f <= 1.0 for f in self.clock_levels):
            raise ValueError(f"clock_levels must be fractions in (0, 1], got {self.clock_levels}")
        if sorted(self.clock_levels) != list(self.clock_levels):
            raise ValueError(f"clock_levels must be increasing, got {self.clock_levels}")
        if self.tdp_w <= self.idle_w:
            raise ValueError(f"tdp_w ({self.tdp_w}) must exceed idle_w ({self.idle_w})")


class WorkModel:
    """FLOPs, bytes and the compute-bound share of an iteration, per device.

    A coarse roofline by operator group (weight GEMMs, attention, LM head,
    element-wise traffic) with typical derates: it only splits an iteration's time for
    DVFS and measures utilisation for power; latency itself comes from the instance's
    latency model.

    Args:
        arch: Model dimensions.
        device: Accelerator figures.
        tp: Tensor-parallel degree (work per device is divided by it).
        dtype: Weight data type.
    """

    EFF_GEMM = 0.72
    EFF_ATTN = 0.44
    EFF_MEM = 0.8

    def __init__(self, arch: ModelArch, device: DeviceSpec, tp: int, dtype: str) -> None:
        wb = DTYPE_BYTES[dtype]
        layers = arch.num_layers
        self.peak_flops = device.peak_flops(dtype)
        self.bandwidth = device.mem_bw_gbps * 1e9
        self._gemm_peak = self.peak_flops * self.EFF_GEMM
        self._attn_peak = self.peak_flops * self.EFF_ATTN
        self._bw = self.bandwidth * self.EFF_MEM
        active = layers * (arch.attn_params_per_layer + arch.active_mlp_params_per_layer) / tp
        self._gemm_flops_per_token = 2.0 * active
        self._weight_bytes = (
            layers
            * (arch.attn_params_per_layer + (0 if arch.is_moe else arch.mlp_params_per_layer))
            * wb
            / tp
        )
        if arch.is_moe:
            # Expert weights actually read grow with the tokens routed; approximate with
            # the active experts of a large batch (upper bound) times a utilisation term.
            self._expert_bytes = (
                layers
                * arch.num_experts
                * 3
                * arch.hidden_size
                * arch.moe_intermediate_size
                * wb
                / tp
            )
            self._experts_per_token = arch.experts_per_token / arch.num_experts
        else:
            self._expert_bytes = 0.0
            self._experts_per_token = 0.0
        self._head_flops_per_seq = 2.0 * arch.vocab_size * arch.hidden_size / tp
        self._head_bytes = arch.vocab_size * arch.hidden_size * wb / tp
        self._attn_flops_per_kv = 4.0 * layers * arch.num_heads * arch.head_dim / tp
        self._kv_bytes_per_token = arch.kv_bytes_per_token_per_gpu(dtype, tp)
        inter = (
            arch.moe_intermediate_size * arch.experts_per_token
            if arch.is_moe
            else arch.intermediate_size
        )
        self._elementwise_bytes_per_token = layers * (8 * arch.hidden_size + 3 * inter / tp) * wb
        self._affine_cache: dict[int, tuple[float, float, float, float]] = {}

    def _weights_read(self, tokens: float | FloatArray) -> float | FloatArray:
        if not self._expert_bytes:
            return self._weight_bytes
        touched = 1.0 - (1.0 - self._experts_per_token) ** np.asarray(tokens, dtype=np.float64)
        return self._weight_bytes + self._expert_bytes * touched

    def iteration(self, batch: BatchShape) -> tuple[float, float, float]:
        """``(flops, bytes, compute_share)`` of one iteration on one device."""
        tokens = batch.num_tokens
        seqs = batch.num_seqs
        gemm_f = self._gemm_flops_per_token * tokens
        gemm_b = float(self._weights_read(tokens)) + tokens * self._elementwise_bytes_per_token
        attn_f = 0.0
        attn_b = 0.0
        prefill_new = batch.prefill_new
        prefill_ctx = batch.prefill_ctx
        if len(prefill_ctx) != len(prefill_new):
            raise ValueError(f"{len(prefill_new)} prefill chunks but {len(prefill_ctx)} contexts")
        for index in range(len(prefill_new)):  # indexed: compiled, a zip(strict=True) is generic
            new = prefill_new[index]
            ctx = prefill_ctx[index]
            attn_f += new * (ctx + (new + 1) / 2.0)
            attn_b += ctx + new
        attn_f = (attn_f + batch.decode_kv_sum) * self._attn_flops_per_kv
        attn_b = (attn_b + batch.decode_kv_sum) * self._kv_bytes_per_token
        head_f = self._head_flops_per_seq * seqs
        head_b = self._head_bytes if seqs else 0.0
        compute = 0.0
        total = 0.0
        for f, b, peak in (
            (gemm_f, gemm_b, self._gemm_peak),
            (attn_f, attn_b, self._attn_peak),
            (head_f, head_b, self._gemm_peak),
        ):
            tc, tm = f / peak, b / self._bw
            if tc > tm:
                compute += tc
                total += tc
            else:
                total += tm
        share = compute / total if total > 0 else 0.0
        return gemm_f + attn_f + head_f, gemm_b + attn_b + head_b, share

    def decode_affine(self, num: int) -> tuple[float, float, float, float]:
        """Decode work as affine functions of the summed KV length ``kv``:
        ``flops = f0 + f1 * kv`` and ``bytes = b0 + b1 * kv`` (per device)."""
        cached = self._affine_cache.get(num)
        if cached is None:
            cached = self._decode_affine(num)
            if len(self._affine_cache) < 4096:
                self._affine_cache[num] = cached
        return cached

    def _decode_affine(self, num: int) -> tuple[float, float, float, float]:
        f0 = (self._gemm_flops_per_token + self._head_flops_per_seq) * num
        b0 = (
            float(self._weights_read(num))
            + num * self._elementwise_bytes_per_token
            + self._head_bytes
        )
        return f0, self._attn_flops_per_kv, b0, self._kv_bytes_per_token

    def decode(self, num: int, kv_sum: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
        """``(flops, bytes, compute_share)`` arrays for decode-only iterations."""
        kv_sum = np.asarray(kv_sum, dtype=np.float64)
        gemm_f = self._gemm_flops_per_token * num
        gemm_b = float(self._weights_read(num)) + num * self._elementwise_bytes_per_token
        head_f = self._head_flops_per_seq * num
        head_b = self._head_bytes
        attn_f = kv_sum * self._attn_flops_per_kv
        attn_b = kv_sum * self._kv_bytes_per_token
        gemm_c, gemm_m = gemm_f / self._gemm_peak, gemm_b / self._bw
        head_c, head_m = head_f / self._gemm_peak, head_b / self._bw
        attn_c, attn_m = attn_f / self._attn_peak, attn_b / self._bw
        fixed = (gemm_c if gemm_c > gemm_m else 0.0) + (head_c if head_c > head_m else 0.0)
        compute = fixed + np.where(attn_c > attn_m, attn_c, 0.0)
        total = max(gemm_c, gemm_m) + max(head_c, head_m) + np.maximum(attn_c, attn_m)
        share = np.divide(compute, total, out=np.zeros_like(total), where=total > 0)
        return gemm_f + head_f + attn_f, gemm_b + head_b + attn_b, share


def scaled_time(
    time_s: float | FloatArray, share: float | FloatArray, freq: float
) -> float | FloatArray:
    """Iteration time at relative clock ``freq``: the compute-bound share stretches."""
    if freq >= 1.0:
        return time_s
    return time_s * (1.0 + share * (1.0 / freq - 1.0))


def active_power_scalar(
    spec: DevicePowerSpec, work: WorkModel, flops: float, nbytes: float, time_s: float, freq: float
) -> float:
    """:func:`active_power_w` for plain floats (no numpy overhead on the hot path)."""
    time_s = max(time_s, 1e-9)
    mfu = min(flops / (time_s * work.peak_flops), 1.0)
    mbu = min(nbytes / (time_s * work.bandwidth), 1.0)
    return spec.idle_w + spec.compute_w * mfu * freq * freq + spec.memory_w * mbu


def active_power_w(
    spec: DevicePowerSpec,
    work: WorkModel,
    flops: float | FloatArray,
    nbytes: float | FloatArray,
    time_s: float | FloatArray,
    freq: float,
) -> float | FloatArray:
    """Power of a device running an iteration of ``flops``/``nbytes`` in ``time_s``
    at relative clock ``freq`` (not capped)."""
    time_s = np.maximum(time_s, 1e-9)
    mfu = np.minimum(flops / (time_s * work.peak_flops), 1.0)
    mbu = np.minimum(nbytes / (time_s * work.bandwidth), 1.0)
    return spec.idle_w + spec.compute_w * mfu * freq * freq + spec.memory_w * mbu
