"""llmserve_env.env.training: train, save, load and score agents; policy specs; what-if."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from llmserve_env.env.evaluation import evaluate
from llmserve_env.env.heuristics import HEURISTICS, LeastLoaded
from llmserve_env.env.training import (
    ALGOS,
    METADATA_FILE,
    MODEL_FILE,
    VECNORMALIZE_FILE,
    AgentError,
    MissingExtraError,
    SavedPolicy,
    default_hyperparams,
    evaluate_policies,
    load_policy,
    make_env,
    policy_labels,
    resolve_policy,
    scenario_heuristic,
    train,
    what_if_at,
)

SMALL = "LLMServe/Routing-Small-v0"
SMALL_CLUSTER = "LLMServe/Cluster-Small-v0"
FAST = ["env.horizon_s=10"]


def test_make_env_accepts_own_ids_only() -> None:
    env = make_env(f"llmserve_env:{SMALL}", overrides=FAST)
    assert env.unwrapped.horizon_s == 10
    assert make_env(SMALL_CLUSTER, scenario="default", overrides=FAST).unwrapped.mode == "cluster"
    with pytest.raises(AgentError, match="known: LLMServe/Routing-v0"):
        make_env("CartPole-v1")


def test_policy_specs() -> None:
    env = make_env(SMALL, overrides=FAST)
    assert isinstance(resolve_policy("least_loaded", env), LeastLoaded)
    with pytest.raises(AgentError) as info:
        resolve_policy("fastest", env)
    assert all(name in str(info.value) for name in HEURISTICS)
    assert policy_labels(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]
    with pytest.raises(AgentError, match="at least one policy"):
        evaluate_policies(SMALL, [], overrides=FAST)


def test_scenario_heuristic_follows_the_router_policy() -> None:
    assert scenario_heuristic(make_env(SMALL)) == "round_robin"
    env = make_env(SMALL, overrides=["router.policy=least_outstanding_requests"])
    assert scenario_heuristic(env) == "least_loaded"


def test_default_hyperparams_fit_short_budgets() -> None:
    assert default_hyperparams("ppo", 100, 1) == {"n_steps": 100, "batch_size": 100, "n_epochs": 5}
    long = default_hyperparams("maskable_ppo", 100_000, 4)
    assert long["n_steps"] == 256 and long["batch_size"] == 64
    assert default_hyperparams("dqn", 200, 1)["learning_starts"] == 32
    with pytest.raises(AgentError, match="choose one of"):
        default_hyperparams("sac", 100, 1)
    with pytest.raises(AgentError, match="choose one of"):
        train("sac", SMALL)


def test_missing_rl_extra_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "stable_baselines3", None)
    with pytest.raises(MissingExtraError, match=r"llmserve-env\[rl\]"):
        train("ppo", SMALL, overrides=FAST, timesteps=16, out=tmp_path)
    # Heuristics still work without it.
    env = make_env(SMALL, overrides=FAST)
    assert evaluate(env, resolve_policy("round_robin", env))["mean"]["num_arrived"] > 0


@pytest.mark.parametrize("algo", ALGOS)
def test_train_save_load_evaluate(algo: str, tmp_path: Path) -> None:
    model_path = train(algo, SMALL, overrides=FAST, timesteps=128, seed=1, out=tmp_path)
    assert model_path == tmp_path / MODEL_FILE and model_path.is_file()
    assert (tmp_path / VECNORMALIZE_FILE).is_file()
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    assert meta["algo"] == algo and meta["overrides"] == FAST and meta["timesteps"] >= 128
    env = make_env(SMALL, overrides=FAST)
    policy = load_policy(tmp_path, env)
    assert isinstance(policy, SavedPolicy) and policy.normalizer is not None
    obs, _ = env.reset(seed=0)
    action, _ = policy.predict(obs, action_masks=env.unwrapped.action_masks())
    assert action.shape == env.action_space.shape and env.action_space.contains(action)
    # The saved statistics are applied to the raw observation.
    expected, _ = policy.model.predict(
        policy.normalizer.normalize_obs(obs),
        deterministic=True,
        **({"action_masks": env.unwrapped.action_masks()} if algo == "maskable_ppo" else {}),
    )
    assert int(np.asarray(expected).reshape(-1)[0]) == int(action[0])
    result = evaluate(env, policy, n_episodes=1, seed=0)
    assert result["mean"]["num_steps"] > 0


@pytest.mark.parametrize("algo", ["ppo", "a2c"])
def test_load_without_metadata_infers_the_algorithm(algo: str, tmp_path: Path) -> None:
    train(algo, SMALL, overrides=FAST, timesteps=64, out=tmp_path, normalize=False)
    assert not (tmp_path / VECNORMALIZE_FILE).exists()
    (tmp_path / METADATA_FILE).unlink()
    policy = load_policy(tmp_path / MODEL_FILE)
    assert policy.algo == algo and policy.normalizer is None and policy.metadata == {}
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(AgentError, match="not a saved stable-baselines3 model"):
        load_policy(tmp_path / "junk.zip")


def test_training_leaves_no_log_folder_in_the_temp_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SB3's default logger makes an SB3-<time> folder in the temp folder on every
    learn(); training logs to stdout only, and only when verbose."""
    import tempfile

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    train("ppo", SMALL, overrides=FAST, timesteps=64, out=tmp_path / "quiet")
    assert "total_timesteps" not in capsys.readouterr().out
    train("ppo", SMALL, overrides=FAST, timesteps=64, out=tmp_path / "loud", verbose=1)
    assert "total_timesteps" in capsys.readouterr().out
    assert [p.name for p in temp.iterdir() if p.name.startswith("SB3-")] == []


def test_model_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    train("ppo", SMALL, overrides=FAST, timesteps=64, out=tmp_path)
    with pytest.raises(AgentError, match="does not fit this environment"):
        load_policy(tmp_path, make_env(SMALL_CLUSTER, overrides=FAST))
    with pytest.raises(AgentError, match="acts in MultiDiscrete"):
        load_policy(
            tmp_path, make_env(SMALL, overrides=[*FAST, "env.heads.routing.allow_reject=true"])
        )
    with pytest.raises(AgentError, match="no saved model"):
        load_policy(tmp_path / "missing")


def test_subprocess_workers(tmp_path: Path) -> None:
    path = train("ppo", SMALL, overrides=FAST, timesteps=128, n_envs=2, out=tmp_path)
    assert json.loads((tmp_path / METADATA_FILE).read_text())["n_envs"] == 2
    scores = evaluate_policies(SMALL, [str(path), "round_robin"], overrides=FAST)
    assert list(scores) == [str(path), "round_robin"]


def test_what_if_at_forks_after_a_warm_up() -> None:
    result = what_if_at(
        SMALL, ["round_robin", "least_loaded"], at_s=3.0, duration_s=2.0, overrides=FAST
    )
    assert result.baseline == "round_robin"
    assert result.differences["least_loaded"]["return"] == pytest.approx(
        result.results["least_loaded"]["return"] - result.results["round_robin"]["return"]
    )
    again = what_if_at(
        SMALL, ["round_robin", "least_loaded"], at_s=3.0, duration_s=2.0, overrides=FAST
    )
    assert again.results == result.results
    with pytest.raises(AgentError, match="warm-up"):
        what_if_at(SMALL, ["round_robin"], at_s=1.0, overrides=FAST, warmup="fastest")
    with pytest.raises(AgentError, match="horizon"):
        what_if_at(SMALL, ["round_robin"], at_s=10.0, overrides=FAST)


def test_what_if_at_reports_an_episode_that_ends_early() -> None:
    overrides = ["env.horizon_s=null", "workload.duration_s=null", "workload.num_requests=20"]
    env = gym.make(SMALL, overrides=overrides)
    assert env.unwrapped.horizon_s is None
    with pytest.raises(AgentError, match="before --at"):
        what_if_at(SMALL, ["round_robin"], at_s=1000.0, overrides=overrides)
