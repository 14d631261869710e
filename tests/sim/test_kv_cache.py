"""The KV block pool: conservation, prefix hits, LRU eviction order."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.sim.kv_cache import KVBlockPool
from llmserve_env.sim.request import Request, TokenContent


def _req(rid: int, tokens: list[int] | None, prompt: int | None = None, output: int = 4) -> Request:
    content = None if tokens is None else TokenContent(tokens=np.asarray(tokens, dtype=np.int64))
    return Request(
        request_id=rid,
        arrival_s=0.0,
        num_prompt_tokens=prompt if prompt is not None else len(tokens or []),
        max_output_tokens=output,
        content=content,
    )


def _compute(pool: KVBlockPool, req: Request, tokens: int) -> None:
    """Pretend the engine computed ``tokens`` more tokens of ``req``."""
    assert pool.grow(req, req.num_computed_tokens + tokens)
    req.num_computed_tokens += tokens
    pool.register_computed(req)
    pool.check()


def test_counts_only_without_caching() -> None:
    pool = KVBlockPool(10, 4, enable_prefix_caching=False)
    a = _req(0, None, prompt=9)
    assert pool.admit(a, 0, 9)
    assert a.num_blocks == 3 and pool.num_free_blocks == 7
    assert pool.grow(a, 16) and a.num_blocks == 4
    assert not pool.grow(a, 100)  # would need 25 blocks
    assert a.num_blocks == 4
    pool.check()
    pool.free(a)
    assert pool.num_free_blocks == 10
    pool.check()


def test_admit_refuses_without_side_effects() -> None:
    pool = KVBlockPool(4, 4, enable_prefix_caching=True)
    a = _req(0, None, prompt=20)
    assert not pool.admit(a, 0, 20)
    assert pool.num_free_blocks == 4 and a.num_blocks == 0
    pool.check()


def test_prefix_hit_after_free_and_cap_at_num_tokens_minus_one() -> None:
    pool = KVBlockPool(16, 4, enable_prefix_caching=True)
    tokens = list(range(12))  # exactly 3 full blocks
    a = _req(0, tokens)
    assert pool.admit(a, 0, 12)
    a.num_computed_tokens = 12
    pool.register_computed(a)
    assert pool.num_cached_blocks == 3
    pool.free(a)
    pool.check()
    assert pool.num_free_blocks == 16
    b = _req(1, tokens)
    # All 12 tokens cached, but at least one token must be recomputed: hits <= 11 tokens
    # -> 2 full blocks.
    assert pool.num_hit_blocks(b) == 2
    c = _req(2, [*tokens, 99])
    assert pool.num_hit_blocks(c) == 3
    assert pool.admit(c, 3, 1)
    assert c.num_hashed_blocks == 3 and c.num_blocks == 4
    pool.check()


def test_chained_hashes_depend_on_everything_before() -> None:
    pool = KVBlockPool(16, 4, enable_prefix_caching=True)
    a = _req(0, [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert pool.admit(a, 0, 9)
    a.num_computed_tokens = 9
    pool.register_computed(a)
    # Same second block, different first block: no hit at all.
    b = _req(1, [0, 2, 3, 4, 5, 6, 7, 8, 9])
    assert pool.num_hit_blocks(b) == 0
    d = _req(2, [1, 2, 3, 4, 5, 6, 7, 0, 9])
    assert pool.num_hit_blocks(d) == 1


def test_lru_evicts_least_recently_freed_first_and_tail_first() -> None:
    pool = KVBlockPool(6, 2, enable_prefix_caching=True)
    a = _req(0, [1, 2, 3, 4, 5])  # two full blocks cached
    b = _req(1, [7, 8, 9, 10, 11])
    for req in (a, b):
        assert pool.admit(req, 0, 5)
        req.num_computed_tokens = 5
        pool.register_computed(req)
    pool.check()
    pool.free(a)  # a's blocks become evictable first
    pool.free(b)
    pool.check()
    assert pool.num_free_blocks == 6 and pool.num_cached_blocks == 4
    # The free queue is in free order: a's private block, a's tail block, a's head
    # block, then b's. Two fresh blocks take a's private block and evict a's tail.
    x = _req(2, None, prompt=4)
    assert pool.admit(x, 0, 4)
    assert pool.num_cached_blocks == 3
    assert pool.num_hit_blocks(_req(4, [1, 2, 3, 4, 5])) == 1
    # One more block evicts a's head block; b's blocks survive.
    y = _req(3, None, prompt=2)
    assert pool.admit(y, 0, 2)
    assert pool.num_cached_blocks == 2
    assert pool.num_hit_blocks(_req(4, [1, 2, 3, 4, 5])) == 0
    assert pool.num_hit_blocks(_req(5, [7, 8, 9, 10, 11])) == 2
    pool.check()


def test_hit_on_free_cached_block_takes_it_out_of_the_free_pool() -> None:
    pool = KVBlockPool(4, 2, enable_prefix_caching=True)
    a = _req(0, [1, 2, 3, 4, 5])
    assert pool.admit(a, 0, 5)
    a.num_computed_tokens = 5
    pool.register_computed(a)
    pool.free(a)
    b = _req(1, [1, 2, 3, 4, 5])
    hits = pool.num_hit_blocks(b)
    assert hits == 2
    assert pool.admit(b, hits, 1)
    assert pool.num_free_blocks == 1  # 2 reclaimed cached + 1 new of 4
    pool.check()
    # The stale queue entries of the reclaimed blocks must not be handed out.
    c = _req(2, None, prompt=2)
    assert pool.admit(c, 0, 2)
    assert pool.num_free_blocks == 0
    assert not pool.admit(_req(3, None, prompt=1), 0, 1)
    pool.check()


def test_duplicate_computation_adopts_cached_block() -> None:
    pool = KVBlockPool(8, 2, enable_prefix_caching=True)
    a, b = _req(0, [1, 2, 3, 4, 5]), _req(1, [1, 2, 3, 4, 5])
    assert pool.admit(a, 0, 5) and pool.admit(b, 0, 5)
    assert pool.num_free_blocks == 2
    for req in (a, b):
        req.num_computed_tokens = 5
        pool.register_computed(req)
        pool.check()
    # b adopted a's two cached blocks and returned its own two.
    assert pool.num_free_blocks == 4
    pool.free(a)
    pool.free(b)
    assert pool.num_free_blocks == 8
    pool.check()


@pytest.mark.parametrize("seed", range(5))
def test_random_operations_conserve_blocks(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pool = KVBlockPool(64, 4, enable_prefix_caching=True)
    prefixes = [list(rng.integers(0, 5, 24)) for _ in range(3)]
    live: list[Request] = []
    for rid in range(300):
        if live and rng.random() < 0.4:
            victim = live.pop(int(rng.integers(len(live))))
            pool.free(victim)
        else:
            tokens = prefixes[int(rng.integers(3))][: int(rng.integers(4, 24))] + list(
                rng.integers(0, 50, int(rng.integers(1, 12)))
            )
            req = _req(rid, [int(t) for t in tokens])
            hits = pool.num_hit_blocks(req)
            first = min(req.num_tokens - hits * 4, 8)
            if pool.admit(req, hits, first):
                req.num_computed_tokens = hits * 4 + first
                pool.register_computed(req)
                live.append(req)
        pool.check()
    for req in live:
        pool.free(req)
    pool.check()
    assert pool.num_free_blocks == 64


def test_fits_whole_counts_every_token_past_the_hit() -> None:
    pool = KVBlockPool(6, 4, enable_prefix_caching=True)
    a = _req(0, None, prompt=30)  # 8 blocks
    assert pool.admit(a, 0, 8)  # its first chunk fits ...
    pool.free(a)
    assert not pool.fits_whole(a, 0)  # ... its whole prompt does not
    b = _req(1, None, prompt=24)  # 6 blocks
    assert pool.fits_whole(b, 0) and not pool.fits_whole(b, 0, extra_blocks=1)
