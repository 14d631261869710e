"""The ``llmserve`` command: run, scenarios, schema, catalogs, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from llmserve_env.cli.main import main

REQUIRED_KEYS = {
    "num_arrived",
    "num_finished",
    "num_rejected",
    "num_unfinished",
    "throughput_tok_s",
    "mean_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "p99_tpot_ms",
    "mean_e2e_ms",
    "makespan_s",
    "wall_time_s",
}


def test_run_json_and_outputs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "run",
            "default",
            "--set",
            "workload.num_requests=120",
            "--seed",
            "3",
            "--json",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert set(summary) >= REQUIRED_KEYS
    assert summary["num_arrived"] == 120 and summary["seed"] == 3
    assert summary["num_finished"] + summary["num_rejected"] + summary["num_unfinished"] == 120
    assert json.loads((out / "summary.json").read_text())["num_finished"] == summary["num_finished"]
    with (out / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120 and {"ttft_ms", "tpot_ms", "status"} <= set(rows[0])
    with (out / "timeseries.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) > 5
    assert (out / "scenario.yaml").read_text().startswith("name: default")
    assert not list(out.glob("*.tmp"))


def test_run_table_output_and_path_scenario(tmp_path: Path) -> None:
    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "default.yaml"
    result = CliRunner().invoke(
        main, ["run", str(scenario), "--set", "workload.num_requests=50", "--no-output"]
    )
    assert result.exit_code == 0, result.output
    assert "TTFT mean / p99" in result.output


def test_bad_scenario_exits_2_with_dotted_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "default", "--set", "engine.max_num_seq=4", "--no-output"]
    )
    assert result.exit_code == 2
    assert "engine.max_num_seq" in result.output and "unknown key" in result.output
    result = CliRunner().invoke(main, ["run", "no-such-scenario"])
    assert result.exit_code == 2 and "shipped:" in result.output and "default" in result.output
    result = CliRunner().invoke(
        main, ["run", "default", "--set", "cluster.nodes.0.instances.0.device=H900"]
    )
    assert (
        result.exit_code == 2
        and "unknown device 'H900'" in result.output
        and "H100-SXM" in result.output
    )


def test_scenarios_schema_devices_models_describe(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["scenarios"])
    assert result.exit_code == 0
    for name in (
        "default",
        "cluster-4x-h100",
        "multi-turn-prefix",
        "benchmark/h100-llama3.1-8b-10k",
    ):
        assert name in result.output
    result = runner.invoke(main, ["schema", "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 0
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "llmserve-env scenario"
    assert "H100-SXM" in runner.invoke(main, ["devices"]).output
    assert "Llama-3.1-8B" in runner.invoke(main, ["models"]).output
    result = runner.invoke(main, ["describe", "cluster-4x-h100"])
    assert result.exit_code == 0 and "num_blocks" in result.output


def test_console_script_entry_point() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmserve_env.cli.main",
            "run",
            "default",
            "--set",
            "workload.num_requests=20",
            "--json",
            "--no-output",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["num_arrived"] == 20


def test_run_notes_a_trace_shorter_than_num_requests(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n"
        + "".join(f"{0.1 * i},{100 + i},{8}\n" for i in range(6))
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "cluster: {nodes: [{instances: [{model: meta-llama/Llama-3.1-8B, device: H100-SXM}]}]}\n"
        f"workload: {{kind: trace, path: {trace}, num_requests: 40}}\n"
    )
    result = CliRunner().invoke(main, ["run", str(scenario), "--json", "--no-output"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["num_arrived"] == 6
    assert (
        f"note: workload.num_requests is 40, but {trace} has 6 requests: all 6 are replayed"
        in " ".join(result.stderr.split())
    )
