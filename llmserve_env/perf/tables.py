"""Lookup tables compiled from profiles: piecewise-linear curves and multilinear grids.

Rules (``profiles/README.md`` states them for users):

- 1-D: linear between points; constant below the first point (never below the smallest
  measured time); above the last point ``x_n`` linear with the slope between ``x_n`` and
  the largest point at or below ``x_n / 2`` (clamped at 0). An argument of 0 costs 0.
- N-D grids: multilinear on a rectilinear grid, each axis clamped below its first value
  and extrapolated above its last with the same half-range slope rule.

Scalar lookups use :mod:`bisect` on Python lists (a few microseconds); vector lookups
use numpy. Nothing here knows about operators or batches.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def half_range_slope(x: FloatArray, y: FloatArray) -> float:
    """Slope used above the last point: from the largest point at or below half the last
    one to the last one, never negative (0 for a single point)."""
    if len(x) < 2:
        return 0.0
    target = x[-1] / 2.0
    i = int(np.searchsorted(x, target, side="right")) - 1
    i = min(max(i, 0), len(x) - 2)
    slope = (y[-1] - y[i]) / (x[-1] - x[i])
    return float(max(slope, 0.0))


@dataclass(frozen=True)
class PiecewiseLinear:
    """A 1-D piecewise-linear function with the extrapolation rules of this module.

    Attributes:
        x: Knots, strictly increasing.
        y: Values at the knots.
        slope_hi: Slope above the last knot.
        zero_at_zero: Whether an argument of 0 (or below) returns 0.
    """

    x: FloatArray
    y: FloatArray
    slope_hi: float
    zero_at_zero: bool = True
    # Derived in __post_init__: the knots as lists, for fast scalar lookups.
    _xs: list[float] = field(init=False, repr=False, compare=False)
    _ys: list[float] = field(init=False, repr=False, compare=False)

    @classmethod
    def from_points(
        cls, x: FloatArray, y: FloatArray, zero_at_zero: bool = True
    ) -> PiecewiseLinear:
        """Build from measured points (sorted, unique) with the half-range slope."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return cls(x, y, half_range_slope(x, y), zero_at_zero)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_xs", self.x.tolist())
        object.__setattr__(self, "_ys", self.y.tolist())

    def __call__(self, value: float) -> float:
        """The function at one point."""
        xs = self._xs
        ys = self._ys
        if value <= 0.0 and self.zero_at_zero:
            return 0.0
        if value <= xs[0]:
            return ys[0]
        if value >= xs[-1]:
            return ys[-1] + self.slope_hi * (value - xs[-1])
        i = bisect.bisect_right(xs, value)
        x0, x1 = xs[i - 1], xs[i]
        y0 = ys[i - 1]
        return y0 + (ys[i] - y0) * (value - x0) / (x1 - x0)

    def line(self, lo: float, hi: float) -> tuple[float, float] | None:
        """``(intercept, slope)`` of the function on ``[lo, hi]`` when one linear piece
        covers that range, else ``None``."""
        xs: list[float] = self._xs
        ys: list[float] = self._ys
        if self.zero_at_zero and lo <= 0.0:
            return None
        if hi <= xs[0]:
            return ys[0], 0.0
        if lo >= xs[-1]:
            return ys[-1] - self.slope_hi * xs[-1], self.slope_hi
        i = bisect.bisect_right(xs, lo)
        if i == 0 or i >= len(xs) or hi > xs[i]:
            return None  # below the first knot, or a knot inside the range
        x0, x1 = xs[i - 1], xs[i]
        y0 = ys[i - 1]
        slope = (ys[i] - y0) / (x1 - x0)
        return y0 - slope * x0, slope

    def many(self, values: FloatArray) -> FloatArray:
        """The function at many points (vectorised)."""
        v = np.asarray(values, dtype=np.float64)
        out = np.interp(v, self.x, self.y)
        if not v.size:
            return out
        xs = self._xs
        x_hi = xs[-1]
        if v.max() > x_hi:
            ys = self._ys
            out = np.where(v > x_hi, ys[-1] + self.slope_hi * (v - x_hi), out)
        if self.zero_at_zero and v.min() <= 0.0:
            out = np.where(v <= 0.0, 0.0, out)
        return out


def sum_curves(
    terms: Sequence[tuple[float, PiecewiseLinear, float]], extra_knots: Sequence[float] = ()
) -> PiecewiseLinear:
    """``sum_i w_i * f_i(a_i * x)`` as one piecewise-linear function, exactly.

    Args:
        terms: ``(weight, curve, scale)``: the curve is evaluated at ``scale * x``.
        extra_knots: More knots to keep (in ``x`` units).

    The union of every curve's knots (mapped to ``x``) makes the result exact between
    and beyond knots: above the largest knot every term is linear, so the slopes add.
    """
    if not terms:
        return PiecewiseLinear(np.array([1.0]), np.array([0.0]), 0.0)
    knots = set(extra_knots)
    for _, curve, scale in terms:
        knots.update((curve.x / scale).tolist())
    x = np.array(sorted(k for k in knots if k > 0), dtype=np.float64)
    y = np.zeros_like(x)
    slope = 0.0
    for weight, curve, scale in terms:
        y += weight * curve.many(x * scale)
        slope += weight * scale * curve.slope_hi
    return PiecewiseLinear(x, y, slope)


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Grid:
    """Values on a rectilinear grid, looked up multilinearly.

    Above the last knot of an axis the grid extrapolates linearly along the last
    segment of that axis (the compiler makes the last segment a half-range segment, see
    :func:`fill_grid`), with the increase clamped at 0 so time never falls.

    Attributes:
        axes: Knots per axis, each strictly increasing.
        values: Array of shape ``tuple(len(a) for a in axes)``, no NaN.
    """

    axes: tuple[FloatArray, ...]
    values: FloatArray
    # Derived in __post_init__: plain lists for fast scalar lookups.
    _axes: list[list[float]] = field(init=False, repr=False, compare=False)
    _flat: list[float] = field(init=False, repr=False, compare=False)
    _strides: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(len(a) for a in self.axes)
        if self.values.shape != shape:
            raise ValueError(f"grid values have shape {self.values.shape}, axes give {shape}")
        if np.isnan(self.values).any():
            raise ValueError("grid has unfilled points")
        object.__setattr__(self, "_axes", [a.tolist() for a in self.axes])
        object.__setattr__(self, "_flat", self.values.ravel().tolist())
        strides = []
        step = 1
        for n in reversed(shape):
            strides.append(step)
            step *= n
        object.__setattr__(self, "_strides", list(reversed(strides)))

    def __call__(self, *point: float) -> float:
        """Multilinear value at one point."""
        axes = self._axes
        flat = self._flat
        strides = self._strides
        if len(point) != len(axes):
            raise ValueError(f"grid of {len(axes)} axes looked up at {len(point)} coordinates")
        base = 0
        fractions = []
        # Indexed, not a zip: compiled, a zip(strict=True) is a generic iterator.
        for index in range(len(axes)):
            axis = axes[index]
            stride = strides[index]
            value = point[index]
            n = len(axis)
            if n == 1 or value <= axis[0]:
                fractions.append(0.0)  # clamped at the first knot
                continue
            i = n - 2 if value >= axis[-1] else bisect.bisect_right(axis, value) - 1
            x0 = axis[i]
            base += i * stride
            fractions.append((value - x0) / (axis[i + 1] - x0))
        return _lerp(flat, strides, fractions, 0, base)


def _lerp(
    flat: list[float], strides: list[int], fractions: list[float], k: int, offset: int
) -> float:
    """Interpolate along axis ``k`` of a flattened grid, then recurse into the remaining
    axes (a module function, not a closure: a recursive closure is a reference cycle,
    garbage for the cyclic collector on every lookup)."""
    if k == len(strides):
        return flat[offset]
    low = _lerp(flat, strides, fractions, k + 1, offset)
    t = fractions[k]
    if t == 0.0:
        return low
    return low + t * (_lerp(flat, strides, fractions, k + 1, offset + strides[k]) - low)


def _fill_line(x: FloatArray, y: FloatArray) -> FloatArray:
    """Fill NaNs of one grid line from its known points (interpolate; extend at the ends
    by the module's rules). A line with no known point stays NaN."""
    known = ~np.isnan(y)
    if not known.any() or known.all():
        return y
    xk, yk = x[known], y[known]
    curve = PiecewiseLinear.from_points(xk, yk, zero_at_zero=False)
    out = y.copy()
    out[~known] = curve.many(x[~known])
    return out


def fill_grid(values: FloatArray, axes: Sequence[FloatArray], order: Sequence[int]) -> FloatArray:
    """Fill the NaN points of a grid by 1-D interpolation along axes, in ``order``.

    Each pass fills every line along one axis that has at least one known point; passes
    repeat over ``order`` until nothing changes.

    Raises:
        ValueError: if points stay unfilled (an empty slice of the grid).
    """
    out = values.copy()
    while np.isnan(out).any():
        before = int(np.isnan(out).sum())
        for axis in order:
            moved = np.moveaxis(out, axis, -1)
            flat = moved.reshape(-1, moved.shape[-1])
            for row in range(flat.shape[0]):
                if np.isnan(flat[row]).any():
                    flat[row] = _fill_line(axes[axis], flat[row])
            out = np.moveaxis(flat.reshape(moved.shape), -1, axis)
        if int(np.isnan(out).sum()) == before:
            raise ValueError(f"{before} grid point(s) cannot be filled from any axis")
    return out


def grid_from_points(
    coords: Sequence[FloatArray], values: FloatArray, fill_order: Sequence[int]
) -> Grid:
    """Place scattered points on the grid of all their axis values and fill the rest.

    Args:
        coords: One array per axis, the coordinates of each point.
        values: Value at each point.
        fill_order: Axes to interpolate along, first to last.
    """
    axes = tuple(np.unique(np.asarray(c, dtype=np.float64)) for c in coords)
    grid = np.full(tuple(len(a) for a in axes), np.nan)
    index = tuple(np.searchsorted(a, c) for a, c in zip(axes, coords, strict=True))
    grid[index] = values
    return Grid(axes, fill_grid(grid, axes, fill_order))


def extend_axis_half_range(grid: Grid, axis: int) -> Grid:
    """Append a knot at twice the last knot of ``axis`` holding the half-range
    extrapolation (slope clamped at 0), so that multilinear extrapolation above the
    measured range follows the module's rule. Lookups inside the range are unchanged.
    """
    x = grid.axes[axis]
    if len(x) < 2:
        return grid
    moved = np.moveaxis(grid.values, axis, -1)
    i = int(np.searchsorted(x, x[-1] / 2.0, side="right")) - 1
    i = min(max(i, 0), len(x) - 2)
    slope = np.maximum((moved[..., -1] - moved[..., i]) / (x[-1] - x[i]), 0.0)
    far = x[-1] * 2.0
    extra = moved[..., -1] + slope * (far - x[-1])
    new_vals = np.concatenate([moved, extra[..., None]], axis=-1)
    new_axes = list(grid.axes)
    new_axes[axis] = np.append(x, far)
    return Grid(tuple(new_axes), np.ascontiguousarray(np.moveaxis(new_vals, -1, axis)))


@dataclass(frozen=True)
class BucketTable:
    """Values keyed by buckets: on each axis a value falls in the bucket of the smallest
    edge at or above it (the last bucket above every edge); a missing combination gives
    ``default``.

    Attributes:
        edges: Bucket upper edges per axis, strictly increasing.
        values: Array over the bucket combinations; NaN where none was measured.
        default: Value for missing combinations.
    """

    edges: tuple[FloatArray, ...]
    values: FloatArray
    default: float
    # Derived in __post_init__: plain lists for fast scalar lookups.
    _edges: list[list[float]] = field(init=False, repr=False, compare=False)
    _flat: list[float] = field(init=False, repr=False, compare=False)
    _strides: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_edges", [e.tolist() for e in self.edges])
        object.__setattr__(self, "_flat", self.values.ravel().tolist())
        strides = []
        step = 1
        for edges in reversed(self.edges):
            strides.append(step)
            step *= len(edges)
        object.__setattr__(self, "_strides", list(reversed(strides)))

    def index(self, axis: int, value: float) -> int:
        """Bucket of ``value`` on ``axis``."""
        edges = self._edges[axis]
        return min(bisect.bisect_left(edges, value), len(edges) - 1)

    def __call__(self, *point: float) -> float:
        """The value of the bucket holding ``point``."""
        all_edges = self._edges
        strides = self._strides
        offset = 0
        for edges, stride, value in zip(all_edges, strides, point, strict=True):
            offset += min(bisect.bisect_left(edges, value), len(edges) - 1) * stride
        v = self._flat[offset]
        return self.default if v != v else v  # NaN: no measurement in this bucket

    def many(self, *points: FloatArray | float) -> FloatArray:
        """Vectorised lookup (arguments broadcast)."""
        idx = []
        for axis, p in enumerate(points):
            edges = self.edges[axis]
            i = np.searchsorted(edges, np.asarray(p, dtype=np.float64), side="left")
            idx.append(np.minimum(i, len(edges) - 1))
        out = self.values[tuple(np.broadcast_arrays(*idx))]
        return np.where(np.isnan(out), self.default, out)
