"""Requests: the status machine, vLLM progress counters and timestamps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

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

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Compiled, a frozen dataclass cannot be unpickled field by field.
        return TokenContent, (self.tokens, self.segments)

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


REQUEST_FIELDS: tuple[str, ...] = (
    "_hash_block_size",
    "_hashes",
    "arrival_s",
    "content",
    "energy_j",
    "finish_s",
    "first_scheduled_s",
    "first_token_s",
    "instance_id",
    "itl_max_s",
    "last_token_s",
    "max_output_tokens",
    "num_blocks",
    "num_cached_tokens",
    "num_computed_tokens",
    "num_hashed_blocks",
    "num_output_tokens",
    "num_preemptions",
    "num_prompt_tokens",
    "priority",
    "reject_reason",
    "request_id",
    "session_id",
    "status",
)
"""Every attribute of a :class:`Request` (its slots; a clone copies each)."""


class Request:
    """One inference request and its progress, in vLLM V1 terms.

    ``num_tokens = num_prompt_tokens + num_output_tokens``; the engine computes tokens
    until ``num_computed_tokens == num_tokens``, then samples one more output token.
    Built from its identity (the constructor's arguments); the progress fields start at
    the values below. Timestamps are simulated seconds (``nan`` until set).

    Attributes:
        request_id: Index in the workload.
        arrival_s: Arrival time.
        num_prompt_tokens: Prompt length.
        max_output_tokens: Output tokens to generate.
        priority: Lower is served first under the ``priority`` policy.
        content: Token identity for prefix caching, or ``None``.
        session_id: Multi-turn session (-1: none).
        status: Where the request is (``WAITING``).
        instance_id: Instance it was routed to (-1).
        num_computed_tokens: Tokens in the KV cache (0).
        num_output_tokens: Tokens sampled (0).
        num_cached_tokens: Prefix-cache hit at first admission (-1 until admitted).
        num_preemptions: Times preempted (0).
        reject_reason: Why it was rejected (``NONE``).
        first_scheduled_s: First admission to a batch.
        first_token_s: First output token.
        last_token_s: Latest output token.
        finish_s: End (finished, rejected or cut at the horizon).
        itl_max_s: Longest gap between two output tokens (0).
        energy_j: Device energy attributed to it (0).
        num_blocks: KV blocks held (owned by the instance's block pool; 0).
        num_hashed_blocks: Blocks registered in the prefix cache (0).
    """

    __slots__ = REQUEST_FIELDS

    def __init__(
        self,
        request_id: int,
        arrival_s: float,
        num_prompt_tokens: int,
        max_output_tokens: int,
        priority: int = 0,
        content: TokenContent | None = None,
        session_id: int = -1,
    ) -> None:
        self.request_id = request_id
        self.arrival_s = arrival_s
        self.num_prompt_tokens = num_prompt_tokens
        self.max_output_tokens = max_output_tokens
        self.priority = priority
        self.content = content
        self.session_id = session_id
        self.status = RequestStatus.WAITING
        self.instance_id = -1
        self.num_computed_tokens = 0
        self.num_output_tokens = 0
        self.num_cached_tokens = -1
        self.num_preemptions = 0
        self.reject_reason = RejectReason.NONE
        self.first_scheduled_s = math.nan
        self.first_token_s = math.nan
        self.last_token_s = math.nan
        self.finish_s = math.nan
        self.itl_max_s = 0.0
        self.energy_j = 0.0
        self.num_blocks = 0
        self.num_hashed_blocks = 0
        self._hashes: tuple[int, ...] | None = None
        self._hash_block_size = 0

    def __repr__(self) -> str:
        return (
            f"Request(request_id={self.request_id}, arrival_s={self.arrival_s}, "
            f"num_prompt_tokens={self.num_prompt_tokens}, "
            f"max_output_tokens={self.max_output_tokens}, status={self.status.name}, "
            f"num_computed_tokens={self.num_computed_tokens}, "
            f"num_output_tokens={self.num_output_tokens})"
        )

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        # Compiled, the class cannot be rebuilt without its constructor's arguments.
        return _restore, (tuple(getattr(self, name) for name in REQUEST_FIELDS),)

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


_COMPILED = not __file__.endswith(".py")


def clone_request(r: Request) -> Request:
    """An independent copy of ``r`` (immutable fields shared)."""
    # Compiled, a native class is made only by its constructor; in pure Python the
    # constructor is skipped, since every field is set below (twice as fast a clone).
    c = Request(0, 0.0, 0, 0) if _COMPILED else object.__new__(Request)
    c.request_id = r.request_id
    c.arrival_s = r.arrival_s
    c.num_prompt_tokens = r.num_prompt_tokens
    c.max_output_tokens = r.max_output_tokens
    c.priority = r.priority
    c.content = r.content
    c.session_id = r.session_id
    c.status = r.status
    c.instance_id = r.instance_id
    c.num_computed_tokens = r.num_computed_tokens
    c.num_output_tokens = r.num_output_tokens
    c.num_cached_tokens = r.num_cached_tokens
    c.num_preemptions = r.num_preemptions
    c.reject_reason = r.reject_reason
    c.first_scheduled_s = r.first_scheduled_s
    c.first_token_s = r.first_token_s
    c.last_token_s = r.last_token_s
    c.finish_s = r.finish_s
    c.itl_max_s = r.itl_max_s
    c.energy_j = r.energy_j
    c.num_blocks = r.num_blocks
    c.num_hashed_blocks = r.num_hashed_blocks
    c._hashes = r._hashes
    c._hash_block_size = r._hash_block_size
    return c


def _restore(state: tuple[Any, ...]) -> Request:
    """Rebuild a pickled :class:`Request` from its fields in :data:`REQUEST_FIELDS` order."""
    request = Request(0, 0.0, 0, 0)
    for name, value in zip(REQUEST_FIELDS, state, strict=True):
        setattr(request, name, value)
    return request
