"""The scenario schema: typed, frozen, strict.

A scenario file is YAML that validates against :class:`Scenario`. Unknown keys are
errors (``extra="forbid"``), values are checked for type and range, and cross-field
checks name the keys that clash. Attribute docstrings become the field descriptions of
the exported JSON Schema (``llmserve schema``), so editors can validate and complete
scenario files.

Engine knobs keep vLLM's names and defaults. A ``None`` default means "as vLLM would
choose for this device and model" and is resolved when the simulation is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]

SchedulingPolicy = Literal["fcfs", "priority", "shortest_prompt_first"]
RouterPolicy = Literal[
    "round_robin",
    "random",
    "least_outstanding_requests",
    "join_shortest_queue",
    "least_kv_usage",
    "power_of_two_choices",
    "prefix_affinity",
    "vllm_data_parallel",
]
DType = Literal["bf16", "fp16", "fp8"]


def _power_state_word(value: object) -> object:
    """YAML 1.1 reads bare ``on``/``off`` as booleans; take them back as the words."""
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class StrictModel(BaseModel):
    """Base for every scenario section: frozen, unknown keys rejected."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,
    )


def _resolve_path(value: str, info: ValidationInfo) -> str:
    """Resolve ``value`` against the scenario file's folder and require that it exists."""
    base = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    if not path.exists():
        raise ValueError(f"file not found: {value!r} (looked at {path})")
    return str(path)


# --------------------------------------------------------------------------- engine


class EngineConfig(StrictModel):
    """vLLM engine knobs of one instance (vLLM V1 names and meaning)."""

    max_num_seqs: PositiveInt | None = None
    """Most requests in one batch. ``None``: vLLM's default for the device (1024 on GPUs
    with at least 70 GiB, else 256)."""

    max_num_batched_tokens: PositiveInt | None = None
    """Token budget of one iteration. ``None``: vLLM's serving default for the device
    (8192 on GPUs with at least 70 GiB, else 2048)."""

    block_size: Literal[1, 8, 16, 32, 64, 128] = 16
    """Tokens per KV-cache block."""

    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.9
    """Fraction of each device's memory the engine may use (weights + activations + KV)."""

    enable_prefix_caching: bool = True
    """Reuse KV blocks across requests by hashing full blocks (vLLM V1 default: on)."""

    enable_chunked_prefill: bool = True
    """Split long prompts across iterations within the token budget (vLLM V1: always on)."""

    long_prefill_token_threshold: NonNegInt = 0
    """Cap on the tokens one request may prefill in one iteration (0 = no cap)."""

    max_model_len: PositiveInt | None = None
    """Longest prompt + output a request may have. ``None``: the model's context length."""

    scheduling_policy: SchedulingPolicy = "fcfs"
    """Order of the waiting queue and of preemption victims."""

    async_scheduling: bool = False
    """Schedule step N+1 while step N runs, as vLLM's ``--async-scheduling`` (on by
    default in vLLM since 0.14): a request arriving during step N starts at step N+2 at
    the earliest, and slots and KV blocks freed by step N are reused from step N+2. Off
    by default here so results stay comparable with earlier ones."""

    scheduler_reserve_full_isl: bool = False
    """Admit a waiting (or preempted) request only if KV blocks for its whole current
    sequence (prompt plus tokens generated so far, past its prefix-cache hit) are free,
    not just for its first chunk: vLLM's ``SchedulerConfig.scheduler_reserve_full_isl``
    (``allocate_slots(full_sequence_must_fit=True)``, on by default in vLLM 0.19), which
    keeps chunked prefill from admitting prompts whose later chunks would preempt
    running requests. Off by default here, like ``async_scheduling``, so
    results stay comparable with earlier ones; ``llmserve validate`` turns it on where
    the run had it."""

    cudagraph_capture_sizes: Literal["auto"] | tuple[PositiveInt, ...] | None = None
    """Token counts vLLM captures CUDA graphs for (its
    ``compilation_config.cudagraph_capture_sizes``): a batch of at most the largest runs
    its token-parallel operators (linear layers, norms, MoE, tensor-parallel
    collectives) at the smallest of them at or above its token count; attention, the LM
    head and the sampler stay at the real batch. ``None``: no padding (an eager run, as
    profiles are measured). ``auto``: vLLM 0.19's default list for this engine's
    ``max_num_seqs`` and ``max_num_batched_tokens`` (``[1, 2, 4]``, multiples of 8 below
    256, multiples of 16 from 256, up to ``min(2 * max_num_seqs, 512,
    max_num_batched_tokens)``). Sizes above ``max_num_batched_tokens`` are dropped, as
    vLLM does. Applied by profile latency models only (``perf`` a profile folder, or
    ``auto`` finding a measured one)."""

    @field_validator("cudagraph_capture_sizes")
    @classmethod
    def _some_sizes(
        cls, value: Literal["auto"] | tuple[int, ...] | None
    ) -> Literal["auto"] | tuple[int, ...] | None:
        if isinstance(value, tuple) and not value:
            raise ValueError("list at least one size, or leave the key out for no padding")
        return value

    activation_reserve_gib: NonNegFloat | None = None
    """Device memory charged besides the weights, per device: vLLM's profiled peak
    activation and non-torch increase (CUDA graphs and the CUDA context are not charged,
    as in vLLM 0.19). ``None``: estimated from the model, ``max_num_batched_tokens`` and
    ``max_num_seqs`` (``llmserve_env/perf/memory.py``)."""

    num_gpu_blocks_override: PositiveInt | None = None
    """Force the number of KV blocks (as vLLM's option of the same name)."""

    max_num_waiting: NonNegInt | None = None
    """Admission control: reject arrivals when this many requests already wait
    (``None``: unbounded, as vLLM)."""


# --------------------------------------------------------------------------- devices


class DeviceFigures(StrictModel):
    """An accelerator the scenario describes itself (a hypothetical or unlisted part),
    with the figures of a catalog entry (``profiles/devices.yaml``, per device). It runs
    on the roofline model (``perf: analytical`` or ``auto``) or a measured profile
    folder; ``vendor`` picks the roofline's calibration family (``nvidia``: the Hopper
    fit, ``amd``, ``google``, ``intel``; ``custom``: the generic constants)."""

    vendor: Literal["nvidia", "amd", "google", "intel", "custom"] = "custom"
    """Whose calibration constants the roofline applies."""
    bf16_tflops: PositiveFloat
    """Dense BF16 tensor peak (TFLOP/s)."""
    fp8_tflops: PositiveFloat | None = None
    """Dense FP8 peak (``None``: no FP8 units; FP8 runs at the BF16 peak)."""
    mem_gib: PositiveFloat
    """Device memory (GiB)."""
    mem_bw_gbps: PositiveFloat
    """Device memory bandwidth (GB/s)."""
    scaleup_bw_gbps: PositiveFloat
    """Scale-up link bandwidth per direction (GB/s), for tensor-parallel collectives."""
    host_bw_gbps: PositiveFloat
    """Host link bandwidth per direction (GB/s), for weight reloads after sleep."""
    tdp_w: PositiveFloat
    """Board power limit (W)."""
    idle_w: NonNegFloat
    """Idle power with a model loaded (W)."""
    pim_tflops: PositiveFloat | None = None
    """Processing-in-memory: peak (16-bit TFLOP/s) of compute units inside the memory."""
    pim_bw_gbps: PositiveFloat | None = None
    """Processing-in-memory: the internal bandwidth those units read at (GB/s)."""

    @model_validator(mode="after")
    def _consistent(self) -> DeviceFigures:
        if self.idle_w >= self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) must be below tdp_w ({self.tdp_w})")
        if (self.pim_tflops is None) != (self.pim_bw_gbps is None):
            raise ValueError(
                "pim_tflops and pim_bw_gbps go together (processing-in-memory units and "
                "the internal bandwidth they read at)"
            )
        return self


# --------------------------------------------------------------------------- cluster


class InstanceGroup(StrictModel):
    """One or more identical serving instances (vLLM engines) on a node."""

    name: str | None = None
    """Label used in outputs; defaults to ``<model short name>-<index>``."""

    model: str
    """Model name from the catalog (``llmserve models``) or a path to a HuggingFace
    ``config.json``."""

    device: str
    """Accelerator name from the device catalog (``llmserve devices``) or from the
    scenario's own ``devices`` section."""

    tp: PositiveInt = 1
    """Tensor-parallel degree: devices per instance."""

    count: PositiveInt = 1
    """How many identical instances this group stands for (with
    ``data_parallel_size`` > 1: how many data-parallel engines)."""

    data_parallel_size: PositiveInt = 1
    """vLLM ``--data-parallel-size``: ranks of one engine, each ``tp`` devices with its
    own scheduler, KV cache and requests (the router sees each rank). An MoE model's
    ranks step in lockstep and need ``enable_expert_parallel``; a dense model's run
    independently, as ``count`` instances would."""

    enable_expert_parallel: bool = False
    """vLLM ``--enable-expert-parallel``: the experts of an MoE model are split whole
    over the ``data_parallel_size`` ranks (modelled at ``tp: 1``), whose MoE layers
    all-gather every rank's tokens and reduce-scatter the results."""

    dtype: DType = "bf16"
    """Weight and activation data type."""

    engine: EngineConfig = EngineConfig()
    """Engine knobs; the scenario's top-level ``engine`` gives the defaults."""

    initial_power_state: Literal["on", "sleep", "deep_sleep", "off"] = "on"
    """Power state at the start (sleeping instances wake on demand or by the agent)."""

    @field_validator("initial_power_state", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        return _power_state_word(value)

    perf: str = "auto"
    """Latency model: ``auto`` (best available source), ``analytical``, or a path to a
    profile folder in llmserve-env's profile format."""

    @model_validator(mode="after")
    def _expert_parallel_layout(self) -> InstanceGroup:
        if self.enable_expert_parallel:
            if self.data_parallel_size < 2:
                raise ValueError(
                    "enable_expert_parallel needs data_parallel_size >= 2 (the experts are "
                    "split over the data-parallel ranks)"
                )
            if self.tp != 1:
                raise ValueError(
                    f"enable_expert_parallel is modelled for tp: 1 ranks only, got tp: {self.tp}"
                )
        return self

    @property
    def num_devices(self) -> int:
        """Devices the whole group takes (``tp x data_parallel_size x count``)."""
        return self.tp * self.data_parallel_size * self.count

    @field_validator("perf")
    @classmethod
    def _perf_source(cls, value: str, info: ValidationInfo) -> str:
        if value in ("auto", "analytical"):
            return value
        try:
            return _resolve_path(value, info)
        except ValueError as exc:
            raise ValueError(f"{exc}; allowed: auto, analytical or a profile folder") from None


class NodePowerConfig(StrictModel):
    """Node components' power (LLMServingSim's ``power`` block; defaults from its
    RTX PRO 6000 example)."""

    base_w: NonNegFloat = 60.0
    """Chassis, fans and board."""
    cpu_idle_w: NonNegFloat = 10.0
    """Host CPU at idle."""
    cpu_active_w: NonNegFloat = 200.0
    """Host CPU at full load."""
    cpu_util: Annotated[float, Field(ge=0.0, le=1.0)] = 0.15
    """CPU load while any instance on the node runs an iteration."""
    num_dimms: NonNegInt | None = None
    """DRAM modules (default: ``dram_gib`` / ``dimm_gib``)."""
    dimm_gib: PositiveFloat = 32.0
    """Capacity of one module."""
    dimm_idle_w: NonNegFloat = 2.0
    """Idle power per module."""
    dram_pj_per_bit: NonNegFloat = 6.0
    """Energy of DRAM traffic."""
    num_links: NonNegInt = 1
    """Device links."""
    link_idle_w: NonNegFloat = 5.0
    """Idle power per link."""
    link_pj_per_bit: NonNegFloat = 4.0
    """Energy of link traffic."""
    num_nics: NonNegInt = 1
    """Network interfaces."""
    nic_idle_w: NonNegFloat = 20.0
    """Power per NIC."""
    num_storage: NonNegInt = 2
    """Storage devices."""
    storage_idle_w: NonNegFloat = 5.0
    """Power per storage device."""


class NodeConfig(StrictModel):
    """A server: devices, host memory and the instances placed on it."""

    name: str | None = None
    """Label used in outputs; defaults to ``node<index>``."""

    count: PositiveInt = 1
    """How many identical nodes this entry stands for."""

    num_devices: PositiveInt = 8
    """Accelerators in the node; the instances' ``tp x data_parallel_size x count`` must
    fit."""

    dram_gib: PositiveFloat = 1024.0
    """Host DRAM capacity."""

    dram_bw_gbps: PositiveFloat = 200.0
    """Host DRAM bandwidth (GB/s)."""

    instances: list[InstanceGroup] = Field(min_length=1)
    """Instances placed on this node."""

    power: NodePowerConfig = NodePowerConfig()
    """Power of the node's components (energy accounting)."""

    @model_validator(mode="after")
    def _devices_fit(self) -> NodeConfig:
        used = sum(group.num_devices for group in self.instances)
        if used > self.num_devices:
            raise ValueError(
                f"instances need {used} devices (sum of tp x data_parallel_size x count) but "
                "num_devices is "
                f"{self.num_devices}"
            )
        return self


class ClusterConfig(StrictModel):
    """The serving cluster."""

    nodes: list[NodeConfig] = Field(min_length=1)
    """Nodes of the cluster."""

    inter_node_bw_gbps: PositiveFloat = 50.0
    """Network bandwidth between nodes per direction (GB/s)."""


class RouterConfig(StrictModel):
    """Cluster-level request routing."""

    policy: RouterPolicy = "round_robin"
    """How an arriving request picks its instance."""


# --------------------------------------------------------------------------- workload


class PoissonArrivals(StrictModel):
    """Exponential inter-arrival times."""

    process: Literal["poisson"]
    rate_rps: PositiveFloat
    """Mean arrival rate (requests per second)."""


class GammaArrivals(StrictModel):
    """Gamma inter-arrival times: bursty when ``cv > 1``, regular when ``cv < 1``."""

    process: Literal["gamma"]
    rate_rps: PositiveFloat
    """Mean arrival rate (requests per second)."""
    cv: PositiveFloat
    """Coefficient of variation of the inter-arrival time (1 = Poisson)."""


class ConstantArrivals(StrictModel):
    """Evenly spaced arrivals (``rate_rps`` = inf is not allowed; use a burst instead)."""

    process: Literal["constant"]
    rate_rps: PositiveFloat
    """Arrivals per second, evenly spaced."""


class BurstArrivals(StrictModel):
    """Every request arrives at once (offline batch)."""

    process: Literal["burst"]
    at_s: NonNegFloat = 0.0
    """Arrival time of the whole batch."""


class OnOffArrivals(StrictModel):
    """Pulses: Poisson at ``rate_on_rps`` for ``on_s``, then ``rate_off_rps`` for ``off_s``."""

    process: Literal["on_off"]
    rate_on_rps: PositiveFloat
    """Rate while on (requests per second)."""
    rate_off_rps: NonNegFloat = 0.0
    """Rate while off (requests per second)."""
    on_s: PositiveFloat
    """Length of an on phase."""
    off_s: PositiveFloat
    """Length of an off phase."""


class PiecewiseArrivals(StrictModel):
    """A non-homogeneous Poisson process with a rate curve (e.g. a diurnal cycle)."""

    process: Literal["piecewise"]
    times_s: list[NonNegFloat] = Field(min_length=1)
    """Knot times, increasing, starting at 0."""
    rates_rps: list[NonNegFloat] = Field(min_length=1)
    """Rate at each knot."""
    interpolation: Literal["step", "linear"] = "linear"
    """Rate between knots."""
    period_s: PositiveFloat | None = None
    """Repeat the curve with this period (must exceed the last knot time)."""

    @model_validator(mode="after")
    def _knots(self) -> PiecewiseArrivals:
        if len(self.times_s) != len(self.rates_rps):
            raise ValueError(
                f"times_s has {len(self.times_s)} entries but rates_rps has {len(self.rates_rps)}"
            )
        if self.times_s[0] != 0.0:
            raise ValueError("times_s must start at 0")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise ValueError("times_s must be strictly increasing")
        if max(self.rates_rps) <= 0.0:
            raise ValueError("rates_rps must have at least one positive rate")
        if self.period_s is not None and self.period_s <= self.times_s[-1]:
            raise ValueError(
                f"period_s ({self.period_s}) must exceed the last knot ({self.times_s[-1]})"
            )
        return self


ArrivalConfig = Annotated[
    PoissonArrivals
    | GammaArrivals
    | ConstantArrivals
    | BurstArrivals
    | OnOffArrivals
    | PiecewiseArrivals,
    Field(discriminator="process"),
]


class FixedLength(StrictModel):
    """Every request has the same length."""

    dist: Literal["fixed"]
    value: PositiveInt
    """Tokens."""


class UniformLength(StrictModel):
    """Uniform integer lengths in ``[min, max]``."""

    dist: Literal["uniform"]
    min: PositiveInt
    """Smallest length (tokens)."""
    max: PositiveInt
    """Largest length (tokens)."""

    @model_validator(mode="after")
    def _order(self) -> UniformLength:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class LognormalLength(StrictModel):
    """Lognormal lengths with a given mean and coefficient of variation, clipped."""

    dist: Literal["lognormal"]
    mean: PositiveFloat
    """Mean length before clipping (tokens)."""
    cv: PositiveFloat = 1.0
    """Coefficient of variation."""
    min: PositiveInt = 1
    """Clip below (tokens)."""
    max: PositiveInt = 32768
    """Clip above (tokens)."""

    @model_validator(mode="after")
    def _order(self) -> LognormalLength:
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


class EmpiricalLength(StrictModel):
    """Lengths resampled (with replacement) from a column of a CSV file."""

    dist: Literal["empirical"]
    path: str
    """CSV file with a header row; relative paths are relative to the scenario file."""
    column: str
    """Column holding token counts, e.g. ``num_prefill_tokens``."""
    min: PositiveInt = 1
    """Clip below (tokens)."""
    max: PositiveInt = 1_000_000
    """Clip above (tokens)."""

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)


LengthConfig = Annotated[
    FixedLength | UniformLength | LognormalLength | EmpiricalLength,
    Field(discriminator="dist"),
]


class PriorityMix(StrictModel):
    """Priority classes drawn per request (lower value = served first, as in vLLM)."""

    values: list[int] = Field(min_length=1)
    """Priority values."""
    weights: list[PositiveFloat] = Field(min_length=1)
    """Relative frequency of each value."""

    @model_validator(mode="after")
    def _same_length(self) -> PriorityMix:
        if len(self.values) != len(self.weights):
            raise ValueError(
                f"values has {len(self.values)} entries but weights has {len(self.weights)}"
            )
        return self


class SyntheticWorkload(StrictModel):
    """Independent requests: an arrival process and two length distributions."""

    kind: Literal["synthetic"]
    arrival: ArrivalConfig
    """Arrival process."""
    prompt_tokens: LengthConfig
    """Prompt length distribution."""
    output_tokens: LengthConfig
    """Output length distribution."""
    num_requests: PositiveInt | None = None
    """Stop after this many requests."""
    duration_s: PositiveFloat | None = None
    """Stop generating arrivals after this much simulated time."""
    priority: PriorityMix | None = None
    """Priority classes (for the ``priority`` scheduling policy)."""

    @model_validator(mode="after")
    def _bounded(self) -> SyntheticWorkload:
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s (or both) so the workload ends")
        return self


TraceFormat = Literal["auto", "llmservingsim", "azure", "mooncake", "vidur"]


class TraceWorkload(StrictModel):
    """Replay of a public trace file."""

    kind: Literal["trace"]
    path: str
    """Trace file; relative paths are relative to the scenario file."""
    format: TraceFormat = "auto"
    """File format; ``auto`` decides by extension and header/first record."""
    time_scale: PositiveFloat = 1.0
    """Multiply inter-arrival times by this (2 = half the rate)."""
    rate_scale: PositiveFloat = 1.0
    """Multiply the arrival rate by this (applied after ``time_scale``)."""
    start_s: NonNegFloat = 0.0
    """Skip requests that arrive (after scaling) before this time; times restart at 0."""
    num_requests: PositiveInt | None = None
    """Use only the first N requests (after ``start_s``)."""
    duration_s: PositiveFloat | None = None
    """Use only requests that arrive within this window (after ``start_s``)."""
    max_prompt_tokens: PositiveInt | None = None
    """Clip prompts longer than this (tokens)."""
    max_output_tokens: PositiveInt | None = None
    """Clip outputs longer than this (tokens)."""
    priority: PriorityMix | None = None
    """Priority classes (for the ``priority`` scheduling policy)."""

    @field_validator("path")
    @classmethod
    def _exists(cls, value: str, info: ValidationInfo) -> str:
        return _resolve_path(value, info)


class MultiTurnWorkload(StrictModel):
    """Chat sessions sharing system prompts; every turn repeats the conversation so far.

    Requests carry block hashes, so prefix caching sees the shared system prompt and
    each session's growing history without a trace. Turns follow an open-loop schedule:
    turn k+1 arrives ``think_time`` after turn k's arrival plus its expected service.
    """

    kind: Literal["multi_turn"]
    session_arrival: ArrivalConfig
    """Arrival process of new sessions."""
    num_sessions: PositiveInt
    """Number of sessions."""
    turns: LengthConfig
    """Turns per session."""
    num_system_prompts: PositiveInt = 4
    """Distinct system prompts shared across sessions."""
    system_prompt_tokens: LengthConfig
    """Length of each system prompt."""
    user_tokens: LengthConfig
    """New user tokens per turn."""
    output_tokens: LengthConfig
    """Output tokens per turn."""
    think_time_s: NonNegFloat = 5.0
    """Mean gap (exponential) between one turn's arrival and the next one's."""
    max_prompt_tokens: PositiveInt = 32768
    """Sessions end once a prompt would exceed this."""
    priority: PriorityMix | None = None
    """Priority classes per session."""


WorkloadConfig = Annotated[
    SyntheticWorkload | TraceWorkload | MultiTurnWorkload,
    Field(discriminator="kind"),
]


# --------------------------------------------------------------------------- the rest


class SLOConfig(StrictModel):
    """Latency service-level objectives; a request meets the SLO if it meets every one."""

    ttft_ms: PositiveFloat | None = None
    """Time to first token."""
    tpot_ms: PositiveFloat | None = None
    """Time per output token after the first."""
    e2e_ms: PositiveFloat | None = None
    """End-to-end latency."""


class SimulationConfig(StrictModel):
    """How the simulation runs."""

    horizon_s: PositiveFloat | None = None
    """Stop at this simulated time; requests still in flight end as ``unfinished``.
    ``None``: run until every request has ended."""
    sample_interval_s: PositiveFloat = 1.0
    """Time-series sampling interval."""
    max_decode_run: Annotated[int, Field(ge=1, le=100_000)] = 4096
    """Most decode iterations evaluated in one vectorised run (a speed knob; results
    do not depend on it)."""


class OutputConfig(StrictModel):
    """What ``llmserve run`` writes."""

    per_request: bool = True
    """Write ``requests.csv``."""
    timeseries: bool = True
    """Write ``timeseries.csv``."""


class DevicePowerOverrides(StrictModel):
    """Override a device's power constants (W, s); unset fields keep the catalog's."""

    idle_w: NonNegFloat | None = None
    """Idle power with a model loaded."""
    tdp_w: PositiveFloat | None = None
    """Board limit (LLMServingSim's "active" power)."""
    standby_w: NonNegFloat | None = None
    """Power of the tail after work."""
    standby_s: NonNegFloat | None = None
    """Length of that tail."""
    sleep_w: NonNegFloat | None = None
    """Sleep level 1 power."""
    deep_sleep_w: NonNegFloat | None = None
    """Sleep level 2 power."""
    compute_w: NonNegFloat | None = None
    """Dynamic compute power at full utilisation and maximum clock."""
    memory_w: NonNegFloat | None = None
    """Memory power at full bandwidth."""


Governor = Literal["always_max", "always_min", "ondemand", "idle_timeout_sleep", "slo_aware"]


class PowerConfig(StrictModel):
    """Device power management and energy accounting."""

    enabled: bool = True
    """Model power states, clocks and energy. Off: iterations run at full clock and no
    energy is reported (slightly faster)."""
    governor: Governor = "always_max"
    """Heuristic that drives clocks and sleep when no agent does."""
    control_interval_s: PositiveFloat = 1.0
    """How often the governor acts."""
    cap_w: PositiveFloat | None = None
    """Power cap per device; each iteration runs at the highest clock that keeps it
    under the cap. The latency model's times are the device's at its TDP (where its
    measurements come from), so a cap at or above the TDP slows nothing; ``None``: the
    TDP."""
    clock_levels: list[Annotated[float, Field(gt=0.0, le=1.0)]] | None = None
    """Selectable clocks as fractions of the maximum (increasing)."""
    up_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    """``ondemand``: raise the clock above this busy fraction."""
    down_threshold: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    """``ondemand``: lower the clock below this busy fraction."""
    idle_timeout_s: NonNegFloat | None = None
    """``idle_timeout_sleep``: idle gap before sleeping (default: the break-even time)."""
    sleep_level: Literal["sleep", "deep_sleep", "off"] = "sleep"
    """``idle_timeout_sleep``: which state to enter."""

    @field_validator("sleep_level", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return _power_state_word(value)

    target_tpot_ms: PositiveFloat | None = None
    """``slo_aware``: TPOT to stay under (default: ``slo.tpot_ms``)."""
    wake_on_demand: bool = True
    """Wake a sleeping instance when a request finds no instance on."""
    devices: dict[str, DevicePowerOverrides] = Field(default_factory=dict)
    """Per device name: power constants that replace the catalog's."""

    @model_validator(mode="after")
    def _levels(self) -> PowerConfig:
        if self.clock_levels is not None and sorted(self.clock_levels) != self.clock_levels:
            raise ValueError(f"clock_levels must be increasing, got {self.clock_levels}")
        if self.down_threshold >= self.up_threshold:
            raise ValueError(
                f"down_threshold ({self.down_threshold}) must be below up_threshold ({self.up_threshold})"
            )
        return self


class RoutingHeadConfig(StrictModel):
    """The routing action head."""

    enabled: bool = True
    """Let the agent route. When off, ``router.policy`` routes."""
    weight_levels: Annotated[int, Field(ge=2, le=16)] = 5
    """Cluster mode: routing weight levels per instance (0 .. levels-1); arrivals in an
    interval go to instance i with probability proportional to its level."""
    allow_reject: bool = False
    """Routing mode: add a "reject" choice after the instances (admission control)."""


class BatchingHeadConfig(StrictModel):
    """The batching action head: per-instance engine knobs, chosen from levels."""

    enabled: bool = False
    """Let the agent set the knobs. When off, the engine section's values hold."""
    max_num_seqs_levels: list[PositiveInt] = Field(default=[32, 64, 128, 256], min_length=1)
    """Choices of ``max_num_seqs``."""
    max_num_batched_tokens_levels: list[PositiveInt] = Field(
        default=[512, 1024, 2048, 4096, 8192], min_length=1
    )
    """Choices of the token budget."""
    scheduling_policies: list[SchedulingPolicy] = Field(
        default=["fcfs", "shortest_prompt_first"], min_length=1
    )
    """Choices of the scheduling policy."""


class PowerHeadConfig(StrictModel):
    """The power action head: per instance a target power state and a clock level."""

    enabled: bool = False
    """Let the agent drive power. When off, ``power.governor`` does."""


class ActionHeadsConfig(StrictModel):
    """Which action heads the agent drives (a disabled head runs its heuristic)."""

    routing: RoutingHeadConfig = RoutingHeadConfig()
    """Where requests go."""
    batching: BatchingHeadConfig = BatchingHeadConfig()
    """Engine knobs per instance."""
    power: PowerHeadConfig = PowerHeadConfig()
    """Power state and clock per instance."""


class RewardConfig(StrictModel):
    """Weights of the named reward terms (reward = sum of weight x term).

    Every term is additive over time (a count of events or a time integral over the
    step), so an episode's return does not depend on how often decisions are taken.
    """

    goodput: float = 1.0
    """Per request finished within every SLO."""
    ttft_violation: float = -0.5
    """Per finished request over the TTFT SLO."""
    tpot_violation: float = -0.5
    """Per finished request over the TPOT SLO."""
    rejected: float = -1.0
    """Per rejected request."""
    backlog: float = -0.01
    """Per request-second spent waiting in queues."""
    energy: float = 0.0
    """Per joule consumed (negative to penalise energy)."""


class EnvConfig(StrictModel):
    """Settings of the Gymnasium environment (ignored by ``llmserve run``)."""

    decision_interval_s: PositiveFloat = 1.0
    """Cluster mode: simulated seconds between decisions."""
    horizon_s: PositiveFloat | None = 300.0
    """Episode length in simulated seconds (``truncated`` at the end)."""
    max_requests: PositiveInt | None = None
    """Alternatively end the episode after this many arrivals."""
    max_instances: PositiveInt | None = None
    """Pad per-instance observation rows to this many (default: the cluster's size)."""
    rate_window_s: PositiveFloat = 10.0
    """Time constant of the moving estimates (arrival rate, SLO attainment, rates)."""
    heads: ActionHeadsConfig = ActionHeadsConfig()
    """Action heads."""
    reward: RewardConfig = RewardConfig()
    """Reward weights."""


class Scenario(StrictModel):
    """A complete simulation setup: cluster, engine, routing, workload, SLOs."""

    name: str = "unnamed"
    """Short name."""
    description: str = ""
    """One line shown by ``llmserve scenarios``."""
    seed: NonNegInt = 0
    """Root seed of the RNG tree."""
    devices: dict[str, DeviceFigures] = Field(default_factory=dict)
    """Accelerators described here, by the name instance groups give as ``device``
    (a name must not be one the catalog already knows)."""
    cluster: ClusterConfig
    """Nodes and instances."""
    engine: EngineConfig = EngineConfig()
    """Default engine knobs for every instance (instances may override keys)."""
    router: RouterConfig = RouterConfig()
    """Request routing."""
    workload: WorkloadConfig
    """Where requests come from."""
    slo: SLOConfig = SLOConfig()
    """Latency objectives used by the summary's attainment and goodput."""
    simulation: SimulationConfig = SimulationConfig()
    """Run control."""
    output: OutputConfig = OutputConfig()
    """Output tables."""
    power: PowerConfig = PowerConfig()
    """Power management and energy accounting."""
    env: EnvConfig = EnvConfig()
    """Gymnasium environment settings."""

    @model_validator(mode="before")
    @classmethod
    def _merge_engine_defaults(cls, data: object) -> object:
        """Fold the top-level ``engine`` into each instance group's ``engine``."""
        if not isinstance(data, dict):
            return data
        defaults = data.get("engine") or {}
        cluster = data.get("cluster")
        if not isinstance(defaults, dict) or not isinstance(cluster, dict):
            return data
        nodes = cluster.get("nodes")
        if not isinstance(nodes, list):
            return data
        new_nodes = []
        for node in nodes:
            if isinstance(node, dict) and isinstance(node.get("instances"), list):
                groups = []
                for group in node["instances"]:
                    if isinstance(group, dict):
                        own = group.get("engine") or {}
                        if isinstance(own, dict):
                            group = {**group, "engine": {**defaults, **own}}
                    groups.append(group)
                node = {**node, "instances": groups}
            new_nodes.append(node)
        return {**data, "cluster": {**cluster, "nodes": new_nodes}}
