"""Power: state machine, DVFS, caps, energy accounting identities, governors."""

from __future__ import annotations

import numpy as np
import pytest

from llmserve_env.build import build_simulation, load_scenario
from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.power import DevicePowerSpec, WorkModel, active_power_w, scaled_time
from llmserve_env.perf.roofline import RooflineModel
from llmserve_env.sim.power import (
    InstancePower,
    NodePower,
    NodePowerSpec,
    PowerState,
    StretchEnergy,
)

H100 = resolve_device("H100-SXM")
LLAMA = load_model_arch("meta-llama/Llama-3.1-8B")


def _power(cap: float | None = None, tp: int = 1) -> InstancePower:
    spec = DevicePowerSpec.for_device(H100)
    work = WorkModel(LLAMA, H100, tp, "bf16")
    return InstancePower(
        spec,
        work,
        tp,
        LLAMA.weight_bytes("bf16") / tp,
        H100.host_bw_gbps,
        cap,
        NodePower(NodePowerSpec()),
    )


def test_prefill_near_tdp_decode_below_and_growing_with_batch() -> None:
    power = _power()
    latency = RooflineModel(LLAMA, H100)
    prefill = BatchShape((8192,), (0,), 0, 0, 0)
    _, p_prefill = power.iteration(prefill, latency.iteration_time_s(prefill))
    small = BatchShape((), (), 8, 8 * 1000, 1000)
    large = BatchShape((), (), 256, 256 * 1000, 1000)
    _, p_small = power.iteration(small, latency.iteration_time_s(small))
    _, p_large = power.iteration(large, latency.iteration_time_s(large))
    assert p_prefill > 0.85 * H100.tdp_w
    assert H100.idle_w < p_small < p_large < p_prefill
    assert p_prefill <= H100.tdp_w


def test_dvfs_slows_compute_bound_work_not_memory_bound() -> None:
    work = WorkModel(LLAMA, H100, 1, "bf16")
    _, _, prefill_share = work.iteration(BatchShape((4096,), (0,), 0, 0, 0))
    _, _, decode_share = work.iteration(BatchShape((), (), 4, 4000, 1000))
    assert prefill_share > 0.8 and decode_share < 0.05
    assert scaled_time(1.0, prefill_share, 0.5) > 1.8
    assert scaled_time(1.0, decode_share, 0.5) < 1.05
    power = _power()
    power.set_freq_index(0)  # 40 % clock
    t_prefill, p_low = power.iteration(BatchShape((4096,), (0,), 0, 0, 0), 0.2)
    assert t_prefill > 0.2 * 2 + power.spec.clock_change_s * 0.5
    power.set_freq_index(len(power.spec.clock_levels) - 1)
    t_full, p_full = power.iteration(BatchShape((4096,), (0,), 0, 0, 0), 0.2)
    assert t_full < t_prefill
    assert p_low < p_full


def test_cap_picks_highest_clock_under_the_cap() -> None:
    power = _power(cap=400.0)
    batch = BatchShape((8192,), (0,), 0, 0, 0)
    t, p = power.iteration(batch, 0.35)
    assert p <= 400.0 + 1e-9
    assert power.last_freq_used < 1.0
    assert t > 0.35
    # One level higher would exceed the cap.
    levels = power.spec.clock_levels
    higher = levels[levels.index(power.last_freq_used) + 1]
    flops, nbytes, share = power.work.iteration(batch)
    t_hi = float(scaled_time(0.35, share, higher))
    assert active_power_w(power.spec, power.work, flops, nbytes, t_hi, higher) > 400.0
    # Decode stays at full clock under the same cap (it draws less).
    power.iteration(BatchShape((), (), 8, 8000, 1000), 0.007)
    assert power.last_freq_used == 1.0


def test_tdp_does_not_slow_the_latency_models_time() -> None:
    # A latency model's figures are the device's at its stock limit: an iteration whose
    # modelled full-clock power exceeds the TDP keeps its time (at the clock the TDP
    # allows), and a cap below the TDP stretches it relative to that clock.
    power = _power()
    batch = BatchShape((8192,), (0,), 0, 0, 0)
    flops, nbytes, share = power.work.iteration(batch)
    fast = 0.8 * flops / power.work.peak_flops / 0.75  # MFU 0.94: over the TDP at full clock
    assert active_power_w(power.spec, power.work, flops, nbytes, fast, 1.0) > H100.tdp_w
    t, p = power.iteration(batch, fast)
    assert t == fast
    assert p <= H100.tdp_w
    f_ref = power.last_freq_used
    assert f_ref < 1.0
    assert active_power_w(power.spec, power.work, flops, nbytes, fast, f_ref) <= H100.tdp_w
    capped = _power(cap=400.0)
    t_cap, p_cap = capped.iteration(batch, fast)
    f = capped.last_freq_used
    assert f < f_ref and p_cap <= 400.0 + 1e-9
    expected = float(scaled_time(fast, share, f)) / float(scaled_time(1.0, share, f_ref))
    assert t_cap == pytest.approx(expected)
    # Where the full clock fits the TDP, the time is the model's and the clock full.
    slow = 2.0 * flops / power.work.peak_flops
    assert power.iteration(batch, slow)[0] == slow and power.last_freq_used == 1.0
    # Decode stretches follow the same rule (here so short that MFU and MBU saturate).
    times, _ = power.stretch(256, 256 * 1000.0, [1e-5, 1e-5, 1e-5])
    assert power.last_freq_used < 1.0
    assert times == pytest.approx([1e-5, 1e-5, 1e-5], rel=1e-12)


def test_idle_energy_is_standby_tail_then_idle() -> None:
    power = _power()
    spec = power.spec
    assert power.energy_j(0.0) == 0.0
    # No work at all: standby for the tail from t=0, then idle.
    expected = spec.standby_w * spec.standby_s + spec.idle_w * (100.0 - spec.standby_s)
    assert power.energy_j(100.0) == pytest.approx(expected)
    power.begin_busy(100.0, 100.5, 500.0)
    assert power.energy_j(100.25) == pytest.approx(expected + 125.0)
    power.end_busy(100.5)
    after = power.energy_j(110.5)
    assert after == pytest.approx(expected + 250.0 + spec.standby_w * 10.0)


def test_energy_never_decreases_and_sleep_costs_less() -> None:
    sim = build_simulation(load_scenario("default", ["workload.num_requests=200"]))
    last = 0.0
    for t in np.arange(1.0, 40.0, 0.7):
        sim.run_until(float(t))
        total = sum(sim.energy_j().values())
        assert total >= last
        last = total
    power = sim.instances[0].power
    assert power is not None
    sim.run()
    busy = power.busy_time_s(sim.kernel.now)
    assert 0 < busy < sim.kernel.now


def test_idle_only_episode_is_exactly_idle_power_times_time() -> None:
    scenario = load_scenario(
        "default",
        [
            "workload.arrival={process: burst, at_s: 1000}",
            "workload.num_requests=1",
            "simulation.horizon_s=500",
            "power.devices={H100-SXM: {standby_s: 0}}",
        ],
    )
    sim = build_simulation(scenario)
    summary = sim.run()
    assert summary["num_arrived"] == 0
    devices = summary["energy_breakdown_j"]["devices"]
    assert devices == pytest.approx(H100.idle_w * 500.0)
    node = NodePowerSpec(num_dimms=32)
    assert summary["energy_breakdown_j"]["base"] == pytest.approx(node.base_w * 500.0)
    assert summary["energy_j"] == pytest.approx(500.0 * (H100.idle_w + sum(node.static_w.values())))


def test_capped_run_never_exceeds_cap_in_the_time_series() -> None:
    scenario = load_scenario(
        "default",
        ["workload.num_requests=300", "power.cap_w=350", "simulation.sample_interval_s=0.05"],
    )
    sim = build_simulation(scenario)
    sim.run()
    series = sim.metrics.timeseries_table()
    assert series["power_w"].max() <= 350.0 + 1e-6
    uncapped = build_simulation(load_scenario("default", ["workload.num_requests=300"])).run()
    capped = sim.summary()
    assert capped["mean_ttft_ms"] > uncapped["mean_ttft_ms"]


def test_time_series_power_is_the_interval_average_of_device_energy() -> None:
    sim = build_simulation(load_scenario("default", ["workload.num_requests=200"]))
    summary = sim.run()
    series = sim.metrics.timeseries_table()
    time_s = np.asarray(series["time_s"], dtype=float)
    energy = np.asarray(series["energy_j"], dtype=float)
    power = np.asarray(series["power_w"], dtype=float)
    assert len(time_s) > 10 and np.all(np.diff(energy) >= 0)
    # Each row's watts are the energy used since the previous row over the interval,
    # as a power meter reports, and sit between idle and TDP.
    np.testing.assert_allclose(power[1:] * np.diff(time_s), np.diff(energy), rtol=1e-9)
    assert H100.idle_w <= power.min() and power.max() <= H100.tdp_w
    assert energy[-1] <= summary["energy_breakdown_j"]["devices"] + 1e-6


def test_sleep_reroutes_and_wake_takes_reload_time() -> None:
    sim = build_simulation(load_scenario("cluster-4x-h100", ["workload.num_requests=400"]))
    sim.run_until(5.0)
    inst = sim.instances[1]
    assert inst.power is not None
    sim.sync(materialize=True)
    before = inst.num_outstanding
    live_elsewhere = sum(i.num_outstanding for i in sim.instances if i is not inst)
    sim.set_power_state(1, PowerState.SLEEP)
    assert inst.num_outstanding == 0 and not inst.busy
    assert sum(i.num_outstanding for i in sim.instances if i is not inst) == live_elsewhere + before
    assert inst not in sim.available_instances()
    assert inst.pool.num_free_blocks == inst.params.num_blocks  # the KV cache is gone
    sim.check_invariants()
    sim.set_power_state(1, PowerState.ON)
    assert inst.power.state == PowerState.WAKING and inst in sim.available_instances()
    expected = inst.power.spec.wake_fixed_s + inst.power.weight_bytes / (H100.host_bw_gbps * 1e9)
    assert inst.power.wake_ready_s == pytest.approx(5.0 + expected)
    sim.run_until(5.0 + expected - 1e-6)
    assert inst.power.state == PowerState.WAKING
    sim.run_until(5.0 + expected + 1e-6)
    assert inst.power.state == PowerState.ON
    summary = sim.run()
    assert (
        summary["num_finished"] + summary["num_rejected"] + summary["num_unfinished"]
        == summary["num_arrived"]
    )


def test_wake_on_demand_when_every_instance_sleeps() -> None:
    scenario = load_scenario(
        "default",
        ["workload.num_requests=20", "cluster.nodes.0.instances.0.initial_power_state=deep_sleep"],
    )
    sim = build_simulation(scenario)
    summary = sim.run()
    assert summary["num_finished"] == 20
    power = sim.instances[0].power
    assert power is not None
    wake = power.wake_time_s(PowerState.DEEP_SLEEP)
    assert summary["mean_ttft_ms"] > 1000 * wake * 0.5  # early requests waited for the reload
    off = load_scenario(
        "default",
        [
            "workload.num_requests=20",
            "power.wake_on_demand=false",
            "cluster.nodes.0.instances.0.initial_power_state=off",
        ],
    )
    assert build_simulation(off).run()["num_rejected"] == 20


def test_break_even_time_definition() -> None:
    power = _power()
    spec = power.spec
    gap = power.break_even_s(PowerState.SLEEP)
    wake = power.wake_time_s(PowerState.SLEEP)
    assert gap == pytest.approx(
        (spec.standby_w - spec.sleep_w) * wake / (spec.idle_w - spec.sleep_w)
    )


@pytest.mark.parametrize(
    "governor", ["always_max", "always_min", "ondemand", "idle_timeout_sleep", "slo_aware"]
)
def test_governors_run_and_conserve_requests(governor: str) -> None:
    scenario = load_scenario(
        "cluster-4x-h100", ["workload.num_requests=600", f"power.governor={governor}"]
    )
    sim = build_simulation(scenario)
    summary = sim.run()
    sim.check_invariants()
    assert summary["num_finished"] == 600
    assert summary["energy_j"] > 0


def test_governors_trade_energy_for_latency() -> None:
    base = ["workload.num_requests=600"]
    fast = build_simulation(
        load_scenario("cluster-4x-h100", [*base, "power.governor=always_max"])
    ).run()
    slow = build_simulation(
        load_scenario("cluster-4x-h100", [*base, "power.governor=always_min"])
    ).run()
    assert slow["mean_ttft_ms"] > fast["mean_ttft_ms"]
    assert slow["energy_breakdown_j"]["devices"] < fast["energy_breakdown_j"]["devices"]


def test_per_request_energy_adds_up_to_active_energy() -> None:
    sim = build_simulation(
        load_scenario(
            "default", ["workload.num_requests=150", "power.devices={H100-SXM: {standby_s: 0}}"]
        )
    )
    summary = sim.run()
    table = sim.metrics.request_table()
    attributed = float(table["energy_j"].astype(float).sum())
    power = sim.instances[0].power
    assert power is not None
    busy = power.busy_time_s(sim.kernel.now)
    idle = power.spec.idle_w * (sim.kernel.now - busy)
    assert attributed + idle == pytest.approx(summary["energy_breakdown_j"]["devices"], rel=1e-6)


def test_clone_keeps_energy_accounts_independent() -> None:
    sim = build_simulation(load_scenario("cluster-4x-h100", ["workload.num_requests=300"]))
    sim.run_until(6.0)
    fork = sim.clone()
    assert fork.energy_j() == sim.energy_j()
    a, b = sim.run(), fork.run()
    assert a["energy_j"] == pytest.approx(b["energy_j"], rel=1e-12)
    fork2 = build_simulation(load_scenario("cluster-4x-h100", ["workload.num_requests=300"]))
    fork2.run_until(6.0)
    other = fork2.clone()
    other.set_power_state(0, PowerState.SLEEP)
    assert other.energy_j() == fork2.energy_j()  # the past is shared, the futures differ


def test_stretch_iteration_energy_is_the_difference_of_cumulative_energy() -> None:
    ends = [1.01, 1.025, 1.04, 1.06]
    affine = StretchEnergy(1.0, ends, affine=(700.0, 2.5, 0.01))
    listed = StretchEnergy(1.0, ends, cum=[3.0, 7.0, 12.0, 14.5])
    for stretch in (affine, listed):
        for k in range(len(ends)):
            before = stretch.at(k - 1) if k else 0.0
            assert stretch.iteration_j(k) == pytest.approx(stretch.at(k) - before, rel=1e-12)
