"""The shipped power scenarios show what they are meant to show.

Each test runs a scenario as shipped and again with one ``--set``-style override (the
governor or the cap), on the same arrivals, and checks the direction and rough size of
the effect its description claims.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from llmserve_env.build import build_simulation, load_scenario


def _run(name: str, *overrides: str) -> dict[str, Any]:
    return build_simulation(load_scenario(name, overrides)).run()


def test_night_low_traffic_sleeping_idle_replicas_saves_energy() -> None:
    sleep = _run("night-low-traffic")
    always_on = _run("night-low-traffic", "power.governor=always_max")
    assert sleep["num_arrived"] == always_on["num_arrived"] > 300
    assert sleep["num_finished"] == sleep["num_arrived"]
    # Sleeping idle replicas cuts a fifth or more of the energy ...
    assert sleep["energy_j"] < 0.8 * always_on["energy_j"]
    devices_saved = (
        always_on["energy_breakdown_j"]["devices"] - sleep["energy_breakdown_j"]["devices"]
    )
    assert devices_saved == pytest.approx(always_on["energy_j"] - sleep["energy_j"], rel=0.05)
    # ... for a wake-up (under a second) on a few requests: TTFT stays within its SLO.
    assert sleep["p99_ttft_ms"] > always_on["p99_ttft_ms"]
    assert sleep["p99_ttft_ms"] < sleep["slo_ttft_ms"]
    assert sleep["slo_attainment"] >= 0.99
    assert sleep["mean_tpot_ms"] == pytest.approx(always_on["mean_tpot_ms"], rel=0.05)


def test_power_capped_rack_slows_prefill_not_decode() -> None:
    scenario = load_scenario("power-capped-rack")
    cap = scenario.power.cap_w
    assert cap is not None
    sim = build_simulation(scenario)
    capped = sim.run()
    uncapped = _run("power-capped-rack", "power.cap_w=null")
    # Per-device power (TP1: one device per instance) never exceeds the cap.
    series = sim.metrics.timeseries_table()
    assert float(np.max(series["power_w"])) <= cap + 1e-6
    # Compute-bound prefill slows down, memory-bound decode barely does.
    ttft_ratio = capped["mean_ttft_ms"] / uncapped["mean_ttft_ms"]
    tpot_ratio = capped["mean_tpot_ms"] / uncapped["mean_tpot_ms"]
    assert ttft_ratio > 1.2
    assert 1.0 <= tpot_ratio < 1.08
    assert ttft_ratio - 1.0 > 4 * (tpot_ratio - 1.0)
    # The rack draws less on average.
    assert capped["avg_power_w"] < uncapped["avg_power_w"]


def test_dvfs_tpot_slo_saves_energy_and_keeps_the_slo() -> None:
    aware = _run("dvfs-tpot-slo")
    full = _run("dvfs-tpot-slo", "power.governor=always_max")
    lowest = _run("dvfs-tpot-slo", "power.governor=always_min")
    slo = aware["slo_tpot_ms"]
    assert slo is not None and aware["slo_ttft_ms"] is None  # attainment = TPOT attainment
    # Less energy than always at the highest clock ...
    assert aware["energy_j"] < 0.9 * full["energy_j"]
    # ... with the TPOT SLO met on average and for nearly every request ...
    assert full["mean_tpot_ms"] < aware["mean_tpot_ms"] < slo
    assert aware["slo_attainment"] >= 0.95
    # ... where simply running at the lowest clock breaks it.
    assert lowest["mean_tpot_ms"] > slo
    assert lowest["slo_attainment"] < 0.6
