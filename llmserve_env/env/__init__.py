"""The Gymnasium adapter: spaces, observations, action heads, rewards, forks."""

from llmserve_env.env.core import EnvState, LLMServeEnv
from llmserve_env.env.registration import ENV_IDS, register_envs

__all__ = ["ENV_IDS", "EnvState", "LLMServeEnv", "register_envs"]
