"""Power state machines and energy integrated over simulated time.

Each instance has an :class:`InstancePower`: its devices' state (on, waking, sleep
level 1 or 2, off), clock level and optional power cap, and a piecewise-constant power
timeline that is integrated lazily as time passes — energy is accrued for what has
happened up to the moment it is read, never booked ahead at schedule time. While on and
without work, a device draws standby power for ``standby_s`` after its last iteration,
then idle power. Each node has a :class:`NodePower` for the base board, CPU, DRAM,
links, NIC and storage (LLMServingSim's power block).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray

from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.power import (
    DevicePowerSpec,
    WorkModel,
    active_power_scalar,
    active_power_w,
    scaled_time,
)

FloatArray = NDArray[np.float64]


class PowerState(IntEnum):
    """Power state of an instance's devices (the observation's ``power_state``)."""

    ON = 0
    """Model loaded and serving (busy, standby or idle by activity)."""
    WAKING = 1
    """Returning to ON; requests routed here wait."""
    SLEEP = 2
    """vLLM sleep level 1: weights offloaded to host memory, KV cache dropped."""
    DEEP_SLEEP = 3
    """vLLM sleep level 2: weights and KV cache dropped."""
    OFF = 4
    """Powered off; waking is a cold start."""


@dataclass(frozen=True)
class NodePowerSpec:
    """Node components (LLMServingSim's ``power`` block), per node.

    Attributes:
        base_w: Chassis, fans, board.
        cpu_idle_w: Host CPU idle power.
        cpu_active_w: Host CPU power at full load.
        cpu_util: CPU load while any instance on the node is busy.
        num_dimms: DRAM modules.
        dimm_idle_w: Idle (refresh) power per module.
        dram_pj_per_bit: Energy of DRAM traffic (weight reloads from host).
        num_links: Device links (NVLink / PCIe switches).
        link_idle_w: Idle power per link.
        link_pj_per_bit: Energy of link traffic (tensor-parallel collectives, loads).
        num_nics: Network interfaces.
        nic_idle_w: Power per NIC.
        num_storage: Storage devices.
        storage_idle_w: Power per storage device.
    """

    base_w: float = 60.0
    cpu_idle_w: float = 10.0
    cpu_active_w: float = 200.0
    cpu_util: float = 0.15
    num_dimms: int = 16
    dimm_idle_w: float = 2.0
    dram_pj_per_bit: float = 6.0
    num_links: int = 1
    link_idle_w: float = 5.0
    link_pj_per_bit: float = 4.0
    num_nics: int = 1
    nic_idle_w: float = 20.0
    num_storage: int = 2
    storage_idle_w: float = 5.0

    @property
    def static_w(self) -> dict[str, float]:
        """Components that draw constant power while the node is up."""
        return {
            "base": self.base_w,
            "cpu": self.cpu_idle_w,
            "dram": self.num_dimms * self.dimm_idle_w,
            "links": self.num_links * self.link_idle_w,
            "nic": self.num_nics * self.nic_idle_w,
            "storage": self.num_storage * self.storage_idle_w,
        }


class NodePower:
    """Energy of one node's components, integrated as time passes."""

    __slots__ = ("_busy_count", "_busy_since", "_busy_time", "_static_w", "_traffic_j", "spec")

    def __init__(self, spec: NodePowerSpec) -> None:
        self.spec = spec
        self._static_w = sum(spec.static_w.values())
        self._busy_count = 0
        self._busy_since = 0.0
        self._busy_time = 0.0
        self._traffic_j = {"dram": 0.0, "links": 0.0}

    def busy_change(self, delta: int, now: float) -> None:
        """An instance on this node started (+1) or stopped (-1) an iteration."""
        if self._busy_count == 0 and delta > 0:
            self._busy_since = now
        self._busy_count += delta
        if self._busy_count == 0 and delta < 0:
            self._busy_time += now - self._busy_since

    def add_traffic(self, component: str, nbytes: float) -> None:
        """Account ``nbytes`` moved over ``dram`` or ``links``."""
        pj = self.spec.dram_pj_per_bit if component == "dram" else self.spec.link_pj_per_bit
        self._traffic_j[component] += nbytes * 8 * pj * 1e-12

    def busy_time(self, now: float) -> float:
        """Seconds with at least one instance busy, up to ``now``."""
        return self._busy_time + (now - self._busy_since if self._busy_count else 0.0)

    def energy_j(self, now: float) -> dict[str, float]:
        """Energy per component up to ``now``."""
        out = {name: watts * now for name, watts in self.spec.static_w.items()}
        out["cpu"] += self._cpu_load_j(now)
        for name, joules in self._traffic_j.items():
            out[name] += joules
        return out

    def total_energy_j(self, now: float) -> float:
        """Energy of every component up to ``now`` (the sum of :meth:`energy_j`)."""
        total = self._static_w * now + self._cpu_load_j(now)
        for joules in self._traffic_j.values():
            total += joules
        return total

    def _cpu_load_j(self, now: float) -> float:
        """Host CPU energy above idle up to ``now`` (its load while instances are busy)."""
        spec = self.spec
        return (spec.cpu_active_w - spec.cpu_idle_w) * spec.cpu_util * self.busy_time(now)

    def power_w(self) -> float:
        """Current draw of the node's components."""
        spec = self.spec
        cpu = (spec.cpu_active_w - spec.cpu_idle_w) * spec.cpu_util if self._busy_count else 0.0
        return self._static_w + cpu

    def clone(self) -> NodePower:
        """An independent copy."""
        other = NodePower(self.spec)
        other._busy_count = self._busy_count
        other._busy_since = self._busy_since
        other._busy_time = self._busy_time
        other._traffic_j = dict(self._traffic_j)
        return other


class StretchEnergy:
    """Cumulative energy of a decode stretch at the end of each iteration.

    Either from per-iteration energies (clocks below the maximum, caps), or in closed
    form at full clock, where an iteration's energy is ``idle x t + lin + 2 x quad x i``
    for the ``i``-th iteration (the work is affine in the summed KV length, which grows
    by the batch size per iteration), so the sum over the first ``n`` iterations is
    ``idle x (end_n - start) + lin x n + quad x n (n + 1)``: no per-iteration arrays.

    Immutable (forks share it).
    """

    __slots__ = ("_cum", "_ends", "_idle", "_lin", "_quad", "_start")

    def __init__(
        self,
        start: float,
        ends: list[float],
        cum: list[float] | None = None,
        affine: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        self._start = start
        self._ends = ends
        self._cum = cum
        self._idle, self._lin, self._quad = affine

    def at(self, k: int) -> float:
        """Energy of iterations ``0..k`` (J)."""
        if self._cum is not None:
            return self._cum[k]
        n = k + 1
        return self._idle * (self._ends[k] - self._start) + n * (self._lin + self._quad * (n + 1))

    def iteration_j(self, k: int) -> float:
        """Energy of iteration ``k`` alone (J): ``at(k) - at(k - 1)``."""
        cum = self._cum
        if cum is not None:
            return cum[k] - cum[k - 1] if k else cum[0]
        start = self._ends[k - 1] if k else self._start
        return self._idle * (self._ends[k] - start) + self._lin + 2.0 * self._quad * (k + 1)


class InstancePower:
    """The devices of one instance: state, clock, cap, and their energy.

    Power is a piecewise timeline: one busy iteration at a constant power, a decode
    stretch with one power per iteration, or a resting segment (standby tail then idle
    while on; a constant draw while waking, asleep or off). :meth:`energy_j` integrates
    it up to any time.

    Args:
        spec: Device constants.
        work: FLOPs/bytes model of the instance's model on its device.
        num_devices: Devices in the instance (its tensor-parallel degree).
        weight_bytes: Weight bytes per device (for wake-up reloads).
        host_gbps: Host-link bandwidth per device (GB/s).
        cap_w: Power cap per device (``None``: the TDP).
        node: The node's component tracker.
        collective_bytes_per_token: Link traffic of the tensor-parallel all-reduces per
            token, all devices together (0 without tensor parallelism).
    """

    def __init__(
        self,
        spec: DevicePowerSpec,
        work: WorkModel,
        num_devices: int,
        weight_bytes: float,
        host_gbps: float,
        cap_w: float | None,
        node: NodePower,
        collective_bytes_per_token: float = 0.0,
    ) -> None:
        self.spec = spec
        self.collective_bytes_per_token = collective_bytes_per_token
        self.work = work
        self.num_devices = num_devices
        self.weight_bytes = weight_bytes
        self.host_gbps = host_gbps
        self.cap_w = min(cap_w, spec.tdp_w) if cap_w is not None else spec.tdp_w
        # Whether no full-clock iteration can draw more than the cap (power checks skipped).
        self._never_over_cap = spec.idle_w + spec.compute_w + spec.memory_w <= self.cap_w
        self.node = node
        self.state = PowerState.ON
        self.freq_index = len(spec.clock_levels) - 1
        self.wake_ready_s = 0.0
        self.last_freq_used = 1.0
        self._clock_penalty_s = 0.0
        # The timeline: energy accrued up to _acc_t, then the current segment.
        self._acc_j = 0.0
        self._acc_t = 0.0
        self._busy_time = 0.0
        self._seg = "rest"
        self._rest_since = 0.0  # last busy end (standby tail reference)
        self._busy_start = 0.0
        self._busy_end = 0.0
        self._busy_w = 0.0
        self._ends: list[float] = []
        self._stretch = StretchEnergy(0.0, self._ends, [])
        self._stretch_acc_j = 0.0  # the stretch's energy already in _acc_j

    # ------------------------------------------------------------------ clocks

    @property
    def freq(self) -> float:
        """Relative clock of the selected level."""
        return self.spec.clock_levels[self.freq_index]

    def set_freq_index(self, index: int) -> bool:
        """Select a clock level; returns whether it changed (a change stalls the next
        iteration by ``clock_change_s``)."""
        if not 0 <= index < len(self.spec.clock_levels):
            raise ValueError(
                f"clock level {index} out of range 0..{len(self.spec.clock_levels) - 1}"
            )
        if index == self.freq_index:
            return False
        self.freq_index = index
        self._clock_penalty_s = self.spec.clock_change_s
        return True

    def _capped_freq(
        self, flops: float, nbytes: float, time_s: float, share: float
    ) -> tuple[float, float, float, float]:
        """The clock an iteration runs at, its duration and power, and the reference
        clock: (f, t, P, f_ref).

        ``time_s`` is the latency model's, and its figures describe the device at its
        stock power limit: profiles are timed on the device itself and the roofline's
        derates are fitted to such timings, so whatever clock the TDP held the device to
        is already in them. That clock, ``f_ref``, is the highest level whose power at
        ``time_s`` fits the TDP; the iteration never runs faster than ``time_s``. A
        lower clock (the selected level, or the highest one under a cap below the TDP)
        stretches the compute-bound share relative to ``f_ref``. Where the full clock
        fits the TDP (``f_ref`` 1), this is the highest clock under the cap, its time
        scaled from the full clock.
        """
        spec = self.spec
        levels = spec.clock_levels
        work = self.work
        ref = len(levels) - 1
        while ref > 0 and (
            active_power_scalar(spec, work, flops, nbytes, time_s, levels[ref]) > spec.tdp_w
        ):
            ref -= 1
        f_ref = levels[ref]
        base = 1.0 if f_ref >= 1.0 else 1.0 + share * (1.0 / f_ref - 1.0)
        for index in range(min(self.freq_index, ref), -1, -1):
            f = levels[index]
            t = time_s if index == ref else time_s * (1.0 + share * (1.0 / f - 1.0)) / base
            p = active_power_scalar(spec, work, flops, nbytes, t, f)
            if p <= self.cap_w or index == 0:
                return f, t, min(p, self.cap_w), f_ref
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ iterations

    def iteration(self, batch: BatchShape, time_s: float) -> tuple[float, float]:
        """Clock-adjusted duration and per-instance power of one iteration."""
        flops, nbytes, share = self.work.iteration(batch)
        f, t, p, _ = self._capped_freq(flops, nbytes, time_s, share)
        self.last_freq_used = f
        t += self._clock_penalty_s
        self._clock_penalty_s = 0.0
        if self.collective_bytes_per_token:
            self.node.add_traffic("links", self._collective_bytes(batch.num_tokens))
        return t, p * self.num_devices

    def stretch(
        self, num: int, kv_sum0: float, times_s: list[float]
    ) -> tuple[list[float], list[float] | tuple[float, float, float]]:
        """Clock-adjusted durations and the energy of decode iterations (the capped clock
        is chosen on the first iteration and held for the stretch). Iteration ``i``
        (from 1) has the KV sum ``kv_sum0 + num * i``.

        The energy is per-iteration energies, or at full clock the closed-form
        coefficients ``(idle, lin, quad)`` of :class:`StretchEnergy` (per instance)."""
        steps = len(times_s)
        if self.collective_bytes_per_token:
            self.node.add_traffic("links", self._collective_bytes(num) * steps)
        spec = self.spec
        if self.freq_index == len(spec.clock_levels) - 1 and not self._clock_penalty_s:
            # Full clock: energy is linear in time, FLOPs and bytes, and the work is
            # affine in the KV length, so no per-iteration power model is needed.
            f0, f1, b0, b1 = self.work.decode_affine(num)
            first, last = times_s[0], times_s[-1]
            kv_first, kv_last = kv_sum0 + num, kv_sum0 + num * steps
            work = self.work
            mfu_ok = (f0 + f1 * kv_first) <= first * work.peak_flops
            mbu_ok = (b0 + b1 * kv_first) <= first * work.bandwidth
            under_cap = self._never_over_cap or (
                max(
                    active_power_scalar(
                        spec, work, f0 + f1 * kv_first, b0 + b1 * kv_first, first, 1.0
                    ),
                    active_power_scalar(
                        spec, work, f0 + f1 * kv_last, b0 + b1 * kv_last, last, 1.0
                    ),
                )
                <= self.cap_w
            )
            if under_cap and mfu_ok and mbu_ok:
                self.last_freq_used = 1.0
                c = spec.compute_w / work.peak_flops
                m = spec.memory_w / work.bandwidth
                # Iteration i (from 1) has kv_sum = kv0 + num * i.
                slope = c * f1 + m * b1
                kv0 = kv_first - num
                n = self.num_devices
                affine = (
                    spec.idle_w * n,
                    (c * f0 + m * b0 + slope * kv0) * n,
                    slope * num / 2.0 * n,
                )
                return times_s, affine
        kv_sum = kv_sum0 + num * np.arange(1, steps + 1, dtype=np.float64)
        flops, nbytes, share = self.work.decode(num, kv_sum)
        f, _, _, f_ref = self._capped_freq(
            float(flops[0]), float(nbytes[0]), times_s[0], float(share[0])
        )
        self.last_freq_used = f
        t = np.asarray(scaled_time(np.asarray(times_s), share, f), dtype=np.float64)
        if f_ref < 1.0:  # the latency model's times are at the clock the TDP allows
            t = t / np.asarray(scaled_time(1.0, share, f_ref), dtype=np.float64)
        if self._clock_penalty_s:
            t[0] += self._clock_penalty_s
            self._clock_penalty_s = 0.0
        p = np.minimum(np.asarray(active_power_w(spec, self.work, flops, nbytes, t, f)), self.cap_w)
        return t.tolist(), (p * t * self.num_devices).tolist()

    def _collective_bytes(self, tokens: int) -> float:
        """Bytes the instance's tensor-parallel all-reduces move for ``tokens``."""
        return tokens * self.collective_bytes_per_token

    # ------------------------------------------------------------------ timeline

    def _rest_power(self) -> float:
        spec = self.spec
        match self.state:
            case PowerState.ON:
                return spec.idle_w * self.num_devices
            case PowerState.WAKING:
                return spec.standby_w * self.num_devices
            case PowerState.SLEEP:
                return spec.sleep_w * self.num_devices
            case PowerState.DEEP_SLEEP:
                return spec.deep_sleep_w * self.num_devices
            case _:
                return spec.off_w * self.num_devices

    def _rest_energy(self, a: float, b: float) -> float:
        if b <= a:
            return 0.0
        if self.state != PowerState.ON:
            return self._rest_power() * (b - a)
        tail_end = self._rest_since + self.spec.standby_s
        standby = max(0.0, min(b, tail_end) - max(a, self._rest_since))
        idle = (b - a) - standby
        n = self.num_devices
        return n * (self.spec.standby_w * standby + self.spec.idle_w * idle)

    def _stretch_cum(self, t: float) -> float:
        """Energy of the stretch from its start to ``t`` (linear within an iteration)."""
        if t <= self._busy_start:
            return 0.0
        ends = self._ends
        stretch = self._stretch
        k = bisect.bisect_right(ends, t)
        done = stretch.at(k - 1) if k > 0 else 0.0
        if k < len(ends):
            prev = ends[k - 1] if k > 0 else self._busy_start
            end = ends[k]
            done += (stretch.at(k) - done) / max(end - prev, 1e-12) * (t - prev)
        return done

    def settle(self, now: float) -> None:
        """Accrue energy up to ``now``."""
        a = self._acc_t
        if now <= a:
            return
        if self._seg == "rest":
            self._acc_j += self._rest_energy(a, now)
        else:
            end = min(now, self._busy_end)
            if self._seg == "busy":
                lo = max(a, self._busy_start)
                self._acc_j += self._busy_w * max(0.0, end - lo)
            else:  # a stretch: its energy up to end, less what was accrued before
                cum = self._stretch_cum(end)
                self._acc_j += cum - self._stretch_acc_j
                self._stretch_acc_j = cum
            self._busy_time += max(0.0, end - max(a, self._busy_start))
            if now > self._busy_end:  # rest after the busy segment ended
                self._acc_j += self._rest_energy(self._busy_end, now)
        self._acc_t = now

    def energy_j(self, now: float) -> float:
        """Device energy of the instance up to ``now``."""
        self.settle(now)
        return self._acc_j

    def busy_time_s(self, now: float) -> float:
        """Seconds spent running iterations up to ``now``."""
        self.settle(now)
        return self._busy_time

    def power_w(self, now: float) -> float:
        """Instantaneous draw of the instance's devices at ``now``."""
        if self._seg != "rest" and self._busy_start <= now < self._busy_end:
            if self._seg == "busy":
                return self._busy_w
            k = bisect.bisect_right(self._ends, now)
            return self._stretch_power(min(k, len(self._ends) - 1))
        if self.state == PowerState.ON:
            tail = self._rest_since + self.spec.standby_s
            per = self.spec.standby_w if now < tail else self.spec.idle_w
            return per * self.num_devices
        return self._rest_power()

    def begin_busy(self, now: float, end: float, power_w: float) -> None:
        """An iteration runs from ``now`` to ``end`` at ``power_w``."""
        self.settle(now)
        self._seg = "busy"
        self._busy_start, self._busy_end, self._busy_w = now, end, power_w
        self.node.busy_change(+1, now)

    def begin_stretch(
        self, now: float, ends: list[float], energy: list[float] | tuple[float, float, float]
    ) -> StretchEnergy:
        """Decode iterations end at ``ends`` using ``energy`` (from :meth:`stretch`);
        returns the cumulative energy at each iteration end (for per-request
        attribution)."""
        self.settle(now)
        self._seg = "stretch"
        if isinstance(energy, tuple):
            self._stretch = StretchEnergy(now, ends, affine=energy)
        else:
            self._stretch = StretchEnergy(now, ends, list(itertools.accumulate(energy)))
        self._ends = ends
        self._stretch_acc_j = 0.0
        self._busy_start, self._busy_end = now, ends[-1]
        self.node.busy_change(+1, now)
        return self._stretch

    def _stretch_power(self, k: int) -> float:
        """Average power of the stretch's iteration ``k``."""
        ends = self._ends
        start = ends[k - 1] if k else self._busy_start
        return self._stretch.iteration_j(k) / max(ends[k] - start, 1e-12)

    def cut_stretch(self, end: float) -> None:
        """The stretch now ends at ``end`` (an iteration boundary)."""
        self._busy_end = end

    def end_busy(self, now: float) -> None:
        """The busy segment ended at ``now``; rest (standby tail) begins."""
        self.settle(now)
        self._seg = "rest"
        self._rest_since = now
        self.node.busy_change(-1, now)

    def abort_busy(self, now: float) -> None:
        """Work stops mid-iteration (sleep or off): energy so far stays accrued."""
        if self._seg != "rest":
            self._busy_end = min(self._busy_end, now)
            self.end_busy(now)

    # ------------------------------------------------------------------ states

    def wake_time_s(self, state: PowerState | None = None) -> float:
        """Seconds from ``state`` (default: the current one) back to ON."""
        spec = self.spec
        match self.state if state is None else state:
            case PowerState.SLEEP:
                return spec.wake_fixed_s + self.weight_bytes / (self.host_gbps * 1e9)
            case PowerState.DEEP_SLEEP:
                return spec.deep_wake_fixed_s + self.weight_bytes / (spec.storage_gbps * 1e9)
            case PowerState.OFF:
                return spec.cold_start_s + self.weight_bytes / (spec.storage_gbps * 1e9)
            case _:
                return 0.0

    def set_state(self, state: PowerState, now: float) -> None:
        """Change the power state at ``now`` (the caller handles requests and events)."""
        self.settle(now)
        if state == PowerState.WAKING:
            self.wake_ready_s = now + self.wake_time_s()
            if self.state == PowerState.SLEEP:
                self.node.add_traffic("dram", self.weight_bytes * self.num_devices)
            self.node.add_traffic("links", self.weight_bytes * self.num_devices)
        if state == PowerState.ON:
            self._rest_since = now
        self.state = state

    def break_even_s(self, level: PowerState = PowerState.SLEEP) -> float:
        """Idle gap above which sleeping at ``level`` saves energy: the extra energy of
        waking divided by the power saved while asleep."""
        spec = self.spec
        asleep = {PowerState.SLEEP: spec.sleep_w, PowerState.DEEP_SLEEP: spec.deep_sleep_w}.get(
            level, spec.off_w
        )
        saved = spec.idle_w - asleep
        if saved <= 0:
            return math.inf
        wake_extra = (spec.standby_w - asleep) * self.wake_time_s(level)
        return wake_extra / saved

    def clone(self, node: NodePower) -> InstancePower:
        """An independent copy attached to ``node`` (arrays are immutable and shared)."""
        other = InstancePower(
            self.spec,
            self.work,
            self.num_devices,
            self.weight_bytes,
            self.host_gbps,
            self.cap_w,
            node,
            self.collective_bytes_per_token,
        )
        other.state = self.state
        other.freq_index = self.freq_index
        other.wake_ready_s = self.wake_ready_s
        other.last_freq_used = self.last_freq_used
        other._clock_penalty_s = self._clock_penalty_s
        other._acc_j = self._acc_j
        other._acc_t = self._acc_t
        other._busy_time = self._busy_time
        other._seg = self._seg
        other._rest_since = self._rest_since
        other._busy_start = self._busy_start
        other._busy_end = self._busy_end
        other._busy_w = self._busy_w
        other._ends = self._ends
        other._stretch = self._stretch
        other._stretch_acc_j = self._stretch_acc_j
        return other
