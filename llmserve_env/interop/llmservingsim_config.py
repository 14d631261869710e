"""Turn an LLMServingSim cluster config and trace into an llmserve scenario.

Both schemas are read: the ISPASS'26 paper artifact's (``npu_num`` devices in
``npu_group`` pipeline groups per instance) and the current one (``num_npus``,
``tp_size``, ``pp_size``, ``ep_size`` and optional per-instance engine knobs).

LLMServingSim's defaults are kept: 16-token blocks, 2048 batched tokens per iteration,
no batch-size cap (``max_num_seqs`` = :data:`UNCAPPED_MAX_NUM_SEQS`), round-robin
routing, 16-bit weights, prefix caching off unless asked for, the first ``N`` requests.
``npu_mem.mem_size`` (GB, times ``mem_util`` in the current schema) becomes
``gpu_memory_utilization`` relative to the catalog device's memory.

The instances of one ``dp_group`` (vLLM ``--data-parallel-size``) become one instance
group with ``data_parallel_size`` ranks; with ``ep_size`` equal to the number of ranks
(vLLM ``--enable-expert-parallel``) the group has ``enable_expert_parallel`` and steps
in lockstep.

Per-node ``power`` blocks become the nodes' ``power`` settings and ``power.devices``
entries (see :mod:`llmserve_env.interop.llmservingsim_power`).

Features the simulator does not model yet are refused with
:class:`UnsupportedFeatureError`, naming the feature and the config key: P/D
disaggregation (``pd_type``), CXL memory (``cxl_mem``), PIM (``cpu_mem.pim_config``),
per-layer placement (``placement``), pipeline parallelism (``npu_group`` > 1,
``pp_size``), expert parallelism other than over the ranks of a ``dp_group`` at
``tp_size`` 1, a data-parallel group spanning nodes, a second-tier prefix store
(``--prefix-storage``, ``--enable-prefix-sharing``), an FP8 KV cache, clusters serving
several models, and different power figures for one accelerator on different nodes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmserve_env.config.errors import DataFileError, LLMServeError
from llmserve_env.interop.llmservingsim_power import device_power, node_power
from llmserve_env.perf.comm import AlphaBetaComm
from llmserve_env.perf.hardware import DeviceSpec, resolve_device
from llmserve_env.perf.model_arch import ModelArch, load_model_arch

UNCAPPED_MAX_NUM_SEQS = 1024
"""``max_num_seqs`` standing in for LLMServingSim's "no cap on batch size" (the KV cache
binds long before it on the paper's setups; a larger value would only inflate vLLM's
sampler-memory reserve)."""

LLMSERVINGSIM_DEFAULTS: dict[str, Any] = {
    "block_size": 16,
    "max_num_batched_tokens": 2048,
    "max_num_seqs": UNCAPPED_MAX_NUM_SEQS,
    "enable_prefix_caching": False,
    "enable_chunked_prefill": True,
}

_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16"}


class UnsupportedFeatureError(LLMServeError, ValueError):
    """An LLMServingSim feature the simulator does not support (yet).

    Attributes:
        features: ``(feature, config key)`` pairs.
    """

    def __init__(self, source: str, features: list[tuple[str, str]]) -> None:
        self.features = features
        lines = [f"{source}: cannot import, the simulator does not support:"]
        lines += [f"  {feature} (config key {key})" for feature, key in features]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ImportOptions:
    """Command-line choices of ``llmserve import llmservingsim`` (LLMServingSim's flags).

    Attributes:
        num_reqs: Use the first N requests (``None``: all).
        enable_prefix_caching: LLMServingSim ``--enable-prefix-caching``.
        prefix_storage: ``--prefix-storage`` (second-tier prefix store; unsupported).
        enable_prefix_sharing: ``--enable-prefix-sharing`` (unsupported).
        max_num_batched_tokens: ``--max-num-batched-tokens``.
        max_num_seqs: ``--max-num-seqs`` (``None``: uncapped).
        block_size: ``--block-size``.
        max_model_len: vLLM's ``max_model_len`` (``None``: the model's).
        gpu_memory_utilization: Replace the value derived from ``npu_mem``.
        allow_unsupported: Drop expert-parallel grouping (``ep_size``, ``dp_group``)
            instead of refusing: each data-parallel rank becomes an independent
            instance holding every expert (an approximation, reported).
    """

    num_reqs: int | None = None
    enable_prefix_caching: bool = False
    prefix_storage: str | None = None
    enable_prefix_sharing: bool = False
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    block_size: int | None = None
    max_model_len: int | None = None
    gpu_memory_utilization: float | None = None
    allow_unsupported: bool = False


@dataclass
class ConvertedCluster:
    """The result of a conversion.

    Attributes:
        scenario: Scenario data (validate with the schema before use).
        instances: Per instance group: (key, model arch, device, tp, dtype, hardware
            name as written in the config).
        notes: Conversions and approximations made, for the scenario header.
        link_bw_gbps: ``link_bw`` of the config (GB/s).
        link_latency_us: ``link_latency`` of the config (microseconds).
    """

    scenario: dict[str, Any]
    instances: list[tuple[str, ModelArch, DeviceSpec, int, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    link_bw_gbps: float = 0.0
    link_latency_us: float = 0.0

    def link(self) -> AlphaBetaComm:
        """The config's link as LLMServingSim times collectives over it: the ring
        algorithm at the full ``link_bw``, ``link_latency`` per step, nothing else.

        Raises:
            ValueError: the config gives no link bandwidth.
        """
        return AlphaBetaComm(self.link_bw_gbps, self.link_latency_us * 1e-6, efficiency=1.0)


def read_cluster_config(path: str | Path) -> dict[str, Any]:
    """Parse a cluster config JSON file.

    Raises:
        DataFileError: invalid JSON or not an LLMServingSim cluster config.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFileError(path, "cluster config not found") from exc
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DataFileError(
            path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise DataFileError(path, "not an LLMServingSim cluster config (no 'nodes' list)")
    problems = type_problems(data)
    if problems:
        raise DataFileError(path, "; ".join(problems))
    return data


def _unsupported(config: dict[str, Any], options: ImportOptions) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if "cxl_mem" in config:
        found.append(("CXL memory pool", "cxl_mem"))
    if options.prefix_storage is not None:
        found.append((f"second-tier prefix store in {options.prefix_storage}", "--prefix-storage"))
    if options.enable_prefix_sharing:
        found.append(("prefix sharing across instances", "--enable-prefix-sharing"))
    for n, node in enumerate(config["nodes"]):
        where = f"nodes[{n}]"
        if isinstance(node.get("cpu_mem"), dict) and "pim_config" in node["cpu_mem"]:
            found.append(("processing-in-memory (PIM) attention", f"{where}.cpu_mem.pim_config"))
        for i, inst in enumerate(node.get("instances") or []):
            key = f"{where}.instances[{i}]"
            if inst.get("pd_type") is not None:
                found.append(
                    (
                        f"prefill/decode disaggregation (pd_type={inst['pd_type']!r})",
                        f"{key}.pd_type",
                    )
                )
            if "placement" in inst:
                found.append(("per-layer weight and KV placement", f"{key}.placement"))
            if int(inst.get("npu_group", 1) or 1) > 1:
                found.append(("pipeline parallelism", f"{key}.npu_group"))
            if int(inst.get("pp_size", 1) or 1) > 1:
                found.append(("pipeline parallelism", f"{key}.pp_size"))
            if not options.allow_unsupported and _ep_size(inst) > 1:
                if inst.get("dp_group") is None:
                    found.append(
                        ("expert parallelism within one instance (no dp_group)", f"{key}.ep_size")
                    )
                elif _tp_of(inst) != 1:
                    found.append(("expert parallelism at tp_size > 1", f"{key}.tp_size"))
            kv_dtype = inst.get("kv_cache_dtype")
            if kv_dtype not in (None, "auto"):
                found.append((f"KV cache dtype {kv_dtype!r}", f"{key}.kv_cache_dtype"))
    if not options.allow_unsupported:
        found += _dp_group_problems(config)
    models = {
        inst.get("model_name") for node in config["nodes"] for inst in node.get("instances") or []
    }
    if len(models) > 1:
        found.append(
            (
                f"several models in one cluster ({', '.join(sorted(map(str, models)))})",
                "nodes[].instances[].model_name",
            )
        )
    return found


# The keys of LLMServingSim's cluster configs (both schemas; the power section's
# components are read by ``node_power``), per level.
_KNOWN_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"cxl_mem", "link_bw", "link_latency", "nodes", "num_nodes"}),
    "nodes[]": frozenset({"cpu_mem", "instances", "num_instances", "power"}),
    "nodes[].instances[]": frozenset(
        {
            "block_size",
            "dp_group",
            "dtype",
            "enable_chunked_prefill",
            "enable_prefix_caching",
            "ep_size",
            "hardware",
            "kv_cache_dtype",
            "long_prefill_token_threshold",
            "max_num_batched_tokens",
            "max_num_seqs",
            "model_name",
            "npu_group",
            "npu_mem",
            "npu_num",
            "num_npus",
            "pd_type",
            "placement",
            "pp_size",
            "tp_size",
        }
    ),
    "nodes[].instances[].npu_mem": frozenset({"mem_bw", "mem_latency", "mem_size", "mem_util"}),
    "nodes[].cpu_mem": frozenset({"mem_bw", "mem_latency", "mem_size", "pim_config"}),
    "cxl_mem": frozenset({"mem_bw", "mem_latency", "mem_size", "num_devices"}),
}


_WHOLE = ("a whole number of at least 1", lambda v: _is_number(v) and v == int(v) and v >= 1)
_POSITIVE = ("a number above 0", lambda v: _is_number(v) and v > 0)
_NONNEGATIVE = ("a number of at least 0", lambda v: _is_number(v) and v >= 0)
_COUNT = ("a whole number of at least 0", lambda v: _is_number(v) and v == int(v) and v >= 0)
_LINKS = (
    "a number of at least 0, or a list of them (intra-, inter-node)",
    lambda v: (
        (_is_number(v) and v >= 0)
        or (isinstance(v, list) and all(_is_number(x) and x >= 0 for x in v))
    ),
)
_FRACTION = ("a fraction above 0 and at most 1", lambda v: _is_number(v) and 0 < v <= 1)
_TEXT = ("a string", lambda v: isinstance(v, str) and bool(v))
_FLAG = ("true or false", lambda v: isinstance(v, bool))
_LABEL = ("a string or an integer", lambda v: isinstance(v, str | int) and not isinstance(v, bool))
_MAPPING = ("an object", lambda v: isinstance(v, dict))
_LIST = ("a list", lambda v: isinstance(v, list))

_KEY_TYPES: dict[str, tuple[str, Any]] = {
    "num_nodes": _WHOLE,
    "link_bw": _LINKS,
    "link_latency": _LINKS,
    "nodes": _LIST,
    "cxl_mem": _MAPPING,
    "nodes[].num_instances": _WHOLE,
    "nodes[].instances": _LIST,
    "nodes[].cpu_mem": _MAPPING,
    "nodes[].power": _MAPPING,
    "nodes[].instances[].model_name": _TEXT,
    "nodes[].instances[].hardware": _TEXT,
    "nodes[].instances[].dtype": _TEXT,
    "nodes[].instances[].kv_cache_dtype": _TEXT,
    "nodes[].instances[].npu_num": _WHOLE,
    "nodes[].instances[].npu_group": _WHOLE,
    "nodes[].instances[].num_npus": _WHOLE,
    "nodes[].instances[].tp_size": _WHOLE,
    "nodes[].instances[].pp_size": _WHOLE,
    "nodes[].instances[].ep_size": _WHOLE,
    "nodes[].instances[].block_size": _WHOLE,
    "nodes[].instances[].max_num_batched_tokens": _COUNT,
    "nodes[].instances[].max_num_seqs": _COUNT,
    "nodes[].instances[].long_prefill_token_threshold": _NONNEGATIVE,
    "nodes[].instances[].enable_chunked_prefill": _FLAG,
    "nodes[].instances[].enable_prefix_caching": _FLAG,
    "nodes[].instances[].dp_group": _LABEL,
    "nodes[].instances[].npu_mem": _MAPPING,
    "nodes[].instances[].npu_mem.mem_size": _POSITIVE,
    "nodes[].instances[].npu_mem.mem_util": _FRACTION,
    "nodes[].instances[].npu_mem.mem_bw": _NONNEGATIVE,
    "nodes[].instances[].npu_mem.mem_latency": _NONNEGATIVE,
    "nodes[].cpu_mem.mem_size": _POSITIVE,
    "nodes[].cpu_mem.mem_bw": _NONNEGATIVE,
    "nodes[].cpu_mem.mem_latency": _NONNEGATIVE,
    "cxl_mem.mem_size": _POSITIVE,
    "cxl_mem.mem_bw": _NONNEGATIVE,
    "cxl_mem.mem_latency": _NONNEGATIVE,
    "cxl_mem.num_devices": _WHOLE,
}
"""What each key of a cluster config must hold (``null`` is left to the reader's
defaults), as ``(description, check)``."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _entries(
    section: dict[str, Any], level: str = "", where: str = ""
) -> Iterator[tuple[str, str, str, Any]]:
    """Every ``(level, key path, dotted location, value)`` of a cluster config, walking
    into the sections and list items :data:`_KNOWN_KEYS` describes (list items that are
    not objects are yielded as their list's value and not entered)."""
    for key, value in section.items():
        child = f"{level}.{key}" if level else key
        yield level, child, f"{where}{key}", value
        if isinstance(value, list) and f"{child}[]" in _KNOWN_KEYS:
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _entries(item, f"{child}[]", f"{where}{key}[{i}].")
        elif isinstance(value, dict) and child in _KNOWN_KEYS:
            yield from _entries(value, child, f"{where}{key}.")


def type_problems(config: dict[str, Any]) -> list[str]:
    """``dotted.key: expected ..., got ...`` for every value of the wrong type, and for
    a list item of ``nodes`` / ``instances`` that is not an object, or an instance
    without ``model_name``."""
    found: list[str] = []
    for _, child, where, value in _entries(config):
        rule = _KEY_TYPES.get(child)
        if value is None or rule is None:
            continue
        what, ok = rule
        if not ok(value):
            found.append(f"{where}: expected {what}, got {json.dumps(value)}")
        elif isinstance(value, list) and f"{child}[]" in _KNOWN_KEYS:
            for i, item in enumerate(value):
                if not isinstance(item, dict):
                    found.append(f"{where}[{i}]: expected an object, got {json.dumps(item)}")
                elif child == "nodes[].instances" and item.get("model_name") is None:
                    found.append(f"{where}[{i}].model_name: missing")
    return found


def unknown_keys(config: dict[str, Any]) -> list[str]:
    """Dotted keys of ``config`` that are not LLMServingSim cluster-config keys."""
    return [
        where
        for level, child, where, _ in _entries(config)
        if child.rsplit(".", 1)[-1] not in _KNOWN_KEYS[level]
    ]


def _ep_size(inst: dict[str, Any]) -> int:
    return int(inst.get("ep_size", 1) or 1)


def _tp_of(inst: dict[str, Any]) -> int | None:
    """The tensor-parallel degree as written (``None`` where it is malformed)."""
    for knob in ("tp_size", "num_npus"):
        if isinstance(inst.get(knob), int):
            return int(inst[knob])
    return None


def dp_groups(config: dict[str, Any]) -> dict[str, list[tuple[int, int]]]:
    """``(node, instance)`` indices of each ``dp_group`` label, in config order."""
    groups: dict[str, list[tuple[int, int]]] = {}
    for n, node in enumerate(config["nodes"]):
        for i, inst in enumerate(node.get("instances") or []):
            label = inst.get("dp_group")
            if label is not None:
                groups.setdefault(str(label), []).append((n, i))
    return groups


_RANK_KEYS = ("model_name", "hardware", "tp_size", "num_npus", "ep_size", "npu_mem")


def _dp_group_problems(config: dict[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for label, members in dp_groups(config).items():
        n0, i0 = members[0]
        first = config["nodes"][n0]["instances"][i0]
        for n, i in members[1:]:
            key = f"nodes[{n}].instances[{i}]"
            inst = config["nodes"][n]["instances"][i]
            if n != n0:
                found.append((f"data-parallel group {label!r} spanning nodes", f"{key}.dp_group"))
            different = [k for k in _RANK_KEYS if inst.get(k) != first.get(k)]
            if different:
                found.append(
                    (
                        f"data-parallel group {label!r} with unlike ranks "
                        f"({', '.join(different)} differ)",
                        f"{key}.dp_group",
                    )
                )
        ep = _ep_size(first)
        if ep > 1 and ep != len(members):
            found.append(
                (
                    f"ep_size {ep} over the {len(members)} ranks of data-parallel group "
                    f"{label!r} (expert parallelism spans exactly the group's ranks)",
                    f"nodes[{n0}].instances[{i0}].ep_size",
                )
            )
    return found


def _tp(inst: dict[str, Any], key: str, path: Path) -> int:
    if "tp_size" in inst:
        tp = inst["tp_size"]
    elif "npu_num" in inst:
        tp = int(inst["npu_num"]) // max(int(inst.get("npu_group", 1) or 1), 1)
    elif "num_npus" in inst:
        tp = inst["num_npus"]
    else:
        raise DataFileError(path, f"{key}: no tp_size, npu_num or num_npus")
    if not isinstance(tp, int) or tp < 1:
        raise DataFileError(path, f"{key}: tensor-parallel degree must be a whole number >= 1")
    if "tp_size" in inst and isinstance(inst.get("num_npus"), int):
        pp = int(inst.get("pp_size", 1) or 1)
        if inst["num_npus"] != tp * pp:
            raise DataFileError(
                path,
                f"{key}.num_npus: {inst['num_npus']} NPUs, but tp_size {tp} x pp_size {pp} "
                f"needs {tp * pp}",
            )
    return tp


def _instance_group(
    inst: dict[str, Any],
    key: str,
    path: Path,
    options: ImportOptions,
    out: ConvertedCluster,
) -> dict[str, Any]:
    for needed in ("model_name", "hardware"):
        if needed not in inst:
            raise DataFileError(path, f"{key}: missing {needed!r}")
    try:
        arch = load_model_arch(str(inst["model_name"]))
    except KeyError as exc:
        raise DataFileError(path, f"{key}.model_name: {exc.args[0]}") from exc
    try:
        device = resolve_device(str(inst["hardware"]))
    except KeyError as exc:
        raise DataFileError(path, f"{key}.hardware: {exc.args[0]}") from exc
    tp = _tp(inst, key, path)
    dtype_raw = str(inst.get("dtype") or "bfloat16")
    if dtype_raw not in _DTYPES:
        raise DataFileError(
            path,
            f"{key}.dtype: unsupported dtype {dtype_raw!r}; allowed: {', '.join(_DTYPES)}",
        )
    dtype = _DTYPES[dtype_raw]
    engine: dict[str, Any] = {}
    mem = inst.get("npu_mem") or {}
    if options.gpu_memory_utilization is not None:
        engine["gpu_memory_utilization"] = options.gpu_memory_utilization
    elif "mem_size" in mem:
        util = float(mem["mem_size"]) * float(mem.get("mem_util", 1.0)) / device.mem_gib
        if util > 1.0:
            raise DataFileError(
                path,
                f"{key}.npu_mem.mem_size: {mem['mem_size']} GB is more than the "
                f"{device.mem_gib:g} GiB of a {device.name}",
            )
        engine["gpu_memory_utilization"] = round(util, 6)
        out.notes.append(
            f"{key}: npu_mem {mem['mem_size']} GB x mem_util {mem.get('mem_util', 1.0)} -> "
            f"gpu_memory_utilization {engine['gpu_memory_utilization']} of {device.mem_gib:g} GiB"
        )
    unused = [f"{k} {mem[k]}" for k in ("mem_bw", "mem_latency") if k in mem]
    if unused:
        out.notes.append(
            f"{key}.npu_mem: {', '.join(unused)} not used; the device is the catalog's "
            f"{device.name} ({device.mem_bw_gbps:g} GB/s), as its profiles measured it"
        )
    for knob in (
        "max_num_seqs",
        "max_num_batched_tokens",
        "block_size",
        "enable_chunked_prefill",
        "enable_prefix_caching",
        "long_prefill_token_threshold",
    ):
        if knob in inst:
            engine[knob] = inst[knob]
    out.instances.append((key, arch, device, tp, dtype, str(inst["hardware"])))
    return {
        "model": arch.name,
        "device": device.name,
        "tp": tp,
        "dtype": dtype,
        "engine": engine,
    }


def _data_parallel(group: dict[str, Any], inst: dict[str, Any], num_ranks: int) -> None:
    """Make ``group`` the ``num_ranks`` ranks of ``inst``'s data-parallel group."""
    group["data_parallel_size"] = num_ranks
    if _ep_size(inst) > 1:
        group["enable_expert_parallel"] = True


def convert_cluster(
    config_path: str | Path,
    dataset: str | Path,
    options: ImportOptions,
    *,
    relative_to: Path | None = None,
) -> ConvertedCluster:
    """Convert an LLMServingSim cluster config and trace into scenario data.

    Args:
        config_path: The cluster config JSON.
        dataset: The trace (LLMServingSim JSON lines).
        options: LLMServingSim's command-line choices.
        relative_to: The scenario's folder: a trace below it is written relative to it,
            any other as an absolute path.

    Raises:
        UnsupportedFeatureError: listing every unsupported feature with its key.
        DataFileError: a malformed config or an unknown model or device.
    """
    path = Path(config_path)
    config = read_cluster_config(path)
    problems = _unsupported(config, options)
    if problems:
        raise UnsupportedFeatureError(str(path), problems)
    out = ConvertedCluster(scenario={})
    out.notes += [
        f"{where}: not an LLMServingSim key this import knows; ignored"
        for where in unknown_keys(config)
    ]
    out.link_bw_gbps = float(config.get("link_bw", 0.0) or 0.0)
    out.link_latency_us = float(config.get("link_latency", 0.0) or 0.0) / 1e3
    nodes = []
    devices_power: dict[str, dict[str, float]] = {}
    ranks = {} if options.allow_unsupported else dp_groups(config)
    for n, node in enumerate(config["nodes"]):
        groups = []
        for i, inst in enumerate(node.get("instances") or []):
            key = f"nodes[{n}].instances[{i}]"
            label = inst.get("dp_group")
            members = ranks.get(str(label), []) if label is not None else []
            if members and members[0] != (n, i):
                continue  # a later rank of a data-parallel group: the first stands for all
            group = _instance_group(inst, key, path, options, out)
            if members:
                _data_parallel(group, inst, len(members))
                out.notes.append(
                    f"{key}: dp_group {label!r}: {len(members)} data-parallel ranks"
                    + (" with expert parallelism (lockstep)" if _ep_size(inst) > 1 else "")
                )
            groups.append(group)
            if options.allow_unsupported and (_ep_size(inst) > 1 or label is not None):
                out.notes.append(
                    f"{key}: APPROXIMATION: ep_size/dp_group dropped; this data-parallel rank "
                    "is simulated as an independent instance holding every expert"
                )
        if not groups:
            raise DataFileError(path, f"nodes[{n}]: no instances")
        cpu = node.get("cpu_mem") or {}
        entry: dict[str, Any] = {
            "name": f"node{n}",
            "num_devices": max(8, sum(g["tp"] * g.get("data_parallel_size", 1) for g in groups)),
            "instances": groups,
        }
        if "mem_size" in cpu:
            entry["dram_gib"] = float(cpu["mem_size"])
        if "mem_bw" in cpu:
            entry["dram_bw_gbps"] = float(cpu["mem_bw"])
        if "power" in node:
            entry["power"] = node_power(node, f"nodes[{n}]", path, out.notes)
            hardware = [str(inst["hardware"]) for inst in node.get("instances") or []]
            for device, figures in device_power(
                node["power"], hardware, f"nodes[{n}].power", path, out.notes
            ).items():
                if devices_power.setdefault(device, figures) != figures:
                    raise UnsupportedFeatureError(
                        str(path),
                        [
                            (
                                f"different power figures for {device} on different nodes",
                                f"nodes[{n}].power.npu",
                            )
                        ],
                    )
        nodes.append(entry)
    with_power = sum("power" in node for node in config["nodes"])
    if 0 < with_power < len(config["nodes"]):
        out.notes.append(
            "nodes without a power block keep llmserve's default node power (LLMServingSim "
            "turns power modelling off for every node when one lacks a block)"
        )
    engine = dict(LLMSERVINGSIM_DEFAULTS)
    engine["enable_prefix_caching"] = options.enable_prefix_caching
    for knob in ("max_num_batched_tokens", "max_num_seqs", "block_size", "max_model_len"):
        value = getattr(options, knob)
        if value is not None:
            engine[knob] = value
    dataset_path = Path(dataset)
    shown = dataset_path.resolve()
    if relative_to is not None and shown.is_relative_to(relative_to.resolve()):
        shown = shown.relative_to(relative_to.resolve())
    workload: dict[str, Any] = {"kind": "trace", "path": str(shown), "format": "llmservingsim"}
    if options.num_reqs is not None:
        workload["num_requests"] = options.num_reqs
    cluster: dict[str, Any] = {"nodes": nodes}
    if out.link_bw_gbps > 0 and config.get("num_nodes", 1) > 1:
        cluster["inter_node_bw_gbps"] = out.link_bw_gbps
    out.scenario = {
        "name": path.stem,
        "description": f"Imported from LLMServingSim config {path.name} with trace {dataset_path.name}",
        "seed": 0,
        "cluster": cluster,
        "engine": engine,
        "router": {"policy": "round_robin"},
        "workload": workload,
    }
    if devices_power:
        out.scenario["power"] = {"devices": devices_power}
    return out
