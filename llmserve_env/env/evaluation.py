"""One evaluation path for heuristics and trained models, and counterfactual what-ifs."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from llmserve_env.env.core import REWARD_TERMS, LLMServeEnv
from llmserve_env.sim.metrics import latency_stats
from llmserve_env.sim.simulation import Simulation

SUMMARY_KEYS = (
    "num_arrived",
    "num_finished",
    "num_rejected",
    "num_unfinished",
    "slo_attainment",
    "goodput_rps",
    "throughput_tok_s",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_e2e_ms",
    "energy_j",
)


class Policy(Protocol):
    """Anything with SB3's ``predict``: trained models and heuristics alike."""

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]: ...


def _act(
    policy: Policy, obs: Any, env: LLMServeEnv, state: Any, start: bool
) -> tuple[np.ndarray, Any]:
    kwargs: dict[str, Any] = {
        "state": state,
        "episode_start": np.array([start]),
        "deterministic": True,
    }
    try:
        wants_masks = "action_masks" in inspect.signature(policy.predict).parameters
    except (TypeError, ValueError):
        wants_masks = False
    if wants_masks:
        kwargs["action_masks"] = env.action_masks()
    action, state = policy.predict(obs, **kwargs)
    return np.asarray(action).reshape(env.action_space.shape), state


@dataclass
class RolloutResult:
    """What one rollout produced.

    Attributes:
        episode_return: Sum of rewards.
        reward_terms: Sum of each raw reward term.
        num_steps: Steps taken.
        summary: The simulation summary at the end (run-summary keys).
    """

    episode_return: float
    reward_terms: dict[str, float]
    num_steps: int
    summary: dict[str, Any] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Return, summed reward terms and the main summary figures, flat."""
        out: dict[str, float] = {"return": self.episode_return, "num_steps": float(self.num_steps)}
        out.update({f"reward_{k}": v for k, v in self.reward_terms.items()})
        for key in SUMMARY_KEYS:
            value = self.summary.get(key)
            if value is not None:
                out[key] = float(value)
        return out


def rollout(
    env: LLMServeEnv,
    policy: Policy,
    *,
    until_s: float | None = None,
    max_steps: int | None = None,
) -> RolloutResult:
    """Step ``env`` (already reset) with ``policy`` until the episode ends, simulated
    time reaches ``until_s``, or ``max_steps`` steps; then summarise the simulation."""
    total = 0.0
    terms = dict.fromkeys(REWARD_TERMS, 0.0)
    steps = 0
    state: Any = None
    obs = env._observe()
    summary: dict[str, Any] = {}
    while True:
        action, state = _act(policy, obs, env, state, steps == 0)
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        for key, value in info["reward_terms"].items():
            terms[key] += value
        steps += 1
        if terminated or truncated:
            summary = info["episode_stats"]
            break
        assert env.sim is not None
        if (until_s is not None and env.sim.now >= until_s) or (
            max_steps is not None and steps >= max_steps
        ):
            env.sim.finalize()
            summary = env.sim.summary()
            break
    return RolloutResult(total, terms, steps, summary)


def evaluate(
    env: Any,
    policy: Policy,
    *,
    n_episodes: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Score a policy over ``n_episodes`` seeded episodes (seeds ``seed``, ``seed+1``...).

    Returns:
        ``{"episodes": [metrics...], "mean": {...}, "std": {...}}`` where each metrics
        dict has the return, summed reward terms and run-summary figures.
    """
    unwrapped: LLMServeEnv = env.unwrapped
    episodes = []
    for k in range(n_episodes):
        unwrapped.reset(seed=seed + k)
        episodes.append(rollout(unwrapped, policy).metrics())
    keys = sorted(set().union(*episodes))
    mean = {key: float(np.mean([e[key] for e in episodes if key in e])) for key in keys}
    std = {key: float(np.std([e[key] for e in episodes if key in e])) for key in keys}
    return {"episodes": episodes, "mean": mean, "std": std}


@dataclass(frozen=True)
class _BranchMark:
    """The simulation's counters at a fork, to report what happened after it.

    Branch figures: ``branch_duration_s`` (simulated seconds), ``branch_num_arrived``,
    ``branch_num_ended`` (requests that reached a terminal state in the branch, the
    ones unfinished at its end included), ``branch_num_finished``,
    ``branch_slo_attainment`` (SLO met among the ended ones), ``branch_energy_j``,
    ``branch_throughput_tok_s`` (output tokens generated per simulated second), and
    the mean / p50 / p90 / p99 of TTFT, TPOT and e2e over requests that finished in
    the branch (``branch_mean_ttft_ms``...).
    """

    now_s: float
    num_rows: int
    num_arrived: int
    num_slo_met: int
    generation_tokens: int
    energy_j: float

    @classmethod
    def of(cls, sim: Simulation) -> _BranchMark:
        sim.sync()
        return cls(
            sim.now,
            len(sim.metrics.rows),
            sim.num_arrived,
            sim.metrics.num_slo_met,
            sum(inst.stats.generation_tokens for inst in sim.instances),
            float(sum(sim.energy_j().values())),
        )

    def figures(self, sim: Simulation) -> dict[str, float]:
        """What happened in ``sim`` since this mark."""
        end = _BranchMark.of(sim)
        duration = end.now_s - self.now_s
        table = sim.metrics.request_table()
        status = table["status"][self.num_rows :]
        finished = status == "finished"
        ended = len(status)
        out: dict[str, float | None] = {
            "branch_duration_s": duration,
            "branch_num_arrived": float(end.num_arrived - self.num_arrived),
            "branch_num_ended": float(ended),
            "branch_num_finished": float(finished.sum()),
            "branch_slo_attainment": (
                (end.num_slo_met - self.num_slo_met) / ended if ended else None
            ),
            "branch_energy_j": end.energy_j - self.energy_j,
            "branch_throughput_tok_s": (
                (end.generation_tokens - self.generation_tokens) / duration
                if duration > 0
                else None
            ),
        }
        for name in ("ttft", "tpot", "e2e"):
            column = table[f"{name}_ms"][self.num_rows :][finished].astype(np.float64)
            out.update({f"branch_{k}": v for k, v in latency_stats(name, column).items()})
        return {k: float(v) for k, v in out.items() if v is not None}


@dataclass
class WhatIfResult:
    """Outcomes of several policies from one snapshot.

    Attributes:
        results: Per policy, its metrics (see :meth:`RolloutResult.metrics`).
        baseline: The policy the differences are taken against.
        differences: Per other policy, ``metric(policy) - metric(baseline)``; the
            branches share their future arrivals, so these are paired differences.
    """

    results: dict[str, dict[str, float]]
    baseline: str
    differences: dict[str, dict[str, float]]


def what_if(
    env: Any,
    policies: Mapping[str, Policy],
    *,
    duration_s: float | None = None,
    baseline: str | None = None,
) -> WhatIfResult:
    """Run each policy from the environment's current state on its own fork.

    The environment itself is not advanced. Every branch replays the same future
    arrivals (common random numbers), so differences between policies are paired.

    Spans differ between metrics: ``return``, the reward terms and the ``branch_*``
    figures cover the branch only, while the simulation's summary figures (arrivals,
    SLO attainment, latency percentiles, ``energy_j``) cover the episode from its start
    to the branch's end, the shared history included. Requests still in flight at the
    end of a ``duration_s`` branch count as unfinished in both. The ``branch_*``
    figures (see :class:`_BranchMark`) are the ones to read as absolute branch
    outcomes.

    Args:
        env: A reset (possibly mid-episode) environment.
        policies: Name -> policy with SB3's ``predict``.
        duration_s: Simulated seconds to roll each branch forward (default: to the end
            of the episode).
        baseline: The policy to subtract (default: the first).
    """
    unwrapped: LLMServeEnv = env.unwrapped
    if unwrapped.sim is None:
        raise RuntimeError("what_if() needs a reset environment")
    if not policies:
        raise ValueError("what_if() needs at least one policy")
    until = None if duration_s is None else unwrapped.sim.now + duration_s
    results = {}
    for name, policy in policies.items():
        branch = unwrapped.fork()
        assert branch.sim is not None
        mark = _BranchMark.of(branch.sim)
        results[name] = rollout(branch, policy, until_s=until).metrics()
        results[name].update(mark.figures(branch.sim))
    base = baseline or next(iter(policies))
    if base not in results:
        raise ValueError(f"baseline {base!r} is not one of {list(policies)}")
    differences = {
        name: {k: v - results[base][k] for k, v in metrics.items() if k in results[base]}
        for name, metrics in results.items()
        if name != base
    }
    return WhatIfResult(results, base, differences)
