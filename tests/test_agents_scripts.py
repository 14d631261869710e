"""Smoke runs of the ``agents/`` scripts, each in a subprocess as a user would run it.

Episodes are cut to a few simulated seconds (``--set env.horizon_s=5``) so each run
takes seconds; the checks are on what the scripts print (``--json`` where values
matter, the table where names matter).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmserve_env.env.heuristics import HEURISTICS

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "agents"
SCRIPTS = sorted(p.name for p in AGENTS.glob("*.py") if not p.name.startswith("_"))
TINY = ("--set", "env.horizon_s=5")


def _run(script: str, *args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    # The temporary cwd keeps default output folders (runs/...) out of the repository.
    result = subprocess.run(
        [sys.executable, str(AGENTS / script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if ok:
        assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(result.stdout)
    return payload


def _check_scores(policies: dict[str, Any], names: list[str]) -> None:
    assert list(policies) == names
    arrived = {result["mean"]["num_arrived"] for result in policies.values()}
    assert len(arrived) == 1 and arrived.pop() > 0, "policies must see the same episodes"
    for result in policies.values():
        mean = result["mean"]
        assert 0.0 <= mean["slo_attainment"] <= 1.0
        assert mean["num_steps"] > 0
        assert mean["num_finished"] + mean["num_rejected"] + mean[
            "num_unfinished"
        ] == pytest.approx(mean["num_arrived"])


def test_every_script_is_covered() -> None:
    assert SCRIPTS == [
        "custom_heuristic.py",
        "heuristic_baselines.py",
        "train_ppo_routing.py",
        "what_if.py",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str, tmp_path: Path) -> None:
    out = _run(script, "--help", cwd=tmp_path).stdout
    assert out.startswith("usage:")
    assert "Examples::" in out and "--set KEY=VALUE" in out


def test_heuristic_baselines(tmp_path: Path) -> None:
    payload = _json(_run("heuristic_baselines.py", *TINY, "--json", cwd=tmp_path))
    _check_scores(payload["policies"], list(HEURISTICS))

    table = _run(
        "heuristic_baselines.py",
        *TINY,
        "--policy",
        "round_robin",
        "--policy",
        "join_shortest_queue",
        cwd=tmp_path,
    ).stdout
    rows = [line for line in table.splitlines() if "round_robin" in line or "join_shortest" in line]
    assert len(rows) == 2 and "SLO attain." in table and "least_loaded" not in table


def test_heuristic_baselines_reports_a_bad_override(tmp_path: Path) -> None:
    result = _run("heuristic_baselines.py", "--set", "env.horizon_s=soon", cwd=tmp_path, ok=False)
    assert result.returncode != 0
    assert "env.horizon_s" in result.stderr and "Traceback" not in result.stderr


def test_custom_heuristic(tmp_path: Path) -> None:
    payload = _json(_run("custom_heuristic.py", *TINY, "--json", cwd=tmp_path))
    _check_scores(payload["policies"], ["least_work (custom)", "round_robin", "least_loaded"])

    table = _run("custom_heuristic.py", *TINY, "--baseline", "random", cwd=tmp_path).stdout
    assert "observation layout" in table and "num_waiting" in table
    assert "least_work (custom)" in table and "random" in table


def test_what_if(tmp_path: Path) -> None:
    args = ("--at", "2", "--duration", "2", "--json")
    payload = _json(_run("what_if.py", *TINY, *args, cwd=tmp_path))
    assert payload["baseline"] == "round_robin"
    assert list(payload["results"]) == ["round_robin", "least_loaded", "join_shortest_queue"]
    base = payload["results"]["round_robin"]
    for name, diff in payload["differences"].items():
        assert diff["return"] == pytest.approx(payload["results"][name]["return"] - base["return"])

    table = _run("what_if.py", *TINY, "--at", "2", "--duration", "2", cwd=tmp_path).stdout
    assert "round_robin (baseline)" in table and "Δ" in table

    late = _run("what_if.py", *TINY, "--at", "50", cwd=tmp_path, ok=False)
    assert late.returncode != 0 and "--at must be in" in late.stderr


@pytest.mark.slow
def test_train_ppo_routing(tmp_path: Path) -> None:
    pytest.importorskip("sb3_contrib")
    out = tmp_path / "model"
    args = ("--timesteps", "128", "--out", str(out), "--json")
    payload = _json(_run("train_ppo_routing.py", *TINY, *args, cwd=tmp_path))
    assert (out / "model.zip").is_file() and (out / "vecnormalize.pkl").is_file()
    assert payload["model"] == str(out / "model.zip")
    _check_scores(
        payload["policies"], ["maskable_ppo", "round_robin", "least_loaded", "join_shortest_queue"]
    )
