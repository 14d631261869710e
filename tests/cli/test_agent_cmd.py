"""``llmserve eval``, ``llmserve train`` and ``llmserve whatif``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmserve_env.cli.main import main
from llmserve_env.env.heuristics import HEURISTICS

SMALL = "LLMServe/Routing-Small-v0"
FAST = ["--set", "env.horizon_s=10"]


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_eval_two_heuristics_json() -> None:
    code, out = _invoke(
        "eval", SMALL, *FAST, "--policy", "round_robin", "--policy", "least_loaded", "--json"
    )
    assert code == 0, out
    payload = json.loads(out)
    assert payload["overrides"] == ["env.horizon_s=10"] and payload["episodes"] == 1
    results = payload["policies"]
    assert list(results) == ["round_robin", "least_loaded"]
    means = [r["mean"] for r in results.values()]
    for mean in means:
        assert {"return", "slo_attainment", "goodput_rps", "mean_ttft_ms", "p99_tpot_ms"} <= set(
            mean
        )
        assert {"energy_j"} <= set(mean)
    # Both policies saw the same seeded arrivals.
    assert means[0]["num_arrived"] == means[1]["num_arrived"] > 0


def test_eval_table_names_policies_and_metrics() -> None:
    code, out = _invoke(
        "eval", SMALL, *FAST, "--policy", "join_shortest_queue", "--episodes", "2", "--seed", "3"
    )
    assert code == 0, out
    assert "join_shortest_queue" in out and "±" in out
    for column in ("return", "SLO attain.", "goodput", "TTFT p99", "TPOT mean", "energy kJ"):
        assert column in out


def test_unknown_policy_exits_2_naming_the_heuristics() -> None:
    code, out = _invoke("eval", SMALL, *FAST, "--policy", "round_robin", "--policy", "fastest")
    assert code == 2
    assert "unknown policy 'fastest'" in out
    for name in HEURISTICS:
        assert name in out


def test_missing_model_file_and_unknown_env_id_exit_2(tmp_path: Path) -> None:
    code, out = _invoke("eval", SMALL, "--policy", str(tmp_path / "model.zip"))
    assert code == 2 and "no saved model" in out
    code, out = _invoke("eval", "LLMServe/Nope-v0", "--policy", "round_robin")
    assert code == 2 and "unknown environment id" in out and SMALL in out
    code, out = _invoke("train", "--algo", "sac")
    assert code == 2 and "maskable_ppo" in out


def test_whatif_pairs_policies_on_a_short_horizon() -> None:
    args = ["whatif", SMALL, *FAST, "--at", "4", "--duration", "3"]
    code, out = _invoke(*args, "--policy", "round_robin", "--policy", "least_loaded", "--json")
    assert code == 0, out
    payload = json.loads(out)
    assert payload["baseline"] == "round_robin" and payload["at_s"] == 4.0
    rr, ll = payload["results"]["round_robin"], payload["results"]["least_loaded"]
    assert payload["differences"]["least_loaded"]["return"] == pytest.approx(
        ll["return"] - rr["return"]
    )
    code, out = _invoke(*args, "--policy", "round_robin", "--policy", "prefix_affinity")
    assert code == 0, out
    assert "round_robin (baseline)" in out and "Δ" in out
    code, out = _invoke("whatif", SMALL, *FAST, "--at", "30", "--policy", "round_robin")
    assert code == 2 and "--at" in out


def test_train_then_eval_the_saved_model(tmp_path: Path) -> None:
    out_dir = tmp_path / "ppo"
    code, out = _invoke(
        "train",
        "--algo",
        "ppo",
        "--env-id",
        SMALL,
        *FAST,
        "--timesteps",
        "256",
        "--out",
        str(out_dir),
    )
    assert code == 0, out
    model = out_dir / "model.zip"
    assert model.is_file() and (out_dir / "vecnormalize.pkl").is_file()
    assert json.loads((out_dir / "train.json").read_text())["algo"] == "ppo"
    code, out = _invoke(
        "eval", SMALL, *FAST, "--policy", str(model), "--policy", "least_loaded", "--json"
    )
    assert code == 0, out
    results = json.loads(out)["policies"]
    assert (
        results[str(model)]["mean"]["num_arrived"] == results["least_loaded"]["mean"]["num_arrived"]
    )
    # The folder works as well as the zip; the same spec twice gets distinct labels.
    code, out = _invoke("eval", SMALL, *FAST, "--policy", str(out_dir), "--policy", str(out_dir))
    assert code == 0, out
    assert f"{out_dir}#2" in out
