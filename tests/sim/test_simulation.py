"""Whole simulations: accounting, determinism, resumability, routing, rejection."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.build import build_simulation, load_scenario
from llmserve_env.perf.base import BatchShape, FloatArray, LatencyModel
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profile_model import ProfileLatencyModel, skew_rate
from llmserve_env.sim.metrics import SLO
from tests.helpers import make_sim, run_accounted, workload
from tests.perf.crafted import SKEW_BY_RATE, crafted_profile

SMALL = ["workload.num_requests=300"]


def _without_wall(summary: dict) -> dict:
    return {
        k: v for k, v in summary.items() if k not in ("wall_time_s", "sim_speed_requests_per_s")
    }


def test_same_seed_same_summary_different_seed_differs() -> None:
    a = build_simulation(load_scenario("default", SMALL)).run()
    b = build_simulation(load_scenario("default", SMALL)).run()
    c = build_simulation(load_scenario("default", SMALL, seed=1)).run()
    assert _without_wall(a) == _without_wall(b)
    assert _without_wall(a) != _without_wall(c)


def test_run_until_in_pieces_equals_one_run() -> None:
    scenario = load_scenario("cluster-4x-h100", ["workload.num_requests=400"])
    whole = build_simulation(scenario).run()
    sim = build_simulation(scenario)
    t = 0.0
    while not sim.drained:
        t += 0.731
        sim.run_until(t)
    sim.finalize()
    pieces = sim.summary()
    keys = (
        "num_finished",
        "num_iterations",
        "mean_ttft_ms",
        "p99_tpot_ms",
        "makespan_s",
        "p99_itl_ms",
    )
    for key in keys:
        assert pieces[key] == pytest.approx(whole[key], rel=1e-12), key


def test_horizon_accounting_adds_up() -> None:
    scenario = load_scenario("default", ["simulation.horizon_s=20", "workload.arrival.rate_rps=40"])
    sim = build_simulation(scenario)
    summary = sim.run()
    total = summary["num_finished"] + summary["num_rejected"] + summary["num_unfinished"]
    assert summary["num_unfinished"] > 0
    assert total == summary["num_arrived"]
    assert summary["num_arrived"] == int(np.sum(sim.workload.arrival_s <= 20.0))
    assert sim.kernel.now == 20.0
    table = sim.metrics.request_table()
    assert len(table["request_id"]) == summary["num_arrived"]
    assert len(set(table["request_id"].tolist())) == summary["num_arrived"]


def test_rejections_have_reasons() -> None:
    sim, _ = make_sim(
        workload([0.0, 0.1, 0.2], [50, 5000, 50], [10, 10, 10]),
        max_model_len=1000,
    )
    summary = sim.run()
    assert summary["num_rejected"] == 1 and summary["num_finished"] == 2
    table = sim.metrics.request_table()
    reasons = dict(zip(table["request_id"].tolist(), table["reject_reason"].tolist(), strict=True))
    assert reasons[1] == "prompt_too_long"
    sim, _ = make_sim(workload([0.0], [500], [10]), num_blocks=10)
    sim.run()
    assert sim.metrics.request_table()["reject_reason"].tolist() == ["exceeds_kv_capacity"]
    sim, _ = make_sim(workload([0.0] * 5, [50] * 5, [10] * 5), max_num_waiting=2)
    summary = sim.run()
    assert summary["num_rejected"] == 3
    assert set(sim.metrics.request_table()["reject_reason"].tolist()) == {"none", "queue_full"}


def test_slo_attainment_and_goodput() -> None:
    sim, _ = make_sim(
        workload([0.0, 0.0], [100, 100], [10, 10]), slo=SLO(ttft_s=0.015), max_num_seqs=1
    )
    summary = sim.run()
    # The first request's TTFT is one iteration (~11 ms); the second waits for the first.
    assert summary["slo_attainment"] == pytest.approx(0.5)
    assert summary["goodput_rps"] == pytest.approx(1 / summary["makespan_s"])


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("round_robin", [0, 1, 2, 0, 1, 2]), ("least_outstanding_requests", [0, 1, 2, 0, 1, 2])],
)
def test_routing_spreads_requests(policy: str, expected: list[int]) -> None:
    sim, _ = make_sim(workload([0.0] * 6, [100] * 6, [50] * 6), num_instances=3, router=policy)
    sim.run()
    table = sim.metrics.request_table()
    order = np.argsort(table["request_id"])
    assert table["instance_id"][order].tolist() == expected


def test_join_shortest_queue_and_kv_usage_pick_least_loaded() -> None:
    for policy in ("join_shortest_queue", "least_kv_usage", "power_of_two_choices"):
        sim, _ = make_sim(
            workload([0.0, 0.0, 0.0, 0.0, 5.0], [3000, 3000, 3000, 10, 10], [400, 400, 400, 5, 5]),
            num_instances=2,
            router=policy,
        )
        sim.run()
        counts = np.bincount(sim.metrics.request_table()["instance_id"].astype(int), minlength=2)
        assert counts.min() >= 1, policy


def test_prefix_affinity_follows_the_cache() -> None:
    scenario = load_scenario("multi-turn-prefix", ["workload.num_sessions=60"])
    affinity = build_simulation(scenario).run()
    spread = build_simulation(
        load_scenario(
            "multi-turn-prefix", ["workload.num_sessions=60", "router.policy=round_robin"]
        )
    ).run()
    assert affinity["prefix_hit_rate"] > spread["prefix_hit_rate"] > 0.3


def test_time_series_rows() -> None:
    sim = build_simulation(load_scenario("default", SMALL))
    sim.run()
    series = sim.metrics.timeseries_table()
    assert len(series["time_s"]) >= sim.kernel.now - 1
    assert np.all(np.diff(series["time_s"]) >= 0)
    gen = series["generation_throughput_tok_s"]
    total = float(np.sum(gen[1:] * np.diff(series["time_s"])))
    assert total == pytest.approx(sim.summary()["num_generated_tokens"], rel=0.02)
    assert np.all((series["kv_usage_frac"] >= 0) & (series["kv_usage_frac"] <= 1))


@pytest.mark.parametrize(
    "name", ["default", "cluster-4x-h100", "multi-turn-prefix", "benchmark/h100-llama3.1-8b-10k"]
)
def test_shipped_scenarios_run(name: str) -> None:
    run_accounted(build_simulation(load_scenario(name, ["simulation.horizon_s=15"])))


class _NoLine:
    """A latency model without the closed-form decode line (per-iteration stretches)."""

    def __init__(self, inner: LatencyModel) -> None:
        self.inner = inner

    def iteration_time_s(self, batch: BatchShape) -> float:
        return self.inner.iteration_time_s(batch)

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray, kv_min: FloatArray
    ) -> FloatArray:
        return self.inner.decode_times_s(num_decodes, kv_sum, kv_max, kv_min)

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        return None


def test_closed_form_decode_stretches_match_per_iteration_ones() -> None:
    scenario = load_scenario("cluster-4x-h100", ["workload.num_requests=400"])
    closed = build_simulation(scenario)
    lines = sum(
        inst.latency.decode_line_s(4, 4 * 600.0, 700.0, 500.0, 10) is not None
        for inst in closed.instances
    )
    assert lines == len(closed.instances)  # the closed form is what runs by default
    per_iteration = build_simulation(scenario)
    for inst in per_iteration.instances:
        inst.latency = _NoLine(inst.latency)
    a, b = closed.run(), per_iteration.run()
    assert a["num_iterations"] == b["num_iterations"]
    for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_e2e_ms", "energy_j"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key


class _LineRates(_NoLine):
    """Passes the closed-form line through and records the skew rate of its stretch."""

    def __init__(self, inner: LatencyModel) -> None:
        super().__init__(inner)
        self.rates: list[float] = []

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        line = self.inner.decode_line_s(num_decodes, kv_sum0, kv_max0, kv_min0, steps)
        if line is not None:
            self.rates.append(skew_rate(num_decodes, kv_sum0, kv_max0, kv_min0))
        return line


def test_closed_form_decode_stretches_match_with_skew_rate_buckets() -> None:
    """A profile whose skew factor depends on the skew rate: closed-form stretches of
    every skew-rate bucket give what per-iteration ones give."""
    tables = compile_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE))
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    rng = np.random.default_rng(3)
    n = 400
    arrivals = np.cumsum(rng.exponential(0.02, n)).tolist()
    prompts = rng.integers(16, 3000, n).tolist()
    outputs = rng.integers(8, 600, n).tolist()
    closed_model = _LineRates(ProfileLatencyModel(tables, arch))
    closed, _ = make_sim(workload(arrivals, prompts, outputs), latency=closed_model)
    per_iteration, _ = make_sim(
        workload(arrivals, prompts, outputs), latency=_NoLine(ProfileLatencyModel(tables, arch))
    )
    a, b = closed.run(), per_iteration.run()
    buckets = {min(np.searchsorted(list(SKEW_BY_RATE), r), 2) for r in closed_model.rates}
    assert buckets == {0, 1, 2}  # stretches in every skew-rate bucket ran in closed form
    assert a["num_iterations"] == b["num_iterations"]
    for key in ("mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "mean_e2e_ms"):
        assert a[key] == pytest.approx(b[key], rel=1e-9), key
