"""Length distributions: ranges, means, determinism, empirical CSV columns and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.config.schema import EmpiricalLength, FixedLength, LognormalLength, UniformLength
from llmserve_env.sim.workload.lengths import load_length_column, sample_lengths

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference"
SHAREGPT_STATS = (
    SHARED / "traces" / "sharegpt_lengths" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
)

N = 20_000


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_fixed() -> None:
    values = sample_lengths(FixedLength(dist="fixed", value=128), _rng(), 50)
    assert values.dtype == np.int64
    np.testing.assert_array_equal(values, np.full(50, 128))


def test_uniform_covers_both_ends() -> None:
    values = sample_lengths(UniformLength(dist="uniform", min=10, max=20), _rng(), N)
    assert values.dtype == np.int64
    assert values.min() == 10 and values.max() == 20
    assert values.mean() == pytest.approx(15.0, abs=0.1)
    assert len(np.unique(values)) == 11


def test_lognormal_mean_and_cv() -> None:
    cfg = LognormalLength(dist="lognormal", mean=500.0, cv=0.5, min=1, max=100_000)
    values = sample_lengths(cfg, _rng(), N)
    assert values.dtype == np.int64
    assert values.mean() == pytest.approx(500.0, rel=0.03)
    assert values.std() / values.mean() == pytest.approx(0.5, rel=0.05)


def test_lognormal_is_clipped() -> None:
    cfg = LognormalLength(dist="lognormal", mean=100.0, cv=2.0, min=20, max=300)
    values = sample_lengths(cfg, _rng(), N)
    assert values.min() == 20 and values.max() == 300


def test_lognormal_never_below_one() -> None:
    values = sample_lengths(LognormalLength(dist="lognormal", mean=1.0, cv=3.0), _rng(), N)
    assert values.min() == 1


@pytest.mark.parametrize(
    "cfg",
    [
        UniformLength(dist="uniform", min=1, max=1000),
        LognormalLength(dist="lognormal", mean=300.0, cv=1.0),
    ],
)
def test_same_seed_same_lengths(cfg: UniformLength | LognormalLength) -> None:
    a = sample_lengths(cfg, _rng(7), 100)
    np.testing.assert_array_equal(a, sample_lengths(cfg, _rng(7), 100))
    assert not np.array_equal(a, sample_lengths(cfg, _rng(8), 100))


def test_zero_and_negative_counts() -> None:
    cfg = UniformLength(dist="uniform", min=1, max=5)
    empty = sample_lengths(cfg, _rng(), 0)
    assert empty.shape == (0,) and empty.dtype == np.int64
    with pytest.raises(ValueError, match="negative"):
        sample_lengths(cfg, _rng(), -1)


# --------------------------------------------------------------------------- empirical


def test_empirical_resamples_the_column(tmp_path: Path) -> None:
    path = _csv(tmp_path / "l.csv", "a,b\n0,10\n1,20.4\n2,30\n3,40\n")
    cfg = EmpiricalLength(dist="empirical", path=str(path), column="b")
    values = sample_lengths(cfg, _rng(), N)
    assert values.dtype == np.int64
    assert set(np.unique(values)) == {10, 20, 30, 40}
    assert values.mean() == pytest.approx(25.0, rel=0.02)
    np.testing.assert_array_equal(values, sample_lengths(cfg, _rng(), N))
    clipped = sample_lengths(cfg.model_copy(update={"min": 15, "max": 35}), _rng(), N)
    assert set(np.unique(clipped)) == {15, 20, 30, 35}
    # Zeros in the file become 1.
    zeros = sample_lengths(cfg.model_copy(update={"column": "a"}), _rng(), 1000)
    assert set(np.unique(zeros)) == {1, 2, 3}


def test_length_column_is_cached_and_read_only(tmp_path: Path) -> None:
    path = _csv(tmp_path / "l.csv", "n\n5\n6.6\n")
    column = load_length_column(path, "n")
    np.testing.assert_array_equal(column, [5, 7])
    assert load_length_column(str(path), "n") is column
    assert not column.flags.writeable


@pytest.mark.parametrize(
    ("text", "column", "pattern"),
    [
        ("a,b\n1,2\n", "c", r":1: no column 'c' \(found columns a, b\)"),
        ("a,b\n1,2\n3,abc\n", "b", r":3: b: expected a non-negative number, got 'abc'"),
        ("a,b\n1,2\n3,-4\n", "b", r":3: b: expected a non-negative number, got '-4'"),
        ("a,b\n1,2\n3\n", "b", r":3: b: expected a non-negative number, got ''"),
        ("a,b\n1,nan\n", "b", r":2: b: expected a non-negative number, got 'nan'"),
        ("a,b\n", "b", r"column 'b' has no values"),
        ("", "b", r":1: empty file"),
    ],
)
def test_length_column_errors(tmp_path: Path, text: str, column: str, pattern: str) -> None:
    path = _csv(tmp_path / "l.csv", text)
    with pytest.raises(DataFileError, match=pattern) as info:
        load_length_column(path, column)
    assert info.value.path == str(path)


def test_missing_length_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot read"):
        load_length_column(tmp_path / "nope.csv", "n")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/reference not present")
def test_empirical_sharegpt() -> None:
    prompts = load_length_column(SHAREGPT_STATS, "num_prefill_tokens")
    assert len(prompts) == 30731
    assert prompts[:3].tolist() == [74, 290, 1402]
    cfg = EmpiricalLength(dist="empirical", path=str(SHAREGPT_STATS), column="num_decode_tokens")
    values = sample_lengths(cfg, _rng(), N)
    outputs = load_length_column(SHAREGPT_STATS, "num_decode_tokens")
    assert values.min() >= max(1, outputs.min()) and values.max() <= outputs.max()
    assert values.mean() == pytest.approx(outputs.mean(), rel=0.03)
