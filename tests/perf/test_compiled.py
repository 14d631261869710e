"""Compilation and the on-disk cache of compiled tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmserve_env.perf.comm import AlphaBetaComm
from llmserve_env.perf.compiled import (
    CompiledProfile,
    analytical_collectives,
    cached_compile,
    compile_profile,
)
from llmserve_env.perf.profile_format import COLLECTIVE_OPS, Profile
from tests.perf.crafted import SKEW_BY_RATE, crafted_profile


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_arrays_round_trip() -> None:
    compiled = compile_profile(crafted_profile(skew_alpha=0.3, moe=True))
    back = CompiledProfile.from_arrays(compiled.to_arrays())
    for x in (1.0, 77.0, 5000.0):
        assert back.per_token(x) == compiled.per_token(x)
        assert back.per_seq(x) == compiled.per_seq(x)
    assert back.attention(16.0, 3.0, 2.0, 100.0) == compiled.attention(16.0, 3.0, 2.0, 100.0)
    assert back.skew is not None and back.skew(0.0, 0.0, 3.0, 50.0, 0.2) == pytest.approx(0.3)
    assert back.moe is not None and back.attention_count == 2 and back.moe_count == 2


def test_skew_rate_axis() -> None:
    by_rate = compile_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE)).skew
    assert by_rate is not None and len(by_rate.edges) == 5
    np.testing.assert_array_equal(by_rate.edges[4], [0.15, 0.4, 1.0])
    rates = (0.0, 0.15, 0.2, 0.4, 0.41, 1.0)
    assert [by_rate(0.0, 0.0, 8.0, 500.0, r) for r in rates] == [0.1, 0.1, 0.3, 0.3, 0.6, 0.6]
    back = CompiledProfile.from_arrays(
        compile_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE)).to_arrays()
    ).skew
    assert back is not None and back(16.0, 0.0, 8.0, 500.0, 0.3) == 0.3
    # without the key: one bucket that every skew rate falls in
    one = compile_profile(crafted_profile(skew_alpha=0.3)).skew
    assert one is not None and one.edges[4].tolist() == [1.0]
    assert one(0.0, 0.0, 8.0, 500.0, 0.0) == one(0.0, 0.0, 8.0, 500.0, 1.0) == 0.3


def test_cache_hit_skips_the_build(_cache: Path) -> None:
    calls: list[int] = []

    def build() -> Profile:
        calls.append(1)
        return crafted_profile()

    first = cached_compile("key-a", build)
    second = cached_compile("key-a", lambda: pytest.fail("should load from the cache"))
    assert calls == [1]
    assert second.per_token(100.0) == first.per_token(100.0)
    assert len(list((_cache / "profiles").glob("*.npz"))) == 1
    cached_compile("key-b", build)
    assert calls == [1, 1]


def test_corrupt_cache_file_is_rebuilt(_cache: Path) -> None:
    cached_compile("key", crafted_profile)
    (file,) = (_cache / "profiles").glob("*.npz")
    file.write_bytes(b"not an npz")
    assert cached_compile("key", crafted_profile).per_token(10.0) > 0


def test_missing_collective_is_an_error() -> None:
    profile = crafted_profile(tp=2)
    profile = Profile(**{**profile.__dict__, "collectives": {}})
    with pytest.raises(ValueError, match="collective 'all_reduce' has no measurements for 2 GPUs"):
        compile_profile(profile)


def test_analytical_collectives_ring_formula() -> None:
    link = AlphaBetaComm(bandwidth_gbps=100.0, latency_s=5e-6, efficiency=0.5, base_s=3e-6)
    table = analytical_collectives(4, link)
    assert set(table) == {(op, 4) for op in COLLECTIVE_OPS}
    ar = table[("all_reduce", 4)]
    size = ar.x[5]
    # fixed cost + 2 (n-1) ring steps + 2 (n-1)/n of the buffer at half the link's 100 GB/s
    assert np.interp(size, ar.x, ar.time_us) == pytest.approx(3.0 + 6 * 5.0 + 1.5 * size / 50e3)
    gather = table[("all_gather", 4)]
    assert gather.time_us[-1] == pytest.approx(3.0 + 3 * 5.0 + 0.75 * gather.x[-1] / 50e3)
    sr = table[("send_recv", 4)]
    assert sr.time_us[0] == pytest.approx(3.0 + 5.0 + 1024 / 50e3)
    only = analytical_collectives(2, link, ("all_to_all",))
    assert list(only) == [("all_to_all", 2)]


def _with_logits_gather(profile: Profile, bytes_per_seq: int) -> Profile:
    """The crafted profile with the LM head's all-gather (per sequence) in its head."""
    import dataclasses

    from llmserve_env.perf.profile_format import LayerSequence
    from tests.perf.crafted import line

    seq = profile.meta.sequence
    meta = dataclasses.replace(
        profile.meta,
        sequence=LayerSequence(seq.prologue, seq.layer, (*seq.head, "all_gather@seq")),
        collective_bytes_per_seq=bytes_per_seq,
    )
    collectives = dict(profile.collectives)
    if profile.meta.tp > 1:
        collectives[("all_gather", profile.meta.tp)] = line([1024, 1 << 24], 5.0, 1e-4)
    return dataclasses.replace(profile, meta=meta, collectives=collectives)


def test_per_sequence_collective_scales_with_sequences() -> None:
    base = crafted_profile(tp=2)
    gathered = compile_profile(_with_logits_gather(base, 256_000))
    plain = compile_profile(base)
    for seqs in (1, 4, 128):
        # all_gather at 2 GPUs: 5 + bytes / 10_000 us, with 256_000 bytes per sequence
        expected = 5.0 + seqs * 256_000 * 1e-4
        assert gathered.per_seq(seqs) - plain.per_seq(seqs) == pytest.approx(expected)
    # the token-parallel part does not move
    for tokens in (1, 100, 2048):
        assert gathered.per_token(tokens) == pytest.approx(plain.per_token(tokens))
    # at tp 1 there is nothing to gather
    one = compile_profile(_with_logits_gather(crafted_profile(), 256_000))
    assert one.per_seq(64) == pytest.approx(compile_profile(crafted_profile()).per_seq(64))


def test_per_sequence_collective_needs_its_rows_and_bytes() -> None:
    import dataclasses

    profile = _with_logits_gather(crafted_profile(tp=2), 256_000)
    missing = dataclasses.replace(
        profile, collectives={("all_reduce", 2): profile.collectives[("all_reduce", 2)]}
    )
    assert any("collective 'all_gather' has no rows" in p for p in missing.problems())
    with pytest.raises(ValueError, match="collective 'all_gather' has no measurements"):
        compile_profile(missing)
    no_bytes = _with_logits_gather(crafted_profile(tp=2), 0)
    assert (
        "collective_bytes_per_seq must be > 0 when the sequence has per-sequence collectives"
        in (no_bytes.problems())
    )
    assert not profile.problems()
