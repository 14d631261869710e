"""The engine under async scheduling (``async_scheduling``): the one-step lag of vLLM's
scheduling ahead, on hand-computable cases, and its invariants."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmserve_env.build import build_simulation, load_scenario
from llmserve_env.sim.simulation import Simulation
from tests.helpers import LinearLatency, make_sim, run_accounted, workload

# Iteration time: 10 ms + 10 us per scheduled token (no KV term), so a prefill of p
# tokens takes 0.01 + p * 1e-5 s and a decode of n requests 0.01 + n * 1e-5 s.
BASE_S, PER_TOKEN_S = 0.01, 1e-5


def _step_s(num_tokens: int) -> float:
    return BASE_S + PER_TOKEN_S * num_tokens


def _first_scheduled(sim: Simulation) -> list[float]:
    table = sim.metrics.request_table()
    order = np.argsort(table["request_id"])
    return [float(t) for t in table["first_scheduled_s"][order]]


def _run(w: Any, **engine: Any) -> Simulation:
    sim, _ = make_sim(w, latency=LinearLatency(BASE_S, PER_TOKEN_S), **engine)
    sim.run()
    return sim


@pytest.mark.parametrize("max_decode_run", [1, 4096])
def test_an_arrival_mid_iteration_starts_one_iteration_later(max_decode_run: int) -> None:
    # A (100-token prompt) runs alone: iteration 1 prefills it (ends 0.011), iterations
    # 2, 3, ... decode it. B arrives at 0.015, during iteration 2.
    w = workload([0.0, 0.015], [100, 20], [50, 5])
    end1 = _step_s(100)
    end2 = end1 + _step_s(1)
    end3 = end2 + _step_s(1)
    sync = _run(w, max_decode_run=max_decode_run)
    ahead = _run(w, max_decode_run=max_decode_run, async_scheduling=True)
    # An idle engine schedules an arrival at once either way.
    assert _first_scheduled(sync)[0] == _first_scheduled(ahead)[0] == 0.0
    # Without the knob B joins iteration 3; with it, iteration 3 was scheduled when
    # iteration 2 began (before B arrived), so B joins iteration 4.
    assert _first_scheduled(sync)[1] == pytest.approx(end2, abs=1e-12)
    assert _first_scheduled(ahead)[1] == pytest.approx(end3, abs=1e-12)


def test_an_arrival_cuts_a_decode_stretch_one_iteration_later() -> None:
    w = workload([0.0, 0.015], [100, 20], [50, 5])
    end2 = _step_s(100) + _step_s(1)
    for knob, end in ((False, end2), (True, end2 + _step_s(1))):
        sim, _ = make_sim(w, latency=LinearLatency(BASE_S, PER_TOKEN_S), async_scheduling=knob)
        sim.run_until(0.015)
        inst = sim.instances[0]
        assert inst._run and inst.waiting  # B arrived during the stretch's first iteration
        assert inst._run_ends[inst._run_len - 1] == pytest.approx(end, abs=1e-12)


@pytest.mark.parametrize("max_decode_run", [1, 4096])
def test_a_slot_freed_at_a_boundary_is_reused_one_iteration_later(max_decode_run: int) -> None:
    # max_num_seqs = 2: A (3 outputs) and C (100 outputs) run, B waits for a slot. A
    # finishes at the end of iteration 3.
    w = workload([0.0, 0.0, 0.0], [10, 10, 10], [3, 100, 2])
    end3 = _step_s(20) + 2 * _step_s(2)
    end4 = end3 + _step_s(1)  # C decodes alone
    sync = _run(w, max_num_seqs=2, max_decode_run=max_decode_run)
    ahead = _run(w, max_num_seqs=2, max_decode_run=max_decode_run, async_scheduling=True)
    assert _first_scheduled(sync)[2] == pytest.approx(end3, abs=1e-12)
    # Iteration 4 was scheduled while A still held its slot.
    assert _first_scheduled(ahead)[2] == pytest.approx(end4, abs=1e-12)
    assert ahead.summary()["num_finished"] == 3


def test_kv_blocks_freed_at_a_boundary_are_reused_one_iteration_later() -> None:
    # 4 blocks of 16 tokens: A (30 + 3 tokens) holds 2, C (10 + 6) holds 1, so B
    # (20-token prompt, 2 blocks) waits for A's blocks; slots are plenty.
    w = workload([0.0, 0.0, 0.0], [30, 10, 20], [3, 6, 2])
    end3 = _step_s(40) + 2 * _step_s(2)
    sync = _run(w, num_blocks=4)
    ahead = _run(w, num_blocks=4, async_scheduling=True)
    assert _first_scheduled(sync)[2] == pytest.approx(end3, abs=1e-12)
    assert _first_scheduled(ahead)[2] == pytest.approx(end3 + _step_s(1), abs=1e-12)
    for sim in (sync, ahead):
        assert sim.summary()["num_preemptions"] == 0
        sim.instances[0].pool.check()


def test_a_step_that_would_be_empty_is_skipped() -> None:
    # max_num_seqs = 1: when A finishes, the step scheduled ahead has nothing to run (A
    # is done and still holds the only slot), so B starts at the boundary, as vLLM's
    # empty step costs no GPU time.
    w = workload([0.0, 0.0], [10, 10], [3, 2])
    end3 = _step_s(10) + 2 * _step_s(1)
    for knob in (False, True):
        sim = _run(w, max_num_seqs=1, async_scheduling=knob)
        assert _first_scheduled(sim)[1] == pytest.approx(end3, abs=1e-12)


def _random_workload(seed: int, n: int) -> Any:
    rng = np.random.default_rng(seed)
    return workload(
        np.cumsum(rng.exponential(0.05, n)).tolist(),
        rng.integers(10, 400, n).tolist(),
        rng.integers(1, 200, n).tolist(),
    )


def _results(sim: Simulation) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    summary = sim.run()
    table = sim.metrics.request_table()
    order = np.argsort(table["request_id"])
    return summary, {k: v[order] for k, v in table.items()}


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
def test_async_scheduling_delays_admissions_and_keeps_the_books(policy: str) -> None:
    w = _random_workload(5, 150)
    runs = {}
    for knob in (False, True):
        sim, _ = make_sim(
            w,
            latency=LinearLatency(0.005, 1e-5, 2e-7),
            num_blocks=300,
            max_num_seqs=16,
            scheduling_policy=policy,
            async_scheduling=knob,
        )
        runs[knob] = _results(sim)
        assert runs[knob][0]["num_finished"] == 150
        inst = sim.instances[0]
        inst.pool.check()
        assert inst.pool.num_free_blocks == 300 and not inst.running and not inst.waiting
    (s_sync, t_sync), (s_async, t_async) = runs[False], runs[True]
    assert s_async["num_generated_tokens"] == s_sync["num_generated_tokens"]
    # Scheduling one step ahead never admits a request earlier on average, and here it
    # admits some later.
    delay = t_async["first_scheduled_s"] - t_sync["first_scheduled_s"]
    assert delay.mean() > 0.0
    assert s_async["mean_ttft_ms"] > s_sync["mean_ttft_ms"]


def test_a_fork_under_async_scheduling_replays_bit_for_bit() -> None:
    sim, _ = make_sim(
        _random_workload(7, 120),
        latency=LinearLatency(0.005, 1e-5, 2e-7),
        num_blocks=300,
        async_scheduling=True,
    )
    inst = sim.instances[0]
    # Stop where an arrival is still hidden from the step scheduled ahead.
    t = 0.0
    while not inst._arrivals:
        t += 0.001
        sim.run_until(t)
    fork = sim.clone()
    assert len(fork.instances[0]._arrivals) == len(inst._arrivals)
    expected = _results(sim)
    got = _results(fork)
    assert got[0]["num_finished"] == expected[0]["num_finished"] == 120
    for key, values in expected[1].items():
        np.testing.assert_array_equal(got[1][key], values, err_msg=key)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("default", ["simulation.horizon_s=15"]),
        # Sleep and wake-up: evacuations while arrivals are hidden.
        ("night-low-traffic", ["workload.duration_s=150", "power.idle_timeout_s=2"]),
        ("power-capped-rack", ["simulation.horizon_s=30"]),
        ("multi-turn-prefix", ["simulation.horizon_s=15"]),
    ],
)
def test_shipped_scenarios_run_and_fork_under_async_scheduling(
    name: str, overrides: list[str]
) -> None:
    sim = build_simulation(load_scenario(name, [*overrides, "engine.async_scheduling=true"]))
    assert all(inst.params.async_scheduling for inst in sim.instances)
    sim.run_until(sim.kernel.now + 5.0)
    fork = sim.clone()
    summary = run_accounted(sim)
    replay = fork.run()
    for key in ("num_finished", "num_iterations", "mean_ttft_ms", "mean_tpot_ms"):
        assert replay[key] == summary[key], key
