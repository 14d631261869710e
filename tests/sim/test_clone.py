"""Copies of the simulation state: complete, and replaying exactly.

The clones copy attribute by attribute (compiled classes have no ``__dict__`` to
update), so a new attribute must be added to its class's ``clone`` too; the first test
fails when one is forgotten.
"""

from __future__ import annotations

import dataclasses
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
    # node come as arguments, _never_over_cap is derived by the constructor, the
    # histogram's buffers are empty after its flush, and a kernel's owner registers its
    # own handlers.
    cases: list[tuple[Callable[..., Any], object, tuple[Any, ...], set[str]]] = [
        (Simulation.clone, sim, (), set()),
        (Instance.clone, inst, (Kernel(), ItlHistogram(), {}), {"kernel", "itl"}),
        (InstancePower.clone, inst.power, (node,), {"node", "_never_over_cap"}),
        (KVBlockPool.clone, inst.pool, (), set()),
        (MetricsRecorder.clone, sim.metrics, (), set()),
        (NodePower.clone, node, (), {"_static_w"}),
        (Kernel.clone, sim.kernel, (), {"_handlers", "_halted"}),
        (ItlHistogram.copy, sim.itl, (), {"_buffer", "_arrays", "_weights"}),
    ]
    for method, obj, args, left in cases:
        missing = _state(obj) - _read_by(method, obj, *args) - left
        assert not missing, f"{method.__qualname__} does not copy {sorted(missing)}"


def test_a_request_clone_copies_every_field() -> None:
    # A distinct non-default value per field, so a field left out or passed in the
    # wrong position shows.
    special: dict[str, Any] = {
        "content": TokenContent(segments=((7, 32),)),
        "status": RequestStatus.PREEMPTED,
        "reject_reason": RejectReason.POLICY,
        "_hashes": (11, 12),
    }
    values: dict[str, Any] = {}
    for index, field in enumerate(dataclasses.fields(Request)):
        if field.name in special:
            values[field.name] = special[field.name]
        elif field.type in (float, "float"):  # a string unless compiled
            values[field.name] = 100.25 + index
        else:
            assert field.type in (int, "int"), field
            values[field.name] = 100 + index
    original = Request(**values)
    copy = clone_request(original)
    assert copy is not original
    for name, value in values.items():
        assert getattr(copy, name) == value, name
    copy.num_output_tokens += 1
    assert original.num_output_tokens == values["num_output_tokens"]


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
