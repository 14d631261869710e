"""Validate the simulator against a real vLLM run in LLMServingSim's bench layout.

A run folder holds ``config.json`` (the LLMServingSim cluster that served it) and
``vllm/{meta.json, requests.jsonl, timeseries.csv}``: the engine arguments and trace
(``meta.json``), per-request vLLM ``RequestStateStats`` timestamps, and a per-second
series of prompt and generation throughput, running and waiting requests.

Time bases. In ``requests.jsonl`` ``arrival_time`` is wall-clock epoch seconds while
``queued_ts``, ``scheduled_ts``, ``first_token_ts`` and ``last_token_ts`` are the engine
process's monotonic clock, so latencies use the monotonic stamps only:

- TTFT = ``first_token_ts - queued_ts`` (queueing included),
- TPOT = ``(last_token_ts - first_token_ts) / (output_toks - 1)`` (requests with more
  than one output token),
- e2e = ``last_token_ts - queued_ts``,
- queueing = ``scheduled_ts - queued_ts``

(the definitions of LLMServingSim's ``bench validate``). The simulator is fed the
arrivals the engine saw: request ``i`` arrives at ``queued_ts[i] - t0`` with
``t0 = queued_ts[0] - arrival_time_ns[0]`` of the trace, which puts simulated time on
the trace's clock; the bench's ``timeseries.csv`` ticks start at the client's start,
which is the trace's time 0, so per-second bins line up to within milliseconds. The
simulator's latencies use the same definitions (arrival = queued). vLLM stamps
``queued_ts`` when its busy loop takes the request in, once per step; under async
scheduling (:meth:`BenchRun.async_scheduling`) that is as the step already queued
starts, so a busy engine runs the request one full step later (VALIDATION.md discusses
the bias this leaves).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from llmserve_env.config.errors import DataFileError, ScenarioError
from llmserve_env.config.loader import validate_scenario
from llmserve_env.config.schema import Scenario
from llmserve_env.interop.llmservingsim_config import ImportOptions, convert_cluster
from llmserve_env.interop.llmservingsim_import import (
    check_collective_source,
    convert_profile,
    find_llmservingsim_profile,
)
from llmserve_env.perf.aiconfig import aiconfigurator_version
from llmserve_env.perf.compiled import cache_dir
from llmserve_env.perf.csv_table import read_csv_columns
from llmserve_env.perf.importers import llmservingsim, llmservingsim_paper
from llmserve_env.perf.importers.common import files_digest
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profile_format import write_profile
from llmserve_env.sim.request import TokenContent
from llmserve_env.sim.workload.base import WorkloadData
from llmserve_env.sim.workload.traces import load_llmservingsim_jsonl

FloatArray = NDArray[np.float64]

ASYNC_SCHEDULING_DEFAULT_SINCE = (0, 14)
"""First vLLM release (major, minor) with async scheduling on unless turned off (vLLM
PR #27614: ``SchedulerConfig.async_scheduling`` ``None`` resolves to on when nothing
incompatible, such as a pooling model, is configured)."""

RESERVE_FULL_ISL_DEFAULT_SINCE = (0, 19)
"""vLLM release (major, minor) from which ``SchedulerConfig.scheduler_reserve_full_isl``
is taken as on by default: it is in 0.19 (the RTX 4090 bench run's resolved config
records it on) and runs of earlier releases are taken to have no such check."""

CUDAGRAPH_DEFAULT_RULE = (0, 19)
"""The vLLM release (major, minor) whose default CUDA-graph capture sizes
:func:`~llmserve_env.perf.cudagraph.default_capture_sizes` reproduces (checked in its
source): with CUDA-graph padding asked for, runs of it and later releases are simulated
with them unless ``meta.json`` says otherwise, runs of earlier releases without padding
(a note says so)."""

_REQUEST_KEYS = (
    "input_toks",
    "output_toks",
    "queued_ts",
    "scheduled_ts",
    "first_token_ts",
    "last_token_ts",
)


def _max_model_len(meta: dict[str, Any]) -> tuple[int | None, str]:
    """The longest sequence the run could serve and what says so: ``max_model_len`` of
    the engine arguments, else the catalog model's context length, else ``None``."""
    kwargs = meta.get("engine_kwargs") or {}
    value = kwargs.get("max_model_len")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value, "meta.json engine_kwargs.max_model_len"
    try:
        arch = load_model_arch(str(kwargs.get("model") or meta.get("model")))
    except (KeyError, DataFileError):
        return None, ""
    return arch.max_position_embeddings, f"{arch.name}'s max_position_embeddings"


def _request_values(record: dict[str, Any], path: Path, line: int) -> dict[str, float]:
    """One request line's values, checked: finite numbers, whole token counts of at
    least 1, and timestamps in engine order (queued <= scheduled <= first <= last)."""
    values: dict[str, float] = {}
    for key in _REQUEST_KEYS:
        value = record.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise DataFileError(path, f"{key!r}: expected a number, got {value!r}", line=line)
        if not math.isfinite(value):
            raise DataFileError(
                path, f"{key!r}: expected a finite number, got {value!r}", line=line
            )
        if key.endswith("_toks") and (value != int(value) or value < 1):
            raise DataFileError(
                path, f"{key!r}: expected a whole number of at least 1, got {value!r}", line=line
            )
        values[key] = float(value)
    stamps = ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")
    for earlier, later in itertools.pairwise(stamps):
        if values[later] < values[earlier]:
            raise DataFileError(
                path,
                f"{later!r} ({values[later]!r}) is before {earlier!r} ({values[earlier]!r}); "
                f"the engine stamps {' <= '.join(stamps)}",
                line=line,
            )
    return values


@dataclass(frozen=True)
class BenchRun:
    """A real vLLM run.

    Attributes:
        path: The run folder.
        config_path: Its ``config.json``.
        meta: ``vllm/meta.json``.
        requests: Per-request columns (``input_toks``, ``output_toks``, ``queued_ts``,
            ``scheduled_ts``, ``first_token_ts``, ``last_token_ts``), bench order.
        timeseries: ``vllm/timeseries.csv`` columns.
        dataset: The trace named in ``meta.json``, when found.
        dataset_note: How the trace was found when not by its recorded name (a note
            for the report), else empty.
    """

    path: Path
    config_path: Path
    meta: dict[str, Any]
    requests: dict[str, FloatArray]
    timeseries: dict[str, FloatArray]
    dataset: Path | None
    dataset_note: str = ""

    @property
    def engine_kwargs(self) -> dict[str, Any]:
        """vLLM engine arguments of the run (checked by :func:`load_bench_run`)."""
        kwargs = self.meta.get("engine_kwargs") or {}
        return kwargs if isinstance(kwargs, dict) else {}

    def async_scheduling(self) -> tuple[bool, str]:
        """Whether vLLM scheduled asynchronously in this run, and what says so (see
        :meth:`_scheduler_flag`)."""
        return self._scheduler_flag("async_scheduling", ASYNC_SCHEDULING_DEFAULT_SINCE)

    def scheduler_reserve_full_isl(self) -> tuple[bool, str]:
        """Whether vLLM admitted a request only when its whole sequence fit in the KV
        cache in this run, and what says so (see :meth:`_scheduler_flag`)."""
        return self._scheduler_flag("scheduler_reserve_full_isl", RESERVE_FULL_ISL_DEFAULT_SINCE)

    def _scheduler_flag(self, key: str, default_since: tuple[int, int]) -> tuple[bool, str]:
        """A boolean scheduler setting of this run and what says so: the resolved
        scheduler config when ``meta.json`` records it, else the engine argument, else
        the default of the recorded vLLM version (on from release ``default_since``;
        off when the version is unknown)."""
        resolved = self.meta.get("resolved_config")
        scheduler = resolved.get("scheduler_config") if isinstance(resolved, dict) else None
        value = scheduler.get(key) if isinstance(scheduler, dict) else None
        if isinstance(value, bool):
            return value, f"meta.json resolved_config.scheduler_config.{key}"
        value = self.engine_kwargs.get(key)
        if isinstance(value, bool):
            return value, f"meta.json engine_kwargs.{key}"
        release, version = self.vllm_release()
        if release is None:
            return False, "meta.json records no vllm_version: assumed off"
        return release >= default_since, f"the default of vLLM {version}"

    def cache_setting(self, key: str, kind: type, default: Any) -> tuple[Any, str]:
        """A cache setting of this run (``block_size``, ``enable_prefix_caching``,
        ``gpu_memory_utilization``) and what says so: vLLM's resolved cache config, else
        the engine argument, else the ``kv_cache`` record, else ``default`` (vLLM's).

        Raises:
            DataFileError: a recorded value of the wrong type, or two places that record
                different values, naming the keys.
        """
        resolved = self.meta.get("resolved_config")
        cache = resolved.get("cache_config") if isinstance(resolved, dict) else None
        kv_cache = self.meta.get("kv_cache")
        sources = (
            (cache if isinstance(cache, dict) else {}, "resolved_config.cache_config"),
            (self.engine_kwargs, "engine_kwargs"),
            (kv_cache if isinstance(kv_cache, dict) else {}, "kv_cache"),
        )
        found = [
            (where, section[key]) for section, where in sources if section.get(key) is not None
        ]
        if len({json.dumps(v) for _, v in found}) > 1:
            shown = ", ".join(f"{where}.{key} = {v!r}" for where, v in found)
            raise DataFileError(self.path / "vllm" / "meta.json", f"contradicts itself: {shown}")
        if found:
            where, value = found[0]
            ok = (
                isinstance(value, bool)
                if kind is bool
                else (
                    isinstance(value, int | float)
                    and not isinstance(value, bool)
                    and (kind is float or value == int(value))
                )
            )
            if not ok:
                raise DataFileError(
                    self.path / "vllm" / "meta.json",
                    f"{where}.{key}: expected {'true or false' if kind is bool else kind.__name__}"
                    f", got {value!r}",
                )
            return kind(value), f"meta.json {where}.{key}"
        return default, f"vLLM's default (meta.json records no {key})"

    def tick_seconds(self) -> float:
        """The width of ``timeseries.csv``'s bins (``meta.json`` ``tick_seconds``; 1 s,
        the bench's default, when not recorded).

        Raises:
            DataFileError: a value that is not a positive number.
        """
        value = self.meta.get("tick_seconds", 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise DataFileError(
                self.path / "vllm" / "meta.json",
                f"tick_seconds: expected a number of seconds above 0, got {value!r}",
            )
        return float(value)

    def vllm_release(self) -> tuple[tuple[int, int] | None, str]:
        """``(major, minor)`` of the vLLM version ``meta.json`` records (``None`` when it
        records none or an unreadable one), and the version as recorded."""
        version = str(self.meta.get("vllm_version") or "")
        match = re.match(r"v?(\d+)\.(\d+)", version)
        return (None if match is None else (int(match[1]), int(match[2]))), version

    def num_gpu_blocks(self) -> tuple[int | None, str]:
        """The KV-cache blocks vLLM allocated in this run (its ``num_gpu_blocks``, the
        outcome of its memory profiling on that machine) and where ``meta.json`` records
        it, or ``None`` when it does not."""
        resolved = self.meta.get("resolved_config")
        places = (
            ("resolved_config.cache_config", resolved.get("cache_config"))
            if isinstance(resolved, dict)
            else ("", None),
            ("kv_cache", self.meta.get("kv_cache")),
        )
        for where, section in places:
            value = section.get("num_gpu_blocks") if isinstance(section, dict) else None
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataFileError(
                    self.path / "vllm" / "meta.json",
                    f"{where}.num_gpu_blocks: expected a whole number of at least 1, got {value!r}",
                )
            return value, f"meta.json {where}.num_gpu_blocks"
        return None, "meta.json records no num_gpu_blocks"

    def cudagraph_capture_sizes(self) -> tuple[str | list[int] | None, str]:
        """The CUDA-graph capture sizes vLLM padded its batches to in this run (an
        ``engine.cudagraph_capture_sizes`` value: ``auto``, a list, or ``None`` for an
        eager run), and what says so: vLLM's resolved config when ``meta.json`` records
        it, else ``enforce_eager`` or ``compilation_config`` in the engine arguments, else
        the default of the recorded vLLM version."""
        resolved = self.meta.get("resolved_config")
        if isinstance(resolved, dict):
            model = resolved.get("model_config")
            if isinstance(model, dict) and model.get("enforce_eager") is True:
                return None, "meta.json resolved_config.model_config.enforce_eager"
            compiled = resolved.get("compilation_config")
            sizes = compiled.get("cudagraph_capture_sizes") if isinstance(compiled, dict) else None
            if isinstance(sizes, list) and all(isinstance(n, int) for n in sizes):
                where = "meta.json resolved_config.compilation_config.cudagraph_capture_sizes"
                return (sizes or None), where
        kwargs = self.engine_kwargs
        if kwargs.get("enforce_eager") is True:
            return None, "meta.json engine_kwargs.enforce_eager"
        compilation = kwargs.get("compilation_config")
        if isinstance(compilation, dict):
            mode = str(compilation.get("cudagraph_mode") or "").upper()
            if mode == "NONE":
                return None, "meta.json engine_kwargs.compilation_config.cudagraph_mode"
            sizes = compilation.get("cudagraph_capture_sizes")
            if isinstance(sizes, list) and sizes and all(isinstance(n, int) for n in sizes):
                return sizes, "meta.json engine_kwargs.compilation_config.cudagraph_capture_sizes"
        release, version = self.vllm_release()
        if release is None:
            return None, "meta.json records no vllm_version: no padding assumed"
        if release >= CUDAGRAPH_DEFAULT_RULE:
            return "auto", f"the default capture sizes of vLLM {version}"
        return None, (
            f"vLLM {version}: the default capture sizes of releases before "
            f"{CUDAGRAPH_DEFAULT_RULE[0]}.{CUDAGRAPH_DEFAULT_RULE[1]} are not modelled, "
            "no padding assumed"
        )

    def latencies_ms(self) -> dict[str, FloatArray]:
        """TTFT, TPOT, e2e and queueing per request (ms), as the module defines them."""
        r = self.requests
        out_toks = r["output_toks"]
        tpot = np.where(
            out_toks > 1,
            (r["last_token_ts"] - r["first_token_ts"]) / np.maximum(out_toks - 1, 1),
            np.nan,
        )
        return {
            "ttft": (r["first_token_ts"] - r["queued_ts"]) * 1e3,
            "tpot": tpot * 1e3,
            "e2e": (r["last_token_ts"] - r["queued_ts"]) * 1e3,
            "queueing": (r["scheduled_ts"] - r["queued_ts"]) * 1e3,
        }


def _find_dataset(run_dir: Path, name: str) -> Path | None:
    candidate = Path(name)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for parent in (run_dir, *run_dir.parents):
        if (parent / candidate).is_file():
            return parent / candidate
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _find_dataset_by_hash(run_dir: Path, name: str, sha256: str) -> Path | None:
    """A trace whose SHA-256 is ``sha256``, in the folder the named one would be in.

    ``meta.json``'s ``dataset_hash`` is the SHA-256 of the trace file, so a file under
    another name with that digest holds the same bytes. Only ``*.jsonl`` files in the
    named file's folder (``workloads/``), looked up from the run folder upwards, are
    hashed.
    """
    folder = Path(name).parent
    if folder.is_absolute():
        candidates = [folder]
    else:
        candidates = [parent / folder for parent in (run_dir, *run_dir.parents)]
    for directory in candidates:
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.jsonl")):
            if path.is_file() and _sha256(path) == sha256.lower():
                return path
    return None


def load_bench_run(path: str | Path, dataset: str | Path | None = None) -> BenchRun:
    """Read a bench run folder.

    Args:
        path: The run folder (``config.json`` and ``vllm/``).
        dataset: The trace; default: ``meta.json``'s ``dataset_path``, looked up from the
            run folder upwards; when no file has that name, a ``*.jsonl`` file in the
            same folder whose SHA-256 is ``meta.json``'s ``dataset_hash``.

    Raises:
        DataFileError: missing or malformed files (file and line named).
    """
    run_dir = Path(path).resolve()  # its parents lead to the trace and perf/
    config_path = run_dir / "config.json"
    vllm_dir = run_dir / "vllm"
    if not config_path.is_file():
        raise DataFileError(config_path, "not a bench run folder: config.json not found")
    meta_path = vllm_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataFileError(meta_path, "file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataFileError(meta_path, f"invalid JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(meta, dict):
        raise DataFileError(meta_path, f"expected a JSON object, got {type(meta).__name__}")
    for key in ("engine_kwargs", "resolved_config", "kv_cache"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise DataFileError(meta_path, f"{key}: expected an object, got {meta[key]!r}")
    requests: dict[str, list[float]] = {k: [] for k in _REQUEST_KEYS}
    req_path = vllm_dir / "requests.jsonl"
    max_len, max_len_source = _max_model_len(meta)
    try:
        lines = req_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise DataFileError(req_path, "file not found") from exc
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(req_path, f"invalid JSON: {exc.msg}", line=line_no) from exc
        if not isinstance(record, dict):
            raise DataFileError(
                req_path, f"expected a JSON object, got {type(record).__name__}", line=line_no
            )
        values = _request_values(record, req_path, line_no)
        if max_len is not None and values["input_toks"] + values["output_toks"] > max_len:
            raise DataFileError(
                req_path,
                f"{int(values['input_toks'])} input + {int(values['output_toks'])} output tokens "
                f"exceed the run's max_model_len {max_len} ({max_len_source}): vLLM cannot "
                "have served this request",
                line=line_no,
            )
        for key, number in values.items():
            requests[key].append(number)
    if not requests["queued_ts"]:
        raise DataFileError(req_path, "no requests")
    ts_path = vllm_dir / "timeseries.csv"
    ts = read_csv_columns(
        ts_path,
        numeric=("t", "prompt_throughput", "gen_throughput", "running", "waiting"),
        require_rows=True,
    )
    span = max(requests["last_token_ts"]) - min(requests["queued_ts"])
    covered = float(ts.numbers["t"].max())
    if span > 2.0 * covered + 60.0:
        raise DataFileError(
            req_path,
            f"the requests span {span:.6g} s (first queued_ts to last last_token_ts) but "
            f"timeseries.csv covers {covered:.6g} s: timestamps from another clock or run",
        )
    found = None
    note = ""
    if dataset is not None:
        found = Path(dataset)
        if not found.is_file():
            raise DataFileError(found, "trace file not found")
    elif meta.get("dataset_path"):
        name = str(meta["dataset_path"])
        found = _find_dataset(run_dir, name)
        sha256 = meta.get("dataset_hash")
        if found is None and isinstance(sha256, str) and sha256:
            found = _find_dataset_by_hash(run_dir, name, sha256)
            if found is not None:
                note = (
                    f"trace {name} not found; {found.name} has its dataset_hash "
                    f"(SHA-256 {sha256[:12]}...), so it is the same file"
                )
    return BenchRun(
        path=run_dir,
        config_path=config_path,
        meta=meta,
        requests={k: np.asarray(v, dtype=np.float64) for k, v in requests.items()},
        timeseries=ts.numbers,
        dataset=found,
        dataset_note=note,
    )


# --------------------------------------------------------------------------- simulate


@dataclass
class SimSetup:
    """The scenario and workload that stand for a bench run.

    Attributes:
        scenario: The validated scenario.
        workload: The requests, in bench order.
        notes: What was assumed or approximated.
    """

    scenario: Scenario
    workload: WorkloadData
    notes: list[str] = field(default_factory=list)


def bench_workload(run: BenchRun) -> tuple[WorkloadData, list[str]]:
    """The bench's requests with the arrivals the engine saw (see the module doc)."""
    r = run.requests
    notes: list[str] = []
    n = len(r["queued_ts"])
    contents: list[TokenContent | None] | None = None
    offset = 0.0
    if run.dataset is not None:
        data = load_llmservingsim_jsonl(run.dataset)
        if len(data) < n:
            raise DataFileError(
                run.dataset, f"the trace has {len(data)} requests, the bench run {n}"
            )
        differ = np.flatnonzero(
            (data.prompt_tokens[:n] != r["input_toks"].astype(np.int64))
            | (data.output_tokens[:n] != r["output_toks"].astype(np.int64))
        )
        if len(differ):
            i = int(differ[0])
            raise DataFileError(
                run.dataset,
                f"request {i + 1} has {data.prompt_tokens[i]} input / {data.output_tokens[i]} "
                f"output tokens here but {int(r['input_toks'][i])} / "
                f"{int(r['output_toks'][i])} in requests.jsonl ({len(differ)} of {n} requests "
                "differ): the trace is not this run's (pass --dataset)",
            )
        first_ns = json.loads(run.dataset.read_text(encoding="utf-8").splitlines()[0]).get(
            "arrival_time_ns", 0
        )
        offset = float(first_ns) * 1e-9
        if data.contents is not None:
            contents = list(data.contents[:n])
        if run.dataset_note:
            notes.append(run.dataset_note)
    else:
        notes.append(
            "trace file not found: lengths from requests.jsonl, no token ids (so no "
            "prefix-cache hits)"
        )
    arrival = r["queued_ts"] - r["queued_ts"][0] + offset
    order = np.argsort(arrival, kind="stable")
    if np.any(order != np.arange(n)):
        notes.append("requests reached the engine out of trace order; simulated in engine order")
    workload = WorkloadData.from_arrays(
        arrival,
        r["input_toks"].astype(np.int64),
        r["output_toks"].astype(np.int64),
        contents=contents,
        source=str(run.path),
    )
    return workload, notes


def _bench_profile(
    run: BenchRun, profiles: Path, converted: Any, index: int, collectives: str
) -> Path:
    """Convert the run's LLMServingSim profile into the cache (keyed by its files, the
    link and where the collectives come from)."""
    _, arch, _, tp, dtype, hardware = converted.instances[index]
    folder = find_llmservingsim_profile(profiles, hardware, arch.name, dtype, tp)
    result = convert_profile(folder, converted, index, collectives)
    tag = (
        f"{llmservingsim.TAG}:{llmservingsim_paper.TAG}:{converted.link_bw_gbps}:"
        f"{converted.link_latency_us}:{result.profile.meta.provenance.get('collectives')}:"
        f"{aiconfigurator_version()}"
    )
    key = files_digest(result.source_files, tag)
    target = cache_dir() / "imported" / key[:24]
    if not (target / "meta.yaml").is_file():
        write_profile(result.profile, target)
    return target


def _check_run_matches_config(run: BenchRun, converted: Any) -> None:
    """The model and tensor-parallel size vLLM ran with (``meta.json``) are those of
    ``config.json``'s instances, or the comparison means nothing.

    Raises:
        DataFileError: at ``meta.json``, naming both values.
    """
    meta_path = run.path / "vllm" / "meta.json"
    models = {
        where: value
        for where, value in (
            ("engine_kwargs.model", run.engine_kwargs.get("model")),
            ("model", run.meta.get("model")),
        )
        if value is not None
    }
    tp = run.engine_kwargs.get("tensor_parallel_size")
    for key, arch, _, group_tp, _, _ in converted.instances:
        for where, ran in models.items():
            if str(ran).lower() != arch.name.lower():
                raise DataFileError(
                    meta_path,
                    f"{where}: vLLM ran model {ran!r}, but config.json {key} has {arch.name!r}",
                )
        if tp is not None and tp != group_tp:
            raise DataFileError(
                meta_path,
                f"engine_kwargs.tensor_parallel_size is {tp!r}, but config.json {key} has "
                f"tp {group_tp}",
            )


def bench_setup(
    run: BenchRun,
    profiles: str | Path | None,
    *,
    allow_unsupported: bool = False,
    overrides: dict[str, Any] | None = None,
    collectives: str = "measured",
    cudagraph_padding: bool = False,
) -> SimSetup:
    """The scenario (cluster from ``config.json``, engine knobs from ``meta.json``) and
    workload for a bench run.

    vLLM defaults fill what ``meta.json`` does not record: ``gpu_memory_utilization``
    0.9, prefix caching on, chunked prefill on, block size 16. ``async_scheduling`` and
    ``scheduler_reserve_full_isl`` follow :meth:`BenchRun.async_scheduling` and
    :meth:`BenchRun.scheduler_reserve_full_isl` (a note says which source decided). The
    KV cache has the blocks vLLM allocated where ``meta.json`` records them
    (:meth:`BenchRun.num_gpu_blocks`, as ``num_gpu_blocks_override``), else the memory
    model's; overriding ``num_gpu_blocks_override`` (``None``: the memory model) wins.
    vLLM's CUDA-graph padding is left out unless asked for (it moves these runs by
    less than half a point; VALIDATION.md's finding on it).

    Args:
        run: The bench run.
        profiles: LLMServingSim profile root (``perf/``) for the instances, or ``None``
            for ``perf: auto``.
        allow_unsupported: Approximate expert parallelism (see :class:`ImportOptions`).
        overrides: Engine keys to override (e.g. ``{"gpu_memory_utilization": 0.85}``).
        collectives: Where tensor-parallel collectives come from (``measured`` or
            ``link``, see :data:`~llmserve_env.interop.llmservingsim_import.COLLECTIVE_SOURCES`).
        cudagraph_padding: Pad token counts to the CUDA-graph capture sizes the run had
            (:meth:`BenchRun.cudagraph_capture_sizes`; a note says which source decided).

    Raises:
        ValueError: an unknown ``collectives`` choice.
    """
    check_collective_source(collectives)
    kwargs = run.engine_kwargs
    dataset = run.dataset or (run.path / "vllm" / "requests.jsonl")
    caching, caching_source = run.cache_setting("enable_prefix_caching", bool, True)
    utilization, utilization_source = run.cache_setting("gpu_memory_utilization", float, 0.9)
    block_size, block_source = run.cache_setting("block_size", int, 16)
    options = ImportOptions(
        enable_prefix_caching=caching,
        max_num_batched_tokens=kwargs.get("max_num_batched_tokens"),
        max_num_seqs=kwargs.get("max_num_seqs"),
        max_model_len=kwargs.get("max_model_len"),
        gpu_memory_utilization=utilization,
        allow_unsupported=allow_unsupported,
    )
    converted = convert_cluster(run.config_path, dataset, options)
    _check_run_matches_config(run, converted)
    notes = list(converted.notes)
    notes.append(
        f"block size {block_size} ({block_source}); prefix caching "
        f"{'on' if caching else 'off'} ({caching_source}); gpu_memory_utilization "
        f"{utilization:g} ({utilization_source})"
    )
    data = converted.scenario
    data["name"] = f"bench-{run.path.parent.name}-{run.path.name}"
    data["description"] = f"vLLM bench run {run.path}"
    data["engine"]["block_size"] = block_size
    data.setdefault("simulation", {})["sample_interval_s"] = run.tick_seconds()
    async_on, source = run.async_scheduling()
    data["engine"]["async_scheduling"] = async_on
    note = f"vLLM async scheduling {'on' if async_on else 'off'} ({source})"
    if overrides and "async_scheduling" in overrides:
        note += f"; simulated with async_scheduling={overrides['async_scheduling']} (override)"
    notes.append(note)
    reserve, source = run.scheduler_reserve_full_isl()
    data["engine"]["scheduler_reserve_full_isl"] = reserve
    note = f"vLLM whole-sequence admission {'on' if reserve else 'off'} ({source})"
    if overrides and "scheduler_reserve_full_isl" in overrides:
        value = overrides["scheduler_reserve_full_isl"]
        note += f"; simulated with scheduler_reserve_full_isl={value} (override)"
    notes.append(note)
    blocks, source = run.num_gpu_blocks()
    if blocks is not None:
        data["engine"]["num_gpu_blocks_override"] = blocks
    note = (
        f"KV cache: {blocks} blocks ({source})" if blocks else f"KV cache: memory model ({source})"
    )
    if overrides and "num_gpu_blocks_override" in overrides:
        value = overrides["num_gpu_blocks_override"]
        note += f"; simulated with {'the memory model' if value is None else value} (override)"
    notes.append(note)
    if cudagraph_padding:
        sizes, source = run.cudagraph_capture_sizes()
        data["engine"]["cudagraph_capture_sizes"] = sizes
        notes.append(f"CUDA-graph padding {'off' if sizes is None else sizes} ({source})")
    groups = [g for node in data["cluster"]["nodes"] for g in node["instances"]]
    if any(g.get("data_parallel_size", 1) > 1 for g in groups):
        data["router"] = {"policy": "vllm_data_parallel"}
        notes.append("routing: vLLM's load balancer over the data-parallel ranks")
    for index, group in enumerate(groups):
        if overrides:
            group["engine"].update(overrides)  # group keys win over top-level ones
        if profiles is not None:
            group["perf"] = str(_bench_profile(run, Path(profiles), converted, index, collectives))
    data["workload"] = {"kind": "trace", "path": str(dataset), "format": "llmservingsim"}
    try:
        scenario = validate_scenario(data, source=str(run.config_path))
    except ScenarioError as exc:
        if not overrides:
            raise
        # A bad override is the flag's fault, not the config's: say so.
        raise ScenarioError(
            [_override_problem(where, msg, overrides) for where, msg in exc.problems],
            f"{run.config_path} with --set {', '.join(overrides)}",
        ) from None
    workload, wl_notes = bench_workload(run)
    return SimSetup(scenario, workload, notes + wl_notes)


def _override_problem(where: str, msg: str, overrides: dict[str, Any]) -> tuple[str, str]:
    """A validation problem, located at ``--set KEY`` when an override caused it."""
    for key in overrides:
        # the key itself, or a branch of its type (``engine.KEY.tuple``)
        match = re.search(rf"engine\.{re.escape(key)}(\.(.+))?$", where)
        if match:
            return f"--set {key}", msg if match[2] is None else f"{match[2]}: {msg}"
    return where, msg


# --------------------------------------------------------------------------- compare


def _stats(values: FloatArray) -> dict[str, float]:
    v = values[~np.isnan(values)]
    if len(v) == 0:
        return {"mean": math.nan, "p50": math.nan, "p90": math.nan, "p99": math.nan}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"mean": float(v.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def _err(sim: float, real: float) -> float:
    if not math.isfinite(sim) or not math.isfinite(real) or real == 0:
        return math.nan
    return 100.0 * (sim - real) / real


def per_second(times: FloatArray, tokens: FloatArray, edges: FloatArray) -> FloatArray:
    """Tokens per second in each bin ``[edges[i], edges[i+1])``."""
    sums, _ = np.histogram(times, bins=edges, weights=tokens)
    return sums / np.diff(edges)


def throughput_errors(real: FloatArray, sim: FloatArray) -> dict[str, float]:
    """Errors of a per-second output-throughput series against the real one, bin by bin.

    ``mape_pct`` is ``mean(|sim - real| / real)`` over the bins with non-zero real
    throughput; ``mape_steady_pct`` restricts it to the bins with at least 10 % of the
    real peak (drops the ramp's and the tail's few-token bins, where a shift of a
    fraction of a second gives errors of hundreds of percent); ``wape_pct`` is
    ``sum |sim - real| / sum real`` over all bins (in percent, like the MAPEs).
    ``num_bins`` and ``num_bins_steady`` count the bins of the two MAPEs.

    Args:
        real: The real series (``timeseries.csv``'s ``gen_throughput``), tok/s.
        sim: The simulated series on the same bins, tok/s.
    """
    mask = real > 0
    ape = np.abs(sim[mask] - real[mask]) / real[mask]
    steady = real >= 0.1 * real.max()
    ape_steady = np.abs(sim[steady] - real[steady]) / real[steady]
    total = float(real[mask].sum())
    return {
        "mape_pct": float(100.0 * ape.mean()) if len(ape) else math.nan,
        "wape_pct": float(100.0 * np.abs(sim - real).sum() / total) if total else math.nan,
        "mape_steady_pct": float(100.0 * ape_steady.mean()) if len(ape_steady) else math.nan,
        "num_bins": int(mask.sum()),
        "num_bins_steady": int(steady.sum()),
    }


LAG_FRACTIONS = (0.25, 0.5, 0.75, 0.9)
"""Shares of vLLM's output tokens at which :func:`output_lag` compares the two runs."""


def _times_to_reach(
    ends: FloatArray, cumulative: FloatArray, targets: FloatArray, tick_s: float
) -> FloatArray:
    """When a binned cumulative count (bins ``[end - tick_s, end)``, tokens spread evenly
    in each) first reaches each of ``targets``; NaN where it never does."""
    k = np.searchsorted(cumulative, targets, side="left")  # first bin with cum >= target
    reached = k < len(cumulative)
    k = np.minimum(k, len(cumulative) - 1)
    before = np.where(k > 0, cumulative[k - 1], 0.0)
    in_bin = cumulative[k] - before
    share = np.divide(targets - before, in_bin, out=np.ones_like(in_bin), where=in_bin > 0)
    return np.where(reached, ends[k] - tick_s + share * tick_s, np.nan)


def lag_at(
    real_ends: FloatArray,
    real: FloatArray,
    sim_ends: FloatArray,
    sim: FloatArray,
    tokens: FloatArray | None = None,
    tick_s: float = 1.0,
) -> FloatArray:
    """Seconds the simulated run takes beyond the real one to produce each count of
    ``tokens`` output tokens (negative: ahead; NaN where either never gets there, or
    for a count of 0).

    Args:
        real_ends: End time of each real bin (s).
        real: Real output throughput per bin (tok/s).
        sim_ends: End time of each simulated bin (s), every bin the simulation has.
        sim: Simulated output throughput per bin (tok/s).
        tokens: The cumulative counts to compare at; default: the real run's at the end
            of each of its bins.
        tick_s: Bin width (s).
    """
    real_cum = np.cumsum(np.asarray(real, dtype=float) * tick_s)
    sim_cum = np.cumsum(np.asarray(sim, dtype=float) * tick_s)
    targets = real_cum if tokens is None else np.asarray(tokens, dtype=float)
    if not len(sim_cum) or not len(real_cum):
        return np.full(len(targets), np.nan)
    sim_t = _times_to_reach(np.asarray(sim_ends, dtype=float), sim_cum, targets, tick_s)
    real_t = _times_to_reach(np.asarray(real_ends, dtype=float), real_cum, targets, tick_s)
    return np.where(targets > 0, sim_t - real_t, np.nan)


def output_lag(
    real_ends: FloatArray,
    real: FloatArray,
    sim_ends: FloatArray,
    sim: FloatArray,
    tick_s: float = 1.0,
) -> dict[str, float]:
    """How far the simulated run is behind the real one (s; negative: ahead) when it has
    produced the same number of output tokens, at each of :data:`LAG_FRACTIONS` of the
    real run's tokens: ``lag_s_25`` ... ``lag_s_90`` (:func:`lag_at`).

    Per-second MAPE mixes two errors: a rate error, which makes the simulation drift
    further from the real run as it goes, and the phase of individual iterations inside
    each bin. The lag of the cumulative output separates them: a lag that grows over a
    phase of the run is a rate error there, a constant one an offset.
    """
    total = float(np.sum(real) * tick_s)
    lags = lag_at(real_ends, real, sim_ends, sim, np.array(LAG_FRACTIONS) * total, tick_s)
    return {f"lag_s_{round(100 * f)}": float(v) for f, v in zip(LAG_FRACTIONS, lags, strict=True)}


@dataclass
class ValidationReport:
    """Per-metric comparison of a simulated run with the real one.

    Attributes:
        run: The run folder.
        latency: ``{metric: {stat: {"vllm", "sim", "err_pct"}}}`` for ttft, tpot, e2e,
            queueing (ms).
        throughput: Per-second output throughput: MAPEs, WAPE, bin counts and the lag
            of the cumulative output (:func:`output_lag`).
        totals: Token counts, makespans and mean throughputs.
        notes: Assumptions and approximations.
        series: The per-second series, on ``timeseries.csv``'s bins: ``t``, both sides'
            output throughput, running and waiting counts, and the output lag ``lag_s``
            (:func:`lag_at`, at each bin's cumulative vLLM output).
        samples: Per-request latencies (ms) of both, for CDF plots.
    """

    run: str
    latency: dict[str, dict[str, dict[str, float]]]
    throughput: dict[str, float]
    totals: dict[str, float]
    notes: list[str]
    series: dict[str, list[float]]
    samples: dict[str, list[float]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data (NaN becomes ``None``)."""

        def clean(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            if isinstance(value, float) and not math.isfinite(value):
                return None
            return value

        return clean(
            {
                "run": self.run,
                "latency_ms": self.latency,
                "throughput": self.throughput,
                "totals": self.totals,
                "notes": self.notes,
                "series": self.series,
            }
        )


def compare(
    run: BenchRun,
    sim_requests: dict[str, np.ndarray],
    sim_timeseries: dict[str, np.ndarray],
    notes: list[str],
    tick_s: float = 1.0,
) -> ValidationReport:
    """Compare a simulated run with the bench run.

    Args:
        run: The bench run.
        sim_requests: The simulation's request table, request ids in bench order.
        sim_timeseries: The simulation's time series (every instance, ``tick_s`` apart).
        notes: Notes carried into the report.
        tick_s: Bin width of ``timeseries.csv``.

    The simulated generation tokens of each ``tick_s`` step ending at ``t`` (summed over
    instances) are compared with ``timeseries.csv``'s row ``t`` (vLLM's tokens of
    ``[t - tick_s, t)``) by :func:`throughput_errors`: per-second MAPE over the bins with
    non-zero generation throughput, ``steady`` MAPE over bins with at least 10 % of the
    peak, and WAPE over all bins; :func:`output_lag` adds the lag of the cumulative
    output (``lag_s_25`` ... ``lag_s_90``, over every simulated bin).
    """
    real = run.latencies_ms()
    status = [
        f"{state} ({reason})" if str(reason) not in ("", "none") else str(state)
        for state, reason in zip(sim_requests["status"], sim_requests["reject_reason"], strict=True)
    ]
    finished = sum(state == "finished" for state in status)
    if finished == 0:
        kinds = ", ".join(sorted(set(status)))
        raise DataFileError(
            run.path,
            f"no request of {len(status)} finished in the simulation ({kinds}): nothing to "
            "compare; check the engine limits (max_model_len, the KV cache) against the trace",
        )
    if finished < len(status):
        shown = ", ".join(f"{k} {v}" for k, v in sorted(Counter(status).items()))
        notes = [
            *notes,
            f"{len(status) - finished} of {len(status)} requests did not finish in the "
            f"simulation ({shown}); latencies are compared over the {finished} that did",
        ]
    order = np.argsort(sim_requests["request_id"])
    done = np.array([state == "finished" for state in status])[order]
    # A request that did not finish in the simulation has no latency (rejected ones
    # record 0); both sides are compared over the requests that finished in both.
    sim = {
        metric: np.asarray(sim_requests[f"{metric}_ms"], dtype=float)[order][done]
        for metric in ("ttft", "tpot", "e2e", "queueing")
    }
    real = {metric: values[done] for metric, values in real.items()}
    latency: dict[str, dict[str, dict[str, float]]] = {}
    for metric in ("ttft", "tpot", "e2e", "queueing"):
        a, b = _stats(real[metric]), _stats(sim[metric])
        latency[metric] = {
            stat: {"vllm": a[stat], "sim": b[stat], "err_pct": _err(b[stat], a[stat])}
            for stat in ("mean", "p50", "p90", "p99")
        }
    # Per-second generation throughput.
    ts = run.timeseries
    bench_t = ts["t"]
    bench_gen = ts["gen_throughput"]
    times = np.asarray(sim_timeseries["time_s"], dtype=float)
    gen = np.asarray(sim_timeseries["generation_tokens"], dtype=float)
    inst = np.asarray(sim_timeseries["instance_id"], dtype=float)
    sim_bins: dict[float, float] = {}
    for i in np.unique(inst):
        mask = inst == i
        t_i, g_i = times[mask], gen[mask]
        per_tick = np.diff(np.concatenate([[0.0], g_i])) / tick_s
        for t, v in zip(t_i, per_tick, strict=True):
            key = round(float(t) / tick_s) * tick_s
            sim_bins[key] = sim_bins.get(key, 0.0) + float(v)
    sim_gen = np.array([sim_bins.get(round(float(t) / tick_s) * tick_s, 0.0) for t in bench_t])
    running = np.asarray(sim_timeseries["num_running"], dtype=float)
    waiting = np.asarray(sim_timeseries["num_waiting"], dtype=float)
    run_bins: dict[float, list[float]] = {}
    for t, a, w in zip(times, running, waiting, strict=True):
        acc = run_bins.setdefault(round(float(t) / tick_s) * tick_s, [0.0, 0.0])
        acc[0] += float(a)
        acc[1] += float(w)
    sim_running = [run_bins.get(round(float(t) / tick_s) * tick_s, [0.0, 0.0])[0] for t in bench_t]
    sim_waiting = [run_bins.get(round(float(t) / tick_s) * tick_s, [0.0, 0.0])[1] for t in bench_t]
    throughput = throughput_errors(bench_gen, sim_gen)
    sim_ends = np.array(sorted(sim_bins))
    sim_rate = np.array([sim_bins[t] for t in sim_ends])
    throughput |= output_lag(bench_t, bench_gen, sim_ends, sim_rate, tick_s)
    lag = lag_at(bench_t, bench_gen, sim_ends, sim_rate, tick_s=tick_s)
    r = run.requests
    real_span = float(r["last_token_ts"].max() - r["queued_ts"].min())
    first_token = np.asarray(sim_requests["first_token_s"], dtype=float)
    last = np.asarray(sim_requests["last_token_s"], dtype=float)
    arrival = np.asarray(sim_requests["arrival_s"], dtype=float)
    sim_span = float(np.nanmax(last) - np.nanmin(arrival))
    real_out = float(r["output_toks"].sum())
    sim_out = float(np.nansum(np.asarray(sim_requests["num_output_tokens"], dtype=float)))
    totals = {
        "output_tokens_vllm": real_out,
        "output_tokens_sim": sim_out,
        "prompt_tokens": float(r["input_toks"].sum()),
        "makespan_s_vllm": real_span,
        "makespan_s_sim": sim_span,
        "makespan_err_pct": _err(sim_span, real_span),
        "output_throughput_vllm": real_out / real_span,
        "output_throughput_sim": sim_out / sim_span,
        "output_throughput_err_pct": _err(sim_out / sim_span, real_out / real_span),
        "num_finished_sim": float(np.sum(np.isfinite(first_token))),
    }
    return ValidationReport(
        run=str(run.path),
        latency=latency,
        throughput=throughput,
        totals=totals,
        notes=notes,
        series={
            "t": bench_t.tolist(),
            "gen_vllm": bench_gen.tolist(),
            "gen_sim": sim_gen.tolist(),
            "running_vllm": ts["running"].tolist(),
            "running_sim": sim_running,
            "waiting_vllm": ts["waiting"].tolist(),
            "waiting_sim": sim_waiting,
            "lag_s": lag.tolist(),
        },
        samples={
            f"{metric}_{side}": values[metric].tolist()
            for metric in ("ttft", "tpot", "e2e")
            for side, values in (("vllm", real), ("sim", sim))
        },
    )


def find_profiles_root(run_dir: Path) -> Path | None:
    """LLMServingSim's ``perf/`` folder next to ``bench/`` (the repository layout), if any."""
    for parent in run_dir.resolve().parents:
        if (parent / "perf").is_dir() and (parent / "bench").is_dir():
            return parent / "perf"
    return None


def validate_run(
    path: str | Path,
    *,
    profiles: str | Path | None = None,
    dataset: str | Path | None = None,
    allow_unsupported: bool = False,
    overrides: dict[str, Any] | None = None,
    collectives: str = "measured",
    cudagraph_padding: bool = False,
) -> ValidationReport:
    """Simulate a bench run and compare (see the module doc).

    Args:
        path: The run folder.
        profiles: LLMServingSim ``perf/`` root; default: found next to ``bench/``,
            else ``perf: auto``.
        dataset: The trace; default: ``meta.json``'s.
        allow_unsupported: Drop expert-parallel grouping for the independent-instance
            approximation (see :class:`ImportOptions`).
        overrides: Engine keys to override.
        collectives: Where tensor-parallel collectives come from (see
            :func:`bench_setup`).
        cudagraph_padding: Model vLLM's CUDA-graph padding (see :func:`bench_setup`).
    """
    from llmserve_env.build import build_simulation

    run = load_bench_run(path, dataset)
    root = Path(profiles) if profiles is not None else find_profiles_root(run.path)
    setup = bench_setup(
        run,
        root,
        allow_unsupported=allow_unsupported,
        overrides=overrides,
        collectives=collectives,
        cudagraph_padding=cudagraph_padding,
    )
    notes = list(setup.notes)
    if root is None:
        notes.append("no LLMServingSim profiles found: perf: auto")
    sim = build_simulation(setup.scenario, workload=setup.workload)
    sim.run()
    report = compare(
        run,
        sim.metrics.request_table(),
        sim.metrics.timeseries_table(),
        notes,
        tick_s=run.tick_seconds(),
    )
    report.totals["num_preemptions_sim"] = float(
        sum(i.stats.num_preemptions for i in sim.instances)
    )
    return report
