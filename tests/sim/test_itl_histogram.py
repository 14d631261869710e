"""The inter-token-latency histogram: exact count, mean and maximum, binned percentiles."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.sim.stats import ItlHistogram


def _gaps() -> list[float]:
    """Gaps as iterations produce them: runs of one shared value, and odd ones out."""
    rng = np.random.default_rng(7)
    out: list[float] = []
    for _ in range(400):
        shared = float(rng.uniform(0.005, 0.05))
        out += [shared] * int(rng.integers(1, 40))
        out += rng.uniform(0.001, 2.0, size=int(rng.integers(0, 3))).tolist()
    return out


def test_statistics_match_the_values_recorded() -> None:
    gaps = _gaps()
    hist = ItlHistogram()
    for start in range(0, len(gaps), 37):  # in batches, as iterations record them
        hist.add_list(gaps[start : start + 37])
    values = np.asarray(gaps)
    assert hist.count == len(gaps)
    assert hist.mean() == pytest.approx(values.mean(), rel=1e-12)
    assert hist.max_s == values.max()
    # Each value lands in the bin searchsorted gives it, once per token.
    expected = np.bincount(np.searchsorted(ItlHistogram.edges, values), minlength=len(hist.counts))
    np.testing.assert_array_equal(hist.counts, expected)
    for q in (50.0, 90.0, 99.0):
        got = hist.percentile(q)
        exact = float(np.percentile(values, q))
        assert got == pytest.approx(exact, rel=0.05)  # 50 bins per decade: under 5 % wide


def test_weighted_and_listed_values_agree() -> None:
    listed, weighted = ItlHistogram(), ItlHistogram()
    listed.add_list([0.02] * 30 + [0.5] + [0.02] * 4)
    weighted.add_many([0.02], 34)
    weighted.add_many([0.5], 1)
    np.testing.assert_array_equal(listed.counts, weighted.counts)
    assert listed.count == weighted.count == 35
    assert listed.mean() == pytest.approx(weighted.mean(), rel=1e-15)
    assert listed.max_s == weighted.max_s == 0.5


def test_a_copy_is_independent() -> None:
    hist = ItlHistogram()
    hist.add_list([0.01, 0.01, 0.03])
    copy = hist.copy()
    hist.add_list([1.0])
    assert copy.count == 3 and hist.count == 4
    assert copy.max_s == 0.03
