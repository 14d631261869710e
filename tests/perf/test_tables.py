"""Lookup tables: interpolation, the documented extrapolation rules, exact sums, grids."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.perf.tables import (
    BucketTable,
    Grid,
    PiecewiseLinear,
    extend_axis_half_range,
    fill_grid,
    grid_from_points,
    half_range_slope,
    sum_curves,
)


def curve() -> PiecewiseLinear:
    return PiecewiseLinear.from_points(np.array([2.0, 4.0, 8.0]), np.array([10.0, 20.0, 60.0]))


def test_interpolates_linearly_between_points() -> None:
    f = curve()
    assert f(3.0) == pytest.approx(15.0)
    assert f(6.0) == pytest.approx(40.0)
    assert f(8.0) == pytest.approx(60.0)


def test_never_below_the_smallest_measured_time() -> None:
    f = curve()
    assert f(1.0) == 10.0
    assert f(0.5) == 10.0


def test_zero_costs_zero_unless_asked_otherwise() -> None:
    assert curve()(0.0) == 0.0
    g = PiecewiseLinear.from_points(np.array([2.0, 4.0]), np.array([1.0, 2.0]), zero_at_zero=False)
    assert g(0.0) == 1.0


def test_extrapolates_with_the_half_range_slope() -> None:
    # last point 8, half 4 -> slope (60 - 20) / (8 - 4) = 10 per unit
    f = curve()
    assert f.slope_hi == pytest.approx(10.0)
    assert f(10.0) == pytest.approx(80.0)


def test_extrapolation_slope_is_never_negative() -> None:
    x = np.array([1.0, 2.0, 4.0])
    assert half_range_slope(x, np.array([5.0, 9.0, 3.0])) == 0.0
    f = PiecewiseLinear.from_points(x, np.array([5.0, 9.0, 3.0]))
    assert f(100.0) == 3.0


def test_single_point_is_constant() -> None:
    f = PiecewiseLinear.from_points(np.array([16.0]), np.array([7.0]))
    assert f(1.0) == f(16.0) == f(1000.0) == 7.0


def test_vector_lookup_matches_scalar() -> None:
    f = curve()
    xs = np.array([0.0, 1.0, 2.0, 3.0, 5.5, 8.0, 9.0, 100.0])
    np.testing.assert_allclose(f.many(xs), [f(float(x)) for x in xs])


def test_sum_of_curves_is_exact_everywhere() -> None:
    a = curve()
    b = PiecewiseLinear.from_points(np.array([1.0, 3.0, 16.0]), np.array([1.0, 2.0, 30.0]))
    total = sum_curves([(2.0, a, 1.0), (3.0, b, 0.5)])
    for x in (0.5, 1.0, 2.5, 5.0, 8.0, 12.0, 31.0, 40.0, 400.0):
        assert total(x) == pytest.approx(2 * a(x) + 3 * b(0.5 * x))


def test_grid_is_multilinear_and_exact_for_bilinear_functions() -> None:
    x = np.array([0.0, 1.0, 3.0])
    y = np.array([10.0, 20.0])
    values = np.array([[1 + 2 * a + 0.5 * b + a * b for b in y] for a in x])
    grid = Grid((x, y), values)
    for a, b in ((0.5, 12.0), (2.0, 15.0), (3.0, 20.0), (1.0, 10.0)):
        assert grid(a, b) == pytest.approx(1 + 2 * a + 0.5 * b + a * b)


def test_grid_clamps_below_and_extrapolates_above() -> None:
    x = np.array([1.0, 2.0, 4.0])
    grid = extend_axis_half_range(Grid((x,), np.array([5.0, 7.0, 11.0])), 0)
    assert grid(0.0) == 5.0
    # half-range slope between 2 and 4: 2 per unit
    assert grid(6.0) == pytest.approx(15.0)
    assert grid(20.0) == pytest.approx(43.0)


def test_fill_grid_interpolates_holes_along_axes() -> None:
    axes = (np.array([0.0, 1.0, 2.0]), np.array([0.0, 10.0]))
    values = np.array([[0.0, 10.0], [np.nan, 11.0], [2.0, np.nan]])
    filled = fill_grid(values, axes, order=(0, 1))
    assert filled[1, 0] == pytest.approx(1.0)
    # column 1 known at x=0 and x=1: slope 1 per unit, extended to x=2
    assert filled[2, 1] == pytest.approx(12.0)


def test_grid_from_scattered_points_fills_in_the_given_order() -> None:
    points = (np.array([0.0, 0.0, 2.0]), np.array([0.0, 4.0, 0.0]))
    values = np.array([1.0, 5.0, 3.0])
    # A line with one known point is constant along it: the first axis filled decides.
    assert grid_from_points(points, values, fill_order=(1, 0))(2.0, 4.0) == 3.0
    assert grid_from_points(points, values, fill_order=(0, 1))(2.0, 4.0) == 5.0
    assert grid_from_points(points, values, fill_order=(0, 1))(1.0, 0.0) == pytest.approx(2.0)


def test_unfillable_grid_is_an_error() -> None:
    axes = (np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="cannot be filled"):
        fill_grid(np.full((2, 2), np.nan), axes, order=(0, 1))


def test_bucket_table_uses_upper_edges_and_a_default() -> None:
    table = BucketTable(
        (np.array([2.0, 8.0]), np.array([100.0, 1000.0])),
        np.array([[0.1, 0.2], [np.nan, 0.4]]),
        default=0.05,
    )
    assert table(1.0, 50.0) == 0.1
    assert table(2.0, 100.0) == 0.1
    assert table(3.0, 500.0) == 0.4
    assert table(5.0, 10.0) == 0.05  # missing combination
    assert table(99.0, 1e9) == 0.4  # above every edge: the last bucket
    np.testing.assert_allclose(table.many(np.array([1.0, 3.0]), 50.0), [0.1, 0.05])
