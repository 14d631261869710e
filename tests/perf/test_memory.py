"""The KV-cache sizing follows vLLM 0.19's profiling, term by term."""

from __future__ import annotations

import math

import pytest

from llmserve_env.perf import memory
from llmserve_env.perf.hardware import GIB, resolve_device
from llmserve_env.perf.model_arch import load_model_arch


def test_rtx4090_llama_8b_blocks_by_hand() -> None:
    """Llama-3.1-8B, BF16, TP1 on an RTX 4090 at utilisation 0.9, 2,048 batched tokens,
    256 sequences (the LLMServingSim bench run), computed by hand."""
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    device = resolve_device("RTX 4090")
    requested = math.ceil(25_250_627_584 * 0.9)  # cudaMemGetInfo total x utilisation
    weights = 8_029_995_008 * 2 + 131_072 * 128 * 2  # parameters + rotary cos/sin cache
    hidden = 2048 * 4096 * 2  # the forward's hidden states, held during the sampler run
    # logits BF16 + FP32 copy + probabilities + noise, and 128 rows of top-k/top-p buffer
    sampler = 256 * 128_256 * (2 + 4 + 4 + 4) + 128 * 128_256 * 4
    non_torch = 0.1 * GIB
    block = 16 * 2 * 32 * 8 * 128 * 2  # 2 MiB: K and V of 16 tokens in 32 layers
    expected = int((requested - weights - hidden - sampler - non_torch) // block)
    assert expected == 2852
    got = memory.num_kv_blocks(
        arch,
        device,
        tp=1,
        dtype="bf16",
        block_size=16,
        gpu_memory_utilization=0.9,
        max_num_batched_tokens=2048,
        max_num_seqs=256,
    )
    assert got == expected


def test_sampler_dominates_the_profile_at_a_large_vocabulary() -> None:
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    forward = memory.forward_peak_bytes(arch, 1, "bf16", 2048)
    peak = memory.peak_activation_bytes(arch, 1, "bf16", 2048, 256)
    assert peak > forward
    assert peak == pytest.approx(2048 * 4096 * 2 + memory.sampler_peak_bytes(arch, "bf16", 256))


def test_tensor_parallel_blocks_are_per_gpu() -> None:
    """Each rank holds half the weights and half the KV heads, and the whole rotary
    cache; the instance's blocks are one rank's."""
    arch = load_model_arch("Qwen/Qwen3-32B")
    device = resolve_device("RTX PRO 6000")
    weights = memory.weights_bytes_per_device(arch, 2, "bf16")
    rotary = arch.max_position_embeddings * arch.head_dim * 2
    assert weights == pytest.approx(arch.weight_bytes("bf16") / 2 + rotary)
    blocks = memory.num_kv_blocks(
        arch,
        device,
        tp=2,
        dtype="bf16",
        block_size=16,
        gpu_memory_utilization=0.9,
        max_num_batched_tokens=2048,
        max_num_seqs=128,
    )
    reserve = memory.activation_reserve_bytes(arch, 2, "bf16", 2048, 128)
    per_gpu = math.ceil(device.cuda_mem_bytes * 0.9) - weights - reserve
    assert blocks == int(per_gpu // (16 * arch.kv_bytes_per_token("bf16") / 2))


def test_kv_heads_fewer_than_gpus_are_replicated() -> None:
    """Qwen3-30B-A3B has 4 KV heads: at tp 8 each GPU holds one (vLLM replicates), the
    same KV per token as at tp 4, so its cache holds no more tokens per GPU."""
    arch = load_model_arch("Qwen/Qwen3-30B-A3B-Instruct-2507")
    assert arch.num_kv_heads == 4
    one_head = 2 * arch.num_layers * arch.head_dim * 2
    assert arch.kv_bytes_per_token_per_gpu("bf16", 4) == one_head
    assert arch.kv_bytes_per_token_per_gpu("bf16", 8) == one_head
    assert arch.kv_bytes_per_token_per_gpu("bf16", 2) == 2 * one_head
    device = resolve_device("H100")
    kwargs = {
        "dtype": "bf16",
        "block_size": 16,
        "gpu_memory_utilization": 0.9,
        "max_num_batched_tokens": 2048,
        "max_num_seqs": 256,
    }
    tp4 = memory.num_kv_blocks(arch, device, tp=4, **kwargs)  # type: ignore[arg-type]
    tp8 = memory.num_kv_blocks(arch, device, tp=8, **kwargs)  # type: ignore[arg-type]
    # tp 8 frees weight memory only (about 7 GiB per GPU): a few thousand more blocks,
    # not twice as many.
    assert tp4 < tp8 < 1.2 * tp4


def test_cuda_total_defaults_to_the_nominal_capacity() -> None:
    assert resolve_device("RTX PRO 6000").cuda_mem_bytes == 96 * GIB
    rtx4090 = resolve_device("RTX 4090")
    assert rtx4090.mem_bytes == 24 * GIB
    assert rtx4090.cuda_mem_bytes == pytest.approx(25_250_627_584, abs=64)


def test_activation_reserve_override_replaces_the_estimate() -> None:
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    device = resolve_device("RTX 4090")
    kwargs = {
        "tp": 1,
        "dtype": "bf16",
        "block_size": 16,
        "gpu_memory_utilization": 0.9,
        "max_num_batched_tokens": 2048,
        "max_num_seqs": 256,
    }
    small = memory.num_kv_blocks(arch, device, activation_reserve_gib=0.0, **kwargs)
    large = memory.num_kv_blocks(arch, device, activation_reserve_gib=1.0, **kwargs)
    assert small - large == 512  # 1 GiB of 2 MiB blocks
    with pytest.raises(ValueError, match="does not fit"):
        memory.num_kv_blocks(arch, device, activation_reserve_gib=8.0, **kwargs)


def test_expert_parallel_ranks_hold_their_share_of_the_experts() -> None:
    arch = load_model_arch("Qwen/Qwen3-30B-A3B-Instruct-2507")
    whole = memory.weights_bytes_per_device(arch, 1, "bf16")
    split = memory.weights_bytes_per_device(arch, 1, "bf16", expert_parallel_size=2)
    experts = arch.num_layers * arch.num_experts * 3 * arch.hidden_size * arch.moe_intermediate_size
    assert experts == arch.num_layers * arch.expert_params_per_layer
    assert whole - split == pytest.approx(experts * 2 / 2)  # half the experts, 2 bytes each
    dense = load_model_arch("meta-llama/Llama-3.1-8B")
    assert dense.expert_params_per_layer == 0
