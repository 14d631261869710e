"""The paged KV-cache block pool of one instance, with vLLM-style prefix caching.

Blocks hold ``block_size`` tokens. A request holds ``num_blocks`` blocks; the first
``num_hashed_blocks`` of them are shared, content-addressed cached blocks (reference
counted), the rest are private ("anonymous") blocks. Only counts are kept for private
blocks, so a pool without prefix caching does O(1) work per operation.

Free blocks wait in one queue in the order they were freed, and allocation takes from
its head (least recently freed first), as vLLM's free-block queue does. A cached block
whose reference count drops to zero joins the queue but keeps its hash, so a later
request can still hit it until allocation evicts it. A request frees its blocks tail
first, so a prefix outlives its suffix. Private blocks are queued as runs (one entry per
run), which keeps the queue short.

Deviation from vLLM, on purpose: when a request completes a block whose hash is
already cached (two requests computed the same prefix at once), it adopts the cached
block and returns its own copy to the free queue, instead of keeping a duplicate.

Invariant (checked by :meth:`check`): ``num_free_blocks + private blocks held +
cached blocks referenced == num_blocks``.
"""

from __future__ import annotations

from collections import deque

from llmserve_env.sim.request import Request


class KVBlockPool:
    """Block accounting and the prefix cache of one instance.

    Args:
        num_blocks: Blocks in the pool.
        block_size: Tokens per block.
        enable_prefix_caching: Keep and reuse hashed blocks.
    """

    __slots__ = (
        "_cached",
        "_evictable",
        "_free_queue",
        "_token",
        "block_size",
        "enable_prefix_caching",
        "num_blocks",
        "num_evictions",
        "num_free_blocks",
        "num_private_held",
    )

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.num_free_blocks = num_blocks
        self.num_private_held = 0
        self.num_evictions = 0
        # hash -> reference count, for every cached block (referenced or evictable).
        self._cached: dict[int, int] = {}
        # hash -> queue token, for cached blocks with no reference (in the free queue).
        self._evictable: dict[int, int] = {}
        # Entries: int n > 0 = a run of n private free blocks; (hash, token) = a cached
        # free block (stale when ``_evictable`` no longer holds that token for it).
        self._free_queue: deque[int | tuple[int, int]] = (
            deque([num_blocks]) if num_blocks else deque()
        )
        self._token = 0

    # ------------------------------------------------------------------ queries

    @property
    def usage_frac(self) -> float:
        """Fraction of blocks not free (vLLM's ``kv_cache_usage``)."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    @property
    def num_cached_blocks(self) -> int:
        """Hashed blocks currently in the cache (referenced or evictable)."""
        return len(self._cached)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks needed to hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def num_hit_blocks(self, request: Request) -> int:
        """Leading blocks of ``request`` found in the cache, capped so that at least one
        token is left to compute (vLLM: hits at most ``num_tokens - 1`` tokens)."""
        if not self.enable_prefix_caching or request.content is None:
            return 0
        hashes = request.block_hashes(self.block_size)
        limit = min(len(hashes), (request.num_tokens - 1) // self.block_size)
        cached = self._cached
        hits = 0
        while hits < limit and hashes[hits] in cached:
            hits += 1
        return hits

    def num_evictable_among(self, hashes: tuple[int, ...]) -> int:
        """How many of these cached blocks sit in the free queue (unreferenced)."""
        evictable = self._evictable
        return sum(1 for h in hashes if h in evictable)

    def cached_prefix_tokens(self, request: Request) -> int:
        """Tokens of ``request``'s prompt this pool could serve from cache now."""
        return self.num_hit_blocks(request) * self.block_size

    # ------------------------------------------------------------------ mutations

    def _take(self, count: int) -> None:
        """Remove ``count`` blocks from the head of the free queue, evicting cached ones."""
        self.num_free_blocks -= count
        queue = self._free_queue
        cached = self._cached
        evictable = self._evictable
        while count:
            head = queue[0]
            if isinstance(head, int):
                if head > count:
                    queue[0] = head - count
                    return
                queue.popleft()
                count -= head
            else:
                queue.popleft()
                if evictable.get(head[0]) == head[1]:
                    del evictable[head[0]]
                    del cached[head[0]]
                    self.num_evictions += 1
                    count -= 1

    def _push_private(self, count: int) -> None:
        if count:
            self.num_free_blocks += count
            queue = self._free_queue
            if queue and isinstance(queue[-1], int):
                queue[-1] += count
            else:
                queue.append(count)

    def _release_hash(self, block_hash: int) -> None:
        refs = self._cached[block_hash] - 1
        self._cached[block_hash] = refs
        if refs == 0:
            self._token += 1
            self._evictable[block_hash] = self._token
            self._free_queue.append((block_hash, self._token))
            self.num_free_blocks += 1
            if len(self._free_queue) > 2 * self.num_blocks + 1024:
                self._compact()

    def _compact(self) -> None:
        """Drop stale queue entries (blocks taken back by a cache hit); order is kept."""
        evictable = self._evictable
        kept: deque[int | tuple[int, int]] = deque()
        for entry in self._free_queue:
            if isinstance(entry, int):
                if kept and isinstance(kept[-1], int):
                    kept[-1] += entry
                else:
                    kept.append(entry)
            elif evictable.get(entry[0]) == entry[1]:
                kept.append(entry)
        self._free_queue = kept

    def _acquire_hash(self, block_hash: int) -> None:
        refs = self._cached[block_hash]
        if refs == 0:
            del self._evictable[block_hash]  # its queue entry becomes stale
            self.num_free_blocks -= 1
        self._cached[block_hash] = refs + 1

    def fits_whole(self, request: Request, num_hit_blocks: int, extra_blocks: int = 0) -> bool:
        """Whether blocks for all of ``request``'s tokens past its ``num_hit_blocks`` hit
        blocks are free, with ``extra_blocks`` more besides: vLLM's admission check under
        ``scheduler_reserve_full_isl`` (``allocate_slots(full_sequence_must_fit=True)``).
        Hit blocks sitting in the free queue count as taken, as in :meth:`admit`."""
        hashes = request.block_hashes(self.block_size) if num_hit_blocks else ()
        reclaim = self.num_evictable_among(hashes[:num_hit_blocks])
        need = self.blocks_for(request.num_tokens) - num_hit_blocks
        return need + reclaim + extra_blocks <= self.num_free_blocks

    def admit(self, request: Request, num_hit_blocks: int, num_new_tokens: int) -> bool:
        """Take cache hits and allocate blocks for a waiting request's first chunk.

        Args:
            request: A request holding no blocks.
            num_hit_blocks: Leading blocks served from cache (see :meth:`num_hit_blocks`).
            num_new_tokens: Tokens to compute in this step beyond the hit.

        Returns:
            ``False`` (and changes nothing) if the pool lacks the blocks.
        """
        hashes = request.block_hashes(self.block_size) if num_hit_blocks else ()
        # Hit blocks sitting in the free queue stop being free when taken.
        reclaim = self.num_evictable_among(hashes[:num_hit_blocks])
        total = self.blocks_for(num_hit_blocks * self.block_size + num_new_tokens)
        new_private = total - num_hit_blocks
        if new_private + reclaim > self.num_free_blocks:
            return False
        for h in hashes[:num_hit_blocks]:
            self._acquire_hash(h)
        self._take(new_private)
        self.num_private_held += new_private
        request.num_blocks = total
        request.num_hashed_blocks = num_hit_blocks
        return True

    def grow(self, request: Request, num_tokens: int) -> bool:
        """Make ``request`` hold enough blocks for ``num_tokens`` tokens.

        Returns:
            ``False`` (and changes nothing) if the pool lacks the blocks.
        """
        need = self.blocks_for(num_tokens) - request.num_blocks
        if need <= 0:
            return True
        if need > self.num_free_blocks:
            return False
        self._take(need)
        self.num_private_held += need
        request.num_blocks += need
        return True

    def take_private(self, count: int) -> None:
        """Hand ``count`` free blocks to requests whose ``num_blocks`` the caller already
        raised by that much in total (the vectorised decode path); the caller has
        checked that they are free."""
        self._take(count)
        self.num_private_held += count

    def set_aside(self, count: int) -> None:
        """Hide ``count`` free blocks from allocation until :meth:`put_back` (async
        scheduling: blocks freed at this boundary were still held when the next step was
        scheduled). :meth:`check` fails in between."""
        self.num_free_blocks -= count

    def put_back(self, count: int) -> None:
        """Return blocks hidden by :meth:`set_aside`."""
        self.num_free_blocks += count

    def register_computed(self, request: Request) -> None:
        """Turn ``request``'s newly full, computed blocks into cached blocks."""
        if not self.enable_prefix_caching or request.content is None:
            return
        hashes = request.block_hashes(self.block_size)
        upto = min(len(hashes), request.num_computed_tokens // self.block_size, request.num_blocks)
        start = request.num_hashed_blocks
        if upto <= start:
            return
        cached = self._cached
        adopted = 0
        for j in range(start, upto):
            h = hashes[j]
            if h in cached:
                self._acquire_hash(h)  # adopt the existing copy ...
                adopted += 1  # ... and give our private one back below
            else:
                cached[h] = 1
        converted = upto - start
        self.num_private_held -= converted
        self._push_private(adopted)
        request.num_hashed_blocks = upto

    def free(self, request: Request) -> None:
        """Release every block ``request`` holds (finish or preemption)."""
        private = request.num_blocks - request.num_hashed_blocks
        self.num_private_held -= private
        self._push_private(private)
        if request.num_hashed_blocks:
            hashes = request.block_hashes(self.block_size)
            for j in range(request.num_hashed_blocks - 1, -1, -1):
                self._release_hash(hashes[j])
        request.num_blocks = 0
        request.num_hashed_blocks = 0

    def reset_prefix_cache(self) -> int:
        """Drop every evictable cached block (their blocks stay free). Returns how many."""
        dropped = list(self._evictable)
        for h in dropped:
            del self._cached[h]
        self._evictable.clear()
        return len(dropped)

    def clone(self) -> KVBlockPool:
        """An independent copy (dicts and the queue are copied at C speed)."""
        other = KVBlockPool(self.num_blocks, self.block_size, self.enable_prefix_caching)
        other.num_free_blocks = self.num_free_blocks
        other.num_private_held = self.num_private_held
        other.num_evictions = self.num_evictions
        other._cached = self._cached.copy()
        other._evictable = self._evictable.copy()
        other._free_queue = self._free_queue.copy()
        other._token = self._token
        return other

    # ------------------------------------------------------------------ checks

    def check(self) -> None:
        """Assert block conservation and queue consistency (for tests)."""
        referenced = sum(1 for refs in self._cached.values() if refs > 0)
        evictable = sum(1 for refs in self._cached.values() if refs == 0)
        assert evictable == len(self._evictable)
        assert all(self._cached[h] == 0 for h in self._evictable)
        queued_private = sum(e for e in self._free_queue if isinstance(e, int))
        queued_cached = sum(
            1
            for e in self._free_queue
            if not isinstance(e, int) and self._evictable.get(e[0]) == e[1]
        )
        assert self.num_free_blocks >= 0, self.num_free_blocks
        assert queued_cached == evictable, (queued_cached, evictable)
        assert queued_private + queued_cached == self.num_free_blocks, (
            queued_private,
            queued_cached,
            self.num_free_blocks,
        )
        assert self.num_free_blocks + self.num_private_held + referenced == self.num_blocks, (
            self.num_free_blocks,
            self.num_private_held,
            referenced,
            self.num_blocks,
        )
