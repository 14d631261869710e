"""Environment speed: raw step rate, fork and reset latency (one core).

    python benchmarks/bench_env.py [--steps 20000] [--json]

Measures on ``scenarios/benchmark/env-8x-h100.yaml`` (8 instances):

- routing mode, routing head only: ``env.unwrapped.step`` calls per second;
- cluster mode with every head active (routing weights + batching knobs), 0.05 s
  decision interval: steps per second;
- ``fork()`` with 8 instances and at least 1,000 requests in flight;
- ``reset()`` after the first load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import gymnasium as gym
import numpy as np

import llmserve_env  # noqa: F401

SCENARIO = "benchmark/env-8x-h100"


def routing_rate(steps: int) -> float:
    env = gym.make("LLMServe/Routing-v0", scenario=SCENARIO).unwrapped
    env.reset(seed=0)
    actions = [np.array([k % 8]) for k in range(8)]
    done_steps = 0
    start = time.perf_counter()
    while done_steps < steps:
        _, _, term, trunc, _ = env.step(actions[done_steps % 8])
        done_steps += 1
        if term or trunc:
            env.reset()
    return done_steps / (time.perf_counter() - start)


def all_heads_rate(steps: int) -> float:
    env = gym.make(
        "LLMServe/Cluster-v0",
        scenario=SCENARIO,
        overrides=["env.heads.batching.enabled=true", "env.decision_interval_s=0.05"],
    ).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [env.action_space.sample() for _ in range(64)]
    del rng
    done_steps = 0
    start = time.perf_counter()
    while done_steps < steps:
        _, _, term, trunc, _ = env.step(actions[done_steps % 64])
        done_steps += 1
        if term or trunc:
            env.reset()
    return done_steps / (time.perf_counter() - start)


def fork_ms(repeat: int = 50) -> tuple[float, int]:
    env = gym.make(
        "LLMServe/Routing-v0", scenario=SCENARIO, overrides=["workload.arrival.rate_rps=400"]
    ).unwrapped
    env.reset(seed=0)
    sim = env.sim
    assert sim is not None
    in_flight = 0
    while in_flight < 1000:
        env.step(np.array([sim.num_arrived % 8]))
        in_flight = sum(inst.num_outstanding for inst in sim.instances)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        env.fork()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times), in_flight


def reset_ms(repeat: int = 20) -> float:
    env = gym.make("LLMServe/Routing-v0", scenario=SCENARIO).unwrapped
    env.reset(seed=0)
    times = []
    for k in range(repeat):
        start = time.perf_counter()
        env.reset(seed=k)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description="environment speed benchmark")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fork, in_flight = fork_ms()
    result = {
        "routing_steps_per_s": routing_rate(args.steps),
        "all_heads_steps_per_s": all_heads_rate(args.steps // 4),
        "fork_ms_median": fork,
        "fork_requests_in_flight": in_flight,
        "reset_ms_median": reset_ms(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>26}: {value:,.3f}" if isinstance(value, float) else f"{key:>26}: {value}")


if __name__ == "__main__":
    main()
