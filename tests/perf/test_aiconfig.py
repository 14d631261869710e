"""The aiconfigurator-backed NVIDIA latency model (skipped without aiconfigurator-core)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.perf import aiconfig
from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.perf.factory import latency_source
from llmserve_env.perf.hardware import device_catalog, resolve_device
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profile_format import Profile, read_profile, write_profile
from llmserve_env.perf.roofline import RooflineModel

needs_aiconfigurator = pytest.mark.skipif(
    aiconfig.aiconfigurator_version() is None,
    reason="aiconfigurator-core is not installed (pip install llmserve-env[nvidia])",
)


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never write into the user's cache from tests (one cache for the module's tests)."""
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path_factory.getbasetemp() / "llmserve-cache"))


def test_system_mapping_covers_catalog_names() -> None:
    catalog = device_catalog()
    for name in aiconfig.SYSTEMS:
        assert name in catalog, f"{name} is not a catalog device"
    assert aiconfig.aiconfigurator_system("h100") == "h100_sxm"
    assert aiconfig.aiconfigurator_system("RTX PRO 6000 Blackwell Server") == "rtx_pro_6000_server"
    assert aiconfig.aiconfigurator_system("MI300X") is None
    assert aiconfig.aiconfigurator_system("no-such-device") is None


def test_uncovered_cases_return_none() -> None:
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    assert aiconfig.aiconfigurator_model(arch, resolve_device("MI300X")) is None
    assert aiconfig.aiconfigurator_model(arch, "TPU-v6e") is None
    assert aiconfig.aiconfigurator_model(arch, "H100", dtype="fp32") is None


def test_missing_package_returns_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiconfig, "aiconfigurator_version", lambda: None)
    assert aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "H100") is None
    with pytest.raises(aiconfig.AiconfigUnavailable, match="not installed"):
        aiconfig.aiconfigurator_profile("meta-llama/Llama-3.1-8B", "H100")


@needs_aiconfigurator
def test_fp8_on_a100_is_not_covered() -> None:
    assert aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "A100", dtype="fp8") is None


@needs_aiconfigurator
def test_tables_for_llama_8b_on_h100() -> None:
    model = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "H100", tp=1)
    assert isinstance(model, LatencyModel)
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    # Monotone in prefill tokens and in cached context.
    prefill = [model.iteration_time_s(BatchShape((n,), (0,))) for n in (1, 64, 512, 2048, 8192)]
    assert np.all(np.diff(prefill) > 0)
    ctx = [model.iteration_time_s(BatchShape((256,), (c,))) for c in (0, 4096, 32768)]
    assert np.all(np.diff(ctx) > 0)
    # A decode step reads the weights at least once: ~16 GB at 3.35 TB/s.
    weights_s = arch.weight_bytes("bf16") / (device.mem_bw_gbps * 1e9)
    one = model.iteration_time_s(BatchShape((), (), 1, 1024, 1024))
    assert weights_s * 0.9 < one < weights_s * 3
    kv = np.array([64 * 512.0, 64 * 4096.0, 64 * 32768.0])
    stretch = model.decode_times_s(64, kv, kv / 64, kv / 64)
    assert np.all(np.diff(stretch) > 0)
    assert stretch[1] == pytest.approx(
        model.iteration_time_s(BatchShape((), (), 64, int(kv[1]), 4096))
    )
    # Same order of magnitude as the analytical model.
    roof = RooflineModel(arch, device).iteration_time_s(BatchShape((2048,), (0,)))
    assert 0.3 < prefill[3] / roof < 3.0


@needs_aiconfigurator
def test_tensor_parallel_and_moe() -> None:
    tp1 = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-70B", "H200", tp=4, dtype="fp8")
    tp8 = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-70B", "H200", tp=8, dtype="fp8")
    assert tp1 is not None and tp8 is not None
    batch = BatchShape((4096,), (0,))
    assert tp8.iteration_time_s(batch) < tp1.iteration_time_s(batch)
    moe = aiconfig.aiconfigurator_model("Qwen/Qwen3-30B-A3B-Instruct-2507", "H100")
    assert moe is not None
    each = np.array([1024.0])
    decode = [float(moe.decode_times_s(b, b * each, each, each)[0]) for b in (1, 8, 64)]
    assert np.all(np.diff(decode) > 0)  # more tokens hit more experts


@needs_aiconfigurator
def test_profile_round_trips_through_the_format(tmp_path: Path) -> None:
    profile = aiconfig.aiconfigurator_profile("meta-llama/Llama-3.1-8B", "L40S", tp=2)
    assert profile.meta.source == "aiconfigurator"
    assert profile.meta.provenance["system"] == "l40s"
    assert ("all_reduce", 2) in profile.collectives
    assert "all_reduce" in profile.meta.sequence.layer
    # Embedding all-reduce first; the LM head's output is all-gathered in 16 bit.
    assert profile.meta.sequence.prologue == ("embedding", "all_reduce")
    assert profile.meta.sequence.head == ("final_norm", "lm_head", "all_gather@seq")
    vocab = load_model_arch("meta-llama/Llama-3.1-8B").vocab_size
    assert profile.meta.collective_bytes_per_seq == vocab * 2
    gather = profile.collectives[("all_gather", 2)]
    comm = aiconfig.collective_table("L40S")
    assert comm is not None
    np.testing.assert_allclose(gather.time_us, comm.times_s("all_gather", gather.x, 2) * 1e6)
    back = read_profile(write_profile(profile, tmp_path / "profile"))
    assert set(back.dense) == set(profile.dense)
    assert back.attention is not None and len(back.attention) == len(profile.attention or [])


@needs_aiconfigurator
def test_second_build_comes_from_the_cache() -> None:
    aiconfig._model.cache_clear()
    first = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "B200")
    aiconfig._model.cache_clear()
    calls: list[object] = []
    original = aiconfig._query
    try:
        aiconfig._query = lambda *a, **k: calls.append(a) or original(*a, **k)  # type: ignore[assignment]
        second = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "B200")
    finally:
        aiconfig._query = original  # type: ignore[assignment]
    assert first is not None and second is not None and not calls
    batch = BatchShape((1000,), (0,), 10, 10_000, 1000)
    assert first.iteration_time_s(batch) == second.iteration_time_s(batch)


@needs_aiconfigurator
def test_shapes_without_data_fall_back() -> None:
    # aiconfigurator has no MoE table for Phi-mini-MoE's expert shape under any routing
    # distribution: the model is not covered rather than an error.
    assert aiconfig.aiconfigurator_model("microsoft/Phi-mini-MoE-instruct", "H100") is None
    with pytest.raises(aiconfig.AiconfigUnavailable, match="cannot evaluate"):
        aiconfig.aiconfigurator_profile("microsoft/Phi-mini-MoE-instruct", "H100")


@needs_aiconfigurator
def test_expert_parallel_tables_time_one_rank_of_the_experts() -> None:
    from llmserve_env.perf.factory import make_latency_model
    from llmserve_env.perf.profile_model import ProfileLatencyModel

    arch = load_model_arch("Qwen/Qwen3-30B-A3B-Instruct-2507")
    whole = aiconfig.aiconfigurator_profile(arch, "H100-SXM")
    ranked = aiconfig.aiconfigurator_profile(arch, "H100-SXM", expert_parallel_size=4)
    assert ranked.meta.provenance["expert_parallel_size"] == 4
    assert "expert_parallel_size" not in whole.meta.provenance
    assert ranked.meta.provenance["query_key"] != whole.meta.provenance["query_key"]

    # At a decode batch's token count a rank reads a quarter of the experts' weights.
    def at_128(profile: Profile, op: str) -> float:
        curve = profile.dense[op]
        return float(np.interp(128.0, curve.x, curve.time_us))

    assert at_128(ranked, "moe_experts") < 0.8 * at_128(whole, "moe_experts")
    assert at_128(ranked, "qkv_gemm") == at_128(whole, "qkv_gemm")
    with pytest.raises(ValueError, match="MoE model at tp 1"):
        aiconfig.aiconfigurator_profile(
            "meta-llama/Llama-3.1-8B", "H100-SXM", expert_parallel_size=2
        )
    # perf: auto takes these tables for an expert-parallel rank and adds the collectives.
    model = make_latency_model(
        arch, resolve_device("H100-SXM"), 1, "bf16", "auto", expert_parallel_size=4
    )
    assert isinstance(model, ProfileLatencyModel) and model.expert_parallel is not None
    assert model.tables.moe is None
    batch = BatchShape((), (), 128, 128 * 600, 600, 600)
    ep = model.expert_parallel
    without = ProfileLatencyModel(model.tables, arch)
    collectives = arch.num_layers * ep.collectives_s(128)
    assert model.iteration_time_s(batch) == pytest.approx(
        without.iteration_time_s(batch) + collectives
    )


def test_padding_envelope_keeps_curves_from_falling() -> None:
    times = np.array([26.1, 10.7, 11.0, 9.0, 12.0])
    assert aiconfig._padded(times).tolist() == [9.0, 9.0, 9.0, 9.0, 12.0]


@needs_aiconfigurator
def test_decode_steps_never_get_faster_as_the_batch_grows() -> None:
    """GB200's FP8 entries are slower at 1 token than at 8 in the raw database; the
    built model is not."""
    profile = aiconfig.aiconfigurator_profile("meta-llama/Llama-3.1-8B", "GB200", 8, "fp8")
    for name, curve in profile.dense.items():
        assert np.all(np.diff(curve.time_us) >= 0), name
    model = aiconfig.aiconfigurator_model("meta-llama/Llama-3.1-8B", "GB200", 8, "fp8")
    assert model is not None
    steps = [
        model.iteration_time_s(BatchShape((), (), n, n * 1024, 1024, 1024))
        for n in (1, 2, 4, 8, 16, 64)
    ]
    # Neither the token-parallel part nor the attention grid falls (the raw attention
    # entries: 2,001 us at 1 decode, 1,997 us at 2), and 1 decode is not 3.9 ms as before.
    assert all(b >= a for a, b in itertools.pairwise(steps))
    assert steps[0] < 1.1 * steps[3]


def test_padded_grid_is_the_least_time_at_every_larger_size() -> None:
    grid = np.array([[25.8, 13.5, 14.0], [12.0, 30.0, 31.0], [40.0, 35.0, 50.0]])
    assert aiconfig._padded_grid(grid).tolist() == [
        [12.0, 13.5, 14.0],
        [12.0, 30.0, 31.0],
        [35.0, 35.0, 50.0],
    ]


@needs_aiconfigurator
def test_prefill_never_gets_faster_with_more_cached_context() -> None:
    """H200's raw FP8 entry for a one-token chunk of Llama-2-7B at tp 8 is 26.1 us with
    no cached context and 13.5 us after 128 cached tokens."""
    model = aiconfig.aiconfigurator_model("meta-llama/Llama-2-7b-hf", "H200", 8, "fp8")
    assert model is not None
    for chunk in (1, 256, 512):
        times = [
            model.iteration_time_s(BatchShape((chunk,), (ctx,))) for ctx in (0, 128, 1024, 2048)
        ]
        assert all(b >= a for a, b in itertools.pairwise(times)), (chunk, times)


@needs_aiconfigurator
def test_moe_block_never_beats_reading_its_experts() -> None:
    """L40S's measured MoE entry for Qwen3-30B-A3B at one token (34 us) is below reading
    the eight experts it routes to (87 us at 864 GB/s): the profile takes the floor."""
    arch = load_model_arch("Qwen/Qwen3-30B-A3B-Instruct-2507")
    device = resolve_device("L40S")
    profile = aiconfig.aiconfigurator_profile(arch, device, 1, "bf16")
    curve = profile.dense["moe_experts"]
    expert_bytes = 3 * arch.hidden_size * arch.moe_intermediate_size * 2
    one_token_floor_us = arch.experts_per_token * expert_bytes / (device.mem_bw_gbps * 1e3)
    assert curve.x[0] == 1 and curve.time_us[0] == pytest.approx(one_token_floor_us, rel=1e-3)
    assert np.all(
        curve.time_us >= aiconfig._expert_read_floor_us(arch, device, 1, "bf16", curve.x) - 1e-9
    )


@needs_aiconfigurator
@pytest.mark.parametrize(
    ("device", "table"), [("H100-SXM", "fp8_block"), ("H200", "fp8_block"), ("RTX PRO 6000", "fp8")]
)
def test_fp8_moe_takes_vllms_own_fp8_method_where_measured(device: str, table: str) -> None:
    """FP8 experts come from the ``fp8_block`` table (vLLM's ``Fp8MoEMethod``) where one
    exists and from ModelOpt's ``fp8`` table otherwise; either way an FP8 decode reads
    half the expert bytes and is faster than BF16's (ModelOpt's Hopper kernel was 2-4x
    slower than BF16)."""
    arch = load_model_arch("mistralai/Mixtral-8x7B-v0.1")
    fp8 = aiconfig.aiconfigurator_profile(arch, device, 2, "fp8")
    bf16 = aiconfig.aiconfigurator_profile(arch, device, 2, "bf16")
    assert fp8.meta.provenance["moe_quant"] == table
    assert bf16.meta.provenance["moe_quant"] == "bfloat16"
    fp8_curve, bf16_curve = fp8.dense["moe_experts"], bf16.dense["moe_experts"]
    decode = fp8_curve.x <= 256
    assert np.all(fp8_curve.time_us[decode] < bf16_curve.time_us[decode])


@needs_aiconfigurator
def test_dense_models_have_no_moe_table() -> None:
    profile = aiconfig.aiconfigurator_profile("meta-llama/Llama-3.1-8B", "H100-SXM", 1, "fp8")
    assert profile.meta.provenance["moe_quant"] is None
    assert "moe_experts" not in profile.dense


@needs_aiconfigurator
def test_fp8_experts_without_vllms_block_fp8_say_so() -> None:
    """Qwen3-30B-A3B's 768-wide experts split into 192 per rank at tp 4, which vLLM's
    128 x 128 block FP8 cannot hold, so aiconfigurator has no ``fp8_block`` entry there:
    the per-tensor table times them, and the model's name says so."""
    qwen = "Qwen/Qwen3-30B-A3B-Instruct-2507"
    tp2 = aiconfig.aiconfigurator_model(qwen, "H100-SXM", 2, "fp8")
    tp4 = aiconfig.aiconfigurator_model(qwen, "H100-SXM", 4, "fp8")
    assert tp2 is not None and tp4 is not None
    assert latency_source(tp2) == "aiconfigurator:H100-SXM"
    assert "cannot split the 768-wide experts over tp 4 (192 per rank)" in latency_source(tp4)
    rtx = aiconfig.aiconfigurator_model("mistralai/Mixtral-8x7B-v0.1", "RTX PRO 6000", 2, "fp8")
    assert rtx is not None and "no fp8_block data" in latency_source(rtx)
