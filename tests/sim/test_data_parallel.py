"""Lockstep data-parallel ranks (vLLM DP + EP): shared step boundaries, padding to the
group's largest batch, dummy batches, rest when idle, forks."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.perf.base import BatchShape
from llmserve_env.sim.data_parallel import DPGroup
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.metrics import SLO, MetricsRecorder
from llmserve_env.sim.router import make_router
from llmserve_env.sim.simulation import Simulation
from llmserve_env.sim.stats import ItlHistogram
from llmserve_env.sim.workload.base import WorkloadData
from tests.helpers import LinearLatency, params, run_accounted, workload

BASE, PER_TOKEN = 0.01, 1e-5


class LockstepLatency(LinearLatency):
    """:class:`LinearLatency` with the token term at the group's largest batch."""

    def rank_time_s(self, batch: BatchShape, group_tokens: int) -> float:
        self.shapes.append(batch)
        return BASE + PER_TOKEN * max(group_tokens, batch.num_tokens)


def lockstep_sim(
    wl: WorkloadData, num_ranks: int = 2, router: str = "round_robin", **engine: object
) -> tuple[Simulation, DPGroup]:
    kernel = Kernel()
    itl = ItlHistogram()
    latency = LockstepLatency(BASE, PER_TOKEN)
    ranks = [Instance(i, f"r{i}", kernel, params(**engine), latency, itl) for i in range(num_ranks)]
    group = DPGroup(0, ranks, [latency] * num_ranks)
    sim = Simulation(
        kernel,
        ranks,
        make_router(router, np.random.default_rng(0)),
        wl,
        MetricsRecorder(SLO()),
        itl,
        dp_groups=[group],
    )
    return sim, group


def test_a_rank_joins_at_the_next_step_and_pads_the_other() -> None:
    # Rank 0 prefills 100 tokens at t=0 (rank 1 idle: a dummy batch), then decodes; the
    # request routed to rank 1 at t=0.015 arrives mid-step and waits for the boundary.
    sim, group = lockstep_sim(workload([0.0, 0.015], [100, 200], [5, 2]))
    run_accounted(sim)
    first, second = sorted(sim.metrics.rows)  # (id, status, reason, instance, ...)
    assert (first[3], second[3]) == (0, 1)
    first_token, last_token = 8, 9
    step1 = BASE + PER_TOKEN * 100  # the prefill; rank 1 waits it out
    step2 = BASE + PER_TOKEN * 1  # rank 0's first decode
    assert first[first_token] == pytest.approx(step1)
    boundary = step1 + step2
    # Rank 1's prefill of 200 tokens sets the step both ranks take, rank 0's decode
    # padded to it; then both decode one token a step.
    step3 = BASE + PER_TOKEN * 200
    assert second[first_token] == pytest.approx(boundary + step3)
    assert second[last_token] == pytest.approx(boundary + step3 + step2)
    assert first[last_token] == pytest.approx(boundary + step3 + 2 * step2)  # 5 tokens
    assert sim.instances[0].stats.busy_s == pytest.approx(sim.instances[1].stats.busy_s)
    assert sim.instances[0].stats.num_iterations == sim.instances[1].stats.num_iterations
    assert group.num_steps == sim.instances[0].stats.num_iterations


def poisson_workload(seed: int, n: int, gap_s: float, prompt: int, output: int) -> WorkloadData:
    """``n`` requests, exponential gaps of mean ``gap_s``, uniform lengths below the caps."""
    rng = np.random.default_rng(seed)
    return workload(
        list(np.cumsum(rng.exponential(gap_s, n))),
        list(rng.integers(20, prompt, n)),
        list(rng.integers(2, output, n)),
    )


def test_ranks_end_every_step_together() -> None:
    n = 40
    wl = poisson_workload(3, n, 0.05, 400, 60)
    sim, group = lockstep_sim(wl, num_ranks=3, router="vllm_data_parallel")
    summary = run_accounted(sim)
    assert summary["num_finished"] == n
    stats = [inst.stats for inst in sim.instances]
    assert {s.num_iterations for s in stats} == {group.num_steps}
    assert all(s.busy_s == pytest.approx(stats[0].busy_s) for s in stats)
    # Every rank served requests (the balancer spreads them).
    rows = sim.metrics.rows
    assert {row[3] for row in rows} == {0, 1, 2}


def test_an_idle_group_rests() -> None:
    # Two requests far apart: the group takes no steps in between.
    sim, group = lockstep_sim(workload([0.0, 100.0], [10, 10], [3, 3]))
    run_accounted(sim)
    steps_per_request = 3  # a prefill with the first token, then two decodes
    assert group.num_steps == 2 * steps_per_request
    assert sim.instances[0].stats.busy_s < 1.0


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_fork_replays_the_lockstep_group(async_scheduling: bool) -> None:
    n = 60
    wl = poisson_workload(7, n, 0.02, 600, 80)
    sim, _ = lockstep_sim(wl, async_scheduling=async_scheduling)
    sim.run_until(0.4)
    fork = sim.clone()
    assert fork.dp_groups[0].ranks == fork.instances
    assert all(inst.dp is fork.dp_groups[0] for inst in fork.instances)
    a, b = run_accounted(sim), run_accounted(fork)
    for timing in ("wall_time_s", "sim_speed_requests_per_s"):
        a.pop(timing, None)
        b.pop(timing, None)
    assert a == b
    assert sim.metrics.rows == fork.metrics.rows
    assert a["num_finished"] == n
