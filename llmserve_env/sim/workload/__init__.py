"""Workload sources: synthetic arrivals and lengths, trace replay, multi-turn sessions."""

from __future__ import annotations

import dataclasses

import numpy as np

from llmserve_env.config.schema import (
    MultiTurnWorkload,
    PriorityMix,
    SyntheticWorkload,
    TraceWorkload,
    WorkloadConfig,
)
from llmserve_env.sim.workload.arrivals import sample_arrivals
from llmserve_env.sim.workload.base import WorkloadData
from llmserve_env.sim.workload.lengths import sample_lengths
from llmserve_env.sim.workload.multiturn import generate_multi_turn
from llmserve_env.sim.workload.traces import load_trace


def _priorities(mix: PriorityMix | None, rng: np.random.Generator, n: int) -> np.ndarray | None:
    if mix is None:
        return None
    weights = np.asarray(mix.weights, dtype=np.float64)
    return rng.choice(np.asarray(mix.values, dtype=np.int64), size=n, p=weights / weights.sum())


def build_workload(cfg: WorkloadConfig, rngs: dict[str, np.random.Generator]) -> WorkloadData:
    """Generate or load every request of the workload, using the named RNG streams."""
    match cfg:
        case SyntheticWorkload():
            arrival = sample_arrivals(
                cfg.arrival, rngs["arrivals"], cfg.num_requests, cfg.duration_s
            )
            n = len(arrival)
            return WorkloadData.from_arrays(
                arrival,
                sample_lengths(cfg.prompt_tokens, rngs["lengths"], n),
                sample_lengths(cfg.output_tokens, rngs["lengths"], n),
                priority=_priorities(cfg.priority, rngs["priority"], n),
                source="synthetic",
            )
        case TraceWorkload():
            data = load_trace(cfg)
            prio = _priorities(cfg.priority, rngs["priority"], len(data))
            return data if prio is None else dataclasses.replace(data, priority=prio)
        case MultiTurnWorkload():
            return generate_multi_turn(cfg, rngs["arrivals"], rngs["lengths"], rngs["content"])
    raise ValueError(f"unknown workload kind {cfg!r}")


__all__ = ["WorkloadData", "build_workload", "sample_arrivals"]
