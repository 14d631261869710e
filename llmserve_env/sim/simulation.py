"""The simulation: kernel, instances, router, workload and metrics wired together.

``Simulation`` owns the one dispatch table (event type -> component handler) and the
request accounting: every arrival ends in exactly one terminal state (finished,
rejected with a reason, or unfinished at the horizon).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from llmserve_env.sim.data_parallel import DPGroup
from llmserve_env.sim.events import (
    Arrival,
    DecisionPoint,
    EngineWake,
    Event,
    IterationDone,
    PowerTick,
    PowerTransitionDone,
    Sample,
    StepLaunch,
)
from llmserve_env.sim.governors import Governor
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.kv_cache import KVBlockPool
from llmserve_env.sim.metrics import MetricsRecorder, summarize
from llmserve_env.sim.power import NodePower, PowerState
from llmserve_env.sim.request import RejectReason, Request, RequestStatus, clone_request
from llmserve_env.sim.rng import clone_rngs
from llmserve_env.sim.router import RoutingPolicy
from llmserve_env.sim.stats import ItlHistogram
from llmserve_env.sim.workload.base import WorkloadData

ProgressCallback = Callable[[float, int, int], None]

INSTANCE_STATE_FIELDS: tuple[str, ...] = (
    "num_waiting",
    "num_running",
    "scheduled_tokens",
    "queue_delay_s",
    "kv_usage_frac",
    "free_kv_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "power_state",
    "clock_frac",
    "power_w",
    "time_to_wake_s",
)
"""What :meth:`Simulation.instance_state` reports per instance, in order: waiting and
running requests, tokens of the iteration in flight (0 when idle), age of the oldest
waiting request (s), KV blocks in use (fraction), free KV blocks, the ``max_num_seqs``
and ``max_num_batched_tokens`` knobs, power state code, clock fraction, devices' draw
(W), and time until the instance can serve (s, 0 when on)."""


class Simulation:
    """A runnable, resumable simulation of one cluster under one workload.

    Built by :func:`llmserve_env.build.build_simulation`; usable on its own::

        sim = build_simulation(load_scenario("default"))
        sim.run_until(60.0)       # resumable
        sim.run()                 # to the horizon, or until every request has ended
        print(sim.summary())

    Args:
        kernel: The event kernel (shared with the instances).
        instances: The serving instances.
        router: Routing policy, or ``None`` for external routing: the simulation then
            halts at each arrival with the request in :attr:`pending` until
            :meth:`route` or :meth:`reject` is called.
        workload: Every request, as arrays.
        metrics: The recorder (holds the SLO).
        itl: The inter-token-latency histogram the instances write to.
        horizon_s: Stop time, or ``None`` to run until every request has ended.
        sample_interval_s: Time-series interval (``None``: no sampling).
        rngs: The named RNG streams (kept for forks).
        nodes: Power trackers of the nodes' components (``None``: no node energy).
        governor: Power governor acting every ``power_interval_s`` (``None``: none).
        power_interval_s: Governor period.
        wake_on_demand: Wake a sleeping instance when an arrival finds none on.
        start: Schedule the first arrival, sample and governor tick (``False`` for a
            copy whose kernel already holds its pending events).
        dp_groups: Lockstep data-parallel groups over some of ``instances``.
    """

    def __init__(
        self,
        kernel: Kernel,
        instances: list[Instance],
        router: RoutingPolicy | None,
        workload: WorkloadData,
        metrics: MetricsRecorder,
        itl: ItlHistogram,
        *,
        horizon_s: float | None = None,
        sample_interval_s: float | None = 1.0,
        rngs: dict[str, np.random.Generator] | None = None,
        nodes: list[NodePower] | None = None,
        governor: Governor | None = None,
        power_interval_s: float = 1.0,
        wake_on_demand: bool = True,
        start: bool = True,
        dp_groups: list[DPGroup] | None = None,
    ) -> None:
        self.kernel = kernel
        self.instances = instances
        self.dp_groups = dp_groups or []
        self.router = router
        self.workload = workload
        self.metrics = metrics
        self.itl = itl
        self.horizon_s = horizon_s
        self.sample_interval_s = sample_interval_s
        self.rngs = rngs or {}
        self.nodes = nodes or []
        self.governor = governor
        self.power_interval_s = power_interval_s
        self.power_wake_on_demand = wake_on_demand
        self._wake_generation: dict[int, int] = {}
        self.pending: list[Request] = []
        # Requests that arrive by the horizon: the workload is sorted by arrival time,
        # so they are the first ones (the horizon is fixed for the run).
        self._num_arriving = len(workload)
        if horizon_s is not None and self._num_arriving:
            self._num_arriving = int(np.searchsorted(workload.arrival_s, horizon_s, "right"))
        self.num_arrived = 0
        self.next_index = 0
        self.finalized = False
        self.wall_time_s = 0.0
        self._next_sample = 0.0
        # No handler or callback refers back to the simulation (events go through
        # _dispatch, passed per run), so a dropped copy is freed at once, without the
        # cyclic garbage collector.
        for inst in instances:
            inst.on_finish = metrics.record
        if start:
            self._schedule_next_arrival()
            if sample_interval_s is not None:
                kernel.schedule(0.0, Sample())
            if governor is not None:
                kernel.schedule(0.0, PowerTick())

    def _dispatch(self, event: Event) -> None:
        """Call the handler of ``event``'s type (the most frequent first)."""
        if isinstance(event, IterationDone):
            self._on_iteration_done(event)
        elif isinstance(event, Arrival):
            self._on_arrival(event)
        elif isinstance(event, EngineWake):
            self._on_wake(event)
        elif isinstance(event, StepLaunch):
            self.dp_groups[event.group_id].on_launch(event)
        elif isinstance(event, Sample):
            self._on_sample(event)
        elif isinstance(event, DecisionPoint):
            self._on_decision(event)
        elif isinstance(event, PowerTransitionDone):
            self._on_power_done(event)
        elif isinstance(event, PowerTick):
            self._on_power_tick(event)
        else:
            raise TypeError(f"the simulation has no handler for {type(event).__name__} events")

    @property
    def recent_tpot_s(self) -> dict[int, float]:
        """Per instance id, a moving average of recent TPOT (see
        :attr:`MetricsRecorder.recent_tpot_s`)."""
        return self.metrics.recent_tpot_s

    # ------------------------------------------------------------------ state

    @property
    def now(self) -> float:
        """Current simulated time (s)."""
        return self.kernel.now

    @property
    def arrivals_exhausted(self) -> bool:
        """No request is left to arrive (before the horizon)."""
        return self.next_index >= self._num_arriving

    @property
    def drained(self) -> bool:
        """Every request that will arrive has arrived and ended."""
        if self.next_index < self._num_arriving or self.pending:
            return False
        # A loop, not all() over a generator (read at every env step; slower compiled).
        for inst in self.instances:  # noqa: SIM110
            if inst.busy or inst.num_outstanding:
                return False
        return True

    @property
    def num_ended(self) -> int:
        """Requests in a terminal state."""
        m = self.metrics
        return m.num_finished + m.num_rejected + m.num_unfinished

    def sync(self, materialize: bool = False) -> None:
        """Bring every instance's lazily evaluated decode stretch up to now.

        Args:
            materialize: Also update each request's own fields (otherwise only the
                instance aggregates that observers read are brought up to date).
        """
        now = self.kernel.now
        for inst in self.instances:
            inst.advance_to(now)
            if materialize:
                inst.materialize()

    # ------------------------------------------------------------------ handlers

    def _schedule_next_arrival(self) -> None:
        if not self.arrivals_exhausted:
            self.kernel.schedule(
                max(float(self.workload.arrival_s[self.next_index]), self.kernel.now),
                Arrival(self.next_index),
            )

    def _make_request(self, index: int) -> Request:
        w = self.workload
        return Request(
            request_id=index,
            arrival_s=float(w.arrival_s[index]),
            num_prompt_tokens=int(w.prompt_tokens[index]),
            max_output_tokens=int(w.output_tokens[index]),
            priority=int(w.priority[index]),
            content=w.contents[index] if w.contents is not None else None,
            session_id=int(w.session_id[index]),
        )

    def _on_arrival(self, event: Arrival) -> None:
        request = self._make_request(event.index)
        self.num_arrived += 1
        self.next_index = event.index + 1
        self._schedule_next_arrival()
        if self.router is None:
            self.pending.append(request)
            self.kernel.halt()
            return
        candidates = self.available_instances()
        if not candidates and self.power_wake_on_demand:
            candidates = self._wake_fastest()
        if not candidates:
            self.reject(request, RejectReason.NO_INSTANCE)
            return
        if self.router.reads_state:
            for inst in candidates:
                inst.advance_to(self.kernel.now)
        self.route(request, self.router.choose(request, candidates).instance_id)

    def _on_iteration_done(self, event: IterationDone) -> None:
        self.instances[event.instance_id].on_iteration_done(event)

    def _on_wake(self, event: EngineWake) -> None:
        self.instances[event.instance_id].on_wake(event)

    def _on_sample(self, event: Sample) -> None:
        now = self.kernel.now
        for inst in self.instances:
            inst.advance_to(now)
            power = inst.power
            self.metrics.sample(
                now,
                inst.instance_id,
                inst.stats,
                inst.num_running,
                inst.num_waiting,
                inst.kv_usage_frac,
                power_w=0.0 if power is None else power.power_w(now),
                energy_j=0.0 if power is None else power.energy_j(now),
                power_state=0 if power is None else int(power.state),
                clock=1.0 if power is None else power.freq,
            )
        interval = self.sample_interval_s
        if interval is not None and not self.drained:
            self._next_sample = now + interval
            if self.horizon_s is None or self._next_sample <= self.horizon_s:
                self.kernel.schedule(self._next_sample, Sample())

    def _on_decision(self, event: DecisionPoint) -> None:
        self.kernel.halt()

    # ------------------------------------------------------------------ routing API

    def available_instances(self) -> list[Instance]:
        """Instances that may receive requests now (on, or waking: requests wait)."""
        return [
            inst
            for inst in self.instances
            if inst.power is None or inst.power.state in (PowerState.ON, PowerState.WAKING)
        ]

    # ------------------------------------------------------------------ power API

    def set_frequency(self, instance_id: int, level: int) -> None:
        """Select a clock level of an instance (from its next iteration)."""
        inst = self.instances[instance_id]
        if inst.power is None:
            raise ValueError(f"instance {instance_id} has no power model")
        if inst.power.set_freq_index(level):
            inst.advance_to(self.kernel.now)
            inst.interrupt()

    def set_power_state(self, instance_id: int, target: PowerState) -> None:
        """Move an instance towards ``target`` (ON, SLEEP, DEEP_SLEEP or OFF).

        Going down drops the KV cache: running requests are preempted (recomputed
        later) and every live request is rerouted to an instance that is on, or, if
        none is, kept queued here until it wakes. Going up from a sleep or off state
        takes the wake time (:meth:`InstancePower.wake_time_s`); requests routed to a
        waking instance wait.
        """
        inst = self.instances[instance_id]
        power = inst.power
        if power is None:
            raise ValueError(f"instance {instance_id} has no power model")
        now = self.kernel.now
        if target == PowerState.WAKING:
            raise ValueError("WAKING is not a target; ask for ON")
        if target == power.state or (target == PowerState.ON and power.state == PowerState.WAKING):
            return
        generation = self._wake_generation.get(instance_id, 0) + 1
        self._wake_generation[instance_id] = generation  # voids a pending wake-up
        if target == PowerState.ON:
            power.set_state(PowerState.WAKING, now)
            self.kernel.schedule(power.wake_ready_s, PowerTransitionDone(instance_id, generation))
            return
        if power.state == PowerState.ON:
            live = inst.evacuate()
            inst.pool = KVBlockPool(
                inst.params.num_blocks, inst.params.block_size, inst.params.enable_prefix_caching
            )
            power.set_state(target, now)
            others = [i for i in self.available_instances() if i is not inst]
            for request in live:
                if others and self.router is not None:
                    for other in others:
                        other.advance_to(now)
                    self.route(request, self.router.choose(request, others).instance_id)
                else:
                    inst.requeue(request)
        else:
            power.set_state(target, now)

    def _wake_fastest(self) -> list[Instance]:
        asleep = [
            inst
            for inst in self.instances
            if inst.power is not None
            and inst.power.state in (PowerState.SLEEP, PowerState.DEEP_SLEEP, PowerState.OFF)
        ]
        if not asleep:
            return []
        fastest = min(asleep, key=lambda i: i.power.wake_time_s() if i.power else math.inf)
        self.set_power_state(fastest.instance_id, PowerState.ON)
        return [fastest]

    def _on_power_done(self, event: PowerTransitionDone) -> None:
        if self._wake_generation.get(event.instance_id) != event.generation:
            return
        inst = self.instances[event.instance_id]
        assert inst.power is not None
        inst.power.set_state(PowerState.ON, self.kernel.now)
        inst.interrupt()

    def _on_power_tick(self, event: PowerTick) -> None:
        if self.governor is None:
            return
        self.sync()
        self.governor.on_tick(self, self.kernel.now)
        if not self.drained and (
            self.horizon_s is None or self.kernel.now + self.power_interval_s <= self.horizon_s
        ):
            self.kernel.schedule(self.kernel.now + self.power_interval_s, PowerTick())

    def instance_state(self) -> list[float]:
        """Every instance's scheduler, cache and power state now, feature-major: for
        each name in :data:`INSTANCE_STATE_FIELDS`, one value per instance in order.

        Reads the aggregates only; call :meth:`sync` first so decode stretches are
        applied up to now.
        """
        now = self.kernel.now
        n = len(self.instances)
        out: list[float] = [0.0] * (len(INSTANCE_STATE_FIELDS) * n)
        for i, inst in enumerate(self.instances):
            waiting = inst.waiting
            pool = inst.pool
            params = inst.params
            free = pool.num_free_blocks
            # Counts as floats: readers of the list convert each int again.
            out[i] = float(len(waiting))
            out[n + i] = float(len(inst.running))
            out[2 * n + i] = float(inst.stats.scheduled_tokens_last) if inst.busy else 0.0
            out[3 * n + i] = now - waiting.peek().arrival_s if waiting else 0.0
            out[4 * n + i] = 1.0 - free / pool.num_blocks
            out[5 * n + i] = float(free)
            out[6 * n + i] = float(params.max_num_seqs)
            out[7 * n + i] = float(params.max_num_batched_tokens)
            power = inst.power
            if power is None:  # without a power model: always on, full clock, no draw
                out[9 * n + i] = 1.0
                continue
            state = power.state
            out[8 * n + i] = float(int(state))
            out[9 * n + i] = power.freq
            out[10 * n + i] = power.power_w(now)
            if state == PowerState.WAKING:
                out[11 * n + i] = max(power.wake_ready_s - now, 0.0)
            elif state != PowerState.ON:
                out[11 * n + i] = power.wake_time_s()
        return out

    def counters(self, energy_j: float) -> list[float]:
        """Cumulative counters now: arrivals, finished, finished within every SLO, the
        caller's ``energy_j`` (its reading of :meth:`total_energy_j`, which settles every
        instance's energy, so it is read once), then per instance preemptions, then per
        instance prefix-cache hit tokens, prefix query tokens and generated tokens."""
        m = self.metrics
        out: list[float] = [
            float(self.num_arrived),
            float(m.num_finished),
            float(m.num_slo_met),
            energy_j,
        ]
        instances = self.instances
        out += [float(inst.stats.num_preemptions) for inst in instances]
        out += [float(inst.stats.prefix_hit_tokens) for inst in instances]
        out += [float(inst.stats.prefix_query_tokens) for inst in instances]
        out += [float(inst.stats.generation_tokens) for inst in instances]
        return out

    def backlog_s(self) -> float:
        """Request-seconds spent waiting in the instances' queues so far."""
        now = self.kernel.now
        total = 0.0
        for inst in self.instances:
            total += inst.waiting_area(now)
        return total

    def total_energy_j(self) -> float:
        """Energy so far, every component of :meth:`energy_j` summed."""
        now = self.kernel.now
        total = 0.0
        for inst in self.instances:
            if inst.power is not None:
                total += inst.power.energy_j(now)
        for node in self.nodes:
            total += node.total_energy_j(now)
        return total

    def energy_j(self) -> dict[str, float]:
        """Energy so far by component: ``devices`` plus the nodes' components."""
        now = self.kernel.now
        out = {"devices": sum(i.power.energy_j(now) for i in self.instances if i.power is not None)}
        for node in self.nodes:
            for name, joules in node.energy_j(now).items():
                out[name] = out.get(name, 0.0) + joules
        return out

    def route(self, request: Request, instance_id: int) -> bool:
        """Send ``request`` to an instance; rejects it if that instance can never serve it.

        Returns:
            ``True`` if queued, ``False`` if rejected.
        """
        if request in self.pending:
            self.pending.remove(request)
        inst = self.instances[instance_id]
        reason = inst.admission_check(request)
        if reason != RejectReason.NONE:
            request.instance_id = instance_id
            self.reject(request, reason)
            return False
        inst.add_request(request)
        return True

    def reject(self, request: Request, reason: RejectReason) -> None:
        """End ``request`` as rejected."""
        if request in self.pending:
            self.pending.remove(request)
        request.status = RequestStatus.REJECTED
        request.reject_reason = reason
        request.finish_s = self.kernel.now
        self.metrics.record(request)

    # ------------------------------------------------------------------ running

    def run_until(self, until: float) -> bool:
        """Advance to ``until`` (capped at the horizon); resumable.

        Returns:
            ``True`` if it halted early (an external routing decision or a decision point).
        """
        if self.horizon_s is not None:
            until = min(until, self.horizon_s)
        start = time.perf_counter()
        halted = self.kernel.run_until(until, self._dispatch)
        self.wall_time_s += time.perf_counter() - start
        return halted

    def run(
        self, progress: ProgressCallback | None = None, chunk_s: float = 10.0
    ) -> dict[str, Any]:
        """Run to the horizon (or until drained), finalize and return the summary.

        Args:
            progress: Called as ``progress(now, num_ended, num_total)`` between chunks.
            chunk_s: Simulated seconds between progress calls.
        """
        if self.router is None:
            raise RuntimeError("run() needs a routing policy; with external routing use run_until")
        end = self.horizon_s if self.horizon_s is not None else math.inf
        while not self.finalized:
            target = min(self.kernel.now + chunk_s, end) if progress else end
            self.run_until(target)
            if progress:
                progress(self.kernel.now, self.num_ended, len(self.workload))
            if self.drained or self.kernel.now >= end:
                break
            if not len(self.kernel):
                raise RuntimeError(
                    f"simulation stalled at t={self.kernel.now:.3f}s with requests in flight"
                )
        self.finalize()
        return self.summary()

    def finalize(self) -> None:
        """End every live request as unfinished (at the horizon) and take a last sample."""
        if self.finalized:
            return
        self.sync(materialize=True)
        for request in list(self.pending):
            self.pending.remove(request)
            self._end_unfinished(request)
        for inst in self.instances:
            for request in inst.drain_unfinished():
                self._end_unfinished(request)
        self.finalized = True

    def _end_unfinished(self, request: Request) -> None:
        request.status = RequestStatus.UNFINISHED
        self.metrics.record(request)

    def summary(self) -> dict[str, Any]:
        """The run summary (see :func:`llmserve_env.sim.metrics.summarize`), with the
        energy of devices and node components when a power model is present."""
        summary = summarize(
            self.metrics,
            self.itl,
            num_arrived=self.num_arrived,
            instance_stats=[inst.stats for inst in self.instances],
            wall_time_s=self.wall_time_s,
            end_time_s=self.kernel.now,
        )
        if any(inst.power is not None for inst in self.instances):
            breakdown = self.energy_j()
            total = sum(breakdown.values())
            tokens = summary["num_generated_tokens"]
            summary["energy_j"] = total
            summary["energy_per_output_token_j"] = total / tokens if tokens else None
            summary["avg_power_w"] = total / self.kernel.now if self.kernel.now > 0 else None
            summary["energy_breakdown_j"] = breakdown
        return summary

    def clone(self) -> Simulation:
        """An independent copy of the whole simulation state, for what-if branches.

        Mutable state (kernel, instances, requests, queues, KV pools, metrics, RNG
        streams) is copied; read-only parts (workload arrays, latency models, engine
        parameters, token contents) are shared. The copy continues exactly as the
        original would under the same decisions.
        """
        # Materialising a decode stretch records its ITLs: before the histogram is copied.
        for inst in self.instances:
            inst.materialize()
        kernel = self.kernel.clone()
        rngs = clone_rngs(self.rngs)
        itl = self.itl.copy()
        mapping: dict[int, Request] = {}
        nodes = [node.clone() for node in self.nodes]
        node_map = {id(old): new for old, new in zip(self.nodes, nodes, strict=True)}
        instances = [inst.clone(kernel, itl, mapping, node_map) for inst in self.instances]
        dp_groups = [
            group.clone([instances[rank.instance_id] for rank in group.ranks])
            for group in self.dp_groups
        ]
        # The constructor sets the instances' finish callback.
        other = Simulation(
            kernel,
            instances,
            None if self.router is None else self.router.clone(rngs),
            self.workload,
            self.metrics.clone(),
            itl,
            horizon_s=self.horizon_s,
            sample_interval_s=self.sample_interval_s,
            rngs=rngs,
            nodes=nodes,
            governor=None if self.governor is None else self.governor.clone(),
            power_interval_s=self.power_interval_s,
            wake_on_demand=self.power_wake_on_demand,
            start=False,
            dp_groups=dp_groups,
        )
        other._wake_generation = dict(self._wake_generation)
        other.pending = [mapping.get(id(r)) or clone_request(r) for r in self.pending]
        other.num_arrived = self.num_arrived
        other.next_index = self.next_index
        other.finalized = self.finalized
        other.wall_time_s = self.wall_time_s
        other._next_sample = self._next_sample
        return other

    def check_invariants(self) -> None:
        """Assert request accounting and per-instance KV conservation (for tests)."""
        self.sync(materialize=True)
        live = sum(inst.num_outstanding for inst in self.instances) + len(self.pending)
        assert self.num_ended + live == self.num_arrived, (self.num_ended, live, self.num_arrived)
        for inst in self.instances:
            inst.pool.check()
            held = sum(r.num_blocks - r.num_hashed_blocks for r in inst.running)
            assert held == inst.pool.num_private_held, (held, inst.pool.num_private_held)
