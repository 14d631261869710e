"""Train stable-baselines3 agents, load them back, and score named policies.

One module behind ``llmserve train``, ``llmserve eval``, ``llmserve whatif``, the
``agents/`` scripts and the notebooks:

- :func:`train` trains PPO, A2C, MaskablePPO or DQN on a registered id and scenario and
  writes ``model.zip``, ``vecnormalize.pkl`` (observation statistics) and ``train.json``
  (what was trained, on what) into one folder.
- :func:`load_policy` turns such a folder (or a model zip) back into a policy with SB3's
  ``predict`` that takes the environment's raw observations, so trained models and
  heuristics go through the same :func:`~llmserve_env.env.evaluation.evaluate`.
- :func:`resolve_policy`, :func:`evaluate_policies` and :func:`what_if_at` accept policy
  specs: a heuristic name (:data:`~llmserve_env.env.heuristics.HEURISTICS`) or a path.

Stable-baselines3, sb3-contrib and torch (the ``rl`` extra) are imported only when a
model is trained or loaded; without them heuristics still work and training fails with
:class:`MissingExtraError` naming the extra.
"""

from __future__ import annotations

import importlib
import json
import pickle
import sys
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from llmserve_env.config.errors import LLMServeError
from llmserve_env.env.evaluation import Policy, WhatIfResult, evaluate, what_if
from llmserve_env.env.heuristics import HEURISTICS, make_heuristic
from llmserve_env.env.registration import ENTRY_POINT, ENV_IDS
from llmserve_env.env.wrappers import DiscreteActions

ALGOS = ("ppo", "a2c", "maskable_ppo", "dqn")
"""Algorithms :func:`train` knows (sb3-contrib's MaskablePPO uses the action masks)."""
MODEL_FILE = "model.zip"
VECNORMALIZE_FILE = "vecnormalize.pkl"
METADATA_FILE = "train.json"

# Scenario router policies without a heuristic of the same name, and their nearest one.
_ROUTER_HEURISTIC = {
    "least_outstanding_requests": "least_loaded",
    "power_of_two_choices": "least_loaded",
}


class AgentError(LLMServeError, ValueError):
    """Bad agent input: an unknown environment id, algorithm or policy name, or a saved
    model that is missing or does not fit the environment."""


class MissingExtraError(LLMServeError, ImportError):
    """An optional dependency (the ``rl`` extra: torch, stable-baselines3, sb3-contrib)
    is not installed."""


# --------------------------------------------------------------------------- environments


def make_env(
    env_id: str, scenario: str | None = None, overrides: Sequence[str] = ()
) -> gym.Env[Any, Any]:
    """``gym.make`` for this package's ids, with a clear error for any other id.

    Args:
        env_id: A registered id (``LLMServe/Routing-Small-v0``), optionally in the
            ``llmserve_env:LLMServe/...`` form.
        scenario: A shipped scenario name or YAML path (default: the id's own).
        overrides: ``dotted.key=value`` strings applied to the scenario.

    Raises:
        AgentError: ``env_id`` is not an id of this package.
        ScenarioError: the scenario or an override is invalid.
    """
    bare = env_id.split(":", 1)[1] if ":" in env_id else env_id
    spec = gym.registry.get(bare)
    if spec is None or spec.entry_point != ENTRY_POINT:
        raise AgentError(f"unknown environment id {env_id!r}; known: {', '.join(ENV_IDS)}")
    kwargs: dict[str, Any] = {"overrides": list(overrides)}
    if scenario is not None:
        kwargs["scenario"] = scenario
    return gym.make(bare, **kwargs)


def scenario_heuristic(env: Any) -> str:
    """The heuristic closest to the scenario's own ``router.policy`` (for warm-ups)."""
    policy = env.unwrapped.scenario.router.policy
    name = _ROUTER_HEURISTIC.get(policy, policy)
    return name if name in HEURISTICS else "least_loaded"


# --------------------------------------------------------------------------- SB3 access


def _require_rl(algo: str, purpose: str) -> None:
    modules = ["torch", "stable_baselines3"] + (["sb3_contrib"] if algo == "maskable_ppo" else [])
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise MissingExtraError(
                f"{purpose} needs the 'rl' extra (torch, stable-baselines3, sb3-contrib): "
                f"pip install 'llmserve-env[rl]' (cannot import {module}: {exc})"
            ) from exc


def _algo_class(algo: str) -> Any:
    """The SB3 class of an algorithm name (imported here, lazily)."""
    match algo:
        case "ppo":
            from stable_baselines3 import PPO

            return PPO
        case "a2c":
            from stable_baselines3 import A2C

            return A2C
        case "dqn":
            from stable_baselines3 import DQN

            return DQN
        case "maskable_ppo":
            from sb3_contrib import MaskablePPO

            return MaskablePPO
    raise AgentError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")


def default_hyperparams(algo: str, timesteps: int, n_envs: int) -> dict[str, Any]:
    """Settings for short runs on this environment.

    SB3's defaults assume millions of steps (PPO collects 2,048 steps per environment
    before its first update); these scale the rollout to the budget so a run of a few
    hundred steps still updates the policy.
    """
    match algo:
        case "ppo" | "maskable_ppo":
            n_steps = int(min(256, max(16, timesteps // n_envs)))
            rollout = n_steps * n_envs
            return {
                "n_steps": n_steps,
                "batch_size": 64 if rollout % 64 == 0 else rollout,
                "n_epochs": 5,
            }
        case "a2c":
            return {"n_steps": 8}
        case "dqn":
            return {
                "learning_starts": int(min(1000, max(32, timesteps // 10))),
                "buffer_size": 50_000,
                "train_freq": 4,
                "target_update_interval": 1000,
                "exploration_fraction": 0.3,
            }
    raise AgentError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")


# --------------------------------------------------------------------------- training


def train(
    algo: str,
    env_id: str,
    scenario: str | None = None,
    overrides: Sequence[str] = (),
    timesteps: int = 50_000,
    n_envs: int = 1,
    seed: int = 0,
    out: str | Path = "runs/agent",
    *,
    normalize: bool = True,
    hyperparams: Mapping[str, Any] | None = None,
    verbose: int = 0,
) -> Path:
    """Train an agent and save it; returns the path of the model zip.

    Observations are raw physical units, so they go through SB3's ``VecNormalize``
    (``normalize``); its statistics are saved beside the model and :func:`load_policy`
    applies them. ``n_envs > 1`` steps environments in worker processes
    (``SubprocVecEnv``) built from the ``llmserve_env:<id>`` form, which imports this
    package in each worker. DQN acts through :class:`DiscreteActions`; MaskablePPO reads
    ``action_masks()``. Torch runs on the CPU with one thread (small MLPs gain nothing
    from more, and parallel environments need the cores).

    Args:
        algo: One of :data:`ALGOS`.
        env_id: A registered id of this package.
        scenario: Scenario name or path (default: the id's own).
        overrides: ``dotted.key=value`` strings for the scenario.
        timesteps: Environment steps to train for (summed over environments).
        n_envs: Parallel environments.
        seed: Seeds the model and environment ``i`` with ``seed + i``.
        out: Folder for ``model.zip``, ``vecnormalize.pkl`` and ``train.json``.
        normalize: Normalise observations with ``VecNormalize``.
        hyperparams: Keyword arguments for the algorithm, over :func:`default_hyperparams`.
        verbose: SB3's verbosity (1 prints training statistics).

    Raises:
        AgentError: Unknown algorithm or id, or a non-positive budget.
        MissingExtraError: The ``rl`` extra is not installed.
    """
    if algo not in ALGOS:
        raise AgentError(f"unknown algorithm {algo!r}; choose one of {', '.join(ALGOS)}")
    if timesteps < 1 or n_envs < 1:
        raise AgentError(f"timesteps and n_envs must be positive, got {timesteps} and {n_envs}")
    # Build one environment here first: a bad id or scenario fails with its own message
    # instead of inside a worker process.
    probe = make_env(env_id, scenario, overrides)
    base: Any = probe.unwrapped
    nvec = [int(n) for n in base.action_space.nvec]
    probe.close()
    _require_rl(algo, "training")
    import torch
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import HumanOutputFormat, Logger
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

    torch.set_num_threads(1)
    bare = env_id.split(":", 1)[1] if ":" in env_id else env_id
    env_kwargs: dict[str, Any] = {"overrides": list(overrides)}
    if scenario is not None:
        env_kwargs["scenario"] = scenario
    venv: Any = make_vec_env(
        f"llmserve_env:{bare}",
        n_envs=n_envs,
        seed=seed,
        env_kwargs=env_kwargs,
        wrapper_class=DiscreteActions if algo == "dqn" else None,
        vec_env_cls=SubprocVecEnv if n_envs > 1 else DummyVecEnv,
    )
    if normalize:
        venv = VecNormalize(venv, norm_obs=True, norm_reward=False)
    params = default_hyperparams(algo, timesteps, n_envs) | dict(hyperparams or {})
    out = Path(out)
    try:
        model = _algo_class(algo)(
            "MultiInputPolicy", venv, seed=seed, device="cpu", verbose=verbose, **params
        )
        # SB3's default logger makes an empty SB3-<time> folder in the system's temp
        # folder on every learn(); this one writes only to stdout (when verbose).
        model.set_logger(Logger(None, [HumanOutputFormat(sys.stdout)] if verbose else []))
        start = time.perf_counter()
        model.learn(total_timesteps=timesteps)
        wall_s = time.perf_counter() - start
        out.mkdir(parents=True, exist_ok=True)
        model.save(out / MODEL_FILE)
        if normalize:
            venv.save(str(out / VECNORMALIZE_FILE))
    finally:
        venv.close()
    metadata = {
        "algo": algo,
        "env_id": bare,
        "scenario": scenario,
        "overrides": list(overrides),
        "timesteps": int(model.num_timesteps),
        "n_envs": n_envs,
        "seed": seed,
        "normalize": normalize,
        "nvec": nvec,
        "hyperparams": {k: v for k, v in params.items() if _is_json(v)},
        "wall_time_s": wall_s,
        "steps_per_s": model.num_timesteps / wall_s if wall_s > 0 else None,
    }
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return out / MODEL_FILE


def _is_json(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | type(None))


# --------------------------------------------------------------------------- loading


@dataclass
class SavedPolicy:
    """A trained SB3 model behind SB3's ``predict``, taking raw observations.

    It applies the saved ``VecNormalize`` statistics, passes action masks to
    MaskablePPO, and turns DQN's flat choices back into the environment's
    ``MultiDiscrete`` actions, so :func:`~llmserve_env.env.evaluation.evaluate` scores it
    like a heuristic.

    Attributes:
        model: The SB3 model.
        normalizer: The saved ``VecNormalize`` (statistics only), or ``None``.
        nvec: For DQN, the ``MultiDiscrete`` sizes its flat choices unravel into.
        algo: The algorithm name.
        path: The model zip.
        metadata: ``train.json`` beside the model (empty when absent).
    """

    model: Any
    normalizer: Any
    nvec: tuple[int, ...] | None
    algo: str
    path: Path
    metadata: dict[str, Any]

    def predict(
        self,
        observation: Any,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
        action_masks: np.ndarray | None = None,
    ) -> tuple[np.ndarray, Any]:
        """SB3's protocol on raw observations (one or a batch)."""
        obs = observation if self.normalizer is None else self.normalizer.normalize_obs(observation)
        extra = {"action_masks": action_masks} if self.algo == "maskable_ppo" else {}
        action, state = self.model.predict(
            obs, state=state, episode_start=episode_start, deterministic=deterministic, **extra
        )
        if self.nvec is not None:
            flat = np.asarray(action, dtype=np.int64)
            action = np.stack(np.unravel_index(flat, self.nvec), axis=-1)
        return np.asarray(action), state


def _model_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise AgentError(f"no saved model at {path} (a {MODEL_FILE} written by `llmserve train`)")
    return path


def _infer_algo(path: Path) -> str:
    """The algorithm of an SB3 zip without ``train.json``, from its saved attributes."""
    try:
        with zipfile.ZipFile(path) as archive:
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise AgentError(f"{path} is not a saved stable-baselines3 model ({exc})") from exc
    module = str(data.get("policy_class", {}).get("__module__", ""))
    if "maskable" in module:
        return "maskable_ppo"
    if "dqn" in module or "exploration_rate" in data:
        return "dqn"
    if "clip_range" in data:
        return "ppo"
    if "vf_coef" in data:
        return "a2c"
    raise AgentError(f"cannot tell which algorithm saved {path}; known: {', '.join(ALGOS)}")


def load_policy(path: str | Path, env: Any | None = None) -> SavedPolicy:
    """Load a model saved by :func:`train` (its folder or its zip).

    ``train.json`` beside the zip names the algorithm (otherwise it is inferred from the
    zip) and ``vecnormalize.pkl`` holds the observation statistics. Both files are
    unpickled, as SB3 does: load only files you trust.

    Args:
        path: The output folder of :func:`train` or a model zip.
        env: When given, the environment the policy will act in; its spaces are checked
            against the model's.

    Raises:
        AgentError: No model there, or it does not fit ``env``.
        MissingExtraError: The ``rl`` extra is not installed.
    """
    model_path = _model_path(path)
    meta_path = model_path.parent / METADATA_FILE
    metadata: dict[str, Any] = (
        json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    )
    algo = str(metadata.get("algo") or _infer_algo(model_path))
    _require_rl(algo, "loading a trained model")
    import torch

    torch.set_num_threads(1)
    # A loaded DQN would allocate its whole replay buffer; acting needs none of it.
    custom = {"buffer_size": 1} if algo == "dqn" else None
    model = _algo_class(algo).load(model_path, device="cpu", custom_objects=custom)
    normalizer = None
    stats_path = model_path.parent / VECNORMALIZE_FILE
    if metadata.get("normalize", True) and stats_path.is_file():
        with stats_path.open("rb") as handle:
            normalizer = pickle.load(handle)
        normalizer.training = False
    nvec = None
    if env is not None:
        nvec = _check_fits(model, env, model_path, metadata)
    elif algo == "dqn" and "nvec" in metadata:
        nvec = tuple(metadata["nvec"])
    return SavedPolicy(model, normalizer, nvec, algo, model_path, metadata)


def _check_fits(
    model: Any, env: Any, path: Path, metadata: dict[str, Any]
) -> tuple[int, ...] | None:
    """Check the model's spaces against ``env``'s; DQN's ``nvec`` to unravel into."""
    trained_on = (
        f" (it was trained on {metadata.get('env_id')} with scenario "
        f"{metadata.get('scenario') or '(the id default)'} and overrides {metadata.get('overrides')})"
        if metadata
        else ""
    )

    def shapes(space: Any) -> dict[str, tuple[int, ...]]:
        return {key: tuple(sub.shape) for key, sub in space.spaces.items()}

    base = env.unwrapped
    want, have = shapes(model.observation_space), shapes(base.observation_space)
    if want != have:
        diff = "; ".join(
            f"{k}: model {want.get(k, 'absent')}, environment {have.get(k, 'absent')}"
            for k in sorted(set(want) | set(have))
            if want.get(k) != have.get(k)
        )
        raise AgentError(
            f"the model {path} does not fit this environment{trained_on}; observation shapes "
            f"differ ({diff})"
        )
    nvec = tuple(int(n) for n in base.action_space.nvec)
    space = model.action_space
    if isinstance(space, gym.spaces.Discrete):
        if int(space.n) != int(np.prod(nvec)):
            raise AgentError(
                f"the model {path} has {space.n} discrete actions; this environment's "
                f"MultiDiscrete{list(nvec)} flattens to {int(np.prod(nvec))}{trained_on}"
            )
        return nvec
    if tuple(int(n) for n in space.nvec) != nvec:
        raise AgentError(
            f"the model {path} acts in MultiDiscrete{space.nvec.tolist()}, this environment "
            f"in MultiDiscrete{list(nvec)}{trained_on}"
        )
    return None


# --------------------------------------------------------------------------- policy specs


def resolve_policy(spec: str, env: Any) -> Policy:
    """A heuristic by name, or a saved model by path (its folder or zip).

    Raises:
        AgentError: ``spec`` is neither, naming the heuristics.
    """
    if spec in HEURISTICS:
        return make_heuristic(spec, env)
    path = Path(spec)
    if path.is_file() or (path / MODEL_FILE).is_file():
        return load_policy(path, env)
    raise AgentError(
        f"unknown policy {spec!r}: not a heuristic ({', '.join(HEURISTICS)}) and no saved "
        f"model at that path (a {MODEL_FILE} from `llmserve train`, or its folder)"
    )


def policy_labels(specs: Sequence[str]) -> list[str]:
    """Unique display labels for policy specs (repeats get ``#2``, ``#3``...)."""
    labels: list[str] = []
    for spec in specs:
        label, k = spec, 2
        while label in labels:
            label, k = f"{spec}#{k}", k + 1
        labels.append(label)
    return labels


def evaluate_policies(
    env_id: str,
    policies: Sequence[str],
    scenario: str | None = None,
    overrides: Sequence[str] = (),
    n_episodes: int = 1,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Score policy specs on the same seeded episodes.

    Every spec is resolved before any episode runs, so a bad name fails at once.

    Returns:
        Per label (see :func:`policy_labels`), the result of
        :func:`~llmserve_env.env.evaluation.evaluate`: ``episodes``, ``mean``, ``std``.
    """
    if not policies:
        raise AgentError(f"give at least one policy: {', '.join(HEURISTICS)} or a model path")
    env = make_env(env_id, scenario, overrides)
    resolved = [resolve_policy(spec, env) for spec in policies]
    return {
        label: evaluate(env, policy, n_episodes=n_episodes, seed=seed)
        for label, policy in zip(policy_labels(policies), resolved, strict=True)
    }


def what_if_at(
    env_id: str,
    policies: Sequence[str],
    at_s: float,
    duration_s: float | None = None,
    scenario: str | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    warmup: str | None = None,
) -> WhatIfResult:
    """Run an episode to ``at_s`` under a heuristic, then branch into each policy.

    Args:
        env_id: A registered id of this package.
        policies: Policy specs; the first is the baseline of the paired differences.
        at_s: Simulated time of the fork.
        duration_s: Simulated seconds each branch runs (default: to the episode's end).
        scenario: Scenario name or path (default: the id's own).
        overrides: ``dotted.key=value`` strings for the scenario.
        seed: The episode's seed.
        warmup: Heuristic that drives the episode up to ``at_s`` (default: the one
            closest to the scenario's ``router.policy``, see :func:`scenario_heuristic`).

    Raises:
        AgentError: A bad spec, or the episode ends before ``at_s``.
    """
    if not policies:
        raise AgentError(f"give at least one policy: {', '.join(HEURISTICS)} or a model path")
    env = make_env(env_id, scenario, overrides)
    unwrapped: Any = env.unwrapped
    resolved = {
        label: resolve_policy(spec, env)
        for label, spec in zip(policy_labels(policies), policies, strict=True)
    }
    warm_name = warmup or scenario_heuristic(env)
    if warm_name not in HEURISTICS:
        raise AgentError(f"unknown warm-up heuristic {warm_name!r}; known: {', '.join(HEURISTICS)}")
    horizon = unwrapped.horizon_s
    if at_s < 0 or (horizon is not None and at_s >= horizon):
        raise AgentError(f"--at must be in [0, {horizon}) s (the episode's horizon), got {at_s}")
    warm = make_heuristic(warm_name, env)
    obs, _ = unwrapped.reset(seed=seed)
    shape = unwrapped.action_space.shape
    while unwrapped.sim.now < at_s:
        action, _ = warm.predict(obs)
        obs, _, terminated, truncated, _ = unwrapped.step(np.asarray(action).reshape(shape))
        if terminated or truncated:
            raise AgentError(
                f"the episode ended at t={unwrapped.sim.now:.1f} s, before --at {at_s} s"
            )
    return what_if(unwrapped, resolved, duration_s=duration_s)
