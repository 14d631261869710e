"""vLLM's CUDA-graph padding: the default capture sizes and the padded token count."""

from __future__ import annotations

import itertools

import pytest

from llmserve_env.perf.cudagraph import TokenPadding, default_capture_sizes


def test_default_sizes_follow_vllm_0_19() -> None:
    # max_num_seqs 128: the largest graph is 2 x 128 = 256 tokens
    sizes = default_capture_sizes(128, 2048)
    assert sizes[:5] == (1, 2, 4, 8, 16)
    assert sizes[-3:] == (240, 248, 256)
    assert all(b - a == 8 for a, b in itertools.pairwise(sizes[3:]))
    # max_num_seqs 256: multiples of 16 from 256 up to the cap of 512
    large = default_capture_sizes(256, 2048)
    assert large[-3:] == (480, 496, 512) and 264 not in large and 272 in large
    assert default_capture_sizes(1024, 8192)[-1] == 512
    # the token budget caps the largest graph; tiny engines keep 1, 2, 4
    assert default_capture_sizes(256, 100)[-1] == 96
    assert default_capture_sizes(2, 2048) == (1, 2, 4)
    assert default_capture_sizes(4, 2048) == (1, 2, 4, 8)


@pytest.mark.parametrize(
    ("tokens", "padded"),
    [(0, 0), (1, 1), (3, 4), (5, 8), (8, 8), (9, 16), (33, 40), (255, 256), (256, 256), (257, 257)],
)
def test_padding_rounds_up_to_the_next_captured_size(tokens: int, padded: int) -> None:
    pad = TokenPadding(default_capture_sizes(128, 2048))
    assert pad(tokens) == padded
    assert pad.table[tokens] == padded if tokens < len(pad.table) else tokens == padded


def test_explicit_sizes_and_no_sizes() -> None:
    pad = TokenPadding([64, 8, 8, 1])
    assert pad.capture_sizes == (1, 8, 64)
    assert [pad(n) for n in (1, 2, 9, 64, 65)] == [1, 8, 64, 64, 65]
    assert TokenPadding([])(17) == 17
    with pytest.raises(ValueError, match="at least 1"):
        TokenPadding([0, 4])
