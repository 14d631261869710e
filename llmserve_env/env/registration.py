"""Environment ids registered with Gymnasium on ``import llmserve_env``."""

from __future__ import annotations

from gymnasium.envs.registration import register, registry

ENTRY_POINT = "llmserve_env.env.core:LLMServeEnv"

ENV_IDS: dict[str, dict[str, str]] = {
    # A decision per arriving request, on the shipped default scenario.
    "LLMServe/Routing-v0": {"scenario": "default", "mode": "routing"},
    # A decision every env.decision_interval_s of simulated time.
    "LLMServe/Cluster-v0": {"scenario": "default", "mode": "cluster"},
    # Fast presets for tests and training: four small instances, one-minute episodes.
    "LLMServe/Routing-Small-v0": {"scenario": "env/small-4x", "mode": "routing"},
    "LLMServe/Cluster-Small-v0": {"scenario": "env/small-4x", "mode": "cluster"},
}


def register_envs() -> None:
    """Register every id (idempotent)."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id not in registry:
            register(id=env_id, entry_point=ENTRY_POINT, kwargs=dict(kwargs))
