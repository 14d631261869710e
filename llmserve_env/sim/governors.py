"""Power governors: heuristics that drive clocks and sleep states when no agent does.

=====================  ===========================================================
governor               rule (applied every ``power.control_interval_s``)
=====================  ===========================================================
always_max             every instance at its highest clock, never asleep
always_min             every instance at its lowest clock
ondemand               busy fraction of the last interval above ``up_threshold``:
                       jump to the highest clock; below ``down_threshold``: one
                       level down (Linux's ondemand cpufreq governor)
idle_timeout_sleep     an instance idle (nothing queued or running) for longer than
                       ``idle_timeout_s`` (default: its break-even time) goes to
                       ``sleep_level``; a sleeping one is woken when the instances
                       that are on are busier than ``up_threshold`` or have a queue
slo_aware              the lowest clock that keeps the recent TPOT under the target:
                       one level down below 80 % of it, one level up above 95 %
=====================  ===========================================================
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

from llmserve_env.sim.power import PowerState

if TYPE_CHECKING:
    from llmserve_env.sim.simulation import Simulation

_LEVELS = {"sleep": PowerState.SLEEP, "deep_sleep": PowerState.DEEP_SLEEP, "off": PowerState.OFF}


class Governor(Protocol):
    """Acts on the simulation's power knobs at each control tick."""

    def on_tick(self, sim: Simulation, now: float) -> None:
        """Inspect the settled state at ``now`` and set clocks or states."""
        ...

    def clone(self) -> Governor:
        """An independent copy (governors may keep history)."""
        ...


class FixedClock:
    """Every instance at one clock level (``always_max`` / ``always_min``)."""

    def __init__(self, highest: bool) -> None:
        self.highest = highest

    def on_tick(self, sim: Simulation, now: float) -> None:
        for inst in sim.instances:
            if inst.power is not None:
                levels = len(inst.power.spec.clock_levels)
                sim.set_frequency(inst.instance_id, levels - 1 if self.highest else 0)

    def clone(self) -> FixedClock:
        return FixedClock(self.highest)


class _BusyTracker:
    """Busy fraction of each instance over the last control interval."""

    def __init__(self) -> None:
        self.last: dict[int, tuple[float, float]] = {}

    def fraction(self, sim: Simulation, instance_id: int, now: float) -> float | None:
        power = sim.instances[instance_id].power
        assert power is not None
        busy = power.busy_time_s(now)
        prev = self.last.get(instance_id)
        self.last[instance_id] = (now, busy)
        if prev is None or now <= prev[0]:
            return None
        return (busy - prev[1]) / (now - prev[0])


class OnDemand:
    """Jump to the highest clock when busy, step down when mostly idle."""

    def __init__(self, up: float, down: float) -> None:
        self.up, self.down = up, down
        self.tracker = _BusyTracker()

    def on_tick(self, sim: Simulation, now: float) -> None:
        for inst in sim.instances:
            power = inst.power
            if power is None or power.state != PowerState.ON:
                continue
            busy = self.tracker.fraction(sim, inst.instance_id, now)
            if busy is None:
                continue
            if busy > self.up:
                sim.set_frequency(inst.instance_id, len(power.spec.clock_levels) - 1)
            elif busy < self.down and power.freq_index > 0:
                sim.set_frequency(inst.instance_id, power.freq_index - 1)

    def clone(self) -> OnDemand:
        other = OnDemand(self.up, self.down)
        other.tracker.last = dict(self.tracker.last)
        return other


class IdleTimeoutSleep:
    """Sleep instances idle longer than the timeout; wake one when the rest are busy."""

    def __init__(self, timeout_s: float | None, level: str, up: float) -> None:
        self.timeout_s = timeout_s
        self.level = _LEVELS[level]
        self.up = up
        self.idle_since: dict[int, float] = {}
        self.tracker = _BusyTracker()

    def on_tick(self, sim: Simulation, now: float) -> None:
        on = [i for i in sim.instances if i.power is not None and i.power.state == PowerState.ON]
        busy = [self.tracker.fraction(sim, i.instance_id, now) for i in on]
        known = [b for b in busy if b is not None]
        queued = sum(i.num_waiting for i in on)
        asleep = [
            i
            for i in sim.instances
            if i.power is not None
            and i.power.state in (PowerState.SLEEP, PowerState.DEEP_SLEEP, PowerState.OFF)
        ]
        waking = any(
            i.power is not None and i.power.state == PowerState.WAKING for i in sim.instances
        )
        if asleep and not waking and (queued > 0 or (known and min(known) > self.up)):
            fastest = min(asleep, key=lambda i: i.power.wake_time_s() if i.power else math.inf)
            sim.set_power_state(fastest.instance_id, PowerState.ON)
            return
        # A list of its own, not `on` rebound in the loop: compiled code (mypyc) would
        # then iterate over the new list.
        still_on = list(on)
        for inst in on:
            if inst.num_outstanding or inst.busy:
                self.idle_since.pop(inst.instance_id, None)
                continue
            since = self.idle_since.setdefault(inst.instance_id, now)
            assert inst.power is not None
            timeout = (
                self.timeout_s
                if self.timeout_s is not None
                else inst.power.break_even_s(self.level)
            )
            others_on = sum(
                1
                for i in still_on
                if i is not inst and i.power is not None and i.power.state == PowerState.ON
            )
            if now - since >= timeout and (others_on or sim.power_wake_on_demand):
                sim.set_power_state(inst.instance_id, self.level)
                self.idle_since.pop(inst.instance_id, None)
                still_on.remove(inst)

    def clone(self) -> IdleTimeoutSleep:
        other = IdleTimeoutSleep(self.timeout_s, "sleep", self.up)
        other.level = self.level
        other.idle_since = dict(self.idle_since)
        other.tracker.last = dict(self.tracker.last)
        return other


class SloAware:
    """The lowest clock that keeps each instance's recent TPOT under the target."""

    def __init__(self, target_tpot_s: float) -> None:
        self.target = target_tpot_s

    def on_tick(self, sim: Simulation, now: float) -> None:
        for inst in sim.instances:
            power = inst.power
            if power is None or power.state != PowerState.ON:
                continue
            recent = sim.recent_tpot_s.get(inst.instance_id)
            if recent is None:
                continue
            top = len(power.spec.clock_levels) - 1
            if recent > 0.95 * self.target and power.freq_index < top:
                sim.set_frequency(inst.instance_id, power.freq_index + 1)
            elif recent < 0.8 * self.target and power.freq_index > 0:
                sim.set_frequency(inst.instance_id, power.freq_index - 1)

    def clone(self) -> SloAware:
        return SloAware(self.target)


def make_governor(
    name: str,
    *,
    up: float = 0.8,
    down: float = 0.3,
    idle_timeout_s: float | None = None,
    sleep_level: str = "sleep",
    target_tpot_s: float | None = None,
) -> Governor:
    """The governor named ``name``."""
    match name:
        case "always_max":
            return FixedClock(highest=True)
        case "always_min":
            return FixedClock(highest=False)
        case "ondemand":
            return OnDemand(up, down)
        case "idle_timeout_sleep":
            return IdleTimeoutSleep(idle_timeout_s, sleep_level, up)
        case "slo_aware":
            if target_tpot_s is None:
                raise ValueError("the slo_aware governor needs power.target_tpot_ms or slo.tpot_ms")
            return SloAware(target_tpot_s)
        case _:
            raise ValueError(
                f"unknown governor {name!r}; allowed: always_max, always_min, ondemand, "
                "idle_timeout_sleep, slo_aware"
            )
