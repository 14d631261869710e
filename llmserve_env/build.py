"""The composition root: a validated scenario in, a ready simulation out.

This is the one place that knows every layer: it resolves catalog names, picks latency
models, resolves vLLM's device-dependent defaults, sizes KV caches and wires the
components together. Everything it rejects is reported as a :class:`ScenarioError`
naming the dotted key and the allowed values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from llmserve_env.config.errors import DataFileError, ScenarioError
from llmserve_env.config.loader import load_scenario_file
from llmserve_env.config.schema import EngineConfig, InstanceGroup, Scenario, TraceWorkload
from llmserve_env.paths import scenarios_dir
from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.perf.cudagraph import default_capture_sizes
from llmserve_env.perf.hardware import GIB, DeviceSpec, device_catalog, resolve_device
from llmserve_env.perf.memory import num_kv_blocks, weights_bytes_per_device
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch, load_model_arch
from llmserve_env.perf.power import DevicePowerSpec, WorkModel
from llmserve_env.sim.data_parallel import DPGroup, RankLatency
from llmserve_env.sim.governors import make_governor
from llmserve_env.sim.instance import EngineParams, Instance
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.metrics import SLO, MetricsRecorder
from llmserve_env.sim.power import InstancePower, NodePower, NodePowerSpec, PowerState
from llmserve_env.sim.rng import rng_tree
from llmserve_env.sim.router import make_router
from llmserve_env.sim.simulation import Simulation
from llmserve_env.sim.stats import ItlHistogram
from llmserve_env.sim.workload import WorkloadData, build_workload

# --------------------------------------------------------------------------- scenarios


def scenario_names() -> list[str]:
    """Names of the shipped scenarios (paths below ``scenarios/`` without ``.yaml``)."""
    root = scenarios_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """Resolve a shipped scenario name or a file path.

    Raises:
        ScenarioError: naming the shipped scenarios when neither exists.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    root = scenarios_dir()
    for candidate in (root / f"{name_or_path}.yaml", root / str(name_or_path)):
        if candidate.is_file():
            return candidate
    raise ScenarioError(
        [
            (
                str(name_or_path),
                f"no such scenario file or shipped scenario; shipped: {', '.join(scenario_names())}",
            )
        ]
    )


def scenario_description(path: Path) -> str:
    """The ``description`` of a scenario file, without validating it."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def load_scenario(
    name_or_path: str | Path, overrides: Iterable[str] = (), seed: int | None = None
) -> Scenario:
    """Load a shipped scenario by name, or any scenario file, with overrides applied.

    Args:
        name_or_path: Shipped name (``default``, ``benchmark/h100-llama3.1-8b-10k``) or path.
        overrides: ``dotted.key=value`` strings.
        seed: Replaces the scenario's ``seed`` when given.
    """
    overrides = list(overrides)
    if seed is not None:
        overrides.append(f"seed={seed}")
    scenario = load_scenario_file(scenario_path(name_or_path), overrides)
    check_references(scenario)
    return scenario


# --------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class InstancePlan:
    """Everything needed to build one instance, resolved from the scenario."""

    name: str
    node_id: int
    node_name: str
    group: InstanceGroup
    key: str
    """Dotted key of the instance group in the scenario."""
    arch: ModelArch
    device: DeviceSpec
    params: EngineParams
    lockstep: int | None = None
    """Index of the lockstep data-parallel group (DP + EP) the instance is a rank of."""
    expert_parallel_size: int = 1
    """Devices the model's experts are split over (1: none)."""


def _group_key(node_index: int, group_index: int) -> str:
    return f"cluster.nodes[{node_index}].instances[{group_index}]"


def scenario_device(scenario: Scenario, name: str) -> DeviceSpec:
    """The accelerator ``name`` stands for: one of the scenario's own ``devices``, else
    the catalog's (by name or alias).

    Raises:
        KeyError: naming the catalog's devices and the scenario's.
    """
    figures = scenario.devices.get(name)
    if figures is not None:
        return DeviceSpec(name=name, **figures.model_dump())
    try:
        return resolve_device(name)
    except KeyError as exc:
        if not scenario.devices:
            raise
        raise KeyError(
            f"{exc.args[0]}; the scenario's devices: {', '.join(scenario.devices)}"
        ) from exc


def _check_devices(scenario: Scenario) -> list[tuple[str, str]]:
    """The scenario's own devices must not take a name the catalog already resolves."""
    problems = []
    for name in scenario.devices:
        try:
            known = resolve_device(name)
        except KeyError:
            continue
        problems.append(
            (
                f"devices.{name}",
                f"{name!r} is the catalog's {known.name!r} already (`llmserve devices`); "
                "give the described device a name of its own",
            )
        )
    return problems


def check_references(scenario: Scenario) -> None:
    """Check catalog names (models, devices) and that each instance fits its devices.

    Raises:
        ScenarioError: listing every bad reference with its dotted key.
    """
    problems = _check_devices(scenario)
    for n, node in enumerate(scenario.cluster.nodes):
        for g, group in enumerate(node.instances):
            key = _group_key(n, g)
            try:
                arch = load_model_arch(group.model)
            except KeyError as exc:
                problems.append((f"{key}.model", str(exc.args[0])))
                continue
            except DataFileError as exc:
                problems.append((f"{key}.model", str(exc)))
                continue
            if (why := arch.tensor_parallel_problem(group.tp)) is not None:
                problems.append((f"{key}.tp", f"{group.model}: {why}"))
            try:
                device = scenario_device(scenario, group.device)
            except KeyError as exc:
                problems.append((f"{key}.device", str(exc.args[0])))
                continue
            try:
                resolve_engine(group.engine, arch, device, group.tp, group.dtype, scenario)
            except ValueError as exc:
                problems.append((key, str(exc)))
    if problems:
        raise ScenarioError(problems)


def vllm_batch_defaults(device: DeviceSpec) -> tuple[int, int]:
    """vLLM's serving defaults ``(max_num_batched_tokens, max_num_seqs)`` for a device:
    larger on GPUs with at least 70 GiB that are not A100s (vLLM ``EngineArgs``)."""
    if device.mem_gib >= 70 and "a100" not in device.name.lower():
        return 8192, 1024
    return 2048, 256


def resolve_engine(
    engine: EngineConfig,
    arch: ModelArch,
    device: DeviceSpec,
    tp: int,
    dtype: str,
    scenario: Scenario,
    expert_parallel_size: int = 1,
) -> EngineParams:
    """Turn engine knobs into concrete numbers (defaults, KV blocks, context length);
    ``expert_parallel_size`` > 1: the experts are split over that many devices.

    Raises:
        ValueError: when the model does not fit or the knobs clash.
    """
    default_tokens, default_seqs = vllm_batch_defaults(device)
    max_tokens = engine.max_num_batched_tokens or default_tokens
    max_seqs = engine.max_num_seqs or default_seqs
    if engine.num_gpu_blocks_override is not None:
        blocks = engine.num_gpu_blocks_override
    else:
        blocks = num_kv_blocks(
            arch,
            device,
            tp=tp,
            dtype=dtype,
            block_size=engine.block_size,
            gpu_memory_utilization=engine.gpu_memory_utilization,
            max_num_batched_tokens=max_tokens,
            max_num_seqs=max_seqs,
            activation_reserve_gib=engine.activation_reserve_gib,
            expert_parallel_size=expert_parallel_size,
        )
    kv_tokens = blocks * engine.block_size
    if engine.max_model_len is not None:
        max_len = engine.max_model_len
        if max_len > kv_tokens:
            raise ValueError(
                f"engine.max_model_len={max_len} needs more KV cache than the instance has "
                f"({kv_tokens} tokens in {blocks} blocks); lower max_model_len or raise "
                "gpu_memory_utilization / tp"
            )
    else:
        # vLLM would refuse to start; we fit the context to the cache instead.
        max_len = min(arch.max_position_embeddings, kv_tokens)
    if not engine.enable_chunked_prefill and max_tokens < max_len:
        raise ValueError(
            f"with enable_chunked_prefill off, max_num_batched_tokens ({max_tokens}) must be "
            f">= max_model_len ({max_len})"
        )
    return EngineParams(
        max_num_seqs=max_seqs,
        max_num_batched_tokens=max_tokens,
        block_size=engine.block_size,
        num_blocks=blocks,
        enable_prefix_caching=engine.enable_prefix_caching,
        enable_chunked_prefill=engine.enable_chunked_prefill,
        long_prefill_token_threshold=engine.long_prefill_token_threshold,
        max_model_len=max_len,
        scheduling_policy=engine.scheduling_policy,
        max_num_waiting=engine.max_num_waiting,
        max_decode_run=scenario.simulation.max_decode_run,
        async_scheduling=engine.async_scheduling,
        scheduler_reserve_full_isl=engine.scheduler_reserve_full_isl,
    )


def _expert_parallel_size(group: InstanceGroup, arch: ModelArch, key: str) -> int:
    """Devices the group's experts are split over (1: none), checking the layout fits
    the model."""
    if group.enable_expert_parallel:
        if not arch.is_moe:
            raise ScenarioError(
                [(f"{key}.enable_expert_parallel", f"{arch.name} is a dense model (no experts)")]
            )
        if arch.num_experts % group.data_parallel_size:
            raise ScenarioError(
                [
                    (
                        f"{key}.data_parallel_size",
                        f"{arch.num_experts} experts of {arch.name} do not split evenly over "
                        f"{group.data_parallel_size} ranks",
                    )
                ]
            )
        return group.tp * group.data_parallel_size
    if arch.is_moe and group.data_parallel_size > 1:
        raise ScenarioError(
            [
                (
                    f"{key}.enable_expert_parallel",
                    "data-parallel ranks of an MoE model need enable_expert_parallel: true "
                    "(their MoE layers sharded over every rank without it are not modelled)",
                )
            ]
        )
    return 1


def plan_instances(scenario: Scenario) -> list[InstancePlan]:
    """Expand node, instance ``count`` and ``data_parallel_size`` fields into one plan
    per instance (per data-parallel rank); the ranks of an expert-parallel engine share
    a ``lockstep`` index."""
    plans: list[InstancePlan] = []
    node_id = 0
    num_lockstep = 0
    for n, node in enumerate(scenario.cluster.nodes):
        for node_copy in range(node.count):
            node_name = node.name or f"node{node_id}"
            if node.name and node.count > 1:
                node_name = f"{node.name}-{node_copy}"
            for g, group in enumerate(node.instances):
                key = _group_key(n, g)
                arch = load_model_arch(group.model)
                device = scenario_device(scenario, group.device)
                ep = _expert_parallel_size(group, arch, key)
                try:
                    params = resolve_engine(
                        group.engine, arch, device, group.tp, group.dtype, scenario, ep
                    )
                except ValueError as exc:
                    raise ScenarioError([(key, str(exc))]) from exc
                base = group.name or arch.name.split("/")[-1]
                for _ in range(group.count):
                    lockstep = None
                    if ep > 1:
                        lockstep = num_lockstep
                        num_lockstep += 1
                    for _ in range(group.data_parallel_size):
                        plans.append(
                            InstancePlan(
                                name=f"{base}-{len(plans)}",
                                node_id=node_id,
                                node_name=node_name,
                                group=group,
                                key=key,
                                arch=arch,
                                device=device,
                                params=params,
                                lockstep=lockstep,
                                expert_parallel_size=ep,
                            )
                        )
            node_id += 1
    return plans


def cudagraph_capture_sizes(engine: EngineConfig, params: EngineParams) -> tuple[int, ...]:
    """The CUDA-graph capture sizes an instance pads its token count to (empty: none),
    resolved from ``engine.cudagraph_capture_sizes`` and the resolved scheduler limits;
    sizes above ``max_num_batched_tokens`` are dropped, as vLLM does."""
    sizes = engine.cudagraph_capture_sizes
    if sizes is None:
        return ()
    if sizes == "auto":
        return default_capture_sizes(params.max_num_seqs, params.max_num_batched_tokens)
    return tuple(sorted({n for n in sizes if n <= params.max_num_batched_tokens}))


def make_latency_model(plan: InstancePlan) -> LatencyModel:
    """The latency model of an instance, by its ``perf`` setting
    (:func:`llmserve_env.perf.factory.make_latency_model`), padding its token counts to
    the instance's CUDA-graph capture sizes (:func:`cudagraph_capture_sizes`)."""
    from llmserve_env.perf import factory as perf_factory

    group = plan.group
    try:
        model = perf_factory.make_latency_model(
            plan.arch,
            plan.device,
            group.tp,
            group.dtype,
            group.perf,
            capture_sizes=cudagraph_capture_sizes(group.engine, plan.params),
            expert_parallel_size=plan.expert_parallel_size,
        )
    except (DataFileError, ValueError) as exc:
        raise ScenarioError([(f"{plan.key}.perf", str(exc))]) from exc
    _check_plausible(plan, model, perf_factory.latency_source(model))
    return model


MAX_ITERATION_S = 3600.0
"""The longest one engine iteration may take. No real forward pass comes near an hour;
a latency model that predicts one has figures in the wrong units (a device's TFLOP/s or
GB/s, a profile's time column), and simulating it would step the time series through
every second of it."""


def _check_plausible(plan: InstancePlan, model: LatencyModel, source: str) -> None:
    """Refuse a latency model whose iterations are not finite positive times under
    :data:`MAX_ITERATION_S`: a prefill of the whole token budget and one short decode.

    Raises:
        ScenarioError: at the scenario's own device figures (``devices.<name>``) or the
            instance group's ``perf``, naming the time and the model that gave it.
    """
    group = plan.group
    budget = plan.params.max_num_batched_tokens
    probes = {
        f"a prefill of {budget} tokens": BatchShape((budget,), (0,)),
        "one decode of 1,024 tokens": BatchShape(
            num_decodes=1, decode_kv_sum=1024, decode_kv_max=1024, decode_kv_min=1024
        ),
    }
    for what, shape in probes.items():
        seconds = model.iteration_time_s(shape)
        if math.isfinite(seconds) and 0.0 < seconds <= MAX_ITERATION_S:
            continue
        if group.perf in ("auto", "analytical") and plan.device.name not in device_catalog():
            key = f"devices.{group.device}"
            fix = "its figures' units (bf16_tflops in TFLOP/s, mem_bw_gbps in GB/s)"
        else:
            key = f"{plan.key}.perf"
            fix = "the latency model's units (a profile's times are in us)"
        raise ScenarioError(
            [
                (
                    key,
                    f"one iteration of {what} of {plan.arch.name} on {plan.device.name} "
                    f"takes {seconds:.3g} s by {source}; an iteration must take a finite "
                    f"time above 0 and at most {MAX_ITERATION_S:.0f} s: check {fix}",
                )
            ]
        )


# --------------------------------------------------------------------------- simulation


class SimulationFactory:
    """Builds fresh simulations of one scenario quickly and repeatedly.

    Catalog lookups, engine resolution and latency models are done once and shared
    (they are read-only); each :meth:`build` makes new mutable state and a new workload
    for its seed. Environments use this for resets in milliseconds.

    Args:
        scenario: A validated scenario.
    """

    def __init__(self, scenario: Scenario) -> None:
        check_references(scenario)
        self.scenario = scenario
        self.plans = plan_instances(scenario)
        self.latency_models = [make_latency_model(plan) for plan in self.plans]
        self.power_specs = [_device_power_spec(scenario, plan) for plan in self.plans]
        self.work_models = [
            WorkModel(plan.arch, plan.device, plan.group.tp, plan.group.dtype)
            for plan in self.plans
        ]
        self.node_specs = _node_power_specs(scenario)
        self._trace_cache: WorkloadData | None = None

    @property
    def num_instances(self) -> int:
        """Instances in the cluster."""
        return len(self.plans)

    def workload(self, seed: int) -> WorkloadData:
        """The workload for ``seed`` (a trace is loaded once and reused)."""
        cfg = self.scenario.workload
        if isinstance(cfg, TraceWorkload) and cfg.priority is None:
            if self._trace_cache is None:
                self._trace_cache = build_workload(cfg, rng_tree(seed))
            return self._trace_cache
        return build_workload(cfg, rng_tree(seed))

    def build(
        self,
        seed: int | None = None,
        *,
        external_routing: bool = False,
        workload: WorkloadData | None = None,
        horizon_s: float | Literal["scenario"] | None = "scenario",
    ) -> Simulation:
        """A ready-to-run simulation.

        Args:
            seed: Root seed (default: the scenario's).
            external_routing: Halt at each arrival for an external routing decision
                instead of using ``router.policy``.
            workload: Use these requests instead of generating them.
            horizon_s: Override the scenario's ``simulation.horizon_s``.
        """
        scenario = self.scenario
        seed = scenario.seed if seed is None else seed
        rngs = rng_tree(seed)
        if workload is None:
            workload = self.workload(seed)
        kernel = Kernel()
        slo = SLO(
            ttft_s=None if scenario.slo.ttft_ms is None else scenario.slo.ttft_ms / 1e3,
            tpot_s=None if scenario.slo.tpot_ms is None else scenario.slo.tpot_ms / 1e3,
            e2e_s=None if scenario.slo.e2e_ms is None else scenario.slo.e2e_ms / 1e3,
        )
        itl = ItlHistogram()
        nodes = [NodePower(spec) for spec in self.node_specs] if scenario.power.enabled else []
        power_cfg = scenario.power
        instances = []
        for index, (plan, latency) in enumerate(zip(self.plans, self.latency_models, strict=True)):
            arch, tp = plan.arch, plan.group.tp
            weights = arch.weight_bytes(plan.group.dtype) / tp
            if plan.expert_parallel_size > 1:
                weights = weights_bytes_per_device(
                    arch, tp, plan.group.dtype, plan.expert_parallel_size
                )
            wb = DTYPE_BYTES[plan.group.dtype]
            collective = (
                2 * arch.num_layers * 2 * (tp - 1) / tp * arch.hidden_size * wb * tp
                if tp > 1
                else 0.0
            )
            power: InstancePower | None = InstancePower(
                self.power_specs[index],
                self.work_models[index],
                num_devices=tp,
                weight_bytes=weights,
                host_gbps=plan.device.host_bw_gbps,
                cap_w=power_cfg.cap_w,
                node=nodes[plan.node_id] if nodes else NodePower(self.node_specs[plan.node_id]),
                collective_bytes_per_token=collective,
            )
            assert power is not None
            if plan.group.initial_power_state != "on":
                power.set_state(_POWER_STATES[plan.group.initial_power_state], 0.0)
            if not power_cfg.enabled:
                power = None
            instances.append(
                Instance(
                    instance_id=index,
                    name=plan.name,
                    kernel=kernel,
                    params=plan.params,
                    latency=latency,
                    itl=itl,
                    node_id=plan.node_id,
                    num_devices=tp,
                    power=power,
                )
            )
        ranks: dict[int, list[int]] = {}
        for index, plan in enumerate(self.plans):
            if plan.lockstep is not None:
                ranks.setdefault(plan.lockstep, []).append(index)
        dp_groups = [
            DPGroup(
                group_id,
                [instances[i] for i in members],
                [cast(RankLatency, self.latency_models[i]) for i in members],
            )
            for group_id, members in sorted(ranks.items())
        ]
        router = None if external_routing else make_router(scenario.router.policy, rngs["routing"])
        target_tpot = power_cfg.target_tpot_ms or scenario.slo.tpot_ms
        governor = (
            None
            if not power_cfg.enabled
            else make_governor(
                power_cfg.governor,
                up=power_cfg.up_threshold,
                down=power_cfg.down_threshold,
                idle_timeout_s=power_cfg.idle_timeout_s,
                sleep_level=power_cfg.sleep_level,
                target_tpot_s=None if target_tpot is None else target_tpot / 1e3,
            )
        )
        return Simulation(
            kernel,
            instances,
            router,
            workload,
            MetricsRecorder(slo),
            itl,
            horizon_s=scenario.simulation.horizon_s if horizon_s == "scenario" else horizon_s,
            sample_interval_s=scenario.simulation.sample_interval_s,
            rngs=rngs,
            nodes=nodes,
            governor=governor,
            power_interval_s=power_cfg.control_interval_s,
            wake_on_demand=power_cfg.wake_on_demand,
            dp_groups=dp_groups,
        )


_POWER_STATES = {
    "on": PowerState.ON,
    "sleep": PowerState.SLEEP,
    "deep_sleep": PowerState.DEEP_SLEEP,
    "off": PowerState.OFF,
}


def _device_power_spec(scenario: Scenario, plan: InstancePlan) -> DevicePowerSpec:
    """A device's power constants: catalog, then the scenario's overrides."""
    overrides: dict[str, Any] = {}
    for name, values in scenario.power.devices.items():
        try:
            matches = scenario_device(scenario, name).name == plan.device.name
        except KeyError:
            matches = False
        if matches:
            overrides.update(values.model_dump(exclude_none=True))
    if scenario.power.clock_levels is not None:
        overrides["clock_levels"] = tuple(scenario.power.clock_levels)
    try:
        return DevicePowerSpec.for_device(plan.device, **overrides)
    except ValueError as exc:
        raise ScenarioError([("power.devices", str(exc))]) from exc


def _node_power_specs(scenario: Scenario) -> list[NodePowerSpec]:
    """One spec per node (after expanding ``count``)."""
    specs = []
    for node in scenario.cluster.nodes:
        cfg = node.power
        dimms = (
            cfg.num_dimms if cfg.num_dimms is not None else math.ceil(node.dram_gib / cfg.dimm_gib)
        )
        spec = NodePowerSpec(
            base_w=cfg.base_w,
            cpu_idle_w=cfg.cpu_idle_w,
            cpu_active_w=cfg.cpu_active_w,
            cpu_util=cfg.cpu_util,
            num_dimms=dimms,
            dimm_idle_w=cfg.dimm_idle_w,
            dram_pj_per_bit=cfg.dram_pj_per_bit,
            num_links=cfg.num_links,
            link_idle_w=cfg.link_idle_w,
            link_pj_per_bit=cfg.link_pj_per_bit,
            num_nics=cfg.num_nics,
            nic_idle_w=cfg.nic_idle_w,
            num_storage=cfg.num_storage,
            storage_idle_w=cfg.storage_idle_w,
        )
        specs.extend([spec] * node.count)
    return specs


def build_simulation(
    scenario: Scenario,
    *,
    external_routing: bool = False,
    workload: WorkloadData | None = None,
) -> Simulation:
    """Build a ready-to-run simulation from a validated scenario.

    Args:
        scenario: The scenario.
        external_routing: Halt at each arrival for an external routing decision
            (the routing environment) instead of using ``router.policy``.
        workload: Reuse already generated requests (they are read-only and shared).
    """
    return SimulationFactory(scenario).build(external_routing=external_routing, workload=workload)


def describe_instances(scenario: Scenario) -> list[dict[str, object]]:
    """One row per instance: name, node, model, device, tp, KV blocks, knobs and the
    latency model ``perf`` resolved to."""
    from llmserve_env.perf.factory import latency_source

    rows = []
    for plan in plan_instances(scenario):
        p = plan.params
        rows.append(
            {
                "name": plan.name,
                "node": plan.node_name,
                "model": plan.arch.name,
                "device": plan.device.name,
                "tp": plan.group.tp,
                "dp_engine": "-" if plan.lockstep is None else plan.lockstep,
                "num_blocks": p.num_blocks,
                "kv_cache_gib": p.num_blocks
                * p.block_size
                * plan.arch.kv_bytes_per_token_per_gpu(plan.group.dtype, plan.group.tp)
                * plan.group.tp
                / GIB,
                "max_num_seqs": p.max_num_seqs,
                "max_num_batched_tokens": p.max_num_batched_tokens,
                "max_model_len": p.max_model_len,
                "latency_model": latency_source(make_latency_model(plan)),
            }
        )
    return rows


__all__ = [
    "SimulationFactory",
    "build_simulation",
    "check_references",
    "describe_instances",
    "device_catalog",
    "load_scenario",
    "scenario_names",
    "scenario_path",
]
