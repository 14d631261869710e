"""Arrival processes: Poisson, Gamma (bursty), constant, burst, on/off pulses and a
piecewise rate curve (e.g. diurnal), all drawn from one seeded generator."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.schema import (
    ArrivalConfig,
    BurstArrivals,
    ConstantArrivals,
    GammaArrivals,
    OnOffArrivals,
    PiecewiseArrivals,
    PoissonArrivals,
)

FloatArray = NDArray[np.float64]
_CHUNK = 4096
_MAX_ARRIVALS = 50_000_000


def _limit(times: FloatArray, num: int | None, duration_s: float | None) -> FloatArray:
    if duration_s is not None:
        times = times[times < duration_s]
    if num is not None:
        times = times[:num]
    return times


def _renewal(
    draw_gaps: object, rate_rps: float, num: int | None, duration_s: float | None
) -> FloatArray:
    """Arrivals of a renewal process whose gaps come from ``draw_gaps(size)``."""
    assert callable(draw_gaps)
    chunks: list[FloatArray] = []
    total = 0
    last = 0.0
    chunk = _CHUNK if num is None else min(max(num, 16), _CHUNK * 64)
    if duration_s is not None:
        chunk = max(chunk, min(int(rate_rps * duration_s * 1.1) + 16, _CHUNK * 64))
    while True:
        times = last + np.cumsum(draw_gaps(chunk))
        chunks.append(times)
        total += len(times)
        last = float(times[-1])
        if num is not None and total >= num:
            break
        if duration_s is not None and last >= duration_s:
            break
        if total > _MAX_ARRIVALS:
            raise ValueError(
                f"more than {_MAX_ARRIVALS} arrivals: bound num_requests or duration_s"
            )
    return _limit(np.concatenate(chunks), num, duration_s)


def _thinned(
    rate_at: object,
    rate_max: float,
    rng: np.random.Generator,
    num: int | None,
    duration_s: float | None,
) -> FloatArray:
    """A non-homogeneous Poisson process by thinning a homogeneous one at ``rate_max``."""
    assert callable(rate_at)
    kept: list[FloatArray] = []
    total = 0
    last = 0.0
    while True:
        candidates = last + np.cumsum(rng.exponential(1.0 / rate_max, _CHUNK))
        accept = rng.random(_CHUNK) * rate_max < rate_at(candidates)
        times = candidates[accept]
        kept.append(times)
        total += len(times)
        last = float(candidates[-1])
        if num is not None and total >= num:
            break
        if duration_s is not None and last >= duration_s:
            break
        if total > _MAX_ARRIVALS:
            raise ValueError(
                f"more than {_MAX_ARRIVALS} arrivals: bound num_requests or duration_s"
            )
    return _limit(np.concatenate(kept), num, duration_s)


def _piecewise_rate(cfg: PiecewiseArrivals) -> object:
    knots_t = np.asarray(cfg.times_s, dtype=np.float64)
    knots_r = np.asarray(cfg.rates_rps, dtype=np.float64)

    def rate_at(times: FloatArray) -> FloatArray:
        t = np.mod(times, cfg.period_s) if cfg.period_s is not None else times
        if cfg.interpolation == "linear":
            if cfg.period_s is not None:
                # Wrap around: the curve returns to its first rate at the period's end.
                xt = np.append(knots_t, cfg.period_s)
                xr = np.append(knots_r, knots_r[0])
                return np.interp(t, xt, xr)
            return np.interp(t, knots_t, knots_r)
        index = np.searchsorted(knots_t, t, side="right") - 1
        return knots_r[np.clip(index, 0, len(knots_r) - 1)]

    return rate_at


def sample_arrivals(
    cfg: ArrivalConfig,
    rng: np.random.Generator,
    num_requests: int | None,
    duration_s: float | None,
) -> FloatArray:
    """Arrival times in seconds, sorted, starting after 0.

    Args:
        cfg: The arrival process.
        rng: The ``arrivals`` stream.
        num_requests: Stop after this many arrivals (``None``: no count limit).
        duration_s: Stop at this time (``None``: no time limit).

    Raises:
        ValueError: when neither bound is given, or a burst has no request count.
    """
    if num_requests is None and duration_s is None:
        raise ValueError("an arrival process needs num_requests or duration_s")
    match cfg:
        case PoissonArrivals(rate_rps=rate):
            return _renewal(
                lambda n: rng.exponential(1.0 / rate, n), rate, num_requests, duration_s
            )
        case GammaArrivals(rate_rps=rate, cv=cv):
            shape = 1.0 / (cv * cv)
            scale = 1.0 / (rate * shape)
            return _renewal(lambda n: rng.gamma(shape, scale, n), rate, num_requests, duration_s)
        case ConstantArrivals(rate_rps=rate):
            count = num_requests
            if duration_s is not None:
                in_window = math.ceil(duration_s * rate)
                count = in_window if count is None else min(count, in_window)
            assert count is not None
            return _limit(
                np.arange(1, count + 1, dtype=np.float64) / rate, num_requests, duration_s
            )
        case BurstArrivals(at_s=at):
            if num_requests is None:
                raise ValueError("a burst needs num_requests")
            times = np.full(num_requests, at, dtype=np.float64)
            return _limit(times, num_requests, duration_s)
        case OnOffArrivals():
            on, off = cfg.on_s, cfg.off_s
            rate_max = max(cfg.rate_on_rps, cfg.rate_off_rps)

            def rate_at(times: FloatArray) -> FloatArray:
                phase = np.mod(times, on + off)
                return np.where(phase < on, cfg.rate_on_rps, cfg.rate_off_rps)

            return _thinned(rate_at, rate_max, rng, num_requests, duration_s)
        case PiecewiseArrivals():
            return _thinned(_piecewise_rate(cfg), max(cfg.rates_rps), rng, num_requests, duration_s)
    raise ValueError(f"unknown arrival process {cfg!r}")
