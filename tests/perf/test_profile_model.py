"""The profile latency model on the crafted profile: hand-computed iteration times."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profile_model import (
    ProfileLatencyModel,
    expected_active_experts,
    fold_prefills,
)
from tests.perf.crafted import attention_us, crafted_profile

ARCH = load_model_arch("meta-llama/Llama-3.1-8B")


def model(**kwargs: object) -> ProfileLatencyModel:
    return ProfileLatencyModel(compile_profile(crafted_profile(**kwargs)), ARCH)  # type: ignore[arg-type]


def fixed_us(tokens: int, seqs: int) -> float:
    """Embedding, two norms, two projections and the LM head."""
    return 1 + 2 * (1 + 0.01 * tokens) + 2 * (10 + 0.1 * tokens) + 100 + seqs


def test_is_a_latency_model() -> None:
    assert isinstance(model(), LatencyModel)


def test_mixed_batch() -> None:
    # one chunk of 32 tokens after 64 cached, two decodes with 100 cached tokens each
    batch = BatchShape((32,), (64,), 2, 2 * 101, 101)
    expected = fixed_us(34, 3) + 2 * attention_us(32, 64, 2, 100)
    assert model().iteration_time_s(batch) == pytest.approx(expected * 1e-6)


def test_prefill_only_and_empty() -> None:
    m = model()
    assert m.iteration_time_s(BatchShape((64,), (0,))) == pytest.approx(
        (fixed_us(64, 1) + 2 * attention_us(64, 0, 0, 0)) * 1e-6
    )
    assert m.iteration_time_s(BatchShape()) == 0.0


def test_small_chunks_cost_the_smallest_measured_chunk() -> None:
    m = model()
    small = m.iteration_time_s(BatchShape((4,), (0,)))
    assert small == pytest.approx((fixed_us(4, 1) + 2 * attention_us(16, 0, 0, 0)) * 1e-6)


def test_decode_stretch_matches_single_iterations() -> None:
    m = model(skew_alpha=0.4)
    kv_sum = np.array([4 * 51.0, 4 * 80.0, 4 * 300.0])
    kv_max = np.array([51.0, 120.0, 500.0])
    vector = m.decode_times_s(4, kv_sum, kv_max)
    scalar = [
        m.iteration_time_s(BatchShape((), (), 4, int(s), int(k)))
        for s, k in zip(kv_sum, kv_max, strict=True)
    ]
    np.testing.assert_allclose(vector, scalar)
    assert vector[0] == pytest.approx((fixed_us(4, 4) + 2 * attention_us(0, 0, 4, 50)) * 1e-6)


def test_skew_correction_blends_toward_the_longest_decode() -> None:
    batch = BatchShape((), (), 2, 101 + 201, 201)
    plain = model().iteration_time_s(batch)
    skewed = model(skew_alpha=0.5).iteration_time_s(batch)
    t_mean = attention_us(0, 0, 2, 150)
    t_max = attention_us(0, 0, 2, 200)
    assert skewed - plain == pytest.approx(2 * 0.5 * (t_max - t_mean) * 1e-6)


def test_collectives_at_tensor_parallelism() -> None:
    batch = BatchShape((), (), 1, 101, 101)
    one = model(tp=1).iteration_time_s(batch)
    two = model(tp=2).iteration_time_s(batch)
    # one all-reduce per layer x 2 layers; 100 bytes is below the smallest measured
    # size (1024 bytes), which costs 2 + 1.024 us
    assert two - one == pytest.approx(2 * (2 + 1024 * 1e-3) * 1e-6)
    big = BatchShape((4096,), (0,))
    gap = model(tp=2).iteration_time_s(big) - model(tp=1).iteration_time_s(big)
    assert gap == pytest.approx(2 * (2 + 409_600 * 1e-3) * 1e-6)


def test_overhead_is_added_per_iteration() -> None:
    batch = BatchShape((16,), (0,))
    assert model(overhead_us=250.0).iteration_time_s(batch) - model().iteration_time_s(
        batch
    ) == pytest.approx(250e-6)


def test_extrapolates_beyond_the_measured_tokens() -> None:
    m = model()
    tokens = 4096  # dense tables end at 1024; they are linear, so extrapolation is exact
    t = m.iteration_time_s(BatchShape((tokens,), (0,)))
    attn = attention_us(64, 0, 0, 0) + (tokens - 64) * 0.01  # pc axis slope beyond 64
    assert t == pytest.approx((fixed_us(tokens, 1) + 2 * attn) * 1e-6)


def test_moe_uses_expected_distinct_experts() -> None:
    arch = dataclasses.replace(ARCH, num_experts=8, experts_per_token=2, moe_intermediate_size=64)
    m = ProfileLatencyModel(compile_profile(crafted_profile(moe=True)), arch)
    base = ProfileLatencyModel(compile_profile(crafted_profile()), ARCH)
    batch = BatchShape((), (), 8, 8 * 51, 51)
    experts = 8 * (1 - 0.75**8)
    assert experts == pytest.approx(expected_active_experts(8, 8, 2))
    moe_us = 3 + 0.5 * 8 + 2 * experts
    assert m.iteration_time_s(batch) - base.iteration_time_s(batch) == pytest.approx(
        2 * moe_us * 1e-6
    )


def test_fold_prefills_keeps_tokens_and_work() -> None:
    assert fold_prefills((100,), (50,)) == (100.0, 50.0)
    q, c = fold_prefills((100, 100), (400, 0))
    work = 100 * (400 + 50.5) + 100 * 50.5
    assert q == 200.0 and q * (c + (q + 1) / 2) == pytest.approx(work)
    # many fresh chunks: work kept with no context
    q, c = fold_prefills((10,) * 10, (0,) * 10)
    assert c == 0.0 and q * (q + 1) / 2 == pytest.approx(10 * 10 * 5.5)


@pytest.mark.parametrize("skew", [None, 0.4])
def test_decode_line_is_the_stretch_where_it_is_a_line(skew: float | None) -> None:
    m = model(skew_alpha=skew)
    lines = 0
    for num, kv_sum0, kv_max0, steps in [
        (4, 4 * 60.0, 60.0, 30),
        (4, 4 * 60.0, 90.0, 30),
        (2, 2 * 100.0 + 40.0, 150.0, 50),
        (8, 8 * 700.0, 900.0, 200),
        (1, 3000.0, 3000.0, 4000),
        (3, 3 * 40.0, 45.0, 500),
    ]:
        line = m.decode_line_s(num, kv_sum0, kv_max0, steps)
        i = np.arange(1, steps + 1, dtype=np.float64)
        times = m.decode_times_s(num, kv_sum0 + num * i, kv_max0 + i)
        if line is None:
            continue
        lines += 1
        a, b = line
        np.testing.assert_allclose(a + b * i, times, rtol=1e-12)
    assert lines >= 3


def test_decode_line_refuses_a_stretch_across_a_knot() -> None:
    m = model()
    _, attn, _ = m._decode_curves(4)
    knot = float(attn.x[2])
    # the mean decode context at iteration i is kv_sum0 / 4 - 1 + i: crossing the knot
    assert m.decode_line_s(4, 4 * (knot - 5.0), knot - 4.0, 20) is None
    assert m.decode_line_s(4, 4 * (knot + 1.0), knot + 2.0, 20) is not None
