"""Observation features: names, units, ranges, and the builder that fills them.

The observation is a single-level ``Dict`` of float32 ``Box`` spaces, one key per
feature. Per-instance features have shape ``(max_instances,)`` (rows beyond the
cluster's size are zero and ``instance_valid`` is 0 there); cluster and request
features have shape ``(1,)``. :data:`FEATURES` is the one source of names, units and
ranges; the environment's docstring documents the same table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

Scope = Literal["instance", "cluster", "request", "request_instance"]


@dataclass(frozen=True)
class Feature:
    """One observation feature.

    Attributes:
        name: Key in the observation dict.
        scope: ``instance`` (one value per instance row), ``cluster`` (one value),
            ``request`` (the request awaiting routing), ``request_instance`` (one value
            per instance row about that request).
        unit: Physical unit.
        high: Upper bound of the Box (values are clipped to ``[0, high]``).
        description: What it measures.
    """

    name: str
    scope: Scope
    unit: str
    high: float
    description: str


FEATURES: tuple[Feature, ...] = (
    Feature("instance_valid", "instance", "1", 1.0, "1 for a real instance, 0 for a padding row"),
    Feature("num_waiting", "instance", "requests", 1e5, "requests in the waiting queue"),
    Feature("num_running", "instance", "requests", 1e5, "requests in the running batch"),
    Feature(
        "scheduled_tokens", "instance", "tokens", 1e6, "tokens in the latest iteration's batch"
    ),
    Feature(
        "queue_delay_s", "instance", "s", 1e5, "age of the request at the head of the waiting queue"
    ),
    Feature("preemption_rate", "instance", "1/s", 1e6, "preemptions per second (moving average)"),
    Feature("kv_usage_frac", "instance", "fraction", 1.0, "KV-cache blocks in use"),
    Feature("free_kv_blocks", "instance", "blocks", 1e8, "free KV-cache blocks"),
    Feature(
        "prefix_hit_rate",
        "instance",
        "fraction",
        1.0,
        "prefix-cache hit rate of admissions (moving average)",
    ),
    Feature(
        "generation_tok_s", "instance", "tokens/s", 1e7, "output tokens per second (moving average)"
    ),
    Feature("max_num_seqs", "instance", "requests", 1e5, "current max_num_seqs knob"),
    Feature("max_num_batched_tokens", "instance", "tokens", 1e7, "current token budget knob"),
    Feature("power_state", "instance", "code", 4.0, "0 on, 1 waking, 2 sleep, 3 deep sleep, 4 off"),
    Feature(
        "clock_frac", "instance", "fraction", 1.0, "selected clock as a fraction of the maximum"
    ),
    Feature("power_w", "instance", "W", 1e5, "current draw of the instance's devices"),
    Feature(
        "time_to_wake_s", "instance", "s", 1e4, "time until the instance can serve (0 when on)"
    ),
    Feature("arrival_rate_rps", "cluster", "requests/s", 1e6, "arrival rate (moving average)"),
    Feature(
        "slo_attainment",
        "cluster",
        "fraction",
        1.0,
        "finished requests meeting every SLO (moving average; 1 before any finish)",
    ),
    Feature(
        "goodput_rps",
        "cluster",
        "requests/s",
        1e6,
        "SLO-meeting finishes per second (moving average)",
    ),
    Feature(
        "time_remaining_frac", "cluster", "fraction", 1.0, "fraction of the episode horizon left"
    ),
    Feature(
        "cluster_power_w",
        "cluster",
        "W",
        1e7,
        "power of devices and node components (moving average)",
    ),
    Feature(
        "request_prompt_tokens",
        "request",
        "tokens",
        1e7,
        "routing mode: prompt length of the request to route",
    ),
    Feature(
        "request_cached_tokens",
        "request_instance",
        "tokens",
        1e7,
        "routing mode: tokens of that request's prefix cached at each instance",
    ),
)


def features_for(routing_mode: bool) -> tuple[Feature, ...]:
    """The features of one mode (request features only in routing mode)."""
    if routing_mode:
        return FEATURES
    return tuple(f for f in FEATURES if f.scope in ("instance", "cluster"))


def observation_space(features: tuple[Feature, ...], max_instances: int) -> spaces.Dict:
    """The Dict of Boxes for these features."""
    boxes: dict[str, spaces.Space[Any]] = {}
    for feature in features:
        size = max_instances if feature.scope in ("instance", "request_instance") else 1
        boxes[feature.name] = spaces.Box(0.0, feature.high, shape=(size,), dtype=np.float32)
    return spaces.Dict(boxes)


def observation_layout(features: tuple[Feature, ...], max_instances: int) -> dict[str, slice]:
    """Where each feature lands in the flattened observation.

    Gymnasium's ``FlattenObservation`` (and SB3's flattening) concatenates a Dict's
    keys in sorted order; this layout follows the same order, so heuristics can index a
    flat vector by name.
    """
    sizes = {
        f.name: max_instances if f.scope in ("instance", "request_instance") else 1
        for f in features
    }
    layout: dict[str, slice] = {}
    start = 0
    for name in sorted(sizes):
        layout[name] = slice(start, start + sizes[name])
        start += sizes[name]
    return layout
