"""Arrival processes and the multi-turn generator."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import TypeAdapter

from llmserve_env.config.schema import ArrivalConfig, MultiTurnWorkload
from llmserve_env.sim.kv_cache import KVBlockPool
from llmserve_env.sim.request import Request
from llmserve_env.sim.rng import rng_tree
from llmserve_env.sim.workload.arrivals import sample_arrivals
from llmserve_env.sim.workload.base import WorkloadData
from llmserve_env.sim.workload.multiturn import generate_multi_turn

_arrival = TypeAdapter(ArrivalConfig)


def _times(
    spec: dict, n: int | None = 20000, duration: float | None = None, seed: int = 0
) -> np.ndarray:
    return sample_arrivals(_arrival.validate_python(spec), np.random.default_rng(seed), n, duration)


def test_poisson_rate_and_cv() -> None:
    t = _times({"process": "poisson", "rate_rps": 10})
    gaps = np.diff(t)
    assert len(t) == 20000 and np.all(gaps >= 0)
    assert 1 / gaps.mean() == pytest.approx(10, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("cv", [0.5, 3.0])
def test_gamma_cv(cv: float) -> None:
    gaps = np.diff(_times({"process": "gamma", "rate_rps": 5, "cv": cv}))
    assert 1 / gaps.mean() == pytest.approx(5, rel=0.08)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_constant_and_burst_and_duration() -> None:
    t = _times({"process": "constant", "rate_rps": 4}, n=None, duration=10.0)
    assert len(t) == 39 and t[0] == pytest.approx(0.25)
    b = _times({"process": "burst", "at_s": 2.0}, n=7)
    assert b.tolist() == [2.0] * 7
    with pytest.raises(ValueError, match="num_requests"):
        _times({"process": "burst"}, n=None, duration=5.0)
    d = _times({"process": "poisson", "rate_rps": 50}, n=None, duration=30.0)
    assert d.max() < 30.0 and len(d) == pytest.approx(1500, rel=0.1)


def test_on_off_pulses() -> None:
    t = _times(
        {"process": "on_off", "rate_on_rps": 20, "on_s": 5, "off_s": 15}, n=None, duration=400.0
    )
    phase = np.mod(t, 20.0)
    assert np.all(phase < 5.0)
    assert len(t) == pytest.approx(20 * 5 * 20, rel=0.1)


def test_piecewise_diurnal_curve() -> None:
    spec = {
        "process": "piecewise",
        "times_s": [0, 50],
        "rates_rps": [2, 20],
        "interpolation": "step",
        "period_s": 100,
    }
    t = _times(spec, n=None, duration=2000.0)
    low = np.sum(np.mod(t, 100) < 50)
    high = len(t) - low
    assert high / low == pytest.approx(10, rel=0.15)


def test_same_seed_same_arrivals() -> None:
    spec = {"process": "gamma", "rate_rps": 3, "cv": 2}
    assert np.array_equal(_times(spec, seed=4), _times(spec, seed=4))
    assert not np.array_equal(_times(spec, seed=4), _times(spec, seed=5))


def _multi_turn(**kw: object) -> MultiTurnWorkload:
    spec = {
        "kind": "multi_turn",
        "session_arrival": {"process": "poisson", "rate_rps": 1},
        "num_sessions": 20,
        "turns": {"dist": "fixed", "value": 3},
        "num_system_prompts": 2,
        "system_prompt_tokens": {"dist": "fixed", "value": 100},
        "user_tokens": {"dist": "fixed", "value": 20},
        "output_tokens": {"dist": "fixed", "value": 30},
        "think_time_s": 10,
    }
    spec.update(kw)
    return MultiTurnWorkload.model_validate(spec)


def test_multi_turn_prompts_grow_and_share_prefixes() -> None:
    rngs = rng_tree(0)
    data = generate_multi_turn(_multi_turn(), rngs["arrivals"], rngs["lengths"], rngs["content"])
    assert len(data) == 60
    assert data.contents is not None
    session = data.session_id
    first = np.flatnonzero(session == session[0])
    assert data.prompt_tokens[first].tolist() == [120, 170, 220]
    turn1, turn2 = data.contents[first[0]], data.contents[first[1]]
    assert turn1 is not None and turn2 is not None and turn1.segments and turn2.segments
    # Turn 2's prompt is turn 1's prompt plus turn 1's answer plus new user tokens.
    assert turn2.segments[: len(turn1.segments)] == turn1.segments
    # Hashes: turn 2 shares all full blocks of turn 1's prompt + answer (150 tokens -> 9 blocks).
    h1, h2 = turn1.block_hashes(16), turn2.block_hashes(16)
    assert h2[:9] == h1[:9]
    # Sessions with the same system prompt share its full blocks (100 tokens -> 6 blocks).
    other = next(
        i
        for i in range(len(data))
        if session[i] != session[0] and data.contents[i].segments[0] == turn1.segments[0]
    )  # type: ignore[union-attr]
    assert data.contents[other].block_hashes(16)[:6] == h1[:6]  # type: ignore[union-attr]
    assert data.contents[other].block_hashes(16)[6] != h1[6]  # type: ignore[union-attr]


def test_multi_turn_respects_max_prompt_tokens() -> None:
    rngs = rng_tree(0)
    data = generate_multi_turn(
        _multi_turn(max_prompt_tokens=200), rngs["arrivals"], rngs["lengths"], rngs["content"]
    )
    assert data.prompt_tokens.max() <= 200
    assert len(data) == 40  # turn 3 (220 tokens) is dropped


def test_segment_hashes_match_token_hashes() -> None:
    from llmserve_env.sim.request import TokenContent

    seg = TokenContent(segments=((7, 40), (9, 30)))
    pool = KVBlockPool(100, 16, True)
    req = Request(0, 0.0, 70, 1, content=seg)
    assert len(req.block_hashes(16)) == 4
    assert len(req.block_hashes(32)) == 2
    assert pool.num_hit_blocks(req) == 0


def test_from_arrays_sorts_stably_and_owns_its_columns() -> None:
    arrival = np.array([2.0, 1.0, 2.0, 0.5])
    prompts = np.array([10, 11, 12, 13])
    data = WorkloadData.from_arrays(arrival, prompts, [1, 2, 3, 4], priority=[0, 1, 2, 3])
    assert data.arrival_s.tolist() == [0.5, 1.0, 2.0, 2.0]
    assert data.prompt_tokens.tolist() == [13, 11, 10, 12]  # ties keep their order
    assert data.priority.tolist() == [3, 1, 0, 2]
    ordered = np.array([0.0, 1.0, 1.0, 3.0])
    same = WorkloadData.from_arrays(ordered, prompts, [1, 2, 3, 4])
    assert same.prompt_tokens.tolist() == [10, 11, 12, 13]
    # the columns are read-only copies: the caller's arrays stay writable and unshared
    assert not same.arrival_s.flags.writeable and ordered.flags.writeable
    assert not np.shares_memory(same.prompt_tokens, prompts)
