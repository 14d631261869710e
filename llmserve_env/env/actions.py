"""Action heads: each owns a slice of the MultiDiscrete action, its mask and its effect.

A head is a small object with ``nvec`` (choices per action dimension), ``masks``
(which choices are legal now) and ``apply`` (change the simulation). The environment
concatenates the enabled heads in a fixed order: routing, batching. A disabled head
is simply absent; its heuristic (the scenario's router, the engine's static knobs)
keeps driving that part of the system.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from llmserve_env.config.schema import BatchingHeadConfig, RoutingHeadConfig
from llmserve_env.sim.power import PowerState
from llmserve_env.sim.request import RejectReason
from llmserve_env.sim.router import WeightedRandom
from llmserve_env.sim.simulation import Simulation


class ActionHead(Protocol):
    """One group of action dimensions."""

    name: str
    nvec: list[int]

    def masks(self, sim: Simulation) -> list[np.ndarray]:
        """One boolean array per dimension: which choices are legal now."""
        ...

    def apply(self, sim: Simulation, action: list[int]) -> int:
        """Carry out this head's part of the action (one choice per dimension); returns
        the number of illegal choices met (they are handled as documented, never
        silently ignored)."""
        ...

    def describe(self) -> list[str]:
        """One human-readable line per dimension."""
        ...


class RequestRoutingHead:
    """Routing mode: pick the instance for the request awaiting a decision.

    Choices ``0 .. max_instances-1`` name an instance; with ``allow_reject`` one more
    choice rejects the request. Choosing a padding row or an instance that could never
    serve the request rejects it (reason ``policy``) and counts as an illegal choice;
    masks rule these out.
    """

    name = "routing"

    def __init__(self, cfg: RoutingHeadConfig, num_instances: int, max_instances: int) -> None:
        self.num_instances = num_instances
        self.max_instances = max_instances
        self.allow_reject = cfg.allow_reject
        self.nvec = [max_instances + (1 if cfg.allow_reject else 0)]

    def masks(self, sim: Simulation) -> list[np.ndarray]:
        mask = np.zeros(self.nvec[0], dtype=bool)
        if sim.pending:
            request = sim.pending[0]
            available = {inst.instance_id for inst in sim.available_instances()}
            for inst in sim.instances:
                if inst.instance_id in available and inst.admission_check(request).value == 0:
                    mask[inst.instance_id] = True
        if self.allow_reject:
            mask[-1] = True
        if not mask.any():
            # Nothing can take it: every real instance stays choosable (the request is
            # then rejected with the instance's reason), so the mask is never empty.
            mask[: self.num_instances] = True
        return [mask]

    def apply(self, sim: Simulation, action: list[int]) -> int:
        if not sim.pending:
            return 0
        request = sim.pending[0]
        choice = action[0]
        if self.allow_reject and choice == self.max_instances:
            sim.reject(request, RejectReason.POLICY)
            return 0
        if choice >= self.num_instances:
            sim.reject(request, RejectReason.POLICY)
            return 1
        return 0 if sim.route(request, choice) else 1

    def describe(self) -> list[str]:
        extra = " or reject" if self.allow_reject else ""
        return [f"routing: instance for the pending request (0..{self.max_instances - 1}){extra}"]


class WeightRoutingHead:
    """Cluster mode: a routing weight level per instance for the next interval.

    Arrivals during the interval go to instance ``i`` with probability proportional to
    its level (0 .. ``weight_levels``-1); padding rows are masked to 0; all-zero weights
    mean uniform routing.
    """

    name = "routing"

    def __init__(self, cfg: RoutingHeadConfig, num_instances: int, max_instances: int) -> None:
        self.num_instances = num_instances
        self.max_instances = max_instances
        self.levels = cfg.weight_levels
        self.nvec = [self.levels] * max_instances

    def masks(self, sim: Simulation) -> list[np.ndarray]:
        out = []
        for i in range(self.max_instances):
            mask = np.ones(self.levels, dtype=bool)
            if i >= self.num_instances:
                mask[1:] = False
            out.append(mask)
        return out

    def apply(self, sim: Simulation, levels: list[int]) -> int:
        weights = [float(a) for a in levels[: self.num_instances]]
        illegal = sum(1 for a in levels[self.num_instances :] if a)
        if isinstance(sim.router, WeightedRandom):
            sim.router.weights = weights
        else:
            sim.router = WeightedRandom(sim.rngs["routing"], weights)
        return illegal

    def describe(self) -> list[str]:
        return [
            f"routing weight of instance {i} (0..{self.levels - 1})"
            for i in range(self.max_instances)
        ]


class BatchingHead:
    """Per instance: ``max_num_seqs`` level, token-budget level, scheduling policy.

    Three dimensions per instance row, in that order; padding rows are masked to their
    first choice and ignored.
    """

    name = "batching"

    def __init__(self, cfg: BatchingHeadConfig, num_instances: int, max_instances: int) -> None:
        self.cfg = cfg
        self.num_instances = num_instances
        self.max_instances = max_instances
        self.seqs = list(cfg.max_num_seqs_levels)
        self.tokens = list(cfg.max_num_batched_tokens_levels)
        self.policies = list(cfg.scheduling_policies)
        self.nvec = [len(self.seqs), len(self.tokens), len(self.policies)] * max_instances

    def masks(self, sim: Simulation) -> list[np.ndarray]:
        out = []
        for i in range(self.max_instances):
            for n in (len(self.seqs), len(self.tokens), len(self.policies)):
                mask = np.ones(n, dtype=bool)
                if i >= self.num_instances:
                    mask[1:] = False
                out.append(mask)
        return out

    def apply(self, sim: Simulation, levels: list[int]) -> int:
        for i, inst in enumerate(sim.instances):
            inst.set_knobs(
                max_num_seqs=self.seqs[levels[3 * i]],
                max_num_batched_tokens=self.tokens[levels[3 * i + 1]],
                scheduling_policy=self.policies[levels[3 * i + 2]],
            )
        return sum(1 for a in levels[3 * self.num_instances :] if a)

    def describe(self) -> list[str]:
        lines = []
        for i in range(self.max_instances):
            lines += [
                f"instance {i} max_num_seqs level {self.seqs}",
                f"instance {i} max_num_batched_tokens level {self.tokens}",
                f"instance {i} scheduling policy {self.policies}",
            ]
        return lines


# Legal target states from each current state (a wake in progress must complete; an
# instance that is off or in deep sleep cannot reach a shallower sleep without waking).
_LEGAL_TARGETS: dict[PowerState, tuple[PowerState, ...]] = {
    PowerState.ON: (PowerState.ON, PowerState.SLEEP, PowerState.DEEP_SLEEP, PowerState.OFF),
    PowerState.WAKING: (PowerState.ON,),
    PowerState.SLEEP: (PowerState.ON, PowerState.SLEEP, PowerState.DEEP_SLEEP, PowerState.OFF),
    PowerState.DEEP_SLEEP: (PowerState.ON, PowerState.DEEP_SLEEP, PowerState.OFF),
    PowerState.OFF: (PowerState.ON, PowerState.OFF),
}
_TARGETS = (PowerState.ON, PowerState.SLEEP, PowerState.DEEP_SLEEP, PowerState.OFF)


class PowerHead:
    """Per instance: target power state (on, sleep, deep sleep, off) and clock level.

    Two dimensions per instance row. Masks allow only legal transitions: a waking
    instance can only continue to on; off and deep sleep cannot go to a shallower
    sleep. An illegal choice leaves the state unchanged and is counted.
    """

    name = "power"

    def __init__(self, num_instances: int, max_instances: int, num_levels: int) -> None:
        self.num_instances = num_instances
        self.max_instances = max_instances
        self.num_levels = num_levels
        self.nvec = [len(_TARGETS), num_levels] * max_instances

    def masks(self, sim: Simulation) -> list[np.ndarray]:
        out = []
        for i in range(self.max_instances):
            state_mask = np.zeros(len(_TARGETS), dtype=bool)
            level_mask = np.ones(self.num_levels, dtype=bool)
            if i < self.num_instances:
                power = sim.instances[i].power
                assert power is not None
                for target in _LEGAL_TARGETS[power.state]:
                    state_mask[_TARGETS.index(target)] = True
                level_mask[len(power.spec.clock_levels) :] = False
            else:
                state_mask[0] = True
                level_mask[1:] = False
            out += [state_mask, level_mask]
        return out

    def apply(self, sim: Simulation, levels: list[int]) -> int:
        illegal = 0
        for i, inst in enumerate(sim.instances):
            power = inst.power
            assert power is not None
            target = _TARGETS[levels[2 * i]]
            level = levels[2 * i + 1]
            if target in _LEGAL_TARGETS[power.state]:
                sim.set_power_state(i, target)
            else:
                illegal += 1
            if level < len(power.spec.clock_levels):
                sim.set_frequency(i, level)
            else:
                illegal += 1
        return illegal + sum(1 for a in levels[2 * self.num_instances :] if a)

    def describe(self) -> list[str]:
        lines = []
        for i in range(self.max_instances):
            lines += [
                f"instance {i} power state (0 on, 1 sleep, 2 deep sleep, 3 off)",
                f"instance {i} clock level (0..{self.num_levels - 1}, highest = max clock)",
            ]
        return lines
