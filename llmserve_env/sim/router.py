"""Cluster-level routing: which instance an arriving request goes to.

Policies read each candidate's live state (the caller brings instances up to date
first). Ties break towards the lowest instance index, so results are deterministic.

================================  ===============================================
policy                            picks
================================  ===============================================
round_robin                       the next instance in turn
random                            uniformly at random (routing RNG stream)
least_outstanding_requests        fewest waiting + running requests
join_shortest_queue               fewest waiting requests, then fewest outstanding
least_kv_usage                    lowest KV-cache usage, then fewest outstanding
power_of_two_choices              the less loaded of two sampled at random
prefix_affinity                   longest cached prefix of this request, then
                                  fewest outstanding
vllm_data_parallel                fewest ``4 x waiting + running`` (vLLM's load
                                  balancer over data-parallel ranks)
================================  ===============================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from llmserve_env.sim.instance import Instance
from llmserve_env.sim.request import Request

ROUTER_POLICIES = (
    "round_robin",
    "random",
    "least_outstanding_requests",
    "join_shortest_queue",
    "least_kv_usage",
    "power_of_two_choices",
    "prefix_affinity",
    "vllm_data_parallel",
)


class RoutingPolicy(Protocol):
    """Chooses an instance for a request among the available candidates.

    Attributes:
        reads_state: Whether :meth:`choose` reads instance state (then the caller brings
            every candidate up to date first).
    """

    reads_state: bool

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        """Return one of ``candidates`` (never empty)."""
        ...

    def clone(self, rngs: dict[str, np.random.Generator]) -> RoutingPolicy:
        """A copy with its own state, drawing from ``rngs["routing"]``."""
        ...


class RoundRobin:
    """Cycle through the instances (by instance id, skipping unavailable ones)."""

    reads_state = False

    def __init__(self) -> None:
        self.next_id = 0

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        chosen = next((c for c in candidates if c.instance_id >= self.next_id), candidates[0])
        self.next_id = chosen.instance_id + 1
        return chosen

    def clone(self, rngs: dict[str, np.random.Generator]) -> RoundRobin:
        other = RoundRobin()
        other.next_id = self.next_id
        return other


class RandomChoice:
    """Uniformly random choice from the routing RNG stream."""

    reads_state = False

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return candidates[int(self.rng.integers(len(candidates)))]

    def clone(self, rngs: dict[str, np.random.Generator]) -> RandomChoice:
        return RandomChoice(rngs["routing"])


class LeastOutstanding:
    """Fewest requests waiting or running."""

    reads_state = True

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return min(candidates, key=lambda c: c.num_outstanding)

    def clone(self, rngs: dict[str, np.random.Generator]) -> LeastOutstanding:
        return self


class JoinShortestQueue:
    """Fewest waiting requests; ties by fewest outstanding."""

    reads_state = True

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return min(candidates, key=lambda c: (c.num_waiting, c.num_outstanding))

    def clone(self, rngs: dict[str, np.random.Generator]) -> JoinShortestQueue:
        return self


class LeastKVUsage:
    """Lowest KV-cache usage; ties by fewest outstanding."""

    reads_state = True

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return min(candidates, key=lambda c: (c.kv_usage_frac, c.num_outstanding))

    def clone(self, rngs: dict[str, np.random.Generator]) -> LeastKVUsage:
        return self


class PowerOfTwoChoices:
    """Sample two distinct instances, take the one with fewer outstanding requests."""

    reads_state = True

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self.rng.choice(len(candidates), size=2, replace=False)
        first, second = candidates[int(min(a, b))], candidates[int(max(a, b))]
        return first if first.num_outstanding <= second.num_outstanding else second

    def clone(self, rngs: dict[str, np.random.Generator]) -> PowerOfTwoChoices:
        return PowerOfTwoChoices(rngs["routing"])


class PrefixAffinity:
    """Longest cached prefix for this request; ties by fewest outstanding."""

    reads_state = True

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return min(
            candidates,
            key=lambda c: (-c.pool.cached_prefix_tokens(request), c.num_outstanding),
        )

    def clone(self, rngs: dict[str, np.random.Generator]) -> PrefixAffinity:
        return self


class VllmDataParallel:
    """vLLM's load balancer over the ranks of a data-parallel engine
    (``DPLBAsyncMPClient``): the rank with the lowest ``4 x waiting + running``, the
    first of equals. vLLM reads the counts its coordinator publishes every 100 ms and
    adds each request it sends; here they are the live counts."""

    reads_state = True

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        return min(candidates, key=lambda c: 4 * c.num_waiting + c.num_running)

    def clone(self, rngs: dict[str, np.random.Generator]) -> VllmDataParallel:
        return self


class WeightedRandom:
    """Random choice with probability proportional to per-instance weights (an agent's
    routing weights for an interval); uniform when every available weight is zero."""

    reads_state = False

    def __init__(self, rng: np.random.Generator, weights: Sequence[float]) -> None:
        self.rng = rng
        self.weights = list(weights)

    def choose(self, request: Request, candidates: Sequence[Instance]) -> Instance:
        weights = [self.weights[c.instance_id] for c in candidates]
        total = sum(weights)
        if total <= 0:
            return candidates[int(self.rng.integers(len(candidates)))]
        point = self.rng.random() * total
        for candidate, weight in zip(candidates, weights, strict=True):
            point -= weight
            if point < 0:
                return candidate
        return candidates[-1]

    def clone(self, rngs: dict[str, np.random.Generator]) -> WeightedRandom:
        return WeightedRandom(rngs["routing"], self.weights)


def make_router(policy: str, rng: np.random.Generator) -> RoutingPolicy:
    """The routing policy named ``policy``."""
    match policy:
        case "round_robin":
            return RoundRobin()
        case "random":
            return RandomChoice(rng)
        case "least_outstanding_requests":
            return LeastOutstanding()
        case "join_shortest_queue":
            return JoinShortestQueue()
        case "least_kv_usage":
            return LeastKVUsage()
        case "power_of_two_choices":
            return PowerOfTwoChoices(rng)
        case "prefix_affinity":
            return PrefixAffinity()
        case "vllm_data_parallel":
            return VllmDataParallel()
        case _:
            raise ValueError(
                f"unknown router policy {policy!r}; allowed: {', '.join(ROUTER_POLICIES)}"
            )
