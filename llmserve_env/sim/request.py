"""Requests: the status machine, vLLM progress counters and timestamps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class RequestStatus(IntEnum):
    """Where a request is. Terminal states: FINISHED, REJECTED, UNFINISHED.

    ``WAITING -> RUNNING -> (PREEMPTED -> RUNNING)* -> FINISHED``; ``WAITING -> REJECTED``
    at routing or admission; any live state -> ``UNFINISHED`` at the horizon.
    """

    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED = 3
    REJECTED = 4
    UNFINISHED = 5


TERMINAL = frozenset({RequestStatus.FINISHED, RequestStatus.REJECTED, RequestStatus.UNFINISHED})


class RejectReason(IntEnum):
    """Why a request was rejected."""

    NONE = 0
    PROMPT_TOO_LONG = 1
    """Prompt plus output exceed ``max_model_len``."""
    EXCEEDS_KV_CAPACITY = 2
    """The request can never fit in the instance's KV cache."""
    QUEUE_FULL = 3
    """Admission control: ``max_num_waiting`` reached."""
    NO_INSTANCE = 4
    """No instance can take requests (all asleep or off)."""
    POLICY = 5
    """An agent or heuristic chose to reject it."""


@dataclass(frozen=True, slots=True)
class TokenContent:
    """What a request's tokens are, as far as prefix caching can tell.

    Exactly one of the two forms is used:

    - ``tokens``: explicit token ids (prompt then output), as in LLMServingSim traces;
    - ``segments``: ``(segment_id, num_tokens)`` pairs; token ``k`` of segment ``s`` is
      the same token wherever ``s`` appears. Mooncake's 512-token ``hash_ids`` and the
      multi-turn generator's system prompts and turns are segments.

    Attributes:
        tokens: Token ids, or ``None``.
        segments: Segments, or ``None``.
    """

    tokens: np.ndarray | None = None
    segments: tuple[tuple[int, int], ...] | None = None

    @property
    def num_tokens(self) -> int:
        """Tokens whose identity is known."""
        if self.tokens is not None:
            return len(self.tokens)
        return sum(n for _, n in self.segments or ())

    def block_hashes(self, block_size: int) -> tuple[int, ...]:
        """Chained hashes of every full block: ``h_j = hash((h_{j-1}, content_j))``.

        The chain makes a block's hash depend on every token before it, as vLLM's prefix
        cache does. Hashes of int tuples are stable across processes.
        """
        num_blocks = self.num_tokens // block_size
        out: list[int] = []
        parent = 0
        if self.tokens is not None:
            tokens = self.tokens.tolist()
            for j in range(num_blocks):
                parent = hash((parent, tuple(tokens[j * block_size : (j + 1) * block_size])))
                out.append(parent)
            return tuple(out)
        # Segments: describe block j by the (segment, offset, length) pieces it covers.
        segs = self.segments or ()
        seg_index, seg_offset = 0, 0
        for _ in range(num_blocks):
            need = block_size
            pieces: list[tuple[int, int, int]] = []
            while need:
                seg_id, seg_len = segs[seg_index]
                take = min(need, seg_len - seg_offset)
                pieces.append((seg_id, seg_offset, take))
                need -= take
                seg_offset += take
                if seg_offset == seg_len:
                    seg_index, seg_offset = seg_index + 1, 0
            parent = hash((parent, tuple(pieces)))
            out.append(parent)
        return tuple(out)


@dataclass(slots=True, eq=False)
class Request:
    """One inference request and its progress, in vLLM V1 terms.

    ``num_tokens = num_prompt_tokens + num_output_tokens``; the engine computes tokens
    until ``num_computed_tokens == num_tokens``, then samples one more output token.

    Timestamps are simulated seconds (``nan`` until set).
    """

    request_id: int
    arrival_s: float
    num_prompt_tokens: int
    max_output_tokens: int
    priority: int = 0
    content: TokenContent | None = None
    session_id: int = -1

    status: RequestStatus = RequestStatus.WAITING
    instance_id: int = -1
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    num_cached_tokens: int = -1
    """Prefix-cache hit at first admission (-1 until admitted)."""
    num_preemptions: int = 0
    reject_reason: RejectReason = RejectReason.NONE

    first_scheduled_s: float = math.nan
    first_token_s: float = math.nan
    last_token_s: float = math.nan
    finish_s: float = math.nan
    itl_max_s: float = 0.0
    energy_j: float = 0.0

    # KV-cache bookkeeping, owned by the instance's block pool.
    num_blocks: int = 0
    num_hashed_blocks: int = 0
    _hashes: tuple[int, ...] | None = field(default=None, repr=False)
    _hash_block_size: int = field(default=0, repr=False)

    @property
    def num_tokens(self) -> int:
        """Prompt plus sampled output tokens."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def is_finished(self) -> bool:
        """True once in a terminal state."""
        return self.status in TERMINAL

    def block_hashes(self, block_size: int) -> tuple[int, ...]:
        """Hashes of this request's full blocks at ``block_size`` (cached)."""
        if self.content is None:
            return ()
        if self._hash_block_size != block_size or self._hashes is None:
            self._hashes = self.content.block_hashes(block_size)
            self._hash_block_size = block_size
        return self._hashes

    @property
    def ttft_s(self) -> float:
        """Time to first token."""
        return self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float:
        """Mean time per output token after the first (``nan`` with one output token)."""
        if self.num_output_tokens <= 1:
            return math.nan
        return (self.last_token_s - self.first_token_s) / (self.num_output_tokens - 1)

    @property
    def e2e_s(self) -> float:
        """Arrival to last token."""
        return self.finish_s - self.arrival_s

    @property
    def queueing_s(self) -> float:
        """Arrival to first scheduling."""
        return self.first_scheduled_s - self.arrival_s


def clone_request(r: Request) -> Request:
    """An independent copy of ``r`` (immutable fields shared)."""
    return Request(
        r.request_id,
        r.arrival_s,
        r.num_prompt_tokens,
        r.max_output_tokens,
        r.priority,
        r.content,
        r.session_id,
        r.status,
        r.instance_id,
        r.num_computed_tokens,
        r.num_output_tokens,
        r.num_cached_tokens,
        r.num_preemptions,
        r.reject_reason,
        r.first_scheduled_s,
        r.first_token_s,
        r.last_token_s,
        r.finish_s,
        r.itl_max_s,
        r.energy_j,
        r.num_blocks,
        r.num_hashed_blocks,
        r._hashes,
        r._hash_block_size,
    )
