"""An analytical roofline latency model for any device and model.

Every operator of an iteration is charged ``max(FLOPs / (peak x eff_compute),
bytes / (bandwidth x eff_memory))``; the layer sequence is that of a decoder-only
transformer (QKV and O projections, attention, gated MLP or routed experts, norms),
plus the LM head, tensor-parallel all-reduces (:mod:`llmserve_env.perf.comm`: measured
tables when given, else alpha-beta with ring factors) and fixed per-layer and
per-iteration overheads. Decode attention reads its KV at its own bandwidth derate
(paged, gathered reads) and pays a fixed time per decoding sequence (block-table walk,
per-sequence scheduling and reduction; on the TPU v6e measurements, about 2 us a
sequence and layer, most of a short-context decode); prefill attention pays a time per
new token (writing its keys and values into the paged cache; 0.25 us a token and layer
on the TPU v6e, at most 10 ns on NVIDIA GPUs). The floors are physical: every
derate is at most 1 and every added term is at least 0, so a decode step never beats
reading the weights and the attended KV at the device's bandwidth, and no step beats
its FLOPs at the device's peak.

Processing-in-memory (a device whose ``pim_tflops`` and ``pim_bw_gbps`` are set, such as
an accelerator on Samsung's HBM-PIM): an operator group may instead run on the compute
units inside the memory, which read it at the internal bank bandwidth but compute at
their own, much lower, peak, ``max(FLOPs / pim_peak, bytes / pim_bandwidth)``. Each
group runs where it is faster, as PIM runtimes offload GEMV-shaped work: weight layers
at small batches (arithmetic intensity below about ``pim_peak / pim_bandwidth``) and
decode attention, while prefill and large batches stay on the host compute units. The
floors then use the internal bandwidth for what runs in memory. The PIM units get the
device family's GEMM and memory derates (no PIM operator measurements are public).

The derates are calibration constants fitted per device family against measured
operator times (:data:`FAMILY_CALIBRATIONS`; ``benchmarks/calibration/fit_roofline.py``
reproduces the fits, VALIDATION.md lists their errors). :func:`calibration_for` picks a
device's family; devices without measurements (MI300X, TPU v5e, Gaudi, user-described
devices) get their vendor's family or the generic constants.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmserve_env.perf.base import BatchShape, FloatArray
from llmserve_env.perf.comm import AlphaBetaComm, CommModel
from llmserve_env.perf.expert_parallel import ExpertParallel
from llmserve_env.perf.hardware import DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch


@dataclass(frozen=True, slots=True)
class RooflineCalibration:
    """Derates and overheads of the roofline model.

    The defaults are the generic constants of devices in no fitted family (the median
    of the measured NVIDIA datacenter families, but for the collective constants, which
    are older assumed values); :func:`calibration_for` gives a device's fitted ones.

    Attributes:
        eff_gemm: Fraction of peak FLOP/s dense GEMMs reach.
        eff_attn: Fraction of peak FLOP/s attention kernels reach.
        eff_mem: Fraction of peak memory bandwidth streaming kernels reach.
        eff_decode_mem: Fraction of peak memory bandwidth decode attention reaches on
            the KV cache (paged, gathered reads: not a GEMM's stream).
        decode_seq_s: Time per decoding sequence per layer in decode attention, beside
            its KV reads (block-table walk, per-sequence scheduling and reduction; the
            dominant cost of short contexts on some devices).
        prefill_token_s: Time per new prefill token per layer in prefill attention,
            beside its FLOPs and KV reads (writing its keys and values into the paged
            cache, per-token work of the kernel).
        overhead_s: Fixed time per iteration (scheduling, input preparation, sampling,
            output processing on the CPU).
        per_layer_overhead_s: Fixed time per decoder layer (the floors of its kernels:
            four GEMMs and attention).
        comm_latency_s: Latency of one ring step of a collective.
        comm_eff: Fraction of link bandwidth collectives reach.
        comm_base_s: Fixed cost of one collective.
    """

    eff_gemm: float = 0.70
    eff_attn: float = 0.54
    eff_mem: float = 0.74
    eff_decode_mem: float = 0.84
    decode_seq_s: float = 0.05e-6
    prefill_token_s: float = 0.005e-6
    overhead_s: float = 3.0e-3
    per_layer_overhead_s: float = 32e-6
    comm_latency_s: float = 0.5e-6
    comm_eff: float = 0.65
    comm_base_s: float = 5e-6

    def __post_init__(self) -> None:
        for name in ("eff_gemm", "eff_attn", "eff_mem", "eff_decode_mem", "comm_eff"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"{name} must be in (0, 1] (a derate of the peak), got {value}")
        for name in (
            "overhead_s",
            "per_layer_overhead_s",
            "decode_seq_s",
            "prefill_token_s",
            "comm_latency_s",
            "comm_base_s",
        ):
            if getattr(self, name) < 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class FamilyCalibration:
    """Fitted roofline constants of one device family, with where they come from.

    Attributes:
        calibration: The constants.
        source: Measurements they were fitted against ("assumed: ..." when none).
        fit_error: Error of the fit on those measurements (MAPE of operator times).
    """

    calibration: RooflineCalibration
    source: str
    fit_error: str


def _cal(
    eff_gemm: float,
    eff_attn: float,
    eff_mem: float,
    t0_gemm_us: float,
    t0_attn_us: float,
    comm: tuple[float, float, float],
    decode: tuple[float, float] | None = None,
    prefill_token_us: float = 0.0,
) -> RooflineCalibration:
    base_us, step_us, comm_eff = comm
    # No decode measurements: decode attention streams its KV like any other kernel.
    eff_decode_mem, decode_seq_us = decode if decode is not None else (eff_mem, 0.0)
    return RooflineCalibration(
        eff_gemm=eff_gemm,
        eff_attn=eff_attn,
        eff_mem=eff_mem,
        eff_decode_mem=eff_decode_mem,
        decode_seq_s=decode_seq_us * 1e-6,
        prefill_token_s=prefill_token_us * 1e-6,
        per_layer_overhead_s=(4 * t0_gemm_us + t0_attn_us) * 1e-6,
        comm_base_s=base_us * 1e-6,
        comm_latency_s=step_us * 1e-6,
        comm_eff=comm_eff,
    )


# Fitted with benchmarks/calibration/fit_roofline.py (grid search, mean |log error|)
# against datasheet peaks in profiles/devices.yaml. Per-kernel floors t0 enter as
# per_layer_overhead_s = 4 t0_gemm + t0_attn; collectives as (base us, us per ring step,
# link efficiency) fitted on vLLM's measured custom all-reduce; decode attention as
# (eff_decode_mem, us per decoding sequence per layer) fitted on decode attention times;
# the last figure is prefill attention's us per new token per layer. The CPU overhead per
# iteration (overhead_s) is fitted end to end (VALIDATION.md) and shared by all families.
FAMILY_CALIBRATIONS: dict[str, FamilyCalibration] = {
    "nvidia-hopper": FamilyCalibration(
        _cal(0.76, 0.56, 0.88, 5, 12, (5, 0, 0.69), (0.84, 0.05), 0.005),
        "aiconfigurator-core 0.12 H100/H200 vLLM GEMM + attention + all-reduce; "
        "LLMServingSim paper H100 layers; Vidur H100 mlp.csv",
        "GEMM 9.7-15.4 %, prefill attention 22-47 %, decode attention 17-43 %, all-reduce 13-14 %",
    ),
    "nvidia-ampere-dc": FamilyCalibration(
        _cal(0.70, 0.54, 0.72, 6, 12, (4, 0.25, 0.60), (0.66, 0.1), 0.01),
        "aiconfigurator-core 0.12 A100-SXM vLLM GEMM + attention + all-reduce; Vidur A100 mlp.csv",
        "GEMM 8.0-12.1 %, prefill attention 20 %, decode attention 30 %, all-reduce 15 %",
    ),
    "nvidia-blackwell": FamilyCalibration(
        _cal(0.70, 0.44, 0.74, 3, 12, (6, 0, 0.60), (0.98, 0.02), 0.005),
        "aiconfigurator-core 0.12 B200/GB200 vLLM GEMM + attention + all-reduce",
        "GEMM 11.5-12.8 %, prefill attention 29-30 %, decode attention 21-25 %, all-reduce 18-27 %",
    ),
    "nvidia-blackwell-ws": FamilyCalibration(
        _cal(0.74, 0.50, 0.82, 3, 10, (0, 2, 0.44), (0.82, 0.02), 0.002),
        "aiconfigurator-core 0.12 RTX PRO 6000 vLLM tables; LLMServingSim current RTXPRO6000",
        "GEMM 12.0-14.6 %, prefill attention 21-34 %, decode attention 12-27 %, all-reduce 17 %",
    ),
    "nvidia-ada": FamilyCalibration(
        _cal(0.62, 0.44, 0.80, 2, 8, (1, 2, 0.20), (0.84, 0.02), 0.002),
        "aiconfigurator-core 0.12 L40S vLLM tables; LLMServingSim current RTX4090",
        "GEMM 17.5-40.1 %, prefill attention 21-39 %, decode attention 19-35 %, "
        "all-reduce (PCIe) 64 %",
    ),
    "nvidia-ampere": FamilyCalibration(
        _cal(0.76, 0.86, 1.0, 12, 30, (4, 1, 0.60), (0.36, 0.05), 0.0),
        "LLMServingSim paper A6000 / RTX3090 layers.csv and attention.csv "
        "(collectives assumed as A100)",
        "GEMM 12.1-16.8 %, prefill attention 52 %, decode attention 38 %",
    ),
    "google-tpu": FamilyCalibration(
        _cal(0.80, 0.20, 1.0, 6, 5, (5, 1, 0.70), (0.28, 2.0), 0.25),
        "LLMServingSim paper TPU-v6e-1 layers.csv and attention export (collectives assumed)",
        "GEMM 17.7 %, prefill attention 24 %, decode attention 4 %",
    ),
    "amd-cdna3": FamilyCalibration(
        _cal(0.55, 0.35, 0.80, 5, 15, (5, 0.5, 0.65)),
        "assumed: no public MI300X operator measurements in ../shared; Hopper-class floors "
        "and bandwidth derate, GEMM and attention derates lowered for ROCm kernels",
        "not fitted",
    ),
    "intel-gaudi": FamilyCalibration(
        _cal(0.60, 0.35, 0.75, 6, 20, (8, 1, 0.60)),
        "assumed: no public Gaudi operator measurements in ../shared",
        "not fitted",
    ),
    "generic": FamilyCalibration(
        RooflineCalibration(),
        "median of the fitted NVIDIA datacenter families (Hopper, Ampere, Blackwell)",
        "not fitted on its own",
    ),
}
"""Roofline constants per device family (see :func:`device_family`)."""


# --------------------------------------------------------------------------- families

_DEVICE_FAMILIES = {
    "A100-SXM-80GB": "nvidia-ampere-dc",
    "RTX-A6000": "nvidia-ampere",
    "RTX3090": "nvidia-ampere",
    "H100-SXM": "nvidia-hopper",
    "H100-PCIe": "nvidia-hopper",
    "H200": "nvidia-hopper",
    "B200": "nvidia-blackwell",
    "GB200": "nvidia-blackwell",
    "RTX-PRO-6000": "nvidia-blackwell-ws",
    "L40S": "nvidia-ada",
    "RTX4090": "nvidia-ada",
    "L4": "nvidia-ada",
    "MI300X": "amd-cdna3",
    "TPU-v5e": "google-tpu",
    "TPU-v6e": "google-tpu",
    "Gaudi2": "intel-gaudi",
    "Gaudi3": "intel-gaudi",
}
_VENDOR_FAMILIES = {
    "nvidia": "nvidia-hopper",
    "amd": "amd-cdna3",
    "google": "google-tpu",
    "intel": "intel-gaudi",
}


def device_family(device: DeviceSpec) -> str:
    """The calibration family of a device: its architecture generation for catalog
    devices, the vendor's best-characterised family for others, else ``generic``."""
    family = _DEVICE_FAMILIES.get(device.name)
    if family is not None:
        return family
    return _VENDOR_FAMILIES.get(device.vendor.lower(), "generic")


def calibration_for(device: DeviceSpec) -> RooflineCalibration:
    """The fitted roofline constants of a device's family (:data:`FAMILY_CALIBRATIONS`)."""
    return FAMILY_CALIBRATIONS[device_family(device)].calibration


class RooflineModel:
    """Latency from first principles: FLOPs and bytes per operator on one device.

    Args:
        arch: Model dimensions.
        device: Accelerator figures.
        tp: Tensor-parallel degree (weights and heads split ``tp`` ways).
        dtype: Weight/activation data type (``bf16``, ``fp16``, ``fp8``).
        kv_dtype: KV-cache data type.
        calibration: Derates and overheads (default: the device family's,
            :func:`calibration_for`).
        comm: Collective model for the tensor-parallel all-reduces (default: alpha-beta
            over the device's scale-up link with the calibration's constants).
        expert_parallel: The layout when the instance is one rank of a DP+EP engine: it
            reads only its own experts, hit by every rank's tokens, and pays the MoE
            layers' dispatch and combine (:mod:`llmserve_env.perf.expert_parallel`).
    """

    def __init__(
        self,
        arch: ModelArch,
        device: DeviceSpec,
        tp: int = 1,
        dtype: str = "bf16",
        kv_dtype: str | None = None,
        calibration: RooflineCalibration | None = None,
        comm: CommModel | None = None,
        expert_parallel: ExpertParallel | None = None,
    ) -> None:
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.name = f"roofline:{device.name}"
        """Which model this is, for reports (``perf: auto`` adds why it fell back)."""
        if dtype == "fp8" and not device.fp8_tflops:
            # vLLM's weight-only FP8 (Marlin) path: FP8 bytes, 16-bit math.
            self.name += " (FP8 weights, 16-bit math: no FP8 units)"
        for name, value in (("dtype", dtype), ("kv_dtype", kv_dtype or dtype)):
            if value not in DTYPE_BYTES:
                raise ValueError(f"unknown {name} {value!r}; known: {', '.join(DTYPE_BYTES)}")
        self.arch = arch
        self.device = device
        self.tp = tp
        self.dtype = dtype
        self.expert_parallel = expert_parallel
        self.calibration = calibration or calibration_for(device)
        cal = self.calibration
        self.comm: CommModel = comm or AlphaBetaComm(
            device.scaleup_bw_gbps, cal.comm_latency_s, cal.comm_eff, cal.comm_base_s
        )
        wb = DTYPE_BYTES[dtype]
        self._flops_gemm = device.peak_flops(dtype) * cal.eff_gemm
        self._flops_attn = device.peak_flops(dtype) * cal.eff_attn
        self._bw = device.mem_bw_gbps * 1e9 * cal.eff_mem
        self._decode_bw = device.mem_bw_gbps * 1e9 * cal.eff_decode_mem
        # Processing-in-memory units (0.0: none): peak FLOP/s and internal bandwidth.
        self._pim_flops = (device.pim_tflops or 0.0) * 1e12 * cal.eff_gemm
        self._pim_bw = (device.pim_bw_gbps or 0.0) * 1e9 * cal.eff_mem
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
        self._kv_bytes_per_token_all_layers = arch.kv_bytes_per_token_per_gpu(kv_dtype or dtype, tp)
        # Elementwise traffic (norms, rotary, activation, residual) per token, all layers.
        inter = (
            arch.moe_intermediate_size * arch.experts_per_token
            if arch.is_moe
            else arch.intermediate_size
        )
        self._elementwise_bytes_per_token = layers * (8 * h + 3 * inter / tp) * wb
        # Tensor-parallel collectives, as vLLM runs them: all-reduces of 16-bit
        # activations, two per layer and one after the vocabulary-parallel embedding,
        # and an all-gather of the 16-bit logits shards (vocabulary per sequence).
        self._ar_count = 2 * layers + 1 if tp > 1 else 0
        self._ar_bytes_per_token = h * DTYPE_BYTES["bf16"]
        self._ar_cache: dict[int, float] = {}
        self._gather_bytes_per_seq = arch.logits_bytes_per_seq() if tp > 1 else 0
        self._gather_cache: dict[int, float] = {}
        self._fixed = cal.overhead_s + layers * cal.per_layer_overhead_s
        # Decode attention's cost per decoding sequence, all layers.
        self._decode_seq_s = layers * cal.decode_seq_s
        # Prefill attention's cost per new token, all layers.
        self._prefill_token_s = layers * cal.prefill_token_s
        self._decode_cache: dict[int, tuple[float, float, float]] = {}

    # ------------------------------------------------------------------ pieces

    def _roof(self, flops: float, nbytes: float, peak: float, bw: float = 0.0) -> float:
        """An operator group on the compute units (reading at ``bw``, by default the
        streaming bandwidth), or in memory where that is faster."""
        host = max(flops / peak, nbytes / (bw or self._bw))
        if not self._pim_bw:
            return host
        return min(host, max(flops / self._pim_flops, nbytes / self._pim_bw))

    def _experts_bytes(self, num_tokens: int) -> float:
        """Bytes of expert weights read for ``num_tokens`` routed tokens (expected distinct
        experts hit under uniform routing)."""
        arch = self.arch
        if not arch.is_moe or num_tokens <= 0:
            return 0.0
        if self.expert_parallel is not None:
            return self.expert_parallel.kernel_shape(num_tokens)[1] * self._expert_bytes
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
        all_reduces = self._collectives(
            self._ar_cache, "all_reduce", self._ar_count, num_tokens, self._ar_bytes_per_token
        )
        gather = self._collectives(
            self._gather_cache, "all_gather", 1, num_seqs, self._gather_bytes_per_seq
        )
        if self.expert_parallel is not None:
            gather += self.arch.num_layers * self.expert_parallel.collectives_s(num_tokens)
        return body + head + all_reduces + gather

    def _collectives(
        self, cache: dict[int, float], op: str, count: int, units: int, bytes_per_unit: int
    ) -> float:
        """``count`` collectives ``op`` of ``units x bytes_per_unit`` bytes each (none
        without bytes), cached per ``units`` (tokens or sequences)."""
        if not count or not bytes_per_unit or units <= 0:
            return 0.0
        cached = cache.get(units)
        if cached is None:
            cached = count * self.comm.time_s(op, units * bytes_per_unit, self.tp)
            if len(cache) < 65536:
                cache[units] = cached
        return cached

    def _decode_attn_s_per_kv(self) -> float:
        """Seconds of decode attention per attended KV token (affine in the KV sum)."""
        flops_per_kv = 4.0 * self.arch.num_layers * self._q_width
        return self._roof(
            flops_per_kv, self._kv_bytes_per_token_all_layers, self._flops_attn, self._decode_bw
        )

    # ------------------------------------------------------------------ protocol

    def iteration_time_s(self, batch: BatchShape) -> float:
        """Seconds one iteration with this batch takes."""
        return self.rank_time_s(batch, 0)

    def rank_time_s(self, batch: BatchShape, group_tokens: int) -> float:
        """Seconds one rank of a lockstep data-parallel group takes for its ``batch``
        when the group's largest batch has ``group_tokens`` tokens: the weight-bearing
        layers run at that size, attention on the rank's own requests (as
        :meth:`~llmserve_env.perf.profile_model.ProfileLatencyModel.rank_time_s`)."""
        num_tokens = batch.num_tokens
        padded = num_tokens if group_tokens < num_tokens else group_tokens
        if padded == 0:
            return 0.0
        total = self._fixed + self._linear_time(padded, batch.num_seqs)
        layers = self.arch.num_layers
        if batch.prefill_new:
            flops = 0.0
            kv_tokens = 0.0
            new_tokens = 0
            for new, ctx in zip(batch.prefill_new, batch.prefill_ctx, strict=True):
                flops += new * (ctx + (new + 1) / 2.0)
                kv_tokens += ctx + new
                new_tokens += new
            flops *= 4.0 * layers * self._q_width
            nbytes = kv_tokens * self._kv_bytes_per_token_all_layers
            total += self._roof(flops, nbytes, self._flops_attn)
            total += new_tokens * self._prefill_token_s
        if batch.num_decodes:
            total += batch.decode_kv_sum * self._decode_attn_s_per_kv()
            total += batch.num_decodes * self._decode_seq_s
        return total

    def _decode_terms(self, num_decodes: int) -> tuple[float, float, float]:
        """Fixed seconds and seconds per KV token of a decode-only batch (cached)."""
        cached = self._decode_cache.get(num_decodes)
        if cached is None:
            base = self._fixed + self._linear_time(num_decodes, num_decodes)
            base += num_decodes * self._decode_seq_s
            cached = (base, self._decode_attn_s_per_kv(), 0.0)
            if len(self._decode_cache) < 4096:
                self._decode_cache[num_decodes] = cached
        return cached

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray, kv_min: FloatArray
    ) -> FloatArray:
        """Latencies of consecutive decode-only iterations (vectorised; only the KV sum
        matters)."""
        base, per_kv, _ = self._decode_terms(num_decodes)
        return base + per_kv * np.asarray(kv_sum, dtype=np.float64)

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        """``(a, b)``: decode iteration ``i`` with KV sum ``kv_sum0 + num_decodes * i``
        takes ``a + b * i`` seconds (always a line: time is affine in the KV sum)."""
        base, per_kv, _ = self._decode_terms(num_decodes)
        return base + per_kv * kv_sum0, per_kv * num_decodes
