"""The latency-model seam between the engine and the performance models.

The engine describes each iteration by its batch composition, a :class:`BatchShape`;
a :class:`LatencyModel` turns it into seconds. Decode-only stretches are asked for in
one vectorised call, :meth:`LatencyModel.decode_times_s`, so the hot loop never pays a
Python call per iteration there; where the latencies of such a stretch lie on a line
(no table knot inside it), :meth:`LatencyModel.decode_line_s` gives that line and the
engine needs no arrays at all.

In a decode-only stretch every request gains one token per iteration, so the sum of KV
lengths grows by the number of decodes and the longest and the shortest length by one:
their differences, and so the skew rate ``(mean - min) / (max - min)`` of the decode
lengths, stay constant over the stretch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from llmserve_env.perf.batch import BatchShape

__all__ = ["BatchShape", "FloatArray", "LatencyModel"]

FloatArray = NDArray[np.float64]


@runtime_checkable
class LatencyModel(Protocol):
    """Predicts iteration latency from batch composition."""

    def iteration_time_s(self, batch: BatchShape) -> float:
        """Seconds one iteration with this batch takes."""
        ...

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray, kv_min: FloatArray
    ) -> FloatArray:
        """Seconds of consecutive decode-only iterations.

        Args:
            num_decodes: Requests in every iteration (constant over the run).
            kv_sum: Per iteration, the sum of KV lengths attended.
            kv_max: Per iteration, the longest KV length.
            kv_min: Per iteration, the shortest KV length (models without a skew
                correction ignore it).

        Returns:
            One latency per iteration, same shape as ``kv_sum``.
        """
        ...

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        """Decode-only iterations as a line, when they are one.

        Iteration ``i`` (1..``steps``) has KV sum ``kv_sum0 + num_decodes * i``, longest
        KV ``kv_max0 + i`` and shortest KV ``kv_min0 + i`` (so a constant skew rate).
        Returns ``(a, b)`` such that it takes ``a + b * i`` seconds (exact up to
        rounding), or ``None``, in which case the engine calls :meth:`decode_times_s`.
        """
        ...
