"""The Gymnasium environment around the serving simulator."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from llmserve_env.build import SimulationFactory, load_scenario
from llmserve_env.config.errors import ScenarioError
from llmserve_env.config.schema import Scenario
from llmserve_env.env.actions import (
    ActionHead,
    BatchingHead,
    PowerHead,
    RequestRoutingHead,
    WeightRoutingHead,
)
from llmserve_env.env.gather import (
    CLUSTER_RATES,
    REWARD_TERMS,
    decision_outputs,
    observation_buffer,
    reward_counters,
)
from llmserve_env.env.observation import (
    Feature,
    features_for,
    observation_layout,
    observation_space,
)
from llmserve_env.sim.router import make_router
from llmserve_env.sim.simulation import INSTANCE_STATE_FIELDS, Simulation
from llmserve_env.sim.stats import MovingRates

Mode = Literal["cluster", "routing"]
# Per-instance features in the order _observe fills them: the validity mask, the
# simulator's state (named as the observation features), then the moving rates.
_ROW_FEATURES = ("instance_valid", *INSTANCE_STATE_FIELDS)
_INSTANCE_KEYS = (*_ROW_FEATURES, "preemption_rate", "prefix_hit_rate", "generation_tok_s")
# Cluster features in the order _observe fills them (from the rates of CLUSTER_RATES).
_CLUSTER_KEYS = (
    "arrival_rate_rps",
    "slo_attainment",
    "goodput_rps",
    "time_remaining_frac",
    "cluster_power_w",
)


@dataclass
class EnvState:
    """An opaque snapshot of an environment (see :meth:`LLMServeEnv.get_state`)."""

    sim: Simulation
    counters: list[float]
    rates: MovingRates
    last_time: float
    elapsed_steps: int
    episode_seed: int
    np_random_state: Any
    done: bool


class LLMServeEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """An LLM-serving cluster under a request workload, with vLLM V1 engines.

    ## Description

    The cluster of a scenario (nodes, instances of a model on accelerators, engine
    knobs) serves its workload (synthetic arrivals, a trace or multi-turn sessions) in
    an event-driven simulation with vLLM V1 semantics: continuous batching within a
    token budget, chunked prefill, preemption by recomputation, paged KV cache with
    prefix caching. The agent routes requests and tunes engine knobs; rewards come from
    latency SLOs, rejections, queueing and energy.

    Two decision cadences (``mode``):

    - ``routing`` (``LLMServe/Routing-v0``): one step per arriving request; the step's
      action places that request.
    - ``cluster`` (``LLMServe/Cluster-v0``): one step every ``env.decision_interval_s``
      of simulated time; the action sets routing weights and knobs for the interval.

    The decision cadence is independent of the simulation's granularity (engine
    iterations, arrivals), which runs exactly between decisions.

    ## Action Space

    ``MultiDiscrete``: the enabled heads' dimensions, concatenated in this order
    (``N`` = ``max_instances``):

    | head | dims | choices | effect |
    |---|---|---|---|
    | routing (routing mode) | 1 | ``N`` (+1 with ``allow_reject``) | instance for the pending request; the last choice rejects it |
    | routing (cluster mode) | ``N`` | ``weight_levels`` | routing weight per instance for the interval (probability proportional to weight; all zero = uniform) |
    | batching | ``3N`` | levels of ``max_num_seqs``, ``max_num_batched_tokens``, ``scheduling_policy`` | engine knobs per instance, from the next iteration |
    | power | ``2N`` | target state (0 on, 1 sleep, 2 deep sleep, 3 off); clock level | per instance; sleeping drops the KV cache (requests are rerouted or recomputed), waking takes the reload time |

    Heads are switched in the scenario's ``env.heads``; a disabled head is driven by its
    heuristic (``router.policy``; the static engine knobs; ``power.governor``). :meth:`action_masks`
    returns the legal choices (padding rows, instances that cannot serve the pending
    request) in sb3-contrib's MaskablePPO format. An illegal choice is handled, not
    ignored: routing to a padding row or to an instance that can never serve the
    request rejects it (reason ``policy``); it is counted in ``info["illegal_actions"]``.

    ## Observation Space

    A ``Dict`` of float32 ``Box`` spaces, each ``[0, high]``; per-instance features
    have shape ``(N,)`` (padding rows are 0), the others ``(1,)``.
    :attr:`observation_layout` gives each key's slice in the flattened vector.

    | key | shape | unit | high | meaning |
    |---|---|---|---|---|
    | instance_valid | (N,) | 1 | 1 | 1 for a real instance, 0 for padding |
    | num_waiting | (N,) | requests | 1e5 | requests in the waiting queue |
    | num_running | (N,) | requests | 1e5 | requests in the running batch |
    | scheduled_tokens | (N,) | tokens | 1e6 | tokens in the latest iteration's batch |
    | queue_delay_s | (N,) | s | 1e5 | age of the request at the head of the waiting queue |
    | preemption_rate | (N,) | 1/s | 1e6 | preemptions per second (moving average) |
    | kv_usage_frac | (N,) | fraction | 1 | KV-cache blocks in use |
    | free_kv_blocks | (N,) | blocks | 1e8 | free KV-cache blocks |
    | prefix_hit_rate | (N,) | fraction | 1 | prefix-cache hit rate of admissions (moving average) |
    | generation_tok_s | (N,) | tokens/s | 1e7 | output tokens per second (moving average) |
    | max_num_seqs | (N,) | requests | 1e5 | current ``max_num_seqs`` knob |
    | max_num_batched_tokens | (N,) | tokens | 1e7 | current token budget knob |
    | power_state | (N,) | code | 4 | 0 on, 1 waking, 2 sleep, 3 deep sleep, 4 off |
    | clock_frac | (N,) | fraction | 1 | selected clock as a fraction of the maximum |
    | power_w | (N,) | W | 1e5 | current draw of the instance's devices |
    | time_to_wake_s | (N,) | s | 1e4 | time until the instance can serve (0 when on) |
    | arrival_rate_rps | (1,) | requests/s | 1e6 | arrival rate (moving average) |
    | slo_attainment | (1,) | fraction | 1 | finished requests meeting every SLO (moving average; 1 before any finish) |
    | goodput_rps | (1,) | requests/s | 1e6 | SLO-meeting finishes per second (moving average) |
    | time_remaining_frac | (1,) | fraction | 1 | fraction of the episode horizon left |
    | cluster_power_w | (1,) | W | 1e7 | power of devices and node components (moving average) |
    | request_prompt_tokens | (1,) | tokens | 1e7 | routing mode only: prompt length of the pending request |
    | request_cached_tokens | (N,) | tokens | 1e7 | routing mode only: tokens of its prefix cached at each instance |

    Moving averages use the time constant ``env.rate_window_s``. Values are raw
    physical quantities; wrap the environment in SB3's ``VecNormalize`` (or
    Gymnasium's ``NormalizeObservation``) for learning.

    ## Rewards

    ``reward = sum(weight[k] * term[k])`` over named terms, each additive over time, so
    an episode's return does not depend on the decision cadence. The raw terms of the
    step are in ``info["reward_terms"]``; weights come from ``env.reward``:

    | term | meaning | default weight |
    |---|---|---|
    | goodput | requests finished within every SLO during the step | +1.0 |
    | ttft_violation | finished requests over the TTFT SLO | -0.5 |
    | tpot_violation | finished requests over the TPOT SLO | -0.5 |
    | rejected | requests rejected during the step | -1.0 |
    | backlog | request-seconds spent waiting in queues during the step | -0.01 |
    | energy | joules consumed by devices and node components during the step | 0.0 |

    ## Starting State

    ``reset(seed=...)`` builds a fresh simulation whose RNG tree (arrivals, lengths,
    routing, gating, noise streams) is seeded from the environment's ``np_random``; in
    routing mode it then runs to the first arrival. ``options`` may carry
    ``{"start_s": float}`` to start a trace workload later in the trace.

    ## Episode End

    - ``terminated``: the workload is exhausted and every request has ended.
    - ``truncated``: simulated time reached ``env.horizon_s``; requests still in flight
      end as ``unfinished``.

    At the end, ``info["episode_stats"]`` holds the run summary (the ``llmserve run``
    summary: counts, throughput, TTFT/TPOT/ITL/e2e statistics, SLO attainment).

    ## Arguments

    ``gym.make("LLMServe/Routing-v0", scenario="default", overrides=["env.horizon_s=60"])``

    - ``scenario``: a shipped scenario name or a path to a scenario YAML.
    - ``overrides``: ``dotted.key=value`` strings applied to the scenario.
    - ``mode``: ``"routing"`` or ``"cluster"`` (set by the registered id).
    - ``render_mode``: ``None`` or ``"ansi"`` (a per-instance table).

    All arguments are JSON-serialisable, so ``env.spec.to_json()`` rebuilds the same
    environment. Counterfactual branches: :meth:`get_state`, :meth:`set_state`,
    :meth:`fork` (about a millisecond; read-only tables are shared).

    ## Version History

    - v0: initial version (routing, batching and power heads).
    """

    metadata = {"render_modes": ["ansi", "rgb_array"], "render_fps": 4}  # noqa: RUF012 - Gymnasium's convention

    def __init__(
        self,
        scenario: str | Scenario = "default",
        overrides: Sequence[str] | None = None,
        mode: Mode = "routing",
        render_mode: str | None = None,
    ) -> None:
        if mode not in ("routing", "cluster"):
            raise ValueError(f"mode must be 'routing' or 'cluster', got {mode!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        if isinstance(scenario, Scenario):
            if overrides:
                raise ValueError(
                    "overrides apply to a scenario name or path, not a Scenario object"
                )
            cfg = scenario
        else:
            cfg = load_scenario(scenario, list(overrides or ()))
        self.scenario = cfg
        self.mode: Mode = mode
        self.render_mode = render_mode
        self.factory = SimulationFactory(cfg)
        env_cfg = cfg.env
        self.num_instances = self.factory.num_instances
        self.max_instances = env_cfg.max_instances or self.num_instances
        if self.max_instances < self.num_instances:
            raise ScenarioError(
                [
                    (
                        "env.max_instances",
                        f"{self.max_instances} is fewer than the cluster's {self.num_instances} instances",
                    )
                ]
            )
        if env_cfg.horizon_s is None and env_cfg.max_requests is None and not _bounded(cfg):
            raise ScenarioError(
                [("env.horizon_s", "give env.horizon_s or env.max_requests so episodes end")]
            )
        self.heads: list[ActionHead] = []
        if env_cfg.heads.routing.enabled:
            head_cls = RequestRoutingHead if mode == "routing" else WeightRoutingHead
            self.heads.append(
                head_cls(env_cfg.heads.routing, self.num_instances, self.max_instances)
            )
        elif env_cfg.heads.routing.allow_reject:
            raise ScenarioError(
                [("env.heads.routing.allow_reject", "needs env.heads.routing.enabled: true")]
            )
        if env_cfg.heads.batching.enabled:
            self.heads.append(
                BatchingHead(env_cfg.heads.batching, self.num_instances, self.max_instances)
            )
        if env_cfg.heads.power.enabled:
            if not cfg.power.enabled:
                raise ScenarioError(
                    [("env.heads.power.enabled", "the power head needs power.enabled: true")]
                )
            levels = max(len(spec.clock_levels) for spec in self.factory.power_specs)
            self.heads.append(PowerHead(self.num_instances, self.max_instances, levels))
        if not self.heads:
            raise ScenarioError(
                [("env.heads", "every action head is disabled; enable routing, batching or power")]
            )
        nvec = [n for head in self.heads for n in head.nvec]
        self.action_space = spaces.MultiDiscrete(np.asarray(nvec, dtype=np.int64))
        self._nvec = self.action_space.nvec
        self._nvec_list: list[int] = self._nvec.tolist()
        self._head_slices: list[slice] = []
        start = 0
        for head in self.heads:
            self._head_slices.append(slice(start, start + len(head.nvec)))
            start += len(head.nvec)
        self.features: tuple[Feature, ...] = features_for(mode == "routing")
        self.observation_space = observation_space(self.features, self.max_instances)  # type: ignore[assignment]
        self.observation_layout = observation_layout(self.features, self.max_instances)
        self.reward_weights = env_cfg.reward.model_dump()
        self.horizon_s = env_cfg.horizon_s
        self.sim: Simulation | None = None
        self._reward_weights_list = [float(self.reward_weights[k]) for k in REWARD_TERMS]
        self.episode_seed = cfg.seed
        self._done = True
        # reward_counters() at the last decision, in REWARD_TERMS order
        self._counters: list[float] = [0.0] * len(REWARD_TERMS)
        self._rates = MovingRates(env_cfg.rate_window_s, CLUSTER_RATES + 4 * self.num_instances)
        highs = {f.name: f.high for f in self.features}
        # The order observation_buffer fills: a row of max_instances values per
        # per-instance feature, then the single values.
        self._row_keys: list[str] = list(_INSTANCE_KEYS)
        self._scalar_keys: list[str] = list(_CLUSTER_KEYS)
        if mode == "routing":
            self._row_keys.append("request_cached_tokens")
            self._scalar_keys.append("request_prompt_tokens")
        assert sorted(self._row_keys) == sorted(
            f.name for f in self.features if f.scope.endswith("instance")
        ) and sorted(self._scalar_keys) == sorted(
            f.name for f in self.features if not f.scope.endswith("instance")
        ), "observation_buffer and the feature table disagree"
        # The buffer's two parts as (shape, byte offset): a row per per-instance feature,
        # then a row of one value per single-valued feature (see _views).
        self._rows_shape = (len(self._row_keys), self.max_instances)
        self._scalars_shape = (len(self._scalar_keys), 1)
        self._scalars_offset = 4 * len(self._row_keys) * self.max_instances
        self._obs_highs: list[float] = [
            highs[key] for key in self._row_keys for _ in range(self.max_instances)
        ] + [highs[key] for key in self._scalar_keys]
        self._last_time = 0.0
        self._elapsed_steps = 0
        self._start_s: float | None = None

    # ------------------------------------------------------------------ episode

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode (see the class docstring, "Starting State")."""
        super().reset(seed=seed)
        options = dict(options or {})
        start_s = options.pop("start_s", None)
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; allowed: start_s")
        self.episode_seed = int(self.np_random.integers(2**31 - 1))
        factory = self.factory
        if start_s is not None:
            if self.scenario.workload.kind != "trace":
                raise ValueError("options['start_s'] needs a trace workload")
            if start_s != self._start_s:
                cfg = self.scenario.model_copy(
                    update={
                        "workload": self.scenario.workload.model_copy(
                            update={"start_s": float(start_s)}
                        )
                    }
                )
                self._segment_factory = SimulationFactory(cfg)
                self._start_s = start_s
            factory = self._segment_factory
        workload = factory.workload(self.episode_seed)
        if (
            self.scenario.env.max_requests is not None
            and len(workload) > self.scenario.env.max_requests
        ):
            workload = _first(workload, self.scenario.env.max_requests)
        self.sim = factory.build(
            self.episode_seed,
            external_routing=self.mode == "routing",
            workload=workload,
            horizon_s=self.horizon_s,
        )
        self._fallback = make_router(self.scenario.router.policy, self.sim.rngs["routing"])
        if any(isinstance(head, PowerHead) for head in self.heads):
            self.sim.governor = None  # the agent drives power
        self._counters = reward_counters(self.sim)
        n = self.num_instances
        tau = self.scenario.env.rate_window_s
        self._rates = MovingRates(tau, CLUSTER_RATES + 4 * n)
        self._rates.reset(self.sim.counters(self._counters[-1]))
        self._last_time = 0.0
        self._elapsed_steps = 0
        self._done = False
        if self.mode == "routing":
            self._advance_routing()
        # What happened before the first decision counts towards the first step's
        # reward: the counters stay those of the start.
        _, _, _, observation = self._decide()
        return observation, self._info({})

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply the action, simulate to the next decision, observe and reward."""
        if self.sim is None or self._done:
            raise RuntimeError(
                "step() called before reset() or after the episode ended; call reset() first"
            )
        action = np.asarray(action)
        choices: list[int] = action.tolist()
        if (
            action.shape != self._nvec.shape
            or action.dtype.kind not in "iu"
            or not _within(choices, self._nvec_list)
        ):
            raise ValueError(
                f"action {choices} is outside the action space {self.action_space} "
                f"(dimensions: {self.action_names})"
            )
        sim = self.sim
        illegal = 0
        for head, part in zip(self.heads, self._head_slices, strict=True):
            illegal += head.apply(sim, choices[part])
        if self.mode == "routing":
            if sim.pending and not any(h.name == "routing" for h in self.heads):
                request = sim.pending[0]
                choice = self._fallback.choose(request, sim.available_instances())
                sim.route(request, choice.instance_id)
            self._advance_routing()
        else:
            target = sim.now + self.scenario.env.decision_interval_s
            if self.horizon_s is not None:
                target = min(target, self.horizon_s)
            sim.run_until(target)
        self._elapsed_steps += 1
        self._counters, terms, reward, observation = self._decide()
        terminated = sim.drained
        now = sim.now
        truncated = not terminated and self.horizon_s is not None and now >= self.horizon_s
        info: dict[str, Any] = {
            "sim_time_s": now,
            "num_arrived": sim.num_arrived,
            "num_ended": sim.num_ended,
            "reward_terms": terms,
            "illegal_actions": illegal,
        }
        if terminated or truncated:
            sim.finalize()
            info["episode_stats"] = sim.summary()
            self._done = True
        return observation, reward, terminated, truncated, info

    def _advance_routing(self) -> None:
        """Run until an arrival awaits routing, the horizon, or the end of work."""
        sim = self.sim
        assert sim is not None
        end = self.horizon_s if self.horizon_s is not None else math.inf
        while not sim.pending:
            halted = sim.run_until(end)
            if not halted:
                break

    # ------------------------------------------------------------------ masks

    def action_masks(self) -> np.ndarray:
        """Legal choices, concatenated over all action dimensions (MaskablePPO format)."""
        if self.sim is None:
            raise RuntimeError("action_masks() called before reset()")
        return np.concatenate([m for head in self.heads for m in head.masks(self.sim)])

    @property
    def action_names(self) -> list[str]:
        """One description per action dimension."""
        return [line for head in self.heads for line in head.describe()]

    # ------------------------------------------------------------------ observation

    def _decide(self) -> tuple[list[float], dict[str, float], float, dict[str, np.ndarray]]:
        """Read the decision the simulation reached: the reward counters now, the reward's
        terms since the last decision and their weighted sum, and the observation; the
        moving rates are folded forward to now.

        Every value is gathered in one compiled pass (:func:`decision_outputs`); the
        observation comes as one float32 buffer, already clipped to its bounds, handed
        out as views (:meth:`_views`).
        """
        sim = self.sim
        assert sim is not None
        counters, terms, reward, buffer = decision_outputs(
            sim,
            self._counters,
            self._reward_weights_list,
            self._rates,
            self._last_time,
            self._obs_highs,
            self.max_instances,
            self.horizon_s or 0.0,
            self.mode == "routing",
        )
        self._last_time = sim.now
        return counters, terms, reward, self._views(buffer)

    def _observe(self) -> dict[str, np.ndarray]:
        """The observation at the last decision (read again, nothing folded forward)."""
        sim = self.sim
        assert sim is not None
        buffer = observation_buffer(
            sim,
            self._rates.values,
            self._obs_highs,
            self.max_instances,
            self.horizon_s or 0.0,
            self.mode == "routing",
        )
        return self._views(buffer)

    def _views(self, buffer: bytearray) -> dict[str, np.ndarray]:
        """The observation dict: one view of ``buffer`` per key, no copy (the rows of a
        2-D view of the per-instance part and of a column view of the rest: iterating
        an array makes its row views in C, at a third of the cost of slicing).

        The keys come first in each ``zip``, so it stops when they run out without
        asking the array for one row more (which numpy answers with an ``IndexError``
        whose message costs as much as a few views)."""
        rows = np.ndarray(self._rows_shape, np.float32, buffer)
        scalars = np.ndarray(self._scalars_shape, np.float32, buffer, self._scalars_offset)
        obs = dict(zip(self._row_keys, rows))  # noqa: B905 - lengths match by construction
        obs.update(zip(self._scalar_keys, scalars))  # noqa: B905
        return obs

    def _info(self, extra: dict[str, Any]) -> dict[str, Any]:
        sim = self.sim
        assert sim is not None
        info = {
            "sim_time_s": sim.now,
            "num_arrived": sim.num_arrived,
            "num_ended": sim.num_ended,
        }
        info.update(extra)
        return info

    # ------------------------------------------------------------------ render

    def render(self) -> str | np.ndarray | None:
        """``ansi``: a compact per-instance table; ``rgb_array``: per-instance bars
        (green: KV usage, blue: running / max_num_seqs, red: waiting / max_num_seqs)."""
        if self.render_mode is None:
            gym.logger.warn("render() without render_mode; pass render_mode='ansi' to gym.make")
            return None
        sim = self.sim
        if self.render_mode == "rgb_array":
            return self._render_rgb()
        if sim is None:
            return "(not reset)"
        sim.sync()
        lines = [
            f"t={sim.now:9.3f}s arrived={sim.num_arrived} ended={sim.num_ended} "
            f"pending={len(sim.pending)}",
            f"{'instance':<22}{'wait':>6}{'run':>6}{'kv%':>7}{'tok/it':>8}{'seqs':>6}{'budget':>8}",
        ]
        for inst in sim.instances:
            lines.append(
                f"{inst.name[:21]:<22}{inst.num_waiting:>6}{inst.num_running:>6}"
                f"{100 * inst.kv_usage_frac:>6.1f}%{inst.stats.scheduled_tokens_last if inst.busy else 0:>8}"
                f"{inst.params.max_num_seqs:>6}{inst.params.max_num_batched_tokens:>8}"
            )
        return "\n".join(lines) + "\n"

    def _render_rgb(self) -> np.ndarray:
        height, bar, gap = 160, 12, 8
        width = self.max_instances * (3 * bar + gap) + gap
        image = np.full((height, width, 3), 255, dtype=np.uint8)
        if self.sim is None:
            return image
        self.sim.sync()
        colours = ((46, 160, 67), (31, 111, 235), (218, 54, 51))
        for i, inst in enumerate(self.sim.instances):
            seqs = max(inst.params.max_num_seqs, 1)
            values = (
                inst.kv_usage_frac,
                inst.num_running / seqs,
                min(inst.num_waiting / seqs, 1.0),
            )
            left = gap + i * (3 * bar + gap)
            for j, (value, colour) in enumerate(zip(values, colours, strict=True)):
                top = height - round(value * (height - 4))
                image[top:, left + j * bar : left + (j + 1) * bar - 1] = colour
        return image

    # ------------------------------------------------------------------ counterfactuals

    def get_state(self) -> EnvState:
        """A snapshot of the whole state (simulation, moving averages, counters, RNG)."""
        if self.sim is None:
            raise RuntimeError("get_state() called before reset()")
        return EnvState(
            sim=self.sim.clone(),
            counters=list(self._counters),
            rates=self._rates.copy(),
            last_time=self._last_time,
            elapsed_steps=self._elapsed_steps,
            episode_seed=self.episode_seed,
            np_random_state=self._np_random.bit_generator.state
            if self._np_random is not None
            else None,
            done=self._done,
        )

    def set_state(self, state: EnvState) -> None:
        """Return to a snapshot taken by :meth:`get_state` (the snapshot stays reusable)."""
        self.sim = state.sim.clone()
        self._counters = list(state.counters)
        self._rates = state.rates.copy()
        self._last_time = state.last_time
        self._elapsed_steps = state.elapsed_steps
        self.episode_seed = state.episode_seed
        if state.np_random_state is not None:
            self.np_random.bit_generator.state = state.np_random_state
        self._done = state.done
        self._fallback = make_router(self.scenario.router.policy, self.sim.rngs["routing"])

    def fork(self) -> LLMServeEnv:
        """An independent copy of this environment at its current state.

        Stepping the fork with the same actions replays this environment exactly; with
        other actions it sees the same future arrivals (common random numbers).
        """
        if self.sim is None:
            raise RuntimeError("fork() called before reset()")
        other = LLMServeEnv.__new__(LLMServeEnv)
        other.__dict__.update(self.__dict__)
        other.set_state(self.get_state_shallow())
        if self._np_random is not None:
            bit = np.random.PCG64()
            bit.state = self._np_random.bit_generator.state  # type: ignore[assignment]
            other._np_random = np.random.Generator(bit)
        return other

    def get_state_shallow(self) -> EnvState:
        """Like :meth:`get_state` without copying the simulation (used by :meth:`fork`,
        which copies it once)."""
        assert self.sim is not None
        return EnvState(
            sim=self.sim,
            counters=self._counters,
            rates=self._rates,
            last_time=self._last_time,
            elapsed_steps=self._elapsed_steps,
            episode_seed=self.episode_seed,
            np_random_state=None,
            done=self._done,
        )


def _within(choices: list[int], nvec: list[int]) -> bool:
    """Whether every choice lies in ``[0, n)`` of its dimension (same lengths).

    A loop, not ``all()`` over a generator: this runs on every step, and the generator
    costs more than the check."""
    for a, n in zip(choices, nvec):  # noqa: B905, SIM110 - the caller compared the shapes
        if not 0 <= a < n:
            return False
    return True


def _bounded(cfg: Scenario) -> bool:
    """Whether the workload ends on its own."""
    w = cfg.workload
    return w.kind in ("trace", "multi_turn") or getattr(w, "num_requests", None) is not None


def _first(workload: Any, count: int) -> Any:
    """The first ``count`` requests of a workload."""
    from llmserve_env.sim.workload.base import WorkloadData

    return WorkloadData(
        arrival_s=workload.arrival_s[:count].copy(),
        prompt_tokens=workload.prompt_tokens[:count].copy(),
        output_tokens=workload.output_tokens[:count].copy(),
        priority=workload.priority[:count].copy(),
        session_id=workload.session_id[:count].copy(),
        contents=None if workload.contents is None else workload.contents[:count],
        source=workload.source,
    )
