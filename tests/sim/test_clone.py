"""Copies of the simulation state: complete, and replaying exactly.

The clones copy attribute by attribute (compiled classes have no ``__dict__`` to
update), so a new attribute must be added to its class's ``clone`` too; the first test
fails when one is forgotten.
"""

from __future__ import annotations

import gc
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from llmserve_env.build import build_simulation, load_scenario
from llmserve_env.sim import instance as instance_module
from llmserve_env.sim.instance import Instance
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.kv_cache import KVBlockPool
from llmserve_env.sim.metrics import MetricsRecorder
from llmserve_env.sim.power import InstancePower, NodePower
from llmserve_env.sim.request import (
    REQUEST_FIELDS,
    RejectReason,
    Request,
    RequestStatus,
    TokenContent,
    clone_request,
)
from llmserve_env.sim.simulation import Simulation
from llmserve_env.sim.stats import ItlHistogram

SCENARIO = ("night-low-traffic", ["workload.duration_s=150", "power.idle_timeout_s=2"])

compiled = not instance_module.__file__.endswith(".py")


def _state(obj: object) -> set[str]:
    """The attribute names of an object: its ``__dict__`` or its slots."""
    if hasattr(obj, "__dict__"):
        return set(vars(obj))
    return {name for cls in type(obj).__mro__ for name in getattr(cls, "__slots__", ())}


def _read_by(method: Callable[..., Any], obj: object, *args: Any) -> set[str]:
    """The attributes of ``obj`` that ``method`` reads when called on it."""
    read: set[str] = set()

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            read.add(name)
            return getattr(obj, name)

    method(Recorder(), *args)
    return read


@pytest.mark.skipif(compiled, reason="calls clone on a proxy: pure-Python classes only")
def test_every_attribute_is_copied_or_deliberately_left() -> None:
    sim = build_simulation(load_scenario(*SCENARIO))
    sim.run_until(60.0)
    inst = sim.instances[0]
    assert inst.power is not None
    node = sim.nodes[0]
    # Attributes a clone does not take from the original: the kernel, ITL histogram and
    # node come as arguments, a lockstep group is rewired by the simulation's clone,
    # _num_arriving and _never_over_cap are derived by the
    # constructors, the histogram's buffers are empty after its flush, and a kernel's
    # owner registers its own handlers.
    cases: list[tuple[Callable[..., Any], object, tuple[Any, ...], set[str]]] = [
        (Simulation.clone, sim, (), {"_num_arriving"}),
        (Instance.clone, inst, (Kernel(), ItlHistogram(), {}), {"kernel", "itl", "dp"}),
        (InstancePower.clone, inst.power, (node,), {"node", "_never_over_cap"}),
        (KVBlockPool.clone, inst.pool, (), set()),
        (MetricsRecorder.clone, sim.metrics, (), set()),
        (NodePower.clone, node, (), {"_static_w"}),
        (Kernel.clone, sim.kernel, (), {"_handlers", "_halted"}),
        (ItlHistogram.copy, sim.itl, (), {"_wbuffer", "_weights"}),
    ]
    for method, obj, args, left in cases:
        missing = _state(obj) - _read_by(method, obj, *args) - left
        assert not missing, f"{method.__qualname__} does not copy {sorted(missing)}"


def test_a_request_clone_copies_every_field() -> None:
    original = Request(1, 2.5, 300, 40, priority=2, session_id=7)
    # Every field gets a distinct value unlike its default, so a field left out of the
    # clone, or copied into another, shows.
    special: dict[str, Any] = {
        "content": TokenContent(segments=((7, 32),)),
        "status": RequestStatus.PREEMPTED,
        "reject_reason": RejectReason.POLICY,
        "_hashes": (11, 12),
    }
    values: dict[str, Any] = {}
    for index, name in enumerate(REQUEST_FIELDS):
        default = getattr(original, name)
        if name in special:
            values[name] = special[name]
        elif isinstance(default, float):
            values[name] = 100.25 + index
        else:
            assert type(default) is int, name
            values[name] = 100 + index
        setattr(original, name, values[name])
    for copy in (clone_request(original), pickle.loads(pickle.dumps(original))):
        assert copy is not original
        for name, value in values.items():
            assert getattr(copy, name) == value, name
        copy.num_output_tokens += 1
        assert original.num_output_tokens == values["num_output_tokens"]
    # REQUEST_FIELDS is every attribute: slots in pure Python, native attributes compiled.
    attrs = getattr(Request, "__mypyc_attrs__", None) or Request.__slots__
    assert set(attrs) - {"__dict__", "__weakref__"} == set(REQUEST_FIELDS)


def _summary(sim: Simulation) -> dict[str, Any]:
    summary = sim.run()
    summary.pop("wall_time_s")
    summary.pop("sim_speed_requests_per_s")
    return summary


def test_a_fork_replays_bit_for_bit() -> None:
    sim = build_simulation(load_scenario(*SCENARIO))
    sim.run_until(50.0)
    fork = sim.clone()
    twice = fork.clone()
    expected = _summary(sim)
    assert _summary(fork) == expected
    assert _summary(twice) == expected
    assert sim.metrics.rows == fork.metrics.rows == twice.metrics.rows
    assert sim.metrics.series == fork.metrics.series


def test_a_dropped_copy_leaves_no_cyclic_garbage() -> None:
    """Nothing in a simulation refers back to it (events are dispatched per run, the
    finish callback is the metrics recorder's), so a what-if copy that is dropped is
    freed at once instead of waiting for the cyclic garbage collector."""
    sim = build_simulation(load_scenario(*SCENARIO))
    sim.run_until(50.0)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        fork = sim.clone()
        fork.run_until(60.0)
        del fork
        assert gc.collect() == 0
        del sim
        assert gc.collect() == 0
    finally:
        if was_enabled:
            gc.enable()
