"""Wrappers for algorithms that need other action or observation spaces."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DiscreteActions(gym.ActionWrapper[dict[str, np.ndarray], int, np.ndarray]):
    """Flatten a ``MultiDiscrete`` action into one ``Discrete`` choice (for DQN).

    Choice ``k`` is the mixed-radix number whose digits are the MultiDiscrete entries
    (``np.unravel_index`` order), so the routing environment with only the routing head
    becomes ``Discrete(max_instances)`` with choice ``k`` = instance ``k``.
    ``action_masks()`` is flattened the same way (a choice is legal when every digit
    is).

    Args:
        env: An environment with a ``MultiDiscrete`` action space.
        max_choices: Refuse to flatten larger products (they are impractical for DQN).
    """

    def __init__(self, env: gym.Env[Any, Any], max_choices: int = 4096) -> None:
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiDiscrete):
            raise TypeError(
                f"DiscreteActions needs a MultiDiscrete action space, got {env.action_space}"
            )
        self._nvec = tuple(int(n) for n in env.action_space.nvec)
        total = int(np.prod(self._nvec))
        if total > max_choices:
            raise ValueError(
                f"the flattened action space would have {total} choices (> {max_choices}); "
                "disable heads or lower their levels"
            )
        self.action_space = spaces.Discrete(total)  # type: ignore[assignment]

    def action(self, action: int) -> np.ndarray:
        """Discrete choice -> MultiDiscrete vector."""
        return np.asarray(np.unravel_index(int(action), self._nvec), dtype=np.int64)

    def action_masks(self) -> np.ndarray:
        """Legal flat choices."""
        masks = self.env.unwrapped.action_masks()  # type: ignore[attr-defined]
        parts = np.split(masks, np.cumsum(self._nvec)[:-1])
        legal = parts[0]
        for part in parts[1:]:
            legal = np.logical_and.outer(legal, part).reshape(-1)
        return legal
