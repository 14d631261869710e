"""Roofline model: physical floors, monotonicity, calibration lookup, collectives."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.perf.comm import AlphaBetaComm, CollectiveTable
from llmserve_env.perf.hardware import DeviceSpec, device_catalog, resolve_device
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch, load_model_arch
from llmserve_env.perf.roofline import (
    FAMILY_CALIBRATIONS,
    RooflineCalibration,
    RooflineModel,
    calibration_for,
    device_family,
)

MODELS = ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-70B", "Qwen/Qwen3-30B-A3B-Instruct-2507")
DEVICES = ("H100-SXM", "A100-SXM-80GB", "MI300X", "TPU-v6e", "RTX4090", "Gaudi3", "MI100-HBM-PIM")


def _custom_device(**overrides: object) -> DeviceSpec:
    figures: dict[str, object] = dict(
        name="my-accelerator",
        vendor="custom",
        bf16_tflops=400.0,
        fp8_tflops=None,
        mem_gib=64.0,
        mem_bw_gbps=2000.0,
        scaleup_bw_gbps=200.0,
        host_bw_gbps=32.0,
        tdp_w=500.0,
        idle_w=50.0,
    )
    figures.update(overrides)
    return DeviceSpec(**figures)  # type: ignore[arg-type]


def _weight_bytes_per_device(arch: ModelArch, tp: int, dtype: str, num_decodes: int) -> float:
    """Bytes a decode step must read at least: every dense weight once (experts: the
    expected distinct ones), the LM head, all over ``tp`` devices."""
    wb = DTYPE_BYTES[dtype]
    layers = arch.num_layers
    dense = layers * arch.attn_params_per_layer
    if arch.is_moe:
        hit = arch.num_experts * (
            1 - (1 - arch.experts_per_token / arch.num_experts) ** num_decodes
        )
        dense += layers * hit * 3 * arch.hidden_size * arch.moe_intermediate_size
    else:
        dense += layers * arch.mlp_params_per_layer
    return (dense + arch.vocab_size * arch.hidden_size) * wb / tp


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("device_name", DEVICES)
@pytest.mark.parametrize("tp", [1, 4, 8])
def test_decode_never_beats_reading_weights_and_kv(model: str, device_name: str, tp: int) -> None:
    arch, device = load_model_arch(model), resolve_device(device_name)
    roof = RooflineModel(arch, device, tp=tp)
    # What runs in processing-in-memory units reads at the internal bandwidth.
    bw = max(device.mem_bw_gbps, device.pim_bw_gbps or 0.0) * 1e9
    for num_decodes, kv_each in ((1, 1), (1, 4096), (64, 2048), (256, 8192)):
        kv_sum = num_decodes * kv_each
        floor = (
            _weight_bytes_per_device(arch, tp, "bf16", num_decodes)
            # Each GPU holds its share of the KV heads, or one replicated head when
            # there are fewer heads than GPUs (Qwen3-30B-A3B's 4 at tp 8).
            + kv_sum * 2 * arch.num_layers * max(1, arch.num_kv_heads // tp) * arch.head_dim * 2
        ) / bw
        t = roof.iteration_time_s(BatchShape((), (), num_decodes, kv_sum, kv_each))
        each = np.array([float(kv_each)])
        vec = roof.decode_times_s(num_decodes, np.array([float(kv_sum)]), each, each)
        assert t >= floor
        assert vec[0] == pytest.approx(t)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("device_name", DEVICES)
def test_prefill_never_beats_its_flops_at_peak(model: str, device_name: str) -> None:
    arch, device = load_model_arch(model), resolve_device(device_name)
    roof = RooflineModel(arch, device, tp=2)
    for new, ctx in ((128, 0), (2048, 0), (1024, 8192), (8192, 0)):
        active = arch.attn_params_per_layer + arch.active_mlp_params_per_layer
        linear = 2.0 * new * arch.num_layers * active
        attn = 4.0 * arch.num_layers * arch.num_heads * arch.head_dim * new * (ctx + (new + 1) / 2)
        floor = (linear + attn) / 2 / device.peak_flops("bf16")
        assert roof.iteration_time_s(BatchShape((new,), (ctx,))) >= floor


@pytest.mark.parametrize("model", MODELS)
def test_monotone_in_tokens_kv_and_batch(model: str) -> None:
    roof = RooflineModel(load_model_arch(model), resolve_device("H100"), tp=2)
    prefill = [roof.iteration_time_s(BatchShape((n,), (0,))) for n in (1, 16, 256, 4096, 16384)]
    assert np.all(np.diff(prefill) > 0)
    with_ctx = [roof.iteration_time_s(BatchShape((512,), (c,))) for c in (0, 1024, 8192, 65536)]
    assert np.all(np.diff(with_ctx) > 0)
    kv = np.array([1e3, 1e4, 1e5, 1e6])
    decode = roof.decode_times_s(32, kv, kv / 32, kv / 32)
    assert np.all(np.diff(decode) > 0)
    each = np.array([1024.0])
    by_batch = [float(roof.decode_times_s(b, b * each, each, each)[0]) for b in (1, 8, 64, 512)]
    assert np.all(np.diff(by_batch) > 0)
    assert roof.iteration_time_s(BatchShape()) == 0.0


def test_faster_device_is_faster() -> None:
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    batch = BatchShape((2048,), (0,), 32, 32 * 1024, 1024)
    a100 = RooflineModel(arch, resolve_device("A100")).iteration_time_s(batch)
    h100 = RooflineModel(arch, resolve_device("H100")).iteration_time_s(batch)
    b200 = RooflineModel(arch, resolve_device("B200")).iteration_time_s(batch)
    assert a100 > h100 > b200


def test_is_a_latency_model() -> None:
    roof = RooflineModel(load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100"))
    assert isinstance(roof, LatencyModel)


def test_calibration_lookup() -> None:
    assert device_family(resolve_device("H100")) == "nvidia-hopper"
    assert device_family(resolve_device("H200")) == "nvidia-hopper"
    assert device_family(resolve_device("A100")) == "nvidia-ampere-dc"
    assert device_family(resolve_device("B200")) == "nvidia-blackwell"
    assert device_family(resolve_device("RTX-PRO-6000")) == "nvidia-blackwell-ws"
    assert device_family(resolve_device("MI300X")) == "amd-cdna3"
    assert device_family(resolve_device("TPU-v5e")) == "google-tpu"
    assert device_family(resolve_device("Gaudi2")) == "intel-gaudi"
    # Devices outside the catalog: by vendor, else generic.
    assert device_family(_custom_device()) == "generic"
    assert device_family(_custom_device(name="X100", vendor="nvidia")) == "nvidia-hopper"
    assert (
        calibration_for(resolve_device("H100")) is FAMILY_CALIBRATIONS["nvidia-hopper"].calibration
    )
    assert calibration_for(_custom_device()) == RooflineCalibration()


def test_every_catalog_device_has_sane_constants() -> None:
    for device in device_catalog().values():
        cal = calibration_for(device)
        for eff in (cal.eff_gemm, cal.eff_attn, cal.eff_mem, cal.eff_decode_mem, cal.comm_eff):
            assert 0.0 < eff <= 1.0
        assert cal.per_layer_overhead_s >= 0.0 and cal.overhead_s >= 0.0
        assert cal.decode_seq_s >= 0.0 and cal.prefill_token_s >= 0.0
    for family in FAMILY_CALIBRATIONS.values():
        assert family.source and family.fit_error


def test_default_calibration_is_the_device_family() -> None:
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("A100")
    assert RooflineModel(arch, device).calibration == calibration_for(device)


def test_calibration_rejects_unphysical_derates() -> None:
    with pytest.raises(ValueError, match="eff_mem"):
        RooflineCalibration(eff_mem=1.2)
    with pytest.raises(ValueError, match="eff_gemm"):
        RooflineCalibration(eff_gemm=0.0)
    with pytest.raises(ValueError, match="overhead_s"):
        RooflineCalibration(overhead_s=-1.0)


def test_calibration_rejects_unphysical_decode_constants() -> None:
    with pytest.raises(ValueError, match="eff_decode_mem"):
        RooflineCalibration(eff_decode_mem=1.5)
    with pytest.raises(ValueError, match="decode_seq_s"):
        RooflineCalibration(decode_seq_s=-1e-6)
    with pytest.raises(ValueError, match="prefill_token_s"):
        RooflineCalibration(prefill_token_s=-1e-9)


def test_decode_attention_pays_per_sequence_and_reads_at_its_own_bandwidth() -> None:
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    base = RooflineCalibration(eff_decode_mem=1.0, decode_seq_s=0.0)
    seq = dataclasses.replace(base, decode_seq_s=2e-6)
    slow = dataclasses.replace(base, eff_decode_mem=0.5)
    plain, per_seq, half_bw = (
        RooflineModel(arch, device, calibration=c) for c in (base, seq, slow)
    )
    n, each = 48, 700
    kv = n * each
    for batch in (BatchShape((), (), n, kv, each), BatchShape((512,), (0,), n, kv, each)):
        t = plain.iteration_time_s(batch)
        # Each decoding sequence costs its time in every layer...
        assert per_seq.iteration_time_s(batch) - t == pytest.approx(n * arch.num_layers * 2e-6)
        # ... and a memory-bound decode's KV read takes twice as long at half the bandwidth.
        read_s = kv * arch.kv_bytes_per_token_per_gpu("bf16", 1) / (device.mem_bw_gbps * 1e9)
        assert half_bw.iteration_time_s(batch) - t == pytest.approx(read_s)
    # The vectorised stretch and its line carry the same cost.
    sums = np.array([float(kv), float(kv + n)])
    lengths = np.array([float(each), float(each + 1)])
    delta = per_seq.decode_times_s(n, sums, lengths, lengths) - plain.decode_times_s(
        n, sums, lengths, lengths
    )
    np.testing.assert_allclose(delta, n * arch.num_layers * 2e-6, rtol=1e-9)
    line, plain_line = (
        per_seq.decode_line_s(n, kv, each, each, 10),
        plain.decode_line_s(n, kv, each, each, 10),
    )
    assert line is not None and plain_line is not None
    assert line[0] - plain_line[0] == pytest.approx(n * arch.num_layers * 2e-6)
    assert line[1] == pytest.approx(plain_line[1])


def test_prefill_attention_pays_per_new_token() -> None:
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    base = RooflineCalibration(prefill_token_s=0.0)
    plain = RooflineModel(arch, device, calibration=base)
    per_token = RooflineModel(
        arch, device, calibration=dataclasses.replace(base, prefill_token_s=1e-6)
    )
    # Two chunks (one after cached context) beside decodes: only the new tokens pay.
    batch = BatchShape((300, 40), (0, 2000), 8, 8 * 500, 500)
    delta = per_token.iteration_time_s(batch) - plain.iteration_time_s(batch)
    assert delta == pytest.approx(340 * arch.num_layers * 1e-6)
    # Decode-only batches pay nothing for it.
    decodes = BatchShape((), (), 8, 8 * 500, 500)
    assert per_token.iteration_time_s(decodes) == plain.iteration_time_s(decodes)


def test_data_parallel_rank_pays_attention_terms_only_for_its_own_requests() -> None:
    # A lockstep rank runs its weight-bearing layers at the group's largest batch, but
    # attends only to its own requests: the per-sequence and per-token attention terms
    # count the rank's decodes and prefill tokens, whatever the group pads it to.
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    base = RooflineCalibration(decode_seq_s=0.0, prefill_token_s=0.0)
    terms = dataclasses.replace(base, decode_seq_s=2e-6, prefill_token_s=1e-6)
    plain, charged = (RooflineModel(arch, device, calibration=c) for c in (base, terms))
    own = BatchShape((120,), (300,), 6, 6 * 400, 400)
    expected = arch.num_layers * (6 * 2e-6 + 120 * 1e-6)
    for group_tokens in (0, 126, 512, 2048):
        delta = charged.rank_time_s(own, group_tokens) - plain.rank_time_s(own, group_tokens)
        assert delta == pytest.approx(expected)
    # A rank with nothing of its own runs the padded dummy batch and pays neither term.
    idle = BatchShape((), ())
    assert charged.rank_time_s(idle, 2048) == plain.rank_time_s(idle, 2048) > 0.0
    assert charged.rank_time_s(own, 2048) > charged.rank_time_s(own, 0)


def test_decode_constants_are_fitted_or_stated_as_streaming() -> None:
    # The TPU v6e measurements pay about 2 us per decoding sequence and layer, most of a
    # short-context decode there; the NVIDIA families a few tens of nanoseconds.
    tpu = calibration_for(resolve_device("TPU-v6e"))
    assert tpu.decode_seq_s == pytest.approx(2e-6)
    assert tpu.eff_decode_mem < tpu.eff_mem
    assert calibration_for(resolve_device("H100")).decode_seq_s < 0.1e-6
    # Families without decode measurements read the KV like any other stream.
    for family in ("amd-cdna3", "intel-gaudi"):
        cal = FAMILY_CALIBRATIONS[family].calibration
        assert cal.eff_decode_mem == cal.eff_mem and cal.decode_seq_s == 0.0


def test_vidur_fill_attention_charges_decodes_and_prefill_tokens() -> None:
    from llmserve_env.perf.analytical_ops import attention_points

    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    base = RooflineCalibration(decode_seq_s=0.0, prefill_token_s=0.0)
    plain = attention_points(arch, device, 1, "bf16", base)
    seq = attention_points(arch, device, 1, "bf16", dataclasses.replace(base, decode_seq_s=3e-6))
    np.testing.assert_allclose(seq.time_us - plain.time_us, 3.0 * seq.num_decodes, atol=1e-9)
    assert seq.num_decodes.max() > 0
    tok = attention_points(arch, device, 1, "bf16", dataclasses.replace(base, prefill_token_s=2e-6))
    np.testing.assert_allclose(
        tok.time_us - plain.time_us, 2.0 * tok.prefill_chunk_tokens, atol=1e-9
    )
    # Without a calibration the fill takes the device family's, not the generic one.
    tpu = resolve_device("TPU-v6e")
    default = attention_points(arch, tpu, 1, "bf16")
    family = attention_points(arch, tpu, 1, "bf16", calibration_for(tpu))
    generic = attention_points(arch, tpu, 1, "bf16", RooflineCalibration())
    np.testing.assert_array_equal(default.time_us, family.time_us)
    assert not np.allclose(default.time_us, generic.time_us)


def test_bad_arguments() -> None:
    arch, device = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100")
    with pytest.raises(ValueError, match="tp"):
        RooflineModel(arch, device, tp=0)
    with pytest.raises(ValueError, match="dtype"):
        RooflineModel(arch, device, dtype="int3")


def test_tensor_parallel_all_reduce_uses_the_comm_model() -> None:
    arch, device = load_model_arch("meta-llama/Llama-3.1-70B"), resolve_device("H100")
    batch = BatchShape((1024,), (0,))
    cal = dataclasses.replace(calibration_for(device), overhead_s=0.0)
    slow = AlphaBetaComm(bandwidth_gbps=1.0, latency_s=1e-3, efficiency=1.0)
    fast = RooflineModel(arch, device, tp=4, calibration=cal).iteration_time_s(batch)
    with_slow = RooflineModel(arch, device, tp=4, calibration=cal, comm=slow).iteration_time_s(
        batch
    )
    # Two all-reduces per layer and one after the embedding, of 16-bit activations, and
    # one all-gather of the 16-bit logits of the batch's one sequence.
    bytes_per_ar = 1024 * arch.hidden_size * 2
    logits = arch.vocab_size * 2
    default = RooflineModel(arch, device, tp=4).comm

    def collectives(comm: Any) -> float:
        all_reduces = (2 * arch.num_layers + 1) * comm.time_s("all_reduce", bytes_per_ar, 4)
        return float(all_reduces + comm.time_s("all_gather", logits, 4))

    assert with_slow - fast == pytest.approx(collectives(slow) - collectives(default), rel=1e-6)
    flat = (np.array([1e3, 1e9]), np.array([1e-3, 1e-3]))
    table = CollectiveTable({("all_reduce", 4): flat, ("all_gather", 4): flat}, source="flat")
    tabled = RooflineModel(arch, device, tp=4, calibration=cal, comm=table).iteration_time_s(batch)
    assert tabled > fast
    # A single device has no collectives at all.
    single = RooflineModel(arch, device, tp=1, calibration=cal, comm=slow)
    assert single.iteration_time_s(batch) == RooflineModel(
        arch, device, tp=1, calibration=cal
    ).iteration_time_s(batch)


def test_decode_line_equals_the_vectorised_stretch() -> None:
    roof = RooflineModel(load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("H100"))
    line = roof.decode_line_s(16, 16 * 700.0, 900.0, 500.0, 300)
    assert line is not None
    i = np.arange(1, 301, dtype=np.float64)
    times = roof.decode_times_s(16, 16 * 700.0 + 16 * i, 900.0 + i, 500.0 + i)
    np.testing.assert_allclose(line[0] + line[1] * i, times, rtol=1e-12)


def _without_pim(device: DeviceSpec) -> DeviceSpec:
    return dataclasses.replace(device, name="no-pim", pim_tflops=None, pim_bw_gbps=None)


def test_pim_runs_gemv_shaped_work_in_memory() -> None:
    # Llama-3's grouped-query attention keeps decode attention on the host (see below),
    # so what moves is the weight layers.
    arch, pim = load_model_arch("meta-llama/Llama-3.1-8B"), resolve_device("MI100-HBM-PIM")
    with_pim, plain = RooflineModel(arch, pim), RooflineModel(arch, _without_pim(pim))
    assert with_pim.calibration == plain.calibration

    def decode(roof: RooflineModel, num: int, kv_each: int = 1024) -> float:
        return roof.iteration_time_s(BatchShape((), (), num, num * kv_each, kv_each))

    # One decode is a chain of matrix-vector products: in memory, at about the internal
    # bandwidth (the plain device reads its weights at the external one).
    assert decode(with_pim, 1) < 0.6 * decode(plain, 1)
    # Large batches and prefill have the arithmetic intensity of the host's tensor units.
    assert decode(with_pim, 64) == decode(plain, 64)
    prefill = BatchShape((512, 512, 512, 512), (0, 0, 0, 0))
    assert with_pim.iteration_time_s(prefill) == plain.iteration_time_s(prefill)
    # Time falls with PIM and rises with the batch, never below the plain device's at
    # the internal bandwidth.
    for num in (1, 2, 3, 4, 8, 16):
        assert decode(with_pim, num) <= decode(plain, num)
    times = [decode(with_pim, num) for num in (1, 2, 4, 8, 16, 64)]
    assert np.all(np.diff(times) >= 0)


def test_pim_attention_follows_the_head_ratio() -> None:
    """Decode attention's arithmetic intensity is the query-per-KV-head ratio: one for
    multi-head attention (in memory is faster), four for Llama-3's grouped queries
    (the in-memory units' low peak makes the host faster)."""
    pim = resolve_device("MI100-HBM-PIM")
    for model, faster_in_memory in (
        ("meta-llama/Llama-2-7b-hf", True),
        ("meta-llama/Llama-3.1-8B", False),
    ):
        arch = load_model_arch(model)
        with_pim, plain = RooflineModel(arch, pim), RooflineModel(arch, _without_pim(pim))
        kv = np.array([1e5, 2e5])
        slope_pim = float(np.diff(with_pim.decode_times_s(64, kv, kv / 64, kv / 64))[0])
        slope_plain = float(np.diff(plain.decode_times_s(64, kv, kv / 64, kv / 64))[0])
        assert (slope_pim < slope_plain) == faster_in_memory
        assert slope_pim <= slope_plain


def test_pim_decode_line_equals_the_vectorised_stretch() -> None:
    roof = RooflineModel(load_model_arch("meta-llama/Llama-2-7b-hf"), resolve_device("hbm-pim"))
    for num in (1, 16):
        line = roof.decode_line_s(num, num * 700.0, 900.0, 500.0, 100)
        assert line is not None
        i = np.arange(1, 101, dtype=np.float64)
        times = roof.decode_times_s(num, num * 700.0 + num * i, 900.0 + i, 500.0 + i)
        np.testing.assert_allclose(line[0] + line[1] * i, times, rtol=1e-12)
