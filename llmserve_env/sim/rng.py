"""One seeded RNG tree, split into named child streams.

Every random draw in a simulation comes from one of these streams, each derived from the
root seed and a fixed stream index (``numpy.random.SeedSequence`` spawn keys). Changing
how one component draws never perturbs another's stream, and a fork that copies the
generators replays the same future draws (common random numbers).
"""

from __future__ import annotations

import numpy as np

STREAMS = ("arrivals", "lengths", "content", "routing", "gating", "noise", "env", "priority")


def rng_tree(seed: int) -> dict[str, np.random.Generator]:
    """The named generators of one simulation, all derived from ``seed``."""
    return {
        name: np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(i,))))
        for i, name in enumerate(STREAMS)
    }


def clone_rngs(rngs: dict[str, np.random.Generator]) -> dict[str, np.random.Generator]:
    """Independent generators in the same states (a fork draws the same future numbers)."""
    out = {}
    for name, gen in rngs.items():
        bit = np.random.PCG64()
        bit.state = gen.bit_generator.state  # type: ignore[assignment]
        out[name] = np.random.Generator(bit)
    return out
