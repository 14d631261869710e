"""Running aggregates the engines update as they go (no history scans on the hot path)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

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
    """Inter-token latencies as a weighted log-bin histogram (statistics, not a stream).

    Values are buffered as (latency, tokens) pairs in two lists and binned in bulk, so
    recording a batch of them costs a list ``extend``; the histogram is exact to the bin
    (50 bins per decade) and the mean, count and maximum are exact.
    """

    __slots__ = ("_count", "_counts", "_max_s", "_total_s", "_wbuffer", "_weights")

    edges: ClassVar[NDArray[np.float64]] = _ITL_EDGES

    def __init__(self) -> None:
        self._counts = np.zeros(len(_ITL_EDGES) + 1, dtype=np.int64)
        self._total_s = 0.0
        self._count = 0
        self._max_s = 0.0
        self._wbuffer: list[float] = []  # _weights[k] tokens each
        self._weights: list[int] = []

    def add_list(self, itl_s: list[float]) -> None:
        """Record one token for each latency in ``itl_s``.

        Runs of equal latencies are buffered as one weighted entry: the decodes of one
        iteration mostly share their gap (their previous tokens came from the same
        iteration), so a batch's gaps usually collapse to one or two entries.
        """
        values = self._wbuffer
        weights = self._weights
        n = len(itl_s)
        k = 0
        while k < n:
            value = itl_s[k]
            j = k + 1
            while j < n and itl_s[j] == value:
                j += 1
            values.append(value)
            weights.append(j - k)
            k = j
        if len(values) >= 8192:
            self._flush()

    def add_many(self, itl_s: list[float], weight: int) -> None:
        """Record ``weight`` tokens for each latency in ``itl_s``."""
        self._wbuffer.extend(itl_s)
        self._weights.extend([weight] * len(itl_s))
        if len(self._wbuffer) >= 8192:
            self._flush()

    def _flush(self) -> None:
        if self._wbuffer:
            weights = np.asarray(self._weights, dtype=np.int64)
            self._bin(np.asarray(self._wbuffer, dtype=np.float64), weights)
            self._wbuffer, self._weights = [], []

    def _bin(self, values: NDArray[np.float64], weights: NDArray[np.int64]) -> None:
        idx = np.searchsorted(_ITL_EDGES, values)
        # Not np.dot: a BLAS call wakes OpenBLAS worker threads, which then spin on a
        # second core for the rest of the run.
        counts = np.bincount(idx, weights=weights, minlength=len(self._counts))
        self._counts += counts.astype(np.int64)
        self._total_s += float((values * weights).sum())
        self._count += int(weights.sum())
        peak = float(values.max())
        if peak > self._max_s:
            self._max_s = peak

    @property
    def count(self) -> int:
        """Tokens recorded."""
        self._flush()
        return self._count

    @property
    def max_s(self) -> float:
        """Largest ITL recorded."""
        self._flush()
        return self._max_s

    @property
    def counts(self) -> NDArray[np.int64]:
        """Tokens per bin (bin ``i`` holds values in ``[edges[i-1], edges[i])``)."""
        self._flush()
        return self._counts

    def mean(self) -> float:
        """Mean ITL (exact)."""
        self._flush()
        return self._total_s / self._count if self._count else float("nan")

    def percentile(self, q: float) -> float:
        """Percentile ``q`` (0-100), interpolated geometrically within a bin."""
        self._flush()
        if not self._count:
            return float("nan")
        counts = self._counts
        target = q / 100.0 * self._count
        cumulative = np.cumsum(counts)
        index = int(np.searchsorted(cumulative, target, side="left"))
        index = min(index, len(counts) - 1)
        lo = _ITL_EDGES[index - 1] if index > 0 else _ITL_EDGES[0]
        hi = _ITL_EDGES[index] if index < len(_ITL_EDGES) else self._max_s
        before = cumulative[index - 1] if index > 0 else 0
        inside = counts[index]
        frac = (target - before) / inside if inside else 0.0
        value = lo * (hi / lo) ** min(max(frac, 0.0), 1.0)
        return float(min(value, self._max_s))

    def copy(self) -> ItlHistogram:
        """An independent copy."""
        self._flush()
        other = ItlHistogram()
        other._counts = self._counts.copy()
        other._total_s, other._count, other._max_s = self._total_s, self._count, self._max_s
        return other


class MovingRates:
    """Exponentially weighted time averages of the rates of cumulative counters.

    For a counter that grows by ``dn`` over ``dt`` seconds, the rate estimate decays by
    ``exp(-dt / tau)`` and gains ``dn / tau``: an unbiased estimator of a Poisson rate,
    independent of how often it is updated.

    Args:
        tau_s: Time constant.
        size: Number of counters tracked.
    """

    __slots__ = ("_last", "tau_s", "values")

    def __init__(self, tau_s: float, size: int) -> None:
        self.tau_s = tau_s
        self.values: list[float] = [0.0] * size
        self._last: list[float] = [0.0] * size

    def update(self, totals: list[float], dt: float) -> list[float]:
        """Fold in the counters' new cumulative values after ``dt`` seconds; returns the
        rates (per second)."""
        decay = math.exp(-dt / self.tau_s) if dt > 0 else 1.0
        tau = self.tau_s
        values = self.values
        last = self._last
        if len(totals) != len(values):
            raise ValueError(f"expected {len(values)} counters, got {len(totals)}")
        rates: list[float] = []
        for index in range(len(values)):
            rates.append(values[index] * decay + (totals[index] - last[index]) / tau)
        self.values = rates
        self._last = list(totals)
        return rates

    def reset(self, totals: list[float]) -> None:
        """Start from these cumulative values with zero rates."""
        self.values = [0.0] * len(self.values)
        self._last = list(totals)

    def copy(self) -> MovingRates:
        """An independent copy."""
        other = MovingRates(self.tau_s, len(self.values))
        other.values = list(self.values)
        other._last = list(self._last)
        return other
