"""``import llmservingsim``: which of the paper's validation setups import, which are
refused and with what message; LLMServingSim's defaults; an imported setup runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmserve_env.build import build_simulation, load_scenario
from llmserve_env.config.errors import DataFileError, ScenarioError
from llmserve_env.interop.llmservingsim_config import (
    ImportOptions,
    UnsupportedFeatureError,
    convert_cluster,
    unknown_keys,
)
from llmserve_env.interop.llmservingsim_import import import_llmservingsim_setup

PAPER = Path("llmservingsim/paper-v0")
CURRENT = Path("llmservingsim/current")
TRACE = PAPER / "dataset/sharegpt_req300_rate10_llama.jsonl"

# config (below paper-v0/evaluation) -> None (imports) or fragments of the refusal
PAPER_SETUPS: dict[str, list[str] | None] = {
    "figure_5/A6000/config/MD_config.json": None,
    "figure_5/A6000/config/SD_config.json": None,
    "figure_5/A6000/config/SD+PC_config.json": None,
    "figure_5/A6000/config/SM_config.json": None,
    "figure_5/A6000/config/PDD_config.json": [
        "prefill/decode disaggregation (pd_type='prefill') (config key nodes[0].instances[0].pd_type)",
        "(pd_type='decode') (config key nodes[0].instances[1].pd_type)",
    ],
    "figure_5/H100/config/MD_config.json": None,
    "figure_5/H100/config/SD_config.json": None,
    "figure_5/H100/config/SD+PC_config.json": None,
    "figure_5/H100/config/SM_config.json": None,
    "figure_5/H100/config/PDD_config.json": ["config key nodes[0].instances[0].pd_type"],
    "figure_6/config/power_config_tp1.json": None,
    "figure_6/config/power_config_tp2.json": None,
    "figure_7/config/SD+PC_config.json": None,
    "figure_7/config/MD+PC+PS_config.json": [
        "second-tier prefix store in CPU (config key --prefix-storage)",
        "prefix sharing across instances (config key --enable-prefix-sharing)",
    ],
    "figure_8/config/MD_config.json": None,
    "figure_8/config/SD_config.json": None,
    "figure_8/config/SM_config.json": None,
    "figure_8/config/PDD_config.json": ["config key nodes[0].instances[1].pd_type"],
    "figure_9/config/SD_config.json": None,
    "figure_10/config/gpu_only_config.json": None,
    "figure_10/config/pim_config.json": [
        "processing-in-memory (PIM) attention (config key nodes[0].cpu_mem.pim_config)",
    ],
}


def _trace(config: str) -> tuple[Path, int]:
    """The trace and request count SETUPS.md gives the run of ``config``."""
    if config.startswith("figure_6/"):
        return PAPER / "dataset/sharegpt_pulse_req10_n3_delay60.jsonl", 30
    if config.startswith("figure_7/"):
        return PAPER / "dataset/sharegpt_pulse_req50_n6_delay15_pc.jsonl", 300
    if config == "figure_5/A6000/config/SM_config.json":
        return PAPER / "dataset/sharegpt_req300_rate10_phi.jsonl", 300
    if config.endswith("SM_config.json"):  # figure 5 H100 and figure 8: Mixtral
        return PAPER / "dataset/sharegpt_req300_rate10_mixtral.jsonl", 300
    return TRACE, 300  # figure 10's trace is not named; the Llama one serves


def _options(name: str, num_reqs: int) -> ImportOptions:
    ps = "MD+PC+PS" in name
    return ImportOptions(
        num_reqs=num_reqs,
        enable_prefix_caching="PC" in name,
        enable_prefix_sharing=ps,
        prefix_storage="CPU" if ps else None,
    )


@pytest.mark.parametrize("config", sorted(PAPER_SETUPS))
def test_paper_setups(shared: Path, config: str, tmp_path: Path) -> None:
    path = shared / PAPER / "evaluation" / config
    expected = PAPER_SETUPS[config]
    trace, num_reqs = _trace(config)
    if expected is None:
        converted = convert_cluster(path, shared / trace, _options(config, num_reqs))
        engine = converted.scenario["engine"]
        assert engine["block_size"] == 16 and engine["max_num_batched_tokens"] == 2048
        assert engine["enable_prefix_caching"] == ("PC" in config)
        assert converted.scenario["router"]["policy"] == "round_robin"
        assert converted.scenario["workload"]["num_requests"] == num_reqs
        # The whole import, the paper's profiles converted too, gives a valid scenario.
        out = tmp_path / "s.yaml"
        setup = import_llmservingsim_setup(
            path, shared / trace, out, _options(config, num_reqs), shared / PAPER / "perf_models"
        )
        assert setup.profile_dirs and all((d / "meta.yaml").is_file() for d in setup.profile_dirs)
        scenario = load_scenario(out)
        assert all(
            g.perf.startswith(str(tmp_path)) for n in scenario.cluster.nodes for g in n.instances
        )
        return
    with pytest.raises(UnsupportedFeatureError) as info:
        convert_cluster(path, shared / trace, _options(config, num_reqs))
    for fragment in expected:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        (
            "single_node_tp_pp_instance.json",
            "pipeline parallelism (config key nodes[0].instances[0].pp_size)",
        ),
        (
            "single_node_moe_dp_tp_instance.json",
            "expert parallelism at tp_size > 1 (config key nodes[0].instances[0].tp_size)",
        ),
        (
            "dual_node_moe_dp_ep_intra_inter_instance.json",
            "data-parallel group 'A' spanning nodes (config key nodes[1].instances[0].dp_group)",
        ),
        ("single_node_heterogeneous.json", "prefill/decode disaggregation"),
    ],
)
def test_current_schema_refusals(shared: Path, config: str, fragment: str) -> None:
    with pytest.raises(UnsupportedFeatureError, match=None) as info:
        convert_cluster(
            shared / CURRENT / "cluster_config" / config, shared / TRACE, ImportOptions()
        )
    assert fragment in str(info.value)


def test_current_schema_tp(shared: Path) -> None:
    converted = convert_cluster(
        shared / CURRENT / "cluster_config/rtx4090_tp2_instance.json",
        shared / TRACE,
        ImportOptions(),
    )
    (group,) = converted.scenario["cluster"]["nodes"][0]["instances"]
    assert group["tp"] == 2 and group["device"] == "RTX4090"
    assert converted.link_bw_gbps > 0


def _single(shared: Path, tmp_path: Path, **changes: object) -> Path:
    """The current schema's single-instance config with instance keys changed."""
    config = json.loads(
        (shared / CURRENT / "cluster_config/single_node_single_instance.json").read_text()
    )
    config["nodes"][0]["instances"][0] |= changes
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return path


def test_unknown_and_unused_keys_are_noted(shared: Path, tmp_path: Path) -> None:
    path = _single(shared, tmp_path, foo_unknown=2)
    config = json.loads(path.read_text())
    config["bar_unknown"] = 1
    path.write_text(json.dumps(config))
    notes = convert_cluster(path, shared / TRACE, ImportOptions()).notes
    assert "bar_unknown: not an LLMServingSim key this import knows; ignored" in notes
    assert any(n.startswith("nodes[0].instances[0].foo_unknown: not an") for n in notes)
    # The config's own memory bandwidth is not the model's, and the import says so.
    assert any("npu_mem: mem_bw 1597" in n and "1792 GB/s" in n for n in notes)
    # Every shipped config uses known keys only.
    for sample in sorted((shared / CURRENT / "cluster_config").glob("*.json")):
        assert unknown_keys(json.loads(sample.read_text())) == [], sample


def test_more_requests_than_the_trace_has_is_noted(shared: Path, tmp_path: Path) -> None:
    path = _single(shared, tmp_path)
    out = tmp_path / "out" / "s.yaml"
    notes = import_llmservingsim_setup(path, shared / TRACE, out, ImportOptions(num_reqs=100_000))
    note = "--num-reqs 100000: the trace has 300 requests; all 300 are used"
    assert note in notes.notes
    assert f"# {note}" in out.read_text().splitlines()
    fewer = import_llmservingsim_setup(path, shared / TRACE, out, ImportOptions(num_reqs=30))
    assert not any("--num-reqs" in n for n in fewer.notes)


def test_npu_count_must_match_tp_times_pp(shared: Path, tmp_path: Path) -> None:
    path = _single(shared, tmp_path, tp_size=2)  # num_npus stays 1
    with pytest.raises(
        DataFileError, match=r"instances\[0\]\.num_npus: 1 NPUs, but tp_size 2 x pp_size 1 needs 2"
    ):
        convert_cluster(path, shared / TRACE, ImportOptions())


def test_unsupported_dtype_lists_the_allowed(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"dtype 'fp8'; allowed: bfloat16, bf16, float16"):
        convert_cluster(_single(shared, tmp_path, dtype="fp8"), shared / TRACE, ImportOptions())


def test_malformed_config(tmp_path: Path, shared: Path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text('{"nodes": [\n  {"instances": [}\n]}')
    with pytest.raises(DataFileError, match=r"c\.json:2: invalid JSON"):
        convert_cluster(bad, shared / TRACE, ImportOptions())
    bad.write_text(
        '{"nodes": [{"instances": [{"model_name": "x/y", "hardware": "A6000", "npu_num": 1}]}]}'
    )
    with pytest.raises(
        DataFileError, match=r"nodes\[0\]\.instances\[0\]\.model_name: unknown model"
    ):
        convert_cluster(bad, shared / TRACE, ImportOptions())


def test_imported_setup_runs(shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "md.yaml"
    setup = import_llmservingsim_setup(
        shared / PAPER / "evaluation/figure_5/A6000/config/MD_config.json",
        shared / TRACE,
        out,
        ImportOptions(num_reqs=40),
        shared / PAPER / "perf_models",
    )
    assert setup.profile_dirs == [tmp_path / "profiles/RTX-A6000/meta-llama/Llama-3.1-8B/bf16/tp1"]
    data = yaml.safe_load(out.read_text())
    groups = data["cluster"]["nodes"][0]["instances"]
    assert [g["perf"] for g in groups] == [
        "profiles/RTX-A6000/meta-llama/Llama-3.1-8B/bf16/tp1"
    ] * 2
    assert groups[0]["engine"]["gpu_memory_utilization"] == pytest.approx(40 / 48, abs=1e-5)
    summary = build_simulation(load_scenario(out)).run()
    assert summary["num_finished"] == 40


def test_missing_profile_is_named(shared: Path, tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="no LLMServingSim profile for A6000"):
        import_llmservingsim_setup(
            shared / PAPER / "evaluation/figure_5/A6000/config/MD_config.json",
            shared / TRACE,
            tmp_path / "s.yaml",
            ImportOptions(),
            shared / CURRENT / "perf",
        )


def test_power_block_carried_over(shared: Path, tmp_path: Path) -> None:
    """Figure 6's power block becomes node power and ``power.devices``; the run reports
    energy with the A6000's imported idle floor."""
    converted = convert_cluster(
        shared / PAPER / "evaluation/figure_6/config/power_config_tp1.json",
        shared / TRACE,
        ImportOptions(num_reqs=20),
    )
    node = converted.scenario["cluster"]["nodes"][0]["power"]
    assert node["base_w"] == 219 and node["num_dimms"] == 128 // 32
    # LLMServingSim's always-on CPU draw: idle + (active - idle) x util.
    assert node["cpu_idle_w"] == pytest.approx(10 + 175 * 0.5)
    assert node["cpu_util"] == pytest.approx((0.7 - 0.5) / 0.5)
    assert node["nic_idle_w"] == 11.2 and node["num_storage"] == 1
    device = converted.scenario["power"]["devices"]["RTX-A6000"]
    assert device == {"idle_w": 33.0, "standby_w": 89.0, "tdp_w": 300.0, "standby_s": 18.0}
    assert any("cpu_util" in note for note in converted.notes)
    out = tmp_path / "fig6.yaml"
    out.write_text(yaml.safe_dump(converted.scenario))
    summary = build_simulation(load_scenario(out)).run()
    assert summary["num_finished"] == 20
    breakdown = summary["energy_breakdown_j"]
    assert summary["energy_j"] == pytest.approx(sum(breakdown.values()), rel=1e-9)
    # The device never draws less than its imported idle power.
    assert breakdown["devices"] >= 33.0 * summary["makespan_s"] * (1 - 1e-9)


def test_power_block_errors_name_the_key(shared: Path, tmp_path: Path) -> None:
    import json

    config = json.loads(
        (shared / PAPER / "evaluation/figure_6/config/power_config_tp1.json").read_text()
    )
    del config["nodes"][0]["power"]["npu"]["A6000"]["standby_duration"]
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps(config))
    with pytest.raises(
        DataFileError, match=r"nodes\[0\]\.power\.npu\.A6000: missing 'standby_duration'"
    ):
        convert_cluster(bad, shared / TRACE, ImportOptions())
    config["nodes"][0]["power"]["npu"]["A6000"]["standby_duration"] = 18
    config["nodes"][0]["power"]["cpu"]["util"] = "half"
    bad.write_text(json.dumps(config))
    with pytest.raises(DataFileError, match=r"nodes\[0\]\.power\.cpu\.util: expected a number"):
        convert_cluster(bad, shared / TRACE, ImportOptions())


@pytest.mark.parametrize(
    ("config", "expert_parallel"),
    [("single_node_moe_dp_ep_instance.json", True), ("single_node_dp_instance.json", False)],
)
def test_a_dp_group_becomes_one_data_parallel_group(
    shared: Path, config: str, expert_parallel: bool
) -> None:
    converted = convert_cluster(
        shared / CURRENT / "cluster_config" / config, shared / TRACE, ImportOptions()
    )
    (node,) = converted.scenario["cluster"]["nodes"]
    (group,) = node["instances"]
    assert group["data_parallel_size"] == 2
    assert group.get("enable_expert_parallel", False) is expert_parallel
    assert len(converted.instances) == 1  # one entry per group (its profile)
    assert any("dp_group 'A': 2 data-parallel ranks" in note for note in converted.notes)


def test_unlike_ranks_and_a_mismatched_ep_size_are_refused(shared: Path, tmp_path: Path) -> None:
    import json

    source = shared / CURRENT / "cluster_config/single_node_moe_dp_ep_instance.json"
    config = json.loads(source.read_text())
    ranks = config["nodes"][0]["instances"]
    ranks[1]["hardware"] = "RTX4090"
    ranks[0]["ep_size"] = ranks[1]["ep_size"] = 4
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedFeatureError) as info:
        convert_cluster(path, shared / TRACE, ImportOptions())
    text = str(info.value)
    assert "unlike ranks (hardware differ) (config key nodes[0].instances[1].dp_group)" in text
    assert "ep_size 4 over the 2 ranks of data-parallel group 'A'" in text


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"tp_size": "2"},
            r"instances\[0\]\.tp_size: expected a whole number of at least 1, got \"2\"",
        ),
        (
            {"tp_size": True},
            r"instances\[0\]\.tp_size: expected a whole number of at least 1, got true",
        ),
        (
            {"num_npus": 1.7},
            r"instances\[0\]\.num_npus: expected a whole number of at least 1, got 1\.7",
        ),
        ({"npu_mem": 40}, r"instances\[0\]\.npu_mem: expected an object, got 40"),
        ({"npu_mem": {"mem_size": 96, "mem_util": 5}}, r"npu_mem\.mem_util: expected a fraction"),
        (
            {"max_num_seqs": "lots"},
            r"instances\[0\]\.max_num_seqs: expected a whole number of at least 0",
        ),
        ({"model_name": None}, r"instances\[0\]\.model_name: missing"),
    ],
)
def test_wrong_value_types_name_the_key(
    shared: Path, tmp_path: Path, changes: dict, message: str
) -> None:
    """Each was a Python traceback, a silently truncated value or a misleading message."""
    with pytest.raises(DataFileError, match=message):
        convert_cluster(_single(shared, tmp_path, **changes), shared / TRACE, ImportOptions())


def test_items_that_are_not_objects_are_named(shared: Path, tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"nodes": ["x"], "num_nodes": "2"}))
    with pytest.raises(
        DataFileError,
        match=r"nodes\[0\]: expected an object, got \"x\"; "
        r"num_nodes: expected a whole number of at least 1, got \"2\"",
    ):
        convert_cluster(path, shared / TRACE, ImportOptions())


def test_what_a_run_would_refuse_is_refused_at_import(shared: Path, tmp_path: Path) -> None:
    """A tp the model cannot be split over and an empty trace used to import (exit 0)
    and fail at `llmserve run`."""
    out = tmp_path / "out" / "s.yaml"
    path = _single(shared, tmp_path, tp_size=5, num_npus=5)
    with pytest.raises(ScenarioError, match=r"tp: .*not divisible by tp 5"):
        import_llmservingsim_setup(path, shared / TRACE, out, ImportOptions())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataFileError, match=r"empty\.jsonl"):
        import_llmservingsim_setup(_single(shared, tmp_path), empty, out, ImportOptions())
    assert not (tmp_path / "out").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataFileError, match=r"afile: is a file, not a folder"):
        import_llmservingsim_setup(
            _single(shared, tmp_path), shared / TRACE, tmp_path / "afile/s.yaml", ImportOptions()
        )


def test_a_config_value_is_not_blamed_on_a_flag(shared: Path, tmp_path: Path) -> None:
    path = _single(shared, tmp_path, max_num_seqs=0)
    with pytest.raises(ScenarioError) as caught:
        import_llmservingsim_setup(path, shared / TRACE, tmp_path / "s.yaml", ImportOptions())
    assert "max_num_seqs" in str(caught.value) and "--max-num-seqs" not in str(caught.value)
    with pytest.raises(ScenarioError, match=r"max_num_seqs \(from --max-num-seqs\)"):
        import_llmservingsim_setup(
            _single(shared, tmp_path),
            shared / TRACE,
            tmp_path / "s.yaml",
            ImportOptions(max_num_seqs=0),
        )
