"""The numbers of one observation, gathered in one pass.

Part of the compiled core (pyproject.toml's mypyc list): the environment calls it once
per step, so it reads the simulator and the moving rates without building numpy
arrays and hands back one float32 buffer, which
:class:`~llmserve_env.env.core.LLMServeEnv` views with numpy without copying (and clips
there: two ufunc calls beat a Python loop in the pure-Python build).
"""

from __future__ import annotations

from array import array

from llmserve_env.sim.simulation import Simulation

CLUSTER_RATES = 4
"""Leading entries of the moving rates that are cluster-wide: arrivals, finished,
finished within every SLO, energy; per-instance rates follow, ``n`` values each:
preemptions, prefix-cache hit tokens, prefix query tokens, generated tokens."""


def observation_buffer(
    sim: Simulation,
    rates: list[float],
    max_instances: int,
    horizon_s: float,
    routing: bool,
) -> array[float]:
    """Every feature in the layout's order, as float32 (not clipped to its bounds).

    Args:
        sim: The simulation, synced to now.
        rates: The moving rates' values (:data:`CLUSTER_RATES` layout).
        max_instances: Rows of each per-instance feature (the layout's per-instance
            rows); rows past the cluster's instances are zero (and invalid).
        horizon_s: Episode horizon, or 0 when the episode has none.
        routing: Whether to append the pending request's features.
    """
    instances = sim.instances
    n = len(instances)
    c = CLUSTER_RATES
    flat: list[float] = [1.0] * n  # the validity mask
    flat += sim.instance_state()
    flat += rates[c : c + n]  # preemption rate
    for k in range(n):
        queries = rates[c + 2 * n + k]
        flat.append(rates[c + n + k] / queries if queries > 1e-12 else 0.0)
    flat += rates[c + 3 * n : c + 4 * n]  # generation tokens/s
    if max_instances > n:  # pad every per-instance row
        pad = [0.0] * (max_instances - n)
        padded: list[float] = []
        for start in range(0, len(flat), n):
            padded += flat[start : start + n]
            padded += pad
        flat = padded
    finished, met = rates[1], rates[2]
    flat.append(rates[0])  # arrivals
    flat.append(met / finished if finished > 1e-12 else 1.0)  # SLO attainment
    flat.append(met)  # goodput
    flat.append(1.0 - sim.now / horizon_s if horizon_s > 0.0 else 1.0)
    flat.append(rates[3])  # power
    if routing:
        pending = sim.pending
        if pending:
            request = pending[0]
            flat.append(request.num_prompt_tokens)
            if request.content is not None:
                for inst in instances:
                    flat.append(inst.pool.cached_prefix_tokens(request))
                flat += [0.0] * (max_instances - n)
            else:
                flat += [0.0] * max_instances
        else:
            flat.append(0.0)
            flat += [0.0] * max_instances
    return array("f", flat)
