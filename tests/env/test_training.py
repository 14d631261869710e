"""Short training runs of SB3 algorithms and vector environments (smoke tests)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from stable_baselines3 import A2C, DQN, PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecNormalize

import llmserve_env  # noqa: F401  (registers the ids)
from llmserve_env.env.wrappers import DiscreteActions

SMALL = "LLMServe/Routing-Small-v0"
SMALL_CLUSTER = "LLMServe/Cluster-Small-v0"
FAST = {"overrides": ["env.horizon_s=20"]}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_ppo_multi_input_with_vec_normalize() -> None:
    env = VecNormalize(make_vec_env(SMALL, n_envs=2, seed=0, env_kwargs=FAST))
    model = PPO("MultiInputPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(512)
    obs = env.reset()
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (2, 1)


def test_a2c_cluster_mode() -> None:
    env = make_vec_env(SMALL_CLUSTER, n_envs=2, seed=0, env_kwargs=FAST)
    A2C("MultiInputPolicy", env, n_steps=8, seed=0).learn(256)


def test_maskable_ppo_uses_action_masks() -> None:
    env = gym.make(SMALL, overrides=["env.horizon_s=20", "env.max_instances=6"])
    model = MaskablePPO("MultiInputPolicy", env, n_steps=128, batch_size=64, n_epochs=2, seed=0)
    model.learn(512)
    obs, _ = env.reset(seed=1)
    for _ in range(50):
        action, _ = model.predict(obs, action_masks=env.unwrapped.action_masks())
        assert int(action[0]) < 4  # padding rows 4 and 5 are masked
        obs, _, term, trunc, _ = env.step(action)
        if term or trunc:
            break


def test_dqn_through_discrete_wrapper() -> None:
    env = DiscreteActions(gym.make(SMALL, **FAST))
    DQN("MultiInputPolicy", env, learning_starts=64, buffer_size=1000, train_freq=4, seed=0).learn(
        512
    )


def test_subproc_and_async_vector_envs() -> None:
    # Worker processes start fresh: the "module:id" form imports llmserve_env there.
    venv = SubprocVecEnv([lambda: gym.make(f"llmserve_env:{SMALL}", **FAST) for _ in range(2)])
    try:
        PPO("MultiInputPolicy", venv, n_steps=64, batch_size=64, n_epochs=1, seed=0).learn(128)
    finally:
        venv.close()
    async_env = gym.vector.AsyncVectorEnv(
        [lambda: gym.make(f"llmserve_env:{SMALL_CLUSTER}", **FAST) for _ in range(2)]
    )
    try:
        obs, _ = async_env.reset(seed=0)
        assert obs["num_waiting"].shape == (2, 4)
        for _ in range(5):
            obs, reward, *_ = async_env.step(async_env.action_space.sample())
        assert np.all(np.isfinite(reward))
    finally:
        async_env.close()
