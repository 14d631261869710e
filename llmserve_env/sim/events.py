"""Simulation events: immutable data, no logic.

Simultaneous events fire in priority order (lower first). The order encodes causality
at one instant:

==========  ===================  ==============================================
priority    event                why this place
==========  ===================  ==============================================
10          IterationDone        an iteration's tokens and freed KV are visible
                                 to everything else that happens at that instant
20          PowerTransitionDone  a woken instance is on before requests arrive
30          Arrival              a request is routed after capacity was freed
35          EngineWake           an idle engine starts after every simultaneous
                                 arrival has landed (a burst is batched together)
36          StepLaunch           a lockstep data-parallel group starts after every
                                 rank has ended, received and woken
40          DecisionPoint        an agent decides on the settled state
45          PowerTick            the governor acts on the settled state
50          Sample               the time series sees the settled state
==========  ===================  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Event:
    """Base of all events."""

    priority: ClassVar[int] = 100


@dataclass(frozen=True, slots=True)
class IterationDone(Event):
    """An engine iteration (or a vectorised stretch of decode iterations) ends.

    Attributes:
        instance_id: The engine.
        generation: The engine's generation counter when this was scheduled; a stale
            generation means the stretch was cut short and this event is void.
    """

    priority: ClassVar[int] = 10
    instance_id: int
    generation: int


@dataclass(frozen=True, slots=True)
class Arrival(Event):
    """The workload's next request arrives.

    Attributes:
        index: Position of the request in the workload.
    """

    priority: ClassVar[int] = 30
    index: int


@dataclass(frozen=True, slots=True)
class EngineWake(Event):
    """An idle engine that received work starts its next iteration."""

    priority: ClassVar[int] = 35
    instance_id: int
    generation: int


@dataclass(frozen=True, slots=True)
class StepLaunch(Event):
    """A lockstep data-parallel group starts its next step
    (:class:`~llmserve_env.sim.data_parallel.DPGroup`).

    Attributes:
        group_id: The group.
    """

    priority: ClassVar[int] = 36
    group_id: int


@dataclass(frozen=True, slots=True)
class DecisionPoint(Event):
    """A control tick: the simulation halts so an agent can act."""

    priority: ClassVar[int] = 40


@dataclass(frozen=True, slots=True)
class Sample(Event):
    """Record one row of the metrics time series."""

    priority: ClassVar[int] = 50


@dataclass(frozen=True, slots=True)
class PowerTransitionDone(Event):
    """An instance finished waking up (stale when its wake generation moved on)."""

    priority: ClassVar[int] = 20
    instance_id: int
    generation: int


@dataclass(frozen=True, slots=True)
class PowerTick(Event):
    """The power governor acts."""

    priority: ClassVar[int] = 45
