"""The engine: vLLM V1 scheduling semantics on hand-computable cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmserve_env.sim.instance import _BlockNeed
from llmserve_env.sim.request import RequestStatus, TokenContent
from tests.helpers import LinearLatency, make_sim, workload


def _table(sim):  # type: ignore[no-untyped-def]
    table = sim.metrics.request_table()
    order = np.argsort(table["request_id"])
    return {k: v[order] for k, v in table.items()}


def test_single_request_timing_is_exact() -> None:
    latency = LinearLatency(base_s=0.01, per_token_s=0.0)
    sim, _ = make_sim(workload([1.0], [100], [10]), latency=latency)
    summary = sim.run()
    # One prefill iteration gives the first token, then 9 decode iterations.
    assert summary["num_finished"] == 1
    assert summary["mean_ttft_ms"] == pytest.approx(10.0)
    assert summary["mean_tpot_ms"] == pytest.approx(10.0)
    assert summary["mean_e2e_ms"] == pytest.approx(100.0)
    assert summary["num_iterations"] == 10
    assert summary["mean_itl_ms"] == pytest.approx(10.0)


def test_chunked_prefill_and_token_budget() -> None:
    latency = LinearLatency()
    sim, _ = make_sim(workload([0.0], [5000], [2]), latency=latency, max_num_batched_tokens=2048)
    sim.run()
    prefills = [s for s in latency.shapes if s.prefill_new]
    assert [s.prefill_new for s in prefills] == [(2048,), (2048,), (904,)]
    assert [s.prefill_ctx for s in prefills] == [(0,), (2048,), (4096,)]
    assert all(s.num_tokens <= 2048 for s in latency.shapes)


def test_long_prefill_threshold_caps_a_chunk() -> None:
    latency = LinearLatency()
    sim, _ = make_sim(
        workload([0.0, 0.0], [1000, 300], [2, 2]),
        latency=latency,
        long_prefill_token_threshold=256,
    )
    sim.run()
    first = latency.shapes[0]
    assert first.prefill_new == (256, 256)  # both capped, both admitted in one step
    assert all(max(s.prefill_new, default=0) <= 256 for s in latency.shapes)


def test_max_num_seqs_and_fcfs_admission() -> None:
    latency = LinearLatency()
    n = 10
    sim, _ = make_sim(workload([0.0] * n, [50] * n, [20] * n), latency=latency, max_num_seqs=4)
    sim.run()
    assert all(s.num_seqs <= 4 for s in latency.shapes)
    table = _table(sim)
    # FCFS: requests are first scheduled in arrival (id) order.
    assert np.all(np.diff(table["first_scheduled_s"]) >= 0)
    assert sim.summary()["num_finished"] == n


def test_running_first_then_waiting_with_budget() -> None:
    latency = LinearLatency()
    sim, _ = make_sim(
        workload([0.0, 0.005], [100, 3000], [5, 2]), latency=latency, max_num_batched_tokens=512
    )
    sim.run()
    # Once the first request decodes, a step holds its decode token plus a chunk of the
    # second prompt that fills the rest of the budget.
    mixed = [s for s in latency.shapes if s.prefill_new and s.num_decodes]
    assert mixed and all(s.num_tokens == 512 for s in mixed[:3])


def test_preemption_recomputes_newest_request_first() -> None:
    latency = LinearLatency(base_s=0.001)
    # 3 requests of 60 prompt tokens (4 blocks of 16) growing by 100 outputs; 20 blocks
    # cannot hold all three at full length, so the newest is preempted and recomputed.
    sim, _ = make_sim(
        workload([0.0, 0.0, 0.0], [60, 60, 60], [100, 100, 100]), latency=latency, num_blocks=20
    )
    summary = sim.run()
    assert summary["num_finished"] == 3
    table = _table(sim)
    assert table["num_preemptions"][2] >= 1  # the newest
    assert table["num_preemptions"][0] == 0  # the oldest is never the victim
    assert summary["num_preemptions"] >= 1
    for inst in sim.instances:
        inst.pool.check()
        assert inst.pool.num_free_blocks == 20


def test_priority_policy_preempts_lowest_priority() -> None:
    latency = LinearLatency(base_s=0.001)
    sim, _ = make_sim(
        workload([0.0, 0.0, 0.0], [60, 60, 60], [100, 100, 100], priority=[5, 0, 1]),
        latency=latency,
        num_blocks=20,
        scheduling_policy="priority",
    )
    sim.run()
    table = _table(sim)
    # Priority 0 is admitted first and never preempted; priority 5 is the victim.
    assert table["num_preemptions"][1] == 0
    assert table["num_preemptions"][0] >= 1
    assert table["first_scheduled_s"][1] <= table["first_scheduled_s"][0]


def test_shortest_prompt_first_orders_waiting_queue() -> None:
    sim, _ = make_sim(
        workload([0.0, 0.0, 0.0, 0.0], [900, 50, 400, 10], [3, 3, 3, 3]),
        max_num_seqs=1,
        scheduling_policy="shortest_prompt_first",
    )
    sim.run()
    table = _table(sim)
    order = np.argsort(table["first_scheduled_s"], kind="stable")
    assert list(order) == [3, 1, 2, 0]


def test_prefix_cache_hits_are_counted_and_capped() -> None:
    tokens = np.arange(64, dtype=np.int64)
    content = TokenContent(tokens=tokens)
    sim, _ = make_sim(
        workload([0.0, 1.0], [64, 64], [4, 4], contents=[content, content]),
    )
    sim.run()
    table = _table(sim)
    # The whole 64-token prompt is cached for the second request, but one token must be
    # recomputed, so the hit stops at the last full block before it: 48 tokens.
    assert table["num_cached_tokens"].tolist() == [0, 48]
    assert sim.summary()["prefix_hit_rate"] == pytest.approx(48 / 128)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_decode_stretches_do_not_change_results(async_scheduling: bool) -> None:
    rng = np.random.default_rng(3)
    n = 200
    w = workload(
        np.cumsum(rng.exponential(0.05, n)).tolist(),
        rng.integers(10, 400, n).tolist(),
        rng.integers(1, 200, n).tolist(),
    )
    results = []
    for run in (1, 4096):
        sim, _ = make_sim(
            w,
            latency=LinearLatency(0.005, 1e-5, 2e-7),
            num_blocks=300,
            max_decode_run=run,
            async_scheduling=async_scheduling,
        )
        summary = sim.run()
        table = _table(sim)
        results.append((summary, table))
    (s1, t1), (s2, t2) = results
    assert s1["num_preemptions"] > 0  # memory pressure exercised
    for key in ("num_finished", "num_iterations", "num_preemptions", "num_generated_tokens"):
        assert s1[key] == s2[key], key
    for key in ("first_token_s", "last_token_s", "finish_s", "first_scheduled_s"):
        np.testing.assert_allclose(t1[key].astype(float), t2[key].astype(float), rtol=0, atol=1e-9)
    for key in ("p50_itl_ms", "p99_itl_ms", "mean_itl_ms", "max_itl_ms", "mean_tpot_ms"):
        assert s1[key] == pytest.approx(s2[key], rel=1e-9), key


def test_knob_changes_keep_a_stretch_with_nothing_to_admit() -> None:
    # Two requests decode alone; a third arrives much later.
    w = workload([0.0, 0.0, 5.0], [100, 120, 50], [300, 300, 20])
    base, _ = make_sim(w, latency=LinearLatency(0.005, 1e-5, 2e-7))
    base.run_until(0.5)
    inst = base.instances[0]
    assert inst._run and not inst.waiting  # mid-stretch
    changed = base.clone()
    other = changed.instances[0]
    generation = other.generation
    # Irrelevant while nothing waits: FCFS and priority order equal priorities alike,
    # a lower max_num_seqs preempts nothing, the budget still covers the decodes.
    other.set_knobs(max_num_seqs=2, max_num_batched_tokens=64, scheduling_policy="priority")
    assert other.generation == generation, "the stretch was cut"
    other.set_knobs(max_num_batched_tokens=1)  # fewer tokens than decodes: recompute
    assert other.generation == generation + 1
    other.set_knobs(max_num_batched_tokens=64)
    base.run()
    changed.run()
    finish = _table(base)["finish_s"].astype(float)
    assert len(finish) == 3 and not np.isnan(finish).any()
    np.testing.assert_allclose(_table(changed)["finish_s"].astype(float), finish, rtol=1e-12)


def test_itl_includes_gap_across_preemption() -> None:
    latency = LinearLatency(base_s=0.001)
    sim, _ = make_sim(
        workload([0.0, 0.0, 0.0], [60, 60, 60], [100, 100, 100]), latency=latency, num_blocks=20
    )
    sim.run()
    table = _table(sim)
    victim = int(np.argmax(table["num_preemptions"]))
    assert table["itl_max_ms"][victim] > 5 * 1.0  # far more than one iteration


@pytest.mark.parametrize("run", [1, 4096])
def test_invariants_hold_throughout(run: int) -> None:
    rng = np.random.default_rng(11)
    n = 300
    tokens = rng.integers(0, 3, (4, 256))
    contents = [
        TokenContent(tokens=tokens[int(rng.integers(4))][: int(rng.integers(20, 256))].copy())
        for _ in range(n)
    ]
    w = workload(
        np.cumsum(rng.exponential(0.02, n)).tolist(),
        [len(c.tokens) for c in contents],  # type: ignore[arg-type]
        rng.integers(1, 120, n).tolist(),
        contents=contents,
    )
    sim, latency = make_sim(
        w,
        num_instances=2,
        router="least_kv_usage",
        num_blocks=120,
        max_decode_run=run,
        max_num_seqs=8,
    )
    t = 0.0
    while not sim.drained:
        t += 0.137
        sim.run_until(t)
        sim.sync()
        sim.check_invariants()
        for inst in sim.instances:
            assert len(inst.running) <= 8
            assert all(r.status == RequestStatus.RUNNING for r in inst.running)
    sim.finalize()
    sim.check_invariants()
    assert sim.summary()["num_finished"] == n
    assert all(s.num_tokens <= 2048 and s.num_seqs <= 8 for s in latency.shapes)
    assert not math.isnan(sim.summary()["mean_ttft_ms"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(-2, 3)), min_size=1, max_size=40),
    st.integers(1, 300),
    st.sampled_from([1, 16, 32]),
)
def test_block_need_is_its_definition(requests: list[tuple[int, int]], k: int, bs: int) -> None:
    # held blocks around what the computed tokens need (a little short or ahead)
    computed = [c for c, _ in requests]
    held = [max(0, -(-c // bs) + d) for c, d in requests]
    need = _BlockNeed(computed, held, bs)
    expected = sum(max(0, -(-(c + k) // bs) - h) for c, h in zip(computed, held, strict=True))
    assert need(k) == expected


@pytest.mark.parametrize("reserve", [False, True])
def test_scheduler_reserve_full_isl_admits_only_whole_sequences(reserve: bool) -> None:
    # Request 0 holds 6-7 of 20 blocks while it decodes; request 1's prompt needs 16.
    # Its first 64-token chunk fits, so without the check it is admitted and preempted
    # as its chunks and request 0's decodes outgrow the pool; with vLLM's
    # scheduler_reserve_full_isl it waits until request 0 has finished.
    latency = LinearLatency(base_s=0.01, per_token_s=0.0)
    sim, _ = make_sim(
        workload([0.0, 0.05], [80, 250], [20, 5]),
        latency=latency,
        num_blocks=20,
        max_num_batched_tokens=64,
        scheduler_reserve_full_isl=reserve,
    )
    summary = sim.run()
    assert summary["num_finished"] == 2
    table = _table(sim)
    if reserve:
        assert table["first_scheduled_s"][1] >= table["e2e_ms"][0] / 1e3 - 1e-9
        assert summary["num_preemptions"] == 0
    else:
        assert table["first_scheduled_s"][1] < table["e2e_ms"][0] / 1e3
        assert summary["num_preemptions"] >= 1
    for inst in sim.instances:
        inst.pool.check()
