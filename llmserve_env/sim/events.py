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

Events are compiled with the simulator core (a plain class with ``Final`` attributes
is built in compiled code at a seventh of the cost of a frozen dataclass, and its
fields are read as struct members). ``Final`` makes them immutable: mypy rejects an
assignment, and compiled classes refuse it at run time. Compiled classes cannot be
subclassed by interpreted ones, so every event type is defined here.
"""

from __future__ import annotations

from typing import ClassVar, Final


class Event:
    """Base of all events (``priority`` orders simultaneous ones, lower first)."""

    __slots__ = ()
    priority: ClassVar[int] = 100


class IterationDone(Event):
    """An engine iteration (or a vectorised stretch of decode iterations) ends.

    Attributes:
        instance_id: The engine.
        generation: The engine's generation counter when this was scheduled; a stale
            generation means the stretch was cut short and this event is void.
    """

    __slots__ = ("generation", "instance_id")
    priority: ClassVar[int] = 10

    def __init__(self, instance_id: int, generation: int) -> None:
        self.instance_id: Final = instance_id
        self.generation: Final = generation


class Arrival(Event):
    """The workload's next request arrives.

    Attributes:
        index: Position of the request in the workload.
    """

    __slots__ = ("index",)
    priority: ClassVar[int] = 30

    def __init__(self, index: int) -> None:
        self.index: Final = index


class EngineWake(Event):
    """An idle engine that received work starts its next iteration."""

    __slots__ = ("generation", "instance_id")
    priority: ClassVar[int] = 35

    def __init__(self, instance_id: int, generation: int) -> None:
        self.instance_id: Final = instance_id
        self.generation: Final = generation


class StepLaunch(Event):
    """A lockstep data-parallel group starts its next step
    (:class:`~llmserve_env.sim.data_parallel.DPGroup`).

    Attributes:
        group_id: The group.
    """

    __slots__ = ("group_id",)
    priority: ClassVar[int] = 36

    def __init__(self, group_id: int) -> None:
        self.group_id: Final = group_id


class DecisionPoint(Event):
    """A control tick: the simulation halts so an agent can act."""

    __slots__ = ()
    priority: ClassVar[int] = 40


class Sample(Event):
    """Record one row of the metrics time series."""

    __slots__ = ()
    priority: ClassVar[int] = 50


class PowerTransitionDone(Event):
    """An instance finished waking up (stale when its wake generation moved on)."""

    __slots__ = ("generation", "instance_id")
    priority: ClassVar[int] = 20

    def __init__(self, instance_id: int, generation: int) -> None:
        self.instance_id: Final = instance_id
        self.generation: Final = generation


class PowerTick(Event):
    """The power governor acts."""

    __slots__ = ()
    priority: ClassVar[int] = 45
