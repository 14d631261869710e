"""Device memory accounting: weights, activation reserve and the KV-cache block count."""

from __future__ import annotations

from llmserve_env.perf.hardware import GIB, DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch

RUNTIME_OVERHEAD_GIB = 1.0
"""CUDA context, NCCL buffers and CUDA graphs per device (vLLM's "non-torch" memory)."""


def activation_reserve_bytes(
    arch: ModelArch, tp: int, dtype: str, max_num_batched_tokens: int, max_num_seqs: int
) -> float:
    """Estimate of vLLM's profiled peak activation memory per device.

    vLLM runs a dummy forward pass of ``max_num_batched_tokens`` tokens and a sampler
    warm-up of ``max_num_seqs`` rows, and keeps the peak. The largest live tensors are
    the MLP's gate/up output and the FP32 logits.
    """
    wb = DTYPE_BYTES[dtype]
    inter = (
        arch.moe_intermediate_size * arch.experts_per_token
        if arch.is_moe
        else arch.intermediate_size
    )
    mlp = max_num_batched_tokens * (2 * inter / tp + 4 * arch.hidden_size) * wb
    logits = max_num_seqs * arch.vocab_size * 4 / tp
    return mlp + logits + RUNTIME_OVERHEAD_GIB * GIB


def num_kv_blocks(
    arch: ModelArch,
    device: DeviceSpec,
    *,
    tp: int,
    dtype: str,
    block_size: int,
    gpu_memory_utilization: float,
    max_num_batched_tokens: int,
    max_num_seqs: int,
    activation_reserve_gib: float | None = None,
    kv_dtype: str | None = None,
) -> int:
    """KV-cache blocks of one instance: ``tp`` devices x memory x utilisation, less
    weights and the activation reserve, divided by the bytes of one block.

    Raises:
        ValueError: when the weights and reserve do not fit, naming the figures.
    """
    usable = device.mem_bytes * gpu_memory_utilization * tp
    weights = arch.weight_bytes(dtype)
    if activation_reserve_gib is None:
        reserve = activation_reserve_bytes(arch, tp, dtype, max_num_batched_tokens, max_num_seqs)
    else:
        reserve = activation_reserve_gib * GIB
    free = usable - weights - reserve * tp
    block_bytes = block_size * arch.kv_bytes_per_token(kv_dtype or dtype)
    blocks = int(free // block_bytes)
    if blocks <= 0:
        raise ValueError(
            f"{arch.name} does not fit on {tp} x {device.name}: "
            f"{usable / GIB:.1f} GiB usable, weights {weights / GIB:.1f} GiB, "
            f"activation reserve {reserve * tp / GIB:.1f} GiB"
        )
    return blocks
