"""What the environment reads from the simulation at each decision, in one pass.

Part of the compiled core (pyproject.toml's mypyc list): the environment calls
:func:`decision_outputs` once per step, so the reward counters, the moving rates and
the observation are read without building numpy arrays, and the observation comes back
as one float32 buffer, already clipped to its bounds, which
:class:`~llmserve_env.env.core.LLMServeEnv` views with numpy without copying. (Clipping
here rather than with numpy ufuncs: inside a stepping loop, where the simulator has
pushed numpy's code out of the caches, two ufunc calls on 142 values cost more than
this loop, compiled or not.)
"""

from __future__ import annotations

import struct

from llmserve_env.sim.simulation import Simulation
from llmserve_env.sim.stats import MovingRates

REWARD_TERMS = ("goodput", "ttft_violation", "tpot_violation", "rejected", "backlog", "energy")
"""The reward's terms, in the order of :func:`reward_counters`."""

CLUSTER_RATES = 4
"""Leading entries of the moving rates that are cluster-wide: arrivals, finished,
finished within every SLO, energy; per-instance rates follow, ``n`` values each:
preemptions, prefix-cache hit tokens, prefix query tokens, generated tokens."""


def reward_counters(sim: Simulation) -> list[float]:
    """The cumulative counters whose increments are the reward's terms, in
    :data:`REWARD_TERMS` order: requests finished within every SLO, TTFT and TPOT
    violations, rejections, request-seconds of queueing, and energy (J; reading it
    settles every instance's energy, so it is read once per decision)."""
    m = sim.metrics
    return [
        float(m.num_slo_met),
        float(m.num_ttft_violations),
        float(m.num_tpot_violations),
        float(m.num_rejected),
        sim.backlog_s(),
        sim.total_energy_j(),
    ]


def decision_outputs(
    sim: Simulation,
    counters: list[float],
    weights: list[float],
    rates: MovingRates,
    last_time: float,
    highs: list[float],
    max_instances: int,
    horizon_s: float,
    routing: bool,
) -> tuple[list[float], dict[str, float], float, bytearray]:
    """Everything a decision hands out, once the simulation reached it.

    Args:
        sim: The simulation at the decision.
        counters: :func:`reward_counters` at the previous decision.
        weights: The reward's weights, in :data:`REWARD_TERMS` order.
        rates: The moving rates; folded forward to now.
        last_time: Simulated time of the previous decision.
        highs: Upper bound of every observation value, in the layout's order.
        max_instances: See :func:`observation_buffer`.
        horizon_s: See :func:`observation_buffer`.
        routing: See :func:`observation_buffer`.

    Returns:
        The counters now, the reward's terms by name (their increments since
        ``counters``), the reward (the weighted sum of the terms) and the observation
        buffer.
    """
    current = reward_counters(sim)
    terms: dict[str, float] = {}
    reward = 0.0
    for index in range(len(current)):
        term = current[index] - counters[index]
        terms[REWARD_TERMS[index]] = term
        reward += weights[index] * term
    sim.sync()
    rates.update(sim.counters(current[-1]), sim.now - last_time)
    buffer = observation_buffer(sim, rates.values, highs, max_instances, horizon_s, routing)
    return current, terms, reward, buffer


def observation_buffer(
    sim: Simulation,
    rates: list[float],
    highs: list[float],
    max_instances: int,
    horizon_s: float,
    routing: bool,
) -> bytearray:
    """Every feature as native float32 (a fresh buffer per call), clipped to
    ``[0, highs]`` (NaN stays NaN, as with numpy's ``minimum`` and ``maximum``): first a
    row of ``max_instances`` values per per-instance feature (the rows of the
    environment's ``_ROW_KEYS``), then one value per single-valued feature
    (``_SCALAR_KEYS``), so that the environment hands out the rows of two views.

    Args:
        sim: The simulation, synced to now.
        rates: The moving rates' values (:data:`CLUSTER_RATES` layout).
        highs: Upper bound of every value, in the layout's order; its length is the
            buffer's.
        max_instances: Rows of each per-instance feature (the layout's per-instance
            rows); rows past the cluster's instances are zero (and invalid).
        horizon_s: Episode horizon, or 0 when the episode has none.
        routing: Whether to add the pending request's features.
    """
    instances = sim.instances
    n = len(instances)
    c = CLUSTER_RATES
    # One row of n values per per-instance feature ...
    flat: list[float] = [1.0] * n  # the validity mask
    flat += sim.instance_state()
    flat += rates[c : c + n]  # preemption rate
    for k in range(n):
        queries = rates[c + 2 * n + k]
        flat.append(rates[c + n + k] / queries if queries > 1e-12 else 0.0)
    flat += rates[c + 3 * n : c + 4 * n]  # generation tokens/s
    pending = sim.pending
    request = pending[0] if routing and pending else None
    if routing:  # the request's cached prefix on each instance
        if request is not None and request.content is not None:
            for inst in instances:
                flat.append(inst.pool.cached_prefix_tokens(request))
        else:
            flat += [0.0] * n
    if max_instances > n:  # ... padded to max_instances
        pad = [0.0] * (max_instances - n)
        padded: list[float] = []
        for start in range(0, len(flat), n):
            padded += flat[start : start + n]
            padded += pad
        flat = padded
    # ... then the single values.
    finished, met = rates[1], rates[2]
    flat.append(rates[0])  # arrivals
    flat.append(met / finished if finished > 1e-12 else 1.0)  # SLO attainment
    flat.append(met)  # goodput
    flat.append(1.0 - sim.now / horizon_s if horizon_s > 0.0 else 1.0)
    flat.append(rates[3])  # power
    if routing:
        flat.append(request.num_prompt_tokens if request is not None else 0.0)
    for index in range(len(flat)):
        value = flat[index]
        if value > highs[index]:
            flat[index] = highs[index]
        elif value < 0.0:
            flat[index] = 0.0
    # The bytearray keeps the buffer writable (numpy views of bytes are read-only).
    return bytearray(_float32_packer(len(flat)).pack(*flat))


_PACKERS: dict[int, struct.Struct] = {}


def _float32_packer(count: int) -> struct.Struct:
    """Packs ``count`` floats as native float32, each a C cast of the double (as
    ``array("f")`` stores them, at half its cost); one per length, made on first use."""
    packer = _PACKERS.get(count)
    if packer is None:
        packer = _PACKERS[count] = struct.Struct(f"{count}f")
    return packer
