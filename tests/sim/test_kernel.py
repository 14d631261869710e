"""The event kernel: ordering, resumability, halting, snapshots."""

from __future__ import annotations

import pytest

from llmserve_env.sim.events import Arrival, Event, IterationDone
from llmserve_env.sim.kernel import Kernel

# Two of the simulation's event types stand for any: events are compiled with the core,
# and interpreted classes cannot subclass compiled ones. An iteration end (priority 10)
# fires before a simultaneous arrival (priority 30); each carries an integer tag.
Early = IterationDone
Late = Arrival


def early(k: int) -> IterationDone:
    return IterationDone(k, 0)


def late(k: int) -> Arrival:
    return Arrival(k)


def tag(event: Event) -> int:
    if isinstance(event, IterationDone):
        return event.instance_id
    assert isinstance(event, Arrival)
    return event.index


def _kernel(log: list[tuple[float, int]]) -> Kernel:
    kernel = Kernel()
    kernel.on(Early, lambda e: log.append((kernel.now, tag(e))))
    kernel.on(Late, lambda e: log.append((kernel.now, tag(e))))
    return kernel


def test_orders_by_time_then_priority_then_sequence() -> None:
    log: list[tuple[float, int]] = []
    kernel = _kernel(log)
    kernel.schedule(2.0, late(4))
    kernel.schedule(1.0, late(2))
    kernel.schedule(1.0, early(1))
    kernel.schedule(1.0, late(3))
    kernel.run_until(10.0)
    assert log == [(1.0, 1), (1.0, 2), (1.0, 3), (2.0, 4)]
    assert kernel.now == 10.0


def test_run_until_is_resumable_and_inclusive() -> None:
    log: list[tuple[float, int]] = []
    kernel = _kernel(log)
    for k, t in enumerate((0.5, 1.0, 1.5, 2.0)):
        kernel.schedule(t, late(k))
    assert kernel.run_until(1.0) is False
    assert [k for _, k in log] == [0, 1]
    assert kernel.now == 1.0
    kernel.run_until(1.2)
    assert kernel.now == 1.2 and len(log) == 2
    kernel.run_until(5.0)
    assert [k for _, k in log] == [0, 1, 2, 3]


def test_split_runs_match_one_run() -> None:
    def trace(cuts: list[float]) -> list[tuple[float, int]]:
        log: list[tuple[float, int]] = []
        kernel = _kernel(log)
        for i in range(50):
            kernel.schedule(i * 0.37 % 7, early(i) if i % 3 else late(i))
        for cut in cuts:
            kernel.run_until(cut)
        return log

    assert trace([100.0]) == trace([0.1, 1.11, 2.0, 3.5, 3.5, 100.0])


def test_halt_stops_after_current_event() -> None:
    kernel = Kernel()
    seen: list[int] = []
    stop = 2

    def on_early(event: IterationDone) -> None:
        seen.append(event.instance_id)
        if event.instance_id == stop:
            kernel.halt()

    kernel.on(Early, on_early)
    for t, k in ((1.0, 1), (2.0, stop), (3.0, 3)):
        kernel.schedule(t, early(k))
    assert kernel.run_until(10.0) is True
    assert seen == [1, stop] and kernel.now == 2.0
    assert kernel.run_until(10.0) is False
    assert seen == [1, stop, 3]


def test_rejects_past_events_and_double_handlers() -> None:
    kernel = Kernel()
    kernel.on(Early, lambda e: None)
    with pytest.raises(ValueError, match="already has a handler"):
        kernel.on(Early, lambda e: None)
    kernel.run_until(5.0)
    with pytest.raises(ValueError, match="before now"):
        kernel.schedule(4.0, early(0))


def test_snapshot_restore_replays() -> None:
    log: list[tuple[float, int]] = []
    kernel = _kernel(log)
    for k, t in enumerate((1.0, 2.0, 3.0)):
        kernel.schedule(t, early(k))
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
    registered: list[tuple[float, int]] = []
    kernel = _kernel(registered)
    passed: list[tuple[float, int]] = []
    kernel.schedule(1.0, late(1))
    kernel.schedule(2.0, early(2))
    kernel.schedule(3.0, late(3))
    assert kernel.run_until(1.5, lambda e: passed.append((kernel.now, tag(e)))) is False
    assert passed == [(1.0, 1)] and not registered

    def halt_after(e: Event) -> None:
        passed.append((kernel.now, tag(e)))
        kernel.halt()

    assert kernel.run_until(5.0, halt_after) is True
    assert passed == [(1.0, 1), (2.0, 2)] and kernel.now == 2.0
    kernel.run_until(5.0)  # back to the registered handlers
    assert registered == [(3.0, 3)] and not registered[1:]
