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
    skew_rate,
)
from tests.perf.crafted import SKEW_BY_RATE, attention_us, crafted_profile

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


@pytest.mark.parametrize("skew", [{"skew_alpha": 0.4}, {"skew_by_rate": SKEW_BY_RATE}])
def test_decode_stretch_matches_single_iterations(skew: dict[str, object]) -> None:
    m = model(**skew)
    kv_sum = np.array([4 * 51.0, 4 * 80.0, 4 * 300.0, 4 * 300.0, 4 * 300.0])
    kv_max = np.array([51.0, 120.0, 500.0, 500.0, 500.0])
    kv_min = np.array([51.0, 70.0, 100.0, 200.0, 280.0])  # skew rates 0, 0.2, 0.5, 1/3, 1/11
    vector = m.decode_times_s(4, kv_sum, kv_max, kv_min)
    scalar = [
        m.iteration_time_s(BatchShape((), (), 4, int(s), int(k), int(n)))
        for s, k, n in zip(kv_sum, kv_max, kv_min, strict=True)
    ]
    np.testing.assert_allclose(vector, scalar, rtol=1e-12)
    assert vector[0] == pytest.approx((fixed_us(4, 4) + 2 * attention_us(0, 0, 4, 50)) * 1e-6)


def test_skew_correction_blends_toward_the_longest_decode() -> None:
    batch = BatchShape((), (), 2, 101 + 201, 201)
    plain = model().iteration_time_s(batch)
    skewed = model(skew_alpha=0.5).iteration_time_s(batch)
    t_mean = attention_us(0, 0, 2, 150)
    t_max = attention_us(0, 0, 2, 200)
    assert skewed - plain == pytest.approx(2 * 0.5 * (t_max - t_mean) * 1e-6)


@pytest.mark.parametrize(
    ("lengths", "alpha"),
    [
        ([301] + [101] * 7, 0.1),  # one long decode in eight: skew rate 1/8
        ([301, 101, 101, 101], 0.3),  # 1/4
        ([301, 301, 301, 101], 0.6),  # 3/4
        ([301, 201, 161, 101], 0.6),  # (191 - 101) / 200 = 0.45
        ([301, 181, 141, 101], 0.3),  # (181 - 101) / 200 = 0.4: buckets include their edge
        ([201, 201], 0.0),  # all equal: no correction
    ],
)
def test_skew_alpha_depends_on_the_skew_rate(lengths: list[int], alpha: float) -> None:
    n = len(lengths)
    batch = BatchShape((), (), n, sum(lengths), max(lengths), min(lengths))
    plain = model().iteration_time_s(batch)
    skewed = model(skew_by_rate=SKEW_BY_RATE).iteration_time_s(batch)
    t_mean = attention_us(0, 0, n, sum(lengths) / n - 1)
    t_max = attention_us(0, 0, n, max(lengths) - 1)
    assert skewed - plain == pytest.approx(2 * alpha * (t_max - t_mean) * 1e-6, abs=1e-15)


def test_skew_rate_edge_cases() -> None:
    assert skew_rate(4, 4 * 300.0, 500.0, 100.0) == 0.5
    assert skew_rate(5, 700.0, 200.0, 100.0) == 0.4  # exactly on a bucket edge
    assert skew_rate(3, 3 * 80.0, 80.0, 80.0) == 0.0  # all equal
    assert skew_rate(1, 80.0, 80.0, 80.0) == 0.0  # one decode
    # a caller that does not track the shortest (0): mean / max
    assert skew_rate(2, 300.0, 200.0, 0.0) == 0.75


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
    with pytest.raises(ValueError, match="contexts"):
        fold_prefills((10, 10), (0,))


def test_batch_shapes_are_values() -> None:
    shape = BatchShape((512,), (0,), 3, 3000, 1200, 400)
    same = BatchShape((512,), (0,), 3, 3000, 1200, 400)
    assert shape == same and hash(shape) == hash(same) and shape != BatchShape((512,), (0,), 3)
    assert shape.num_tokens == 515 and shape.num_seqs == 4
    assert repr(BatchShape()) == (
        "BatchShape(prefill_new=(), prefill_ctx=(), num_decodes=0, decode_kv_sum=0, "
        "decode_kv_max=0, decode_kv_min=0)"
    )


@pytest.mark.parametrize(
    "skew", [{}, {"skew_alpha": 0.4}, {"skew_by_rate": SKEW_BY_RATE}], ids=["none", "one", "rate"]
)
def test_decode_line_is_the_stretch_where_it_is_a_line(skew: dict[str, object]) -> None:
    m = model(**skew)
    lines = 0
    for num, kv_sum0, kv_max0, kv_min0, steps in [
        (4, 4 * 60.0, 60.0, 60.0, 30),
        (4, 4 * 60.0, 90.0, 50.0, 30),
        (2, 2 * 100.0 + 40.0, 150.0, 90.0, 50),
        (8, 8 * 700.0, 900.0, 100.0, 200),
        (8, 8 * 700.0, 900.0, 680.0, 200),
        (5, 700.0, 200.0, 100.0, 300),  # skew rate 0.4, on a bucket edge
        (1, 3000.0, 3000.0, 3000.0, 4000),
        (3, 3 * 40.0, 45.0, 35.0, 500),
    ]:
        line = m.decode_line_s(num, kv_sum0, kv_max0, kv_min0, steps)
        i = np.arange(1, steps + 1, dtype=np.float64)
        times = m.decode_times_s(num, kv_sum0 + num * i, kv_max0 + i, kv_min0 + i)
        single = [
            m.iteration_time_s(
                BatchShape((), (), num, int(kv_sum0 + num * k), int(kv_max0 + k), int(kv_min0 + k))
            )
            for k in (1, steps // 2, steps)
        ]
        np.testing.assert_allclose(single, times[[0, steps // 2 - 1, steps - 1]], rtol=1e-12)
        if line is None:
            continue
        lines += 1
        a, b = line
        np.testing.assert_allclose(a + b * i, times, rtol=1e-12)
    assert lines >= 4


def test_decode_line_refuses_a_stretch_across_a_knot() -> None:
    m = model()
    _, attn, _ = m._decode_curves(4)
    knot = float(attn.x[2])
    # the mean decode context at iteration i is kv_sum0 / 4 - 1 + i: crossing the knot
    assert m.decode_line_s(4, 4 * (knot - 5.0), knot - 4.0, knot - 6.0, 20) is None
    assert m.decode_line_s(4, 4 * (knot + 1.0), knot + 2.0, knot, 20) is not None


def test_cudagraph_padding_pads_only_the_token_parallel_operators() -> None:
    from llmserve_env.perf.cudagraph import TokenPadding

    padded = ProfileLatencyModel(
        compile_profile(crafted_profile()), ARCH, padding=TokenPadding([1, 2, 4, 8])
    )
    # three decodes run the token-parallel operators at 4 tokens; attention and the LM
    # head stay at the three real sequences
    batch = BatchShape((), (), 3, 3 * 101, 101, 101)
    expected = fixed_us(4, 3) + 2 * attention_us(0, 0, 3, 100)
    assert padded.iteration_time_s(batch) == pytest.approx(expected * 1e-6)
    assert model().iteration_time_s(batch) == pytest.approx(
        (fixed_us(3, 3) + 2 * attention_us(0, 0, 3, 100)) * 1e-6
    )
    # a prefill chunk of 5 plus one decode: 6 tokens padded to 8
    mixed = BatchShape((5,), (0,), 1, 41, 41, 41)
    assert padded.iteration_time_s(mixed) == pytest.approx(
        (fixed_us(8, 2) + 2 * attention_us(16, 0, 1, 40)) * 1e-6
    )
    # above the largest captured size nothing is padded
    big = BatchShape((64,), (0,))
    assert padded.iteration_time_s(big) == pytest.approx(model().iteration_time_s(big))


def test_cudagraph_padding_in_decode_stretches() -> None:
    from llmserve_env.perf.cudagraph import TokenPadding

    m = ProfileLatencyModel(
        compile_profile(crafted_profile(skew_alpha=0.4)), ARCH, padding=TokenPadding([1, 2, 4])
    )
    n, steps = 3, 50
    sum0, max0, min0 = 3 * 100.0, 120.0, 80.0
    i = np.arange(1, steps + 1, dtype=float)
    times = m.decode_times_s(n, sum0 + n * i, max0 + i, min0 + i)
    singles = [
        m.iteration_time_s(BatchShape((), (), n, int(sum0 + n * k), int(max0 + k), int(min0 + k)))
        for k in range(1, steps + 1)
    ]
    assert times == pytest.approx(singles)
    line = m.decode_line_s(n, sum0, max0, min0, steps)
    assert line is not None
    assert line[0] + line[1] * i == pytest.approx(times)
    # the padded count is constant over the stretch: the fixed part moved by 1 token
    unpadded = model(skew_alpha=0.4).decode_times_s(n, sum0 + n * i, max0 + i, min0 + i)
    assert times - unpadded == pytest.approx(
        np.full(steps, (fixed_us(4, 3) - fixed_us(3, 3)) * 1e-6)
    )
