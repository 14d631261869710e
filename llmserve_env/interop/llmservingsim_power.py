"""LLMServingSim's per-node ``power`` blocks as llmserve power settings.

An LLMServingSim cluster config may give each node a ``power`` block (all figures in
W, pJ/bit, GB and s)::

    "power": {
        "base_node_power": 219,
        "npu": {"A6000": {"idle_power": 33, "standby_power": 89,
                          "active_power": 300, "standby_duration": 18}},
        "cpu": {"idle_power": 10, "active_power": 185, "util": 0.5},
        "dram": {"dimm_size": 32, "idle_power": 4.0, "energy_per_bit": 6.0},
        "link": {"num_links": 1, "idle_power": 5.0, "energy_per_bit": 4.0},
        "nic": {"num_nics": 1, "idle_power": 11.2},
        "storage": {"num_devices": 1, "idle_power": 5.9}
    }

It becomes the node's ``cluster.nodes[i].power`` and, per accelerator, an entry of
``power.devices``:

==============================  ==============================================
LLMServingSim                   llmserve
==============================  ==============================================
``base_node_power``             ``nodes[i].power.base_w``
``npu.<HW>.idle_power``         ``power.devices.<device>.idle_w``
``npu.<HW>.standby_power``      ``power.devices.<device>.standby_w``
``npu.<HW>.standby_duration``   ``power.devices.<device>.standby_s``
``npu.<HW>.active_power``       ``power.devices.<device>.tdp_w`` (see below)
``cpu.*``                       ``cpu_idle_w``, ``cpu_active_w``, ``cpu_util``
                                (same energy, see below)
``dram.dimm_size``              ``dimm_gib``; ``num_dimms`` = ``cpu_mem.mem_size``
                                // ``dimm_size`` as LLMServingSim counts them
``dram.idle_power``             ``dimm_idle_w``
``dram.energy_per_bit``         ``dram_pj_per_bit``
``link.*``                      ``num_links``, ``link_idle_w``, ``link_pj_per_bit``
``nic.*``                       ``num_nics``, ``nic_idle_w``
``storage.*``                   ``num_storage``, ``storage_idle_w``
==============================  ==============================================

Two figures change meaning on the way:

- ``active_power``: LLMServingSim charges it for the whole of every layer it runs.
  llmserve reads it as the board's full-load power (``tdp_w``) and draws
  ``idle + compute x MFU + memory x MBU`` during an iteration, at most ``tdp_w``, so
  iterations that do not load the device fully draw less than LLMServingSim charges.
- ``cpu``: LLMServingSim draws ``idle + (active - idle) x util`` all the time and
  ``(active - idle) x max(0.7 - util, 0)`` more while an NPU runs; llmserve draws
  ``cpu_idle_w`` all the time and ``(cpu_active_w - cpu_idle_w) x cpu_util`` more
  while an instance on the node runs, so the import sets ``cpu_idle_w`` to the first
  figure and ``cpu_util`` to ``max(0.7 - util, 0) / (1 - util)``, which gives the same
  energy (LLMServingSim adds the busy share once per running instance, llmserve once
  per node).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.hardware import resolve_device

NPU_KEYS = ("idle_power", "standby_power", "active_power", "standby_duration")
"""Keys LLMServingSim requires in each ``npu.<HW>`` entry."""

COMPONENT_KEYS: dict[str, tuple[str, ...]] = {
    "cpu": ("idle_power", "active_power", "util"),
    "dram": ("dimm_size", "idle_power", "energy_per_bit"),
    "link": ("num_links", "idle_power", "energy_per_bit"),
    "nic": ("num_nics", "idle_power"),
    "storage": ("num_devices", "idle_power"),
}
"""Keys LLMServingSim requires in each component entry of a ``power`` block."""

CPU_BUSY_UTIL = 0.7
"""CPU load LLMServingSim assumes while an NPU runs (``power_model.py``)."""


def _number(value: Any, key: str, path: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataFileError(path, f"{key}: expected a number, got {value!r}")
    if value < 0:
        raise DataFileError(path, f"{key}: must not be negative, got {value!r}")
    return float(value)


def _count(value: Any, key: str, path: Path) -> int:
    number = _number(value, key, path)
    if number != int(number):
        raise DataFileError(path, f"{key}: expected a whole number, got {value!r}")
    return int(number)


def _section(block: dict[str, Any], name: str, where: str, path: Path) -> dict[str, Any]:
    section = block.get(name)
    if not isinstance(section, dict):
        raise DataFileError(path, f"{where}.{name}: missing (LLMServingSim requires it)")
    missing = [key for key in COMPONENT_KEYS.get(name, NPU_KEYS) if key not in section]
    if missing:
        raise DataFileError(path, f"{where}.{name}: missing {', '.join(map(repr, missing))}")
    return section


def node_power(node: dict[str, Any], node_key: str, path: Path, notes: list[str]) -> dict[str, Any]:
    """``cluster.nodes[i].power`` for one node's LLMServingSim ``power`` block.

    Args:
        node: The node's config (its ``power`` block and ``cpu_mem.mem_size``, from
            which LLMServingSim counts DIMMs).
        node_key: The node's location for messages, e.g. ``nodes[0]``.
        path: The config file (for messages).
        notes: Conversions made are appended here.

    Raises:
        DataFileError: a missing section or key, or a value that is not a number.
    """
    where = f"{node_key}.power"
    block = node.get("power")
    if not isinstance(block, dict):
        raise DataFileError(path, f"{where}: expected an object")
    if "base_node_power" not in block:
        raise DataFileError(path, f"{where}: missing 'base_node_power'")
    cpu = _section(block, "cpu", where, path)
    dram = _section(block, "dram", where, path)
    link = _section(block, "link", where, path)
    nic = _section(block, "nic", where, path)
    storage = _section(block, "storage", where, path)
    cpu_idle = _number(cpu["idle_power"], f"{where}.cpu.idle_power", path)
    cpu_active = _number(cpu["active_power"], f"{where}.cpu.active_power", path)
    util = _number(cpu["util"], f"{where}.cpu.util", path)
    if util > 1.0:
        raise DataFileError(path, f"{where}.cpu.util: must be at most 1, got {util:g}")
    if cpu_active < cpu_idle:
        raise DataFileError(
            path,
            f"{where}.cpu: active_power ({cpu_active:g}) is below idle_power ({cpu_idle:g})",
        )
    span = cpu_active - cpu_idle
    cpu_base = cpu_idle + span * util
    busy_util = max(CPU_BUSY_UTIL - util, 0.0) / (1.0 - util) if util < 1.0 else 0.0
    dimm_gib = _number(dram["dimm_size"], f"{where}.dram.dimm_size", path)
    if dimm_gib <= 0:
        raise DataFileError(path, f"{where}.dram.dimm_size: must be positive")
    mem = (node.get("cpu_mem") or {}).get("mem_size")
    if mem is None:
        raise DataFileError(
            path, f"{where}.dram: the node has no cpu_mem.mem_size to count DIMMs from"
        )
    num_dimms = int(_number(mem, f"{node_key}.cpu_mem.mem_size", path) // dimm_gib)
    out = {
        "base_w": _number(block["base_node_power"], f"{where}.base_node_power", path),
        "cpu_idle_w": round(cpu_base, 6),
        "cpu_active_w": cpu_active,
        "cpu_util": round(busy_util, 6),
        "num_dimms": num_dimms,
        "dimm_gib": dimm_gib,
        "dimm_idle_w": _number(dram["idle_power"], f"{where}.dram.idle_power", path),
        "dram_pj_per_bit": _number(dram["energy_per_bit"], f"{where}.dram.energy_per_bit", path),
        "num_links": _count(link["num_links"], f"{where}.link.num_links", path),
        "link_idle_w": _number(link["idle_power"], f"{where}.link.idle_power", path),
        "link_pj_per_bit": _number(link["energy_per_bit"], f"{where}.link.energy_per_bit", path),
        "num_nics": _count(nic["num_nics"], f"{where}.nic.num_nics", path),
        "nic_idle_w": _number(nic["idle_power"], f"{where}.nic.idle_power", path),
        "num_storage": _count(storage["num_devices"], f"{where}.storage.num_devices", path),
        "storage_idle_w": _number(storage["idle_power"], f"{where}.storage.idle_power", path),
    }
    notes.append(
        f"{where}.cpu: idle {cpu_idle:g} W + ({cpu_active:g} - {cpu_idle:g}) W x util {util:g} "
        f"-> cpu_idle_w {out['cpu_idle_w']:g}; busy load {CPU_BUSY_UTIL:g} -> cpu_util "
        f"{out['cpu_util']:g} of the remaining span (same energy as LLMServingSim)"
    )
    notes.append(
        f"{where}.dram: cpu_mem {mem:g} GB // dimm_size {dimm_gib:g} GB -> num_dimms {num_dimms}"
    )
    return out


def device_power(
    block: dict[str, Any],
    hardware: list[str],
    where: str,
    path: Path,
    notes: list[str],
) -> dict[str, dict[str, float]]:
    """``power.devices`` entries for the accelerators a node's instances use.

    Args:
        block: The node's ``power`` block.
        hardware: ``hardware`` names of the node's instances, as written in the config.
        where: The block's location for messages.
        path: The config file (for messages).
        notes: Conversions made are appended here.

    Raises:
        DataFileError: an instance's hardware without an ``npu`` entry, a missing key,
            or ``active_power`` not above ``idle_power``.
    """
    npu = block.get("npu")
    if not isinstance(npu, dict):
        raise DataFileError(path, f"{where}.npu: missing (LLMServingSim requires it)")
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(hardware):
        key = f"{where}.npu.{name}"
        entry = npu.get(name)
        if not isinstance(entry, dict):
            raise DataFileError(path, f"{key}: missing (an instance runs on {name!r})")
        missing = [k for k in NPU_KEYS if k not in entry]
        if missing:
            raise DataFileError(path, f"{key}: missing {', '.join(map(repr, missing))}")
        idle = _number(entry["idle_power"], f"{key}.idle_power", path)
        active = _number(entry["active_power"], f"{key}.active_power", path)
        if active <= idle:
            raise DataFileError(
                path, f"{key}: active_power ({active:g}) must exceed idle_power ({idle:g})"
            )
        device = resolve_device(name).name
        out[device] = {
            "idle_w": idle,
            "standby_w": _number(entry["standby_power"], f"{key}.standby_power", path),
            "tdp_w": active,
            "standby_s": _number(entry["standby_duration"], f"{key}.standby_duration", path),
        }
        notes.append(
            f"{key}: active_power {active:g} W -> power.devices.{device}.tdp_w (the board's "
            "full-load power: llmserve draws idle + compute x MFU + memory x MBU per "
            "iteration, at most this, where LLMServingSim draws it for every iteration)"
        )
    for name in npu:
        if name not in hardware:
            notes.append(f"{where}.npu.{name}: no instance on this node uses it; ignored")
    return out
