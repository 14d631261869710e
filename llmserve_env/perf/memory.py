"""Device memory accounting after vLLM 0.19's profiling: the KV-cache block count.

vLLM (``Worker.determine_available_memory``, ``utils/mem_utils.memory_profiling``)
gives the KV cache, per GPU::

    ceil(total x gpu_memory_utilization) - weights - torch peak increase - non-torch increase

- ``total`` is what ``cudaMemGetInfo`` reports (:attr:`DeviceSpec.cuda_mem_bytes`),
  below the card's nominal capacity by the driver's reservation.
- ``weights`` is the memory allocated while loading: the parameters of this rank plus
  the rotary cos/sin cache (``max_position_embeddings x head_dim`` in the model dtype).
- the torch peak increase is the allocator's high-water mark during ``profile_run``:
  a forward pass of ``max_num_batched_tokens`` tokens, then a sampler warm-up on
  ``min(max_num_seqs, max_num_batched_tokens)`` rows (:func:`peak_activation_bytes`).
- the non-torch increase is measured on the host from the snapshot taken after NCCL's
  initialisation to the end of profiling (kernel modules loaded, library workspaces);
  the source cannot give it, so :data:`NON_TORCH_INCREASE_GIB` stands in.

Not charged, as in vLLM 0.19: the CUDA context and NCCL buffers (they exist before the
snapshot), and CUDA graphs (captured after the KV cache is allocated; their estimate
``VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS`` is off by default until vLLM 0.21). Both
come out of the ``1 - gpu_memory_utilization`` headroom. The block count is the
available bytes divided by one block of every layer (``kv_cache_utils.get_num_blocks``).
"""

from __future__ import annotations

import math

from llmserve_env.perf.hardware import GIB, DeviceSpec
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch

NON_TORCH_INCREASE_GIB = 0.1
"""Non-torch memory vLLM's profiler sees appear during loading and profiling, per GPU.
Published vLLM logs of Llama-3.1-8B report 0.05-0.12 GiB (``non_torch_memory takes``);
it depends on the host (driver, lazily loaded kernels), not on the model's shape."""

TOPK_TOPP_BUFFER_ROWS = 128
"""Rows of the per-program scratch buffer of vLLM's Triton top-k/top-p kernel: one per
Triton program, ``min(rows, SMs)`` rounded to a power of two and capped at the SM
count; 128 on an RTX 4090 (128 SMs) and on an RTX PRO 6000 (188 SMs) at 128 or more
rows."""


def forward_peak_bytes(arch: ModelArch, tp: int, dtype: str, num_tokens: int) -> float:
    """Live tensors at the MLP of a forward pass of ``num_tokens`` tokens, per GPU: the
    gate/up projection, its activation and three hidden-size tensors (residual, input,
    output). An estimate: the compiled graph's buffer reuse is not modelled."""
    wb = DTYPE_BYTES[dtype]
    inter = (
        arch.moe_intermediate_size * arch.experts_per_token
        if arch.is_moe
        else arch.intermediate_size
    )
    return num_tokens * (3 * inter / tp + 3 * arch.hidden_size) * wb


def sampler_peak_bytes(arch: ModelArch, dtype: str, num_rows: int) -> float:
    """High-water mark of vLLM 0.19's sampler warm-up (``_dummy_sampler_run``) on
    ``num_rows`` rows, per GPU (every rank gathers the full vocabulary): the logits in
    the model dtype, their FP32 copy (``Sampler.forward``), the top-k/top-p kernel's
    buffer (in place otherwise), the probabilities and the exponential noise of
    ``random_sample``."""
    vocab = arch.vocab_size
    buffer_rows = min(num_rows, TOPK_TOPP_BUFFER_ROWS)
    return num_rows * vocab * (DTYPE_BYTES[dtype] + 3 * 4) + buffer_rows * vocab * 4


def peak_activation_bytes(
    arch: ModelArch, tp: int, dtype: str, max_num_batched_tokens: int, max_num_seqs: int
) -> float:
    """vLLM's torch peak increase during ``profile_run``, per GPU: the larger of the
    forward pass and the sampler warm-up, which runs while the forward's hidden states
    are still held."""
    rows = min(max_num_seqs, max_num_batched_tokens)
    hidden = max_num_batched_tokens * arch.hidden_size * DTYPE_BYTES[dtype]
    return max(
        forward_peak_bytes(arch, tp, dtype, max_num_batched_tokens),
        hidden + sampler_peak_bytes(arch, dtype, rows),
    )


def activation_reserve_bytes(
    arch: ModelArch, tp: int, dtype: str, max_num_batched_tokens: int, max_num_seqs: int
) -> float:
    """What vLLM 0.19 charges besides the weights, per GPU: the peak activation and the
    non-torch increase."""
    peak = peak_activation_bytes(arch, tp, dtype, max_num_batched_tokens, max_num_seqs)
    return peak + NON_TORCH_INCREASE_GIB * GIB


def weights_bytes_per_device(
    arch: ModelArch, tp: int, dtype: str, expert_parallel_size: int = 1
) -> float:
    """Memory allocated by loading, per GPU: this rank's share of the parameters and the
    rotary cos/sin cache, which every rank holds whole.

    With expert parallelism over ``expert_parallel_size`` devices (vLLM's
    ``--enable-expert-parallel``, ``dp x tp`` devices) a device holds
    ``num_experts / expert_parallel_size`` whole experts instead of a ``1 / tp`` slice of
    every expert; the other weights keep their ``1 / tp`` share."""
    rotary = arch.max_position_embeddings * arch.head_dim * DTYPE_BYTES[dtype]
    total = arch.weight_bytes(dtype)
    if expert_parallel_size <= 1:
        return total / tp + rotary
    experts = arch.num_layers * arch.expert_params_per_layer * DTYPE_BYTES[dtype]
    return (total - experts) / tp + experts / expert_parallel_size + rotary


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
    expert_parallel_size: int = 1,
) -> int:
    """KV-cache blocks of one instance as vLLM 0.19 sizes them (module doc), per GPU;
    the ranks of a tensor-parallel instance are alike, so their blocks are too.
    ``expert_parallel_size`` > 1: the experts are split over that many devices
    (:func:`weights_bytes_per_device`).

    Raises:
        ValueError: when the weights and reserve do not fit, naming the figures.
    """
    requested = math.ceil(device.cuda_mem_bytes * gpu_memory_utilization)
    weights = weights_bytes_per_device(arch, tp, dtype, expert_parallel_size)
    if activation_reserve_gib is None:
        reserve = activation_reserve_bytes(arch, tp, dtype, max_num_batched_tokens, max_num_seqs)
    else:
        reserve = activation_reserve_gib * GIB
    available = requested - weights - reserve
    block_bytes = block_size * arch.kv_bytes_per_token_per_gpu(kv_dtype or dtype, tp)
    blocks = int(available // block_bytes)
    if blocks <= 0:
        raise ValueError(
            f"{arch.name} does not fit on {tp} x {device.name}: "
            f"{requested / GIB:.1f} GiB requested per device, weights "
            f"{weights / GIB:.1f} GiB, activation reserve {reserve / GIB:.1f} GiB"
        )
    return blocks
