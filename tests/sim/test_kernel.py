"""The event kernel: ordering, resumability, halting, snapshots."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from llmserve_env.sim.events import Event
from llmserve_env.sim.kernel import Kernel


@dataclass(frozen=True, slots=True)
class Early(Event):
    priority: ClassVar[int] = 1
    tag: str


@dataclass(frozen=True, slots=True)
class Late(Event):
    priority: ClassVar[int] = 9
    tag: str


def _kernel(log: list[tuple[float, str]]) -> Kernel:
    kernel = Kernel()
    kernel.on(Early, lambda e: log.append((kernel.now, e.tag)))
    kernel.on(Late, lambda e: log.append((kernel.now, e.tag)))
    return kernel


def test_orders_by_time_then_priority_then_sequence() -> None:
    log: list[tuple[float, str]] = []
    kernel = _kernel(log)
    kernel.schedule(2.0, Late("c"))
    kernel.schedule(1.0, Late("b1"))
    kernel.schedule(1.0, Early("a"))
    kernel.schedule(1.0, Late("b2"))
    kernel.run_until(10.0)
    assert log == [(1.0, "a"), (1.0, "b1"), (1.0, "b2"), (2.0, "c")]
    assert kernel.now == 10.0


def test_run_until_is_resumable_and_inclusive() -> None:
    log: list[tuple[float, str]] = []
    kernel = _kernel(log)
    for t in (0.5, 1.0, 1.5, 2.0):
        kernel.schedule(t, Late(str(t)))
    assert kernel.run_until(1.0) is False
    assert [tag for _, tag in log] == ["0.5", "1.0"]
    assert kernel.now == 1.0
    kernel.run_until(1.2)
    assert kernel.now == 1.2 and len(log) == 2
    kernel.run_until(5.0)
    assert [tag for _, tag in log] == ["0.5", "1.0", "1.5", "2.0"]


def test_split_runs_match_one_run() -> None:
    def trace(cuts: list[float]) -> list[tuple[float, str]]:
        log: list[tuple[float, str]] = []
        kernel = _kernel(log)
        for i in range(50):
            kernel.schedule(i * 0.37 % 7, Early(str(i)) if i % 3 else Late(str(i)))
        for cut in cuts:
            kernel.run_until(cut)
        return log

    assert trace([100.0]) == trace([0.1, 1.11, 2.0, 3.5, 3.5, 100.0])


def test_halt_stops_after_current_event() -> None:
    kernel = Kernel()
    seen: list[str] = []

    def on_early(event: Early) -> None:
        seen.append(event.tag)
        if event.tag == "stop":
            kernel.halt()

    kernel.on(Early, on_early)
    for t, tag in ((1.0, "a"), (2.0, "stop"), (3.0, "c")):
        kernel.schedule(t, Early(tag))
    assert kernel.run_until(10.0) is True
    assert seen == ["a", "stop"] and kernel.now == 2.0
    assert kernel.run_until(10.0) is False
    assert seen == ["a", "stop", "c"]


def test_rejects_past_events_and_double_handlers() -> None:
    kernel = Kernel()
    kernel.on(Early, lambda e: None)
    with pytest.raises(ValueError, match="already has a handler"):
        kernel.on(Early, lambda e: None)
    kernel.run_until(5.0)
    with pytest.raises(ValueError, match="before now"):
        kernel.schedule(4.0, Early("x"))


def test_snapshot_restore_replays() -> None:
    log: list[tuple[float, str]] = []
    kernel = _kernel(log)
    for t in (1.0, 2.0, 3.0):
        kernel.schedule(t, Early(str(t)))
    kernel.run_until(1.5)
    state = kernel.snapshot()
    kernel.run_until(10.0)
    first = list(log)
    kernel.restore(state)
    del log[1:]
    kernel.run_until(10.0)
    assert log == first
    assert kernel.peek() == float("inf")


def test_a_dispatch_function_replaces_the_registered_handlers() -> None:
    registered: list[tuple[float, str]] = []
    kernel = _kernel(registered)
    passed: list[tuple[float, str]] = []
    kernel.schedule(1.0, Late("x"))
    kernel.schedule(2.0, Early("y"))
    kernel.schedule(3.0, Late("z"))
    assert kernel.run_until(1.5, lambda e: passed.append((kernel.now, e.tag))) is False
    assert passed == [(1.0, "x")] and not registered

    def halt_after(e: Early) -> None:
        passed.append((kernel.now, e.tag))
        kernel.halt()

    assert kernel.run_until(5.0, halt_after) is True
    assert passed == [(1.0, "x"), (2.0, "y")] and kernel.now == 2.0
    kernel.run_until(5.0)  # back to the registered handlers
    assert registered == [(3.0, "z")] and not registered[1:]
