"""llmserve-env: a Gymnasium environment around a fast, runtime-driven LLM-serving
cluster simulator.

``import llmserve_env`` registers the environment ids with Gymnasium
(``LLMServe/Routing-v0``, ``LLMServe/Cluster-v0`` and small presets).
"""

from __future__ import annotations

from llmserve_env.env.registration import ENV_IDS, register_envs

__version__ = "0.1.0"

register_envs()

__all__ = ["ENV_IDS", "__version__", "register_envs"]
