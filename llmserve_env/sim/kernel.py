"""A small SimPy-shaped event kernel: ``schedule``, ``peek``, ``step``, ``run_until``.

Events are plain frozen data (see :mod:`llmserve_env.sim.events`) kept in a binary
heap ordered by ``(time, priority, sequence number)``, so simultaneous events fire in a
documented order and ties beyond that in scheduling order. There are no generator
processes: the whole state is data, which is what makes ``copy``/``fork`` possible.
The sequence counter belongs to the kernel, never to a class.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from llmserve_env.sim.events import Event

Handler = Callable[[Any], None]


class Kernel:
    """The clock and the future event list.

    Attributes:
        now: Current simulated time (seconds).
    """

    __slots__ = ("_halted", "_handlers", "_heap", "_seq", "now")

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, int, Event]] = []
        self._seq = 0
        self._handlers: dict[type, Handler] = {}
        self._halted = False

    def on(self, event_type: type, handler: Handler) -> None:
        """Register the one handler of an event type (the dispatch table)."""
        if event_type in self._handlers:
            raise ValueError(f"{event_type.__name__} already has a handler")
        self._handlers[event_type] = handler

    def schedule(self, time: float, event: Event) -> None:
        """Put ``event`` on the future event list at ``time`` (not before now)."""
        if time < self.now:
            raise ValueError(
                f"cannot schedule {type(event).__name__} at {time} before now={self.now}"
            )
        heapq.heappush(self._heap, (time, event.priority, self._seq, event))
        self._seq += 1

    def peek(self) -> float:
        """Time of the next event, or ``inf`` when none is pending."""
        return self._heap[0][0] if self._heap else float("inf")

    def __len__(self) -> int:
        return len(self._heap)

    def step(self) -> Event:
        """Fire the next event: advance the clock and call its handler.

        Raises:
            IndexError: when no event is pending.
        """
        time, _, _, event = heapq.heappop(self._heap)
        self.now = time
        self._fire(event)
        return event

    def _fire(self, event: Event) -> None:
        """Call the handler registered for ``event``'s type."""
        self._handlers[type(event)](event)

    def halt(self) -> None:
        """Make the running :meth:`run_until` return after the current event."""
        self._halted = True

    def run_until(self, until: float, dispatch: Handler | None = None) -> bool:
        """Fire every event with ``time <= until``; resumable.

        Args:
            until: Time to run to.
            dispatch: Called with every event instead of the handlers registered with
                :meth:`on`. An owner that passes its dispatch method per call, rather
                than registering bound methods, keeps the kernel from referring back to
                it: no reference cycle, so a dropped copy is freed at once.

        Returns:
            ``True`` if it stopped early because a handler called :meth:`halt` (the
            clock then stands at that event's time), ``False`` if it reached ``until``.
        """
        heap = self._heap
        fire = self._fire if dispatch is None else dispatch
        pop = heapq.heappop
        self._halted = False
        while heap and heap[0][0] <= until:
            time, _, _, event = pop(heap)
            self.now = time
            fire(event)
            if self._halted:
                self._halted = False
                return True
        if until != float("inf") and until > self.now:
            self.now = until
        return False

    def clone(self) -> Kernel:
        """A copy with the same clock and pending events, and no handlers (the owner
        registers its own)."""
        other = Kernel()
        other.now = self.now
        other._heap = list(self._heap)  # events are immutable: sharing them is safe
        other._seq = self._seq
        return other

    def snapshot(self) -> tuple[float, list[tuple[float, int, int, Event]], int]:
        """The kernel state as plain data (events are immutable and may be shared)."""
        return self.now, list(self._heap), self._seq

    def restore(self, state: tuple[float, list[tuple[float, int, int, Event]], int]) -> None:
        """Return to a state taken by :meth:`snapshot`."""
        self.now, heap, self._seq = state
        self._heap = list(heap)
        self._halted = False
