"""The Gymnasium environment: API conformance, determinism, forks, masks, rewards."""

from __future__ import annotations

import json
import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import llmserve_env
from llmserve_env.build import scenario_names
from llmserve_env.config.errors import ScenarioError
from llmserve_env.env import LLMServeEnv
from llmserve_env.env.core import REWARD_TERMS
from llmserve_env.env.evaluation import evaluate, rollout, what_if
from llmserve_env.env.gather import observation_buffer
from llmserve_env.env.heuristics import HEURISTICS, LeastLoaded, RoundRobin, make_heuristic
from llmserve_env.env.observation import FEATURES
from llmserve_env.env.wrappers import DiscreteActions

SMALL = "LLMServe/Routing-Small-v0"
SMALL_CLUSTER = "LLMServe/Cluster-Small-v0"
SHORT = ["env.horizon_s=20"]


@pytest.mark.parametrize("scenario", scenario_names())
@pytest.mark.parametrize("env_id", ["LLMServe/Routing-v0", "LLMServe/Cluster-v0"])
def test_checkers_pass_without_warnings(env_id: str, scenario: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(env_id, scenario=scenario, overrides=SHORT)
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(env.unwrapped, warn=True)


def test_registered_ids_and_spec_round_trip() -> None:
    assert set(llmserve_env.ENV_IDS) <= set(gym.registry)
    env = gym.make(SMALL, overrides=["env.horizon_s=15"])
    spec = gym.envs.registration.EnvSpec.from_json(env.spec.to_json())
    again = gym.make(spec)
    assert again.unwrapped.horizon_s == 15
    assert json.loads(env.spec.to_json())["kwargs"]["overrides"] == ["env.horizon_s=15"]


def _rollout(env: gym.Env, seed: int, actions: list[np.ndarray] | None = None, steps: int = 200):
    obs, info = env.reset(seed=seed)
    trace = [(obs, 0.0, info)]
    rng = np.random.default_rng(seed)
    for k in range(steps):
        if actions is not None:
            action = actions[k]
        else:
            mask = env.unwrapped.action_masks()
            action = (
                np.array([rng.choice(np.flatnonzero(mask))])
                if mask.size == env.action_space.nvec[0]
                else env.action_space.sample()
            )
        obs, reward, term, trunc, info = env.step(action)
        trace.append((obs, reward, info))
        if term or trunc:
            break
    return trace


def _same(a, b) -> None:  # type: ignore[no-untyped-def]
    assert len(a) == len(b)
    for (oa, ra, ia), (ob, rb, ib) in zip(a, b, strict=True):
        assert ra == rb
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key])
        assert ia.keys() == ib.keys()
        for key in ia:
            if key != "episode_stats":
                assert ia[key] == ib[key], key


def test_same_seed_same_actions_identical() -> None:
    a = _rollout(gym.make(SMALL), seed=7)
    b = _rollout(gym.make(SMALL), seed=7)
    _same(a, b)
    c = _rollout(gym.make(SMALL), seed=8)
    assert any(
        not np.array_equal(x[0]["request_prompt_tokens"], y[0]["request_prompt_tokens"])
        for x, y in zip(a, c, strict=False)
    )


def test_unseeded_resets_continue_the_rng() -> None:
    env = gym.make(SMALL)
    env.reset(seed=3)
    first = env.unwrapped.episode_seed
    env.reset()
    assert env.unwrapped.episode_seed != first
    env.reset(seed=3)
    assert env.unwrapped.episode_seed == first


def test_fork_replays_and_diverges_with_common_arrivals() -> None:
    env = gym.make(SMALL).unwrapped
    env.reset(seed=1)
    for _ in range(50):
        env.step(np.array([0]))
    fork = env.fork()
    actions = [np.array([k % 4]) for k in range(300)]
    parent_trace, fork_trace = [], []
    for action in actions:
        parent_trace.append(env.step(action))
        fork_trace.append(fork.step(action))
        if parent_trace[-1][2] or parent_trace[-1][3]:
            break
    for (o1, r1, t1, u1, _i1), (o2, r2, t2, u2, _i2) in zip(parent_trace, fork_trace, strict=True):
        assert r1 == r2 and t1 == t2 and u1 == u2
        for key in o1:
            np.testing.assert_array_equal(o1[key], o2[key])
    # Different actions: different outcomes, same stream of arriving requests.
    env.reset(seed=1)
    for _ in range(50):
        env.step(np.array([0]))
    other = env.fork()
    prompts_a, prompts_b, rewards_a, rewards_b = [], [], [], []
    for _ in range(200):
        oa, ra, *_ = env.step(np.array([0]))
        ob, rb, *_ = other.step(np.array([3]))
        prompts_a.append(oa["request_prompt_tokens"][0])
        prompts_b.append(ob["request_prompt_tokens"][0])
        rewards_a.append(ra)
        rewards_b.append(rb)
    assert prompts_a == prompts_b
    assert rewards_a != rewards_b


def test_get_and_set_state_rewind() -> None:
    env = gym.make(SMALL_CLUSTER).unwrapped
    env.reset(seed=2)
    for _ in range(10):
        env.step(env.action_space.sample())
    snapshot = env.get_state()
    after = [env.step(np.full(env.action_space.shape, 2)) for _ in range(10)]
    env.set_state(snapshot)
    again = [env.step(np.full(env.action_space.shape, 2)) for _ in range(10)]
    for (o1, r1, *_), (o2, r2, *_) in zip(after, again, strict=True):
        assert r1 == r2
        np.testing.assert_array_equal(o1["num_waiting"], o2["num_waiting"])
    env.set_state(snapshot)  # a snapshot is reusable
    assert env.sim is not None and env.sim.now == snapshot.sim.now


def test_masks_follow_the_simulator() -> None:
    env = gym.make(
        SMALL,
        overrides=[
            "env.max_instances=6",
            "env.heads.routing.allow_reject=true",
            "cluster.nodes.0.instances.0.count=2",
            "cluster.nodes.0.instances=[{model: meta-llama/Llama-3.1-8B, device: A100-SXM-80GB, count: 2}, {model: meta-llama/Llama-3.1-8B, device: A100-SXM-80GB, count: 2, engine: {max_model_len: 600}}]",
        ],
    ).unwrapped
    assert env.action_space.nvec.tolist() == [7]
    env.reset(seed=0)
    seen_long = seen_short = False
    for _ in range(300):
        mask = env.action_masks()
        assert mask.shape == (7,) and not mask[4] and not mask[5] and mask[6]
        request = env.sim.pending[0]
        fits_small = request.num_prompt_tokens + request.max_output_tokens <= 600
        assert mask[2] == fits_small and mask[3] == fits_small
        assert mask[0] and mask[1]
        seen_long |= not fits_small
        seen_short |= fits_small
        _, _, term, trunc, info = env.step(np.array([int(np.flatnonzero(mask)[-2])]))
        assert info["illegal_actions"] == 0
        if term or trunc:
            break
    assert seen_long and seen_short
    # An illegal choice (a padding row) is rejected and counted, not ignored.
    rejected_before = env.sim.metrics.num_rejected
    _, _, _, _, info = env.step(np.array([5]))
    assert info["illegal_actions"] == 1 and env.sim.metrics.num_rejected == rejected_before + 1
    assert info["reward_terms"]["rejected"] == 1


@pytest.mark.parametrize(
    ("scenario", "overrides"),
    [
        ("env/small-4x", ["env.max_instances=6"]),
        ("multi-turn-prefix", ["workload.num_sessions=60"]),  # prefix content, power model
        ("env/small-4x", ["power.enabled=false"]),
    ],
)
def test_observation_reports_the_simulator_state(scenario: str, overrides: list[str]) -> None:
    env = gym.make("LLMServe/Routing-v0", scenario=scenario, overrides=overrides).unwrapped
    obs, _ = env.reset(seed=3)
    n, m = env.num_instances, env.max_instances
    seen_cached = False
    for step in range(400):
        assert set(obs) == set(env.observation_space.spaces)
        assert env.observation_space.contains(obs)
        sim = env.sim
        now = sim.now
        np.testing.assert_array_equal(obs["instance_valid"], [1.0] * n + [0.0] * (m - n))
        for key in FEATURES:
            if key.scope.endswith("instance"):
                assert not obs[key.name][n:].any(), f"padding row of {key.name} is not zero"
        for i, inst in enumerate(sim.instances):
            assert obs["num_waiting"][i] == inst.num_waiting
            assert obs["num_running"][i] == inst.num_running
            assert obs["free_kv_blocks"][i] == np.float32(inst.pool.num_free_blocks)
            assert obs["kv_usage_frac"][i] == np.float32(inst.kv_usage_frac)
            assert obs["max_num_seqs"][i] == inst.params.max_num_seqs
            assert obs["max_num_batched_tokens"][i] == inst.params.max_num_batched_tokens
            head_age = now - inst.waiting.peek().arrival_s if inst.num_waiting else 0.0
            assert obs["queue_delay_s"][i] == np.float32(head_age)
            if inst.power is None:
                assert (obs["power_state"][i], obs["clock_frac"][i], obs["power_w"][i]) == (0, 1, 0)
            else:
                assert obs["power_state"][i] == int(inst.power.state)
                assert obs["clock_frac"][i] == np.float32(inst.power.freq)
                assert obs["power_w"][i] == np.float32(inst.power.power_w(now))
        request = sim.pending[0]
        assert obs["request_prompt_tokens"][0] == request.num_prompt_tokens
        cached = [inst.pool.cached_prefix_tokens(request) for inst in sim.instances]
        if request.content is not None:
            np.testing.assert_array_equal(obs["request_cached_tokens"][:n], cached)
            seen_cached |= any(cached)
        obs, _, term, trunc, _ = env.step(np.array([step % n]))
        if term or trunc:
            break
    assert seen_cached == (scenario == "multi-turn-prefix")


def test_observation_values_are_clipped_to_their_bounds() -> None:
    env = gym.make("LLMServe/Routing-v0", scenario="env/small-4x").unwrapped
    env.reset(seed=0)
    for step in range(60):
        env.step(np.array([step % env.num_instances]))
    sim = env.sim
    args = (env.max_instances, env.horizon_s or 0.0, True)
    size = len(env._obs_highs)
    raw = np.frombuffer(
        observation_buffer(sim, env._rates.values, [math.inf] * size, *args), dtype=np.float32
    )
    assert (raw > 2.0).sum() > 5 and (raw < 2.0).sum() > 5  # the bound below cuts both ways
    highs = [2.0] * size
    clipped = np.frombuffer(
        observation_buffer(sim, env._rates.values, highs, *args), dtype=np.float32
    )
    np.testing.assert_array_equal(clipped, np.minimum(raw, np.float32(2.0)))
    # The observation hands out the same values, clipped to the feature table's bounds.
    obs = env._observe()
    for name, value in obs.items():
        assert value.dtype == np.float32 and value.flags.writeable
        assert (value <= env.observation_space[name].high).all() and (value >= 0).all()


def test_reward_is_weighted_sum_of_terms() -> None:
    env = gym.make(
        SMALL_CLUSTER, overrides=["env.reward.backlog=-0.2", "env.reward.goodput=2"]
    ).unwrapped
    weights = env.reward_weights
    env.reset(seed=0)
    total_terms = dict.fromkeys(REWARD_TERMS, 0.0)
    while True:
        _, reward, term, trunc, info = env.step(env.action_space.sample())
        terms = info["reward_terms"]
        assert set(terms) == set(REWARD_TERMS)
        assert reward == pytest.approx(sum(weights[k] * terms[k] for k in REWARD_TERMS))
        for k in terms:
            total_terms[k] += terms[k]
        if term or trunc:
            break
    stats = info["episode_stats"]
    assert total_terms["rejected"] == stats["num_rejected"]
    assert total_terms["goodput"] == pytest.approx(stats["slo_attainment"] * stats["num_arrived"])
    assert total_terms["backlog"] > 0


def test_return_does_not_depend_on_decision_cadence() -> None:
    returns = []
    for interval in (0.25, 1.0, 3.0):
        env = gym.make(
            SMALL_CLUSTER, overrides=[f"env.decision_interval_s={interval}", "env.horizon_s=30"]
        ).unwrapped
        env.reset(seed=4)
        total = 0.0
        while True:
            _, r, term, trunc, _ = env.step(np.full(env.action_space.shape, 4))
            total += r
            if term or trunc:
                break
        returns.append(total)
    assert returns[0] == pytest.approx(returns[1]) == pytest.approx(returns[2])


def test_observation_features_are_documented() -> None:
    doc = LLMServeEnv.__doc__ or ""
    for feature in FEATURES:
        assert f"| {feature.name} |" in doc, feature.name
    env = gym.make(SMALL).unwrapped
    flat = gym.wrappers.FlattenObservation(gym.make(SMALL))
    obs, _ = flat.reset(seed=0)
    dict_obs, _ = env.reset(seed=0)
    for name, part in env.observation_layout.items():
        np.testing.assert_array_equal(obs[part], dict_obs[name])


def test_misuse_gives_clear_errors() -> None:
    env = gym.make(SMALL).unwrapped
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.array([0]))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.array([9]))
    with pytest.raises(ValueError, match="outside the action space"):
        env.step(np.array([0, 1]))
    with pytest.raises(ScenarioError, match=r"env\.max_instances"):
        gym.make(SMALL, overrides=["env.max_instances=2"])
    with pytest.raises(ScenarioError, match="every action head is disabled"):
        gym.make(SMALL, overrides=["env.heads.routing.enabled=false"])
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"bogus": 1})
    with pytest.raises(ValueError, match="needs a trace workload"):
        env.reset(options={"start_s": 10.0})


def test_episode_end_and_stats() -> None:
    env = gym.make(SMALL, overrides=["env.horizon_s=8"]).unwrapped
    env.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, info = env.step(np.array([steps % 4]))
        steps += 1
        if term or trunc:
            break
    assert trunc and not term
    stats = info["episode_stats"]
    assert stats["num_arrived"] == steps
    assert (
        stats["num_finished"] + stats["num_rejected"] + stats["num_unfinished"]
        == stats["num_arrived"]
    )
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(np.array([0]))
    term_env = gym.make(SMALL, overrides=["workload.duration_s=5", "env.horizon_s=100"]).unwrapped
    term_env.reset(seed=0)
    while True:
        _, _, term, trunc, info = term_env.step(np.array([0]))
        if term or trunc:
            break
    assert term and not trunc and info["episode_stats"]["num_unfinished"] == 0


def test_max_requests_horizon() -> None:
    env = gym.make(SMALL, overrides=["env.max_requests=40"]).unwrapped
    env.reset(seed=0)
    steps = 0
    while True:
        _, _, term, trunc, _info = env.step(np.array([0]))
        steps += 1
        if term or trunc:
            break
    assert steps == 40 and term


def test_batching_head_changes_engine_knobs() -> None:
    env = gym.make(SMALL_CLUSTER, overrides=["env.heads.batching.enabled=true"]).unwrapped
    assert len(env.action_space.nvec) == 4 + 12
    env.reset(seed=0)
    action = np.zeros(16, dtype=np.int64)
    action[4:7] = [0, 0, 1]  # instance 0: 32 seqs, 512 tokens, shortest_prompt_first
    obs, *_ = env.step(action)
    inst = env.sim.instances[0]
    assert inst.params.max_num_seqs == 32 and inst.params.max_num_batched_tokens == 512
    assert inst.params.scheduling_policy == "shortest_prompt_first"
    assert obs["max_num_seqs"][0] == 32 and obs["max_num_batched_tokens"][0] == 512


def test_render_modes() -> None:
    env = gym.make(SMALL, render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and "instance" in text and "kv%" in text
    rgb = gym.make(SMALL, render_mode="rgb_array")
    rgb.reset(seed=0)
    for _ in range(50):
        rgb.step(np.array([0]))
    image = rgb.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert (image != 255).any()


def test_heuristics_and_evaluation_share_one_path() -> None:
    env = gym.make(SMALL, overrides=["env.horizon_s=20"])
    scores = {
        name: evaluate(env, make_heuristic(name, env), n_episodes=1, seed=0)["mean"]
        for name in HEURISTICS
    }
    assert set(scores) == set(HEURISTICS)
    for metrics in scores.values():
        assert {"return", "slo_attainment", "mean_ttft_ms"} <= set(metrics)
    # The same arrivals under different rules give different outcomes.
    assert len({round(m["return"], 6) for m in scores.values()}) > 1
    assert len({m["num_arrived"] for m in scores.values()}) == 1
    cluster = gym.make(
        SMALL_CLUSTER, overrides=["env.horizon_s=10", "env.heads.batching.enabled=true"]
    )
    result = evaluate(cluster, LeastLoaded(cluster), n_episodes=2, seed=0)
    assert len(result["episodes"]) == 2


def test_heuristics_accept_vector_batches() -> None:
    venv = gym.vector.SyncVectorEnv([lambda: gym.make(SMALL) for _ in range(3)])
    obs, _ = venv.reset(seed=0)
    policy = LeastLoaded(gym.make(SMALL))
    actions, _ = policy.predict(obs)
    assert actions.shape == (3, 1)
    venv.step(actions)


def test_what_if_pairs_branches() -> None:
    env = gym.make(SMALL).unwrapped
    env.reset(seed=0)
    for _ in range(100):
        env.step(np.array([0]))
    before = env.sim.now
    result = what_if(env, {"rr": RoundRobin(env), "ll": LeastLoaded(env)}, duration_s=10.0)
    assert env.sim.now == before  # the environment itself did not move
    assert set(result.results) == {"rr", "ll"} and result.baseline == "rr"
    diff = result.differences["ll"]
    assert diff["return"] == pytest.approx(
        result.results["ll"]["return"] - result.results["rr"]["return"]
    )
    again = what_if(env, {"rr": RoundRobin(env), "ll": LeastLoaded(env)}, duration_s=10.0)
    assert again.results == result.results  # deterministic branches


def test_what_if_branch_figures_cover_only_the_branch() -> None:
    env = gym.make(SMALL).unwrapped
    env.reset(seed=0)
    for _ in range(100):
        env.step(np.array([0]))
    sim = env.sim
    sim.sync()
    ended_before = sim.metrics.num_finished + sim.metrics.num_rejected + sim.metrics.num_unfinished
    arrived_before = sim.num_arrived
    result = what_if(env, {"rr": RoundRobin(env)}, duration_s=10.0)
    rr = result.results["rr"]
    assert rr["branch_duration_s"] == pytest.approx(10.0, abs=0.1)
    assert rr["branch_num_arrived"] == rr["num_arrived"] - arrived_before
    ended_after = rr["num_finished"] + rr["num_rejected"] + rr["num_unfinished"]
    assert rr["branch_num_ended"] == ended_after - ended_before
    # The energy reward term is the per-step energy: it sums to the branch's energy.
    assert rr["branch_energy_j"] == pytest.approx(rr["reward_energy"], rel=1e-9)
    assert 0.0 <= rr["branch_slo_attainment"] <= 1.0

    # The latency figures are those of the requests that ended after the fork.
    branch = env.fork()
    rows_before = len(branch.sim.metrics.rows)
    rollout(branch, RoundRobin(branch), until_s=branch.sim.now + 10.0)
    table = branch.sim.metrics.request_table()
    finished = table["status"][rows_before:] == "finished"
    ttft = table["ttft_ms"][rows_before:][finished].astype(np.float64)
    assert rr["branch_num_finished"] == finished.sum() > 0
    assert rr["branch_mean_ttft_ms"] == pytest.approx(ttft.mean())
    assert rr["branch_p99_ttft_ms"] == pytest.approx(np.percentile(ttft, 99))
    # Whole-episode figures include the shared history, so they differ.
    assert rr["branch_mean_ttft_ms"] != pytest.approx(rr["mean_ttft_ms"])


def test_discrete_wrapper_for_dqn() -> None:
    env = DiscreteActions(gym.make(SMALL))
    assert env.action_space.n == 4
    env.reset(seed=0)
    assert env.action_masks().tolist() == [True] * 4
    env.step(2)
    batching = DiscreteActions(
        gym.make(SMALL_CLUSTER, overrides=["env.heads.routing.weight_levels=2"])
    )
    assert batching.action_space.n == 16
    with pytest.raises(ValueError, match="choices"):
        DiscreteActions(gym.make(SMALL_CLUSTER, overrides=["env.heads.batching.enabled=true"]))


def test_trace_segment_option(shared) -> None:  # type: ignore[no-untyped-def]
    trace = shared / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv"
    env = gym.make(
        SMALL,
        overrides=[
            f"workload={{kind: trace, path: {trace}, num_requests: 400}}",
            "env.horizon_s=30",
        ],
    ).unwrapped
    obs_a, _ = env.reset(seed=0)
    obs_b, _ = env.reset(seed=0, options={"start_s": 600.0})
    assert obs_a["request_prompt_tokens"][0] != obs_b["request_prompt_tokens"][0]


def test_power_head_masks_and_effects() -> None:
    env = gym.make(
        SMALL_CLUSTER, overrides=["env.heads.power.enabled=true", "env.reward.energy=-0.001"]
    ).unwrapped
    nvec = env.action_space.nvec.tolist()
    assert nvec == [5] * 4 + [4, 7] * 4
    env.reset(seed=0)
    action = np.array([4] * 4 + [0, 6] * 4)
    action[4 + 2 * 3] = 1  # instance 3 to sleep level 1
    obs, reward, *_, info = env.step(action)
    assert obs["power_state"].tolist() == [0, 0, 0, 2]
    assert obs["time_to_wake_s"][3] > 0 and obs["power_w"][3] < obs["power_w"][0]
    assert reward == pytest.approx(
        sum(env.reward_weights[k] * v for k, v in info["reward_terms"].items())
    )
    assert info["reward_terms"]["energy"] > 0
    masks = env.action_masks()
    state_mask = masks[20 + 3 * 11 : 20 + 3 * 11 + 4]
    assert state_mask.tolist() == [True, True, True, True]
    action[4 + 2 * 3] = 0  # wake it: a waking instance may only continue to on
    obs, *_ = env.step(action)
    assert obs["power_state"][3] == 1
    masks = env.action_masks()
    assert masks[20 + 3 * 11 : 20 + 3 * 11 + 4].tolist() == [True, False, False, False]
    action[4 + 2 * 3] = 3  # illegal while waking: counted, state unchanged
    _, _, _, _, info = env.step(action)
    assert info["illegal_actions"] >= 1
    action[4 + 2 * 3] = 0
    for _ in range(5):
        obs, *_ = env.step(action)
    assert obs["power_state"][3] == 0 and obs["time_to_wake_s"][3] == 0
    # Lower clocks cost time and save power on the same arrivals.
    slow = np.array([4] * 4 + [0, 0] * 4)
    fork = env.fork()
    obs_fast, *_ = env.step(np.array([4] * 4 + [0, 6] * 4))
    obs_slow, *_ = fork.step(slow)
    assert obs_slow["clock_frac"][0] == pytest.approx(0.4)
    assert obs_fast["clock_frac"][0] == pytest.approx(1.0)


def test_power_disabled_scenarios_still_work() -> None:
    env = gym.make(SMALL, overrides=["power.enabled=false"]).unwrapped
    obs, _ = env.reset(seed=0)
    obs, _, _, _, info = env.step(np.array([0]))
    assert obs["power_w"].sum() == 0 and info["reward_terms"]["energy"] == 0
    with pytest.raises(ScenarioError, match="power head needs"):
        gym.make(SMALL, overrides=["power.enabled=false", "env.heads.power.enabled=true"])
