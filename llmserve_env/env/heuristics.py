"""Heuristic policies with stable-baselines3's ``predict`` protocol.

Each heuristic reads observations by feature name (never by position) and fills every
action dimension: its rule drives the routing head; other heads get a fixed choice
(``default_levels``). ``predict`` accepts one observation or a batch from a vector
environment, like an SB3 model, so :func:`llmserve_env.env.evaluation.evaluate` scores
heuristics and trained models through the same path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from llmserve_env.env.actions import BatchingHead, RequestRoutingHead, WeightRoutingHead
from llmserve_env.env.core import LLMServeEnv

Obs = dict[str, np.ndarray]


class HeuristicPolicy:
    """Base: maps observations to full actions for one environment layout.

    Args:
        env: The (possibly wrapped) environment the policy acts in.
        batching_levels: Choice indices for each batching dimension triple
            ``(max_num_seqs, max_num_batched_tokens, policy)``; default: the levels
            closest to the scenario's static knobs.
    """

    name = "heuristic"

    def __init__(self, env: Any, batching_levels: tuple[int, int, int] | None = None) -> None:
        unwrapped: LLMServeEnv = env.unwrapped
        self.env = unwrapped
        self.heads = unwrapped.heads
        self.slices = unwrapped._head_slices
        self.nvec = unwrapped._nvec
        self.num_instances = unwrapped.num_instances
        self.batching_levels = batching_levels or self._default_batching(unwrapped)

    @staticmethod
    def _default_batching(env: LLMServeEnv) -> tuple[int, int, int]:
        head = next((h for h in env.heads if isinstance(h, BatchingHead)), None)
        if head is None:
            return (0, 0, 0)
        params = env.factory.plans[0].params

        def closest(levels: list[int], value: int) -> int:
            return int(np.argmin([abs(level - value) for level in levels]))

        policy = (
            head.policies.index(params.scheduling_policy)
            if params.scheduling_policy in head.policies
            else 0
        )
        return (
            closest(head.seqs, params.max_num_seqs),
            closest(head.tokens, params.max_num_batched_tokens),
            policy,
        )

    # -- the rule ------------------------------------------------------------

    def route(self, obs: Obs) -> int:
        """Routing mode: the instance for the pending request."""
        raise NotImplementedError

    def weights(self, obs: Obs, levels: int) -> np.ndarray:
        """Cluster mode: a weight level per instance row."""
        weights = np.zeros(len(obs["instance_valid"]), dtype=np.int64)
        weights[: self.num_instances] = levels - 1
        return weights

    # -- protocol ------------------------------------------------------------

    def _act(self, obs: Obs) -> np.ndarray:
        action = np.zeros(len(self.nvec), dtype=np.int64)
        for head, part in zip(self.heads, self.slices, strict=True):
            if isinstance(head, RequestRoutingHead):
                action[part] = self.route(obs)
            elif isinstance(head, WeightRoutingHead):
                action[part] = self.weights(obs, head.levels)
            elif isinstance(head, BatchingHead):
                triple = np.tile(np.asarray(self.batching_levels), head.max_instances)
                triple[3 * head.num_instances :] = 0
                action[part] = triple
        return action

    def predict(
        self,
        observation: Obs,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        """SB3's protocol: ``(action, state)``; batched observations give batched actions."""
        valid = observation["instance_valid"]
        if valid.ndim == 1:
            return self._act(observation), state
        batch = [
            self._act({k: v[i] for k, v in observation.items()}) for i in range(valid.shape[0])
        ]
        return np.stack(batch), state


def _load(obs: Obs) -> np.ndarray:
    return obs["num_waiting"] + obs["num_running"]


def _masked_argmin(values: np.ndarray, obs: Obs) -> int:
    values = np.where(obs["instance_valid"] > 0, values, np.inf)
    return int(np.argmin(values))


class RoundRobin(HeuristicPolicy):
    """Cycle through the instances."""

    name = "round_robin"

    def __init__(self, env: Any, **kw: Any) -> None:
        super().__init__(env, **kw)
        self._next = 0

    def route(self, obs: Obs) -> int:
        choice = self._next % self.num_instances
        self._next += 1
        return choice


class RandomRouting(HeuristicPolicy):
    """Uniformly random instance (seeded)."""

    name = "random"

    def __init__(self, env: Any, seed: int = 0, **kw: Any) -> None:
        super().__init__(env, **kw)
        self.rng = np.random.default_rng(seed)

    def route(self, obs: Obs) -> int:
        return int(self.rng.integers(self.num_instances))


class LeastLoaded(HeuristicPolicy):
    """Fewest waiting + running requests; in cluster mode, weights falling with load."""

    name = "least_loaded"

    def route(self, obs: Obs) -> int:
        return _masked_argmin(_load(obs), obs)

    def weights(self, obs: Obs, levels: int) -> np.ndarray:
        load = _load(obs)[: self.num_instances]
        spare = load.max() - load
        top = spare.max()
        weights = np.zeros(len(obs["instance_valid"]), dtype=np.int64)
        if top <= 0:
            weights[: self.num_instances] = levels - 1
        else:
            weights[: self.num_instances] = np.rint(1 + (levels - 2) * spare / top)
        return weights


class JoinShortestQueue(HeuristicPolicy):
    """Fewest waiting requests, ties by fewest outstanding."""

    name = "join_shortest_queue"

    def route(self, obs: Obs) -> int:
        return _masked_argmin(obs["num_waiting"] * 1e6 + _load(obs), obs)


class LeastKVUsage(HeuristicPolicy):
    """Lowest KV-cache usage."""

    name = "least_kv_usage"

    def route(self, obs: Obs) -> int:
        return _masked_argmin(obs["kv_usage_frac"] * 1e6 + _load(obs), obs)


class PrefixAffinity(HeuristicPolicy):
    """Longest cached prefix of the pending request, ties by least load."""

    name = "prefix_affinity"

    def route(self, obs: Obs) -> int:
        return _masked_argmin(-obs["request_cached_tokens"] * 1e6 + _load(obs), obs)


HEURISTICS: dict[str, type[HeuristicPolicy]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        RandomRouting,
        LeastLoaded,
        JoinShortestQueue,
        LeastKVUsage,
        PrefixAffinity,
    )
}


def make_heuristic(name: str, env: Any, **kwargs: Any) -> HeuristicPolicy:
    """A heuristic by name (see :data:`HEURISTICS`)."""
    try:
        cls = HEURISTICS[name]
    except KeyError:
        raise ValueError(f"unknown heuristic {name!r}; known: {', '.join(HEURISTICS)}") from None
    return cls(env, **kwargs)
