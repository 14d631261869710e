"""``llmserve profiles``, ``llmserve import llmservingsim`` and ``llmserve validate``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llmserve_env.cli.main import main

PAPER = Path("llmservingsim/paper-v0")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))


def test_profiles_import_and_check(shared: Path, tmp_path: Path) -> None:
    src = shared / "llmservingsim/current/perf/RTX4090/meta-llama/Llama-3.1-8B/bf16/tp1"
    out = tmp_path / "prof"
    result = CliRunner().invoke(
        main, ["profiles", "import", "llmservingsim", str(src), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (out / "meta.yaml").is_file() and (out / "attention.csv").is_file()
    result = CliRunner().invoke(main, ["profiles", "check", str(out)])
    assert result.exit_code == 0, result.output
    assert "qkv_proj" in result.output and "prefill of 2048 tokens" in result.output


def test_profiles_import_of_several_writes_all_or_nothing(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "perf"
    for device in ("RTX4090", "RTXPRO6000"):
        shutil.copytree(
            shared / f"llmservingsim/current/perf/{device}/meta-llama/Llama-3.1-8B/bf16",
            src / f"{device}/meta-llama/Llama-3.1-8B/bf16",
            ignore=shutil.ignore_patterns("tp2"),
        )
    broken = src / "RTXPRO6000/meta-llama/Llama-3.1-8B/bf16/tp1/attention.csv"
    good_text = broken.read_text()
    broken.write_text(good_text.splitlines()[0] + "\n")  # header only
    out = tmp_path / "out"
    args = ["profiles", "import", "llmservingsim", str(src), "-o", str(out)]
    bad = CliRunner().invoke(main, args)
    assert bad.exit_code != 0
    # The refusal names the source folder, not the output it did not write.
    flat = " ".join(bad.output.split())
    assert f"{broken.parent}: converts to an invalid profile, nothing written" in flat
    assert "attention.csv: needs prefill rows" in flat
    assert not out.exists()  # the good profile was not written either
    broken.write_text(good_text)
    good = CliRunner().invoke(main, args)
    assert good.exit_code == 0, good.output
    assert len(list(out.rglob("meta.yaml"))) == 2, good.output
    assert not [p for p in out.rglob(".*") if p.is_dir()]  # no staging folders left


def test_profiles_import_vidur_needs_model_and_device(shared: Path, tmp_path: Path) -> None:
    src = shared / "profiles/vidur/compute/a100/meta-llama/Meta-Llama-3-8B"
    result = CliRunner().invoke(
        main, ["profiles", "import", "vidur", str(src), "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--model and --device" in result.output


def test_import_then_run(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "md.yaml"
    args = [
        "import", "llmservingsim",
        str(shared / PAPER / "evaluation/figure_5/A6000/config/MD_config.json"),
        "--dataset", str(shared / PAPER / "dataset/sharegpt_req300_rate10_llama.jsonl"),
        "--profiles", str(shared / PAPER / "perf_models"),
        "--num-reqs", "30",
        "-o", str(out),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["run", str(out), "--json", "--no-output"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["num_finished"] == 30
    # The run says which latency model each instance used: the imported profile.
    assert summary["latency_models"]
    assert all("profiles" in source for source in summary["latency_models"].values())


def test_refused_import_writes_nothing_and_replaces_nothing(shared: Path, tmp_path: Path) -> None:
    current = shared / "llmservingsim/current"
    args = [
        "import", "llmservingsim",
        str(current / "cluster_config/single_node_single_instance.json"),
        "--dataset", str(current / "workloads/sharegpt-llama-3.1-8b-300-sps10.jsonl"),
        "--profiles", str(current / "perf"),
    ]  # fmt: skip
    fresh = tmp_path / "new" / "dir"
    bad = CliRunner().invoke(main, [*args, "--block-size", "7", "-o", str(fresh / "s.yaml")])
    assert bad.exit_code == 2
    assert "engine.block_size (from --block-size): invalid value 7" in bad.output
    assert not (tmp_path / "new").exists()  # nothing half-written, no empty folders
    done = tmp_path / "done"
    good = CliRunner().invoke(main, [*args, "-o", str(done / "s.yaml")])
    assert good.exit_code == 0, good.output
    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    assert len(before) > 2 and (done / "s.yaml") in before
    again = CliRunner().invoke(main, [*args, "--block-size", "7", "-o", str(done / "s.yaml")])
    assert again.exit_code == 2
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before
    # A second valid import over the first replaces it in place and still runs.
    assert CliRunner().invoke(main, [*args, "-o", str(done / "s.yaml")]).exit_code == 0
    assert sorted(p for p in done.rglob("*") if p.is_file()) == sorted(before)


def test_import_refuses_disaggregation(shared: Path, tmp_path: Path) -> None:
    args = [
        "import", "llmservingsim",
        str(shared / PAPER / "evaluation/figure_5/A6000/config/PDD_config.json"),
        "--dataset", str(shared / PAPER / "dataset/sharegpt_req300_rate10_llama.jsonl"),
        "-o", str(tmp_path / "pdd.yaml"),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "prefill/decode disaggregation" in result.output and "pd_type" in result.output
    assert not (tmp_path / "pdd.yaml").exists()


def test_validate_blames_a_bad_override_on_the_flag(shared: Path) -> None:
    run = shared / "llmservingsim/current/bench/RTXPRO6000/Llama-3.1-8B"
    args = ["validate", str(run), "--set", "gpu_memory_utilization=1.7"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "--set gpu_memory_utilization: Input should be less than or equal to 1" in result.output
    assert "config.json: cluster" not in result.output
    # a key whose type is a union: each branch's problem is still the flag's
    result = CliRunner().invoke(
        main, ["validate", str(run), "--set", "cudagraph_capture_sizes=abc"]
    )
    assert result.exit_code == 2 and "config.json: cluster" not in result.output
    assert "--set cudagraph_capture_sizes: literal['auto']: invalid value 'abc'" in result.output


def test_validate_json_and_plots(shared: Path, tmp_path: Path) -> None:
    run = shared / "llmservingsim/current/bench/RTXPRO6000/Llama-3.1-8B"
    result = CliRunner().invoke(main, ["validate", str(run), "--json", "-o", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert data["totals"]["output_tokens_sim"] == 195753
    assert data["throughput"]["lag_s_50"] == pytest.approx(-0.97, abs=0.006)
    table = CliRunner().invoke(main, ["validate", str(run)], terminal_width=160)
    assert table.exit_code == 0 and "output lag, sim behind (+)" in table.output
    assert "at 50 % of tokens" in table.output and "-0.97 s" in table.output
    assert (tmp_path / "v/report.json").is_file()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "v/throughput.png").is_file() and (tmp_path / "v/latency_cdf.png").is_file()


def test_validate_output_problems_leave_nothing_half_written(shared: Path, tmp_path: Path) -> None:
    run = shared / "llmservingsim/current/bench/RTXPRO6000/Llama-3.1-8B"
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(main, ["validate", str(run), "-o", str(tmp_path / "afile/sub")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output
    pytest.importorskip("matplotlib")
    out = tmp_path / "v"
    (out / "throughput.png").mkdir(parents=True)
    result = CliRunner().invoke(main, ["validate", str(run), "-o", str(out)])
    assert (
        result.exit_code != 0
        and "throughput.png: a folder of that name is in the way" in result.output
    )
    assert sorted(p.name for p in out.iterdir()) == ["throughput.png"]  # no report.json
    result = CliRunner().invoke(main, ["validate", str(run), "--set", "max_num_seqs="])
    assert result.exit_code == 2 and "max_num_seqs: no value given" in result.output


@pytest.mark.parametrize("command", ["validate", "import"])
def test_collectives_choice_is_checked(shared: Path, tmp_path: Path, command: str) -> None:
    if command == "validate":
        args = ["validate", str(shared / "llmservingsim/current/bench/RTXPRO6000/Qwen3-32B")]
    else:
        args = [
            "import", "llmservingsim",
            str(shared / PAPER / "evaluation/figure_6/config/power_config_tp2.json"),
            "--dataset", str(shared / PAPER / "dataset/sharegpt_req300_rate10_llama.jsonl"),
            "-o", str(tmp_path / "s.yaml"),
        ]  # fmt: skip
    result = CliRunner().invoke(main, [*args, "--collectives", "nvlink"])
    assert result.exit_code == 2
    assert "Invalid value for '--collectives'" in result.output
    assert "'nvlink' is not one of 'measured', 'link'" in result.output


def test_profiles_import_refuses_an_output_inside_the_source(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(shared / "llmservingsim/current/perf/RTX4090", src)
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    tp1 = next(src.rglob("tp1"))
    for out in (tp1, tp1 / "converted", src):
        result = CliRunner().invoke(
            main, ["profiles", "import", "llmservingsim", str(tp1), "-o", str(out)]
        )
        assert result.exit_code == 2
        assert ("contains" if out == src else "inside") + " the source" in result.output
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_profiles_import_warns_about_one_point_curves(shared: Path, tmp_path: Path) -> None:
    src = tmp_path / "RTX4090/meta-llama/Llama-3.1-8B/bf16"
    shutil.copytree(shared / "llmservingsim/current/perf/RTX4090/meta-llama/Llama-3.1-8B/bf16", src)
    dense = src / "tp1/dense.csv"
    lines = dense.read_text().splitlines()
    kept = [
        lines[0],
        *(r for r in lines[1:] if not r.startswith("act_fn,") or r.startswith("act_fn,1,")),
    ]
    dense.write_text("\n".join(kept) + "\n")
    result = CliRunner().invoke(
        main, ["profiles", "import", "llmservingsim", str(src / "tp1"), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    assert "act_fn (dense) is measured at one size (1) only" in " ".join(result.output.split())
