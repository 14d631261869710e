"""Running aggregates the engines update as they go (no history scans on the hot path)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Log-spaced inter-token-latency bins: 1 us .. 1000 s, 50 bins per decade.
_ITL_EDGES = np.logspace(-6, 3, 9 * 50 + 1)


@dataclass(slots=True)
class InstanceStats:
    """Cumulative counters of one instance (differences give rates over an interval)."""

    prompt_tokens: int = 0
    """Tokens computed in prefill (prompt chunks and recomputation after preemption)."""
    generation_tokens: int = 0
    """Output tokens sampled."""
    num_iterations: int = 0
    """Engine iterations (forward passes)."""
    busy_s: float = 0.0
    """Time with an iteration in flight."""
    num_preemptions: int = 0
    """Requests preempted (recompute)."""
    prefix_query_tokens: int = 0
    """Prompt tokens looked up in the prefix cache at admission."""
    prefix_hit_tokens: int = 0
    """Of those, tokens served from the cache."""
    num_finished: int = 0
    """Requests finished here."""
    num_routed: int = 0
    """Requests routed here."""
    scheduled_tokens_last: int = 0
    """Tokens in the most recent iteration's batch."""


class ItlHistogram:
    """Inter-token latencies as a weighted log-bin histogram (statistics, not a stream)."""

    __slots__ = ("count", "counts", "max_s", "total_s")

    edges: NDArray[np.float64] = _ITL_EDGES

    def __init__(self) -> None:
        self.counts = np.zeros(len(_ITL_EDGES) + 1, dtype=np.int64)
        self.total_s = 0.0
        self.count = 0
        self.max_s = 0.0

    def add(self, itl_s: float, weight: int = 1) -> None:
        """Record ``weight`` tokens that each came ``itl_s`` after their predecessor."""
        self.counts[int(np.searchsorted(_ITL_EDGES, itl_s))] += weight
        self.total_s += itl_s * weight
        self.count += weight
        if itl_s > self.max_s:
            self.max_s = itl_s

    def add_many(self, itl_s: NDArray[np.float64], weight: int) -> None:
        """Record ``weight`` tokens for each latency in ``itl_s``."""
        if len(itl_s) == 0:
            return
        idx = np.searchsorted(_ITL_EDGES, itl_s)
        self.counts += np.bincount(idx, minlength=len(self.counts)) * weight
        self.total_s += float(itl_s.sum()) * weight
        self.count += len(itl_s) * weight
        peak = float(itl_s.max())
        if peak > self.max_s:
            self.max_s = peak

    def mean(self) -> float:
        """Mean ITL (exact)."""
        return self.total_s / self.count if self.count else float("nan")

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0-100), interpolated geometrically within a bin."""
        if not self.count:
            return float("nan")
        target = q / 100.0 * self.count
        cumulative = np.cumsum(self.counts)
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(self.counts) - 1)
        lo = _ITL_EDGES[index - 1] if index > 0 else _ITL_EDGES[0]
        hi = _ITL_EDGES[index] if index < len(_ITL_EDGES) else self.max_s
        before = cumulative[index - 1] if index > 0 else 0
        inside = self.counts[index]
        frac = (target - before) / inside if inside else 0.0
        value = lo * (hi / lo) ** min(max(frac, 0.0), 1.0)
        return float(min(value, self.max_s))

    def copy(self) -> ItlHistogram:
        """An independent copy."""
        other = ItlHistogram()
        other.counts = self.counts.copy()
        other.total_s, other.count, other.max_s = self.total_s, self.count, self.max_s
        return other
