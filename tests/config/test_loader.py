"""Scenario loading: strict schema, line numbers, dotted keys, overrides, JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmserve_env.build import load_scenario
from llmserve_env.config import ScenarioError, load_scenario_file, scenario_json_schema
from llmserve_env.config.loader import apply_overrides, parse_override

GOOD = """\
name: t
cluster:
  nodes:
    - instances:
        - model: meta-llama/Llama-3.1-8B
          device: H100-SXM
engine:
  max_num_seqs: 64
workload:
  kind: synthetic
  arrival: {process: poisson, rate_rps: 2}
  prompt_tokens: {dist: fixed, value: 100}
  output_tokens: {dist: fixed, value: 10}
  num_requests: 10
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


def test_good_scenario_loads_and_engine_defaults_merge(tmp_path: Path) -> None:
    scenario = load_scenario_file(_write(tmp_path, GOOD))
    group = scenario.cluster.nodes[0].instances[0]
    assert group.engine.max_num_seqs == 64  # from the top-level engine section
    assert group.engine.block_size == 16  # vLLM default
    assert scenario.workload.kind == "synthetic"


def test_unknown_key_names_file_line_and_dotted_key(tmp_path: Path) -> None:
    text = GOOD.replace("  max_num_seqs: 64", "  max_num_seqs: 64\n  max_num_seq: 3")
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    message = str(info.value)
    assert "s.yaml:9" in message
    assert "max_num_seq" in message and "unknown key" in message


def test_wrong_type_and_range(tmp_path: Path) -> None:
    text = GOOD.replace("max_num_seqs: 64", "max_num_seqs: -1").replace(
        "rate_rps: 2", "rate_rps: fast"
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    message = str(info.value)
    assert "engine.max_num_seqs" in message and "greater than 0" in message
    # The union tag ('poisson') is not part of the key the user sees.
    assert "workload.arrival.rate_rps" in message and "s.yaml:11" in message
    assert len(info.value.problems) >= 2


def test_literal_lists_allowed_values(tmp_path: Path) -> None:
    text = GOOD.replace("max_num_seqs: 64", "scheduling_policy: lifo")
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    message = str(info.value)
    assert "scheduling_policy" in message and "fcfs" in message and "priority" in message


def test_bad_discriminator_lists_choices(tmp_path: Path) -> None:
    text = GOOD.replace("process: poisson", "process: hawkes")
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    assert "hawkes" in str(info.value) and "gamma" in str(info.value)


def test_missing_file_reference(tmp_path: Path) -> None:
    text = GOOD.replace(
        "  kind: synthetic\n  arrival: {process: poisson, rate_rps: 2}\n  prompt_tokens: {dist: fixed, value: 100}\n  output_tokens: {dist: fixed, value: 10}\n  num_requests: 10\n",
        "  kind: trace\n  path: nowhere.jsonl\n",
    )
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    assert "workload.path" in str(info.value) and "file not found" in str(info.value)


def test_cross_field_checks(tmp_path: Path) -> None:
    text = GOOD.replace(
        "        - model:",
        "      num_devices: 2\n      instances:\n        - tp: 2\n          count: 2\n          model:",
    ).replace("    - instances:\n", "    -\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, text))
    assert "need 4 devices" in str(info.value)
    unbounded = GOOD.replace("  num_requests: 10\n", "")
    with pytest.raises(ScenarioError, match="num_requests or duration_s"):
        load_scenario_file(_write(tmp_path, unbounded))


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"s\.yaml:\d+: YAML error"):
        load_scenario_file(_write(tmp_path, "name: x\ncluster:\n  nodes: [\n"))
    with pytest.raises(ScenarioError, match="duplicate key 'name'"):
        load_scenario_file(_write(tmp_path, "name: x\nname: y\n"))
    with pytest.raises(ScenarioError, match="not found"):
        load_scenario_file(tmp_path / "absent.yaml")


def test_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    scenario = load_scenario_file(
        path,
        [
            "engine.max_num_seqs=8",
            "cluster.nodes.0.instances.0.tp=2",
            "workload.arrival={process: gamma, rate_rps: 3, cv: 2}",
            "slo.ttft_ms=250",
        ],
    )
    assert scenario.cluster.nodes[0].instances[0].engine.max_num_seqs == 8
    assert scenario.cluster.nodes[0].instances[0].tp == 2
    assert scenario.workload.arrival.process == "gamma"
    assert scenario.slo.ttft_ms == 250
    with pytest.raises(ScenarioError, match="no list item"):
        load_scenario_file(path, ["cluster.nodes.3.count=2"])
    with pytest.raises(ScenarioError, match="unknown key"):
        load_scenario_file(path, ["engine.bogus=1"])
    with pytest.raises(ScenarioError, match=r"dotted\.key=value"):
        parse_override("engine.max_num_seqs")
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}


def test_json_schema_is_valid_json_with_descriptions() -> None:
    schema = scenario_json_schema()
    text = json.dumps(schema)
    assert "max_num_batched_tokens" in text
    engine = schema["$defs"]["EngineConfig"]
    assert engine["additionalProperties"] is False
    assert "Token budget" in engine["properties"]["max_num_batched_tokens"]["description"]


def test_bare_yaml_on_off_are_power_state_words() -> None:
    """YAML 1.1 reads ``off`` as ``False``; power-state keys take it back as the word."""
    scenario = load_scenario(
        "default",
        [
            "power.governor=idle_timeout_sleep",
            "power.sleep_level=off",
            "cluster.nodes.0.instances.0.initial_power_state=on",
        ],
    )
    assert scenario.power.sleep_level == "off"
    assert scenario.cluster.nodes[0].instances[0].initial_power_state == "on"
    with pytest.raises(ScenarioError, match=r"power\.sleep_level"):
        load_scenario("default", ["power.sleep_level=true"])


def test_async_scheduling_knob_is_off_by_default_and_reaches_the_engine(tmp_path: Path) -> None:
    from llmserve_env.build import plan_instances

    default = load_scenario_file(_write(tmp_path, GOOD))
    assert default.engine.async_scheduling is False
    assert plan_instances(default)[0].params.async_scheduling is False
    text = GOOD.replace("max_num_seqs: 64", "async_scheduling: true")
    scenario = load_scenario_file(_write(tmp_path, text))
    assert plan_instances(scenario)[0].params.async_scheduling is True
    # A group can override the top-level engine section.
    group = load_scenario_file(
        _write(tmp_path, text), ["cluster.nodes.0.instances.0.engine.async_scheduling=false"]
    )
    assert plan_instances(group)[0].params.async_scheduling is False
    bad = GOOD.replace("max_num_seqs: 64", "async_scheduling: sometimes")
    with pytest.raises(ScenarioError) as info:
        load_scenario_file(_write(tmp_path, bad))
    message = str(info.value)
    assert "engine.async_scheduling" in message and "s.yaml:8" in message
    assert "valid boolean" in message and "sometimes" in message
    assert "async" in json.dumps(scenario_json_schema()["$defs"]["EngineConfig"]["properties"])


_H100_FIGURES = """\
devices:
  my-npu:
    vendor: nvidia
    bf16_tflops: 989
    fp8_tflops: 1979
    mem_gib: 80
    mem_bw_gbps: 3350
    scaleup_bw_gbps: 450
    host_bw_gbps: 64
    tdp_w: 700
    idle_w: 75
"""


def test_a_scenario_describes_its_own_device(tmp_path: Path) -> None:
    from llmserve_env.build import build_simulation, scenario_device

    analytical = GOOD.replace("device: H100-SXM", "device: H100-SXM\n          perf: analytical")
    described = _H100_FIGURES + analytical.replace("device: H100-SXM", "device: my-npu")
    catalog_run = build_simulation(load_scenario(str(_write(tmp_path, analytical)))).run()
    scenario = load_scenario(str(_write(tmp_path, described)))
    device = scenario_device(scenario, "my-npu")
    assert device.name == "my-npu" and device.mem_gib == 80 and not device.has_pim
    # The H100's figures and vendor give the H100's roofline (its family's constants)
    # and KV capacity, so the same run.
    described_run = build_simulation(scenario).run()
    for key in ("num_finished", "mean_ttft_ms", "mean_tpot_ms", "makespan_s", "energy_j"):
        assert described_run[key] == catalog_run[key]
    # A faster memory makes decode faster.
    faster = described.replace("mem_bw_gbps: 3350", "mem_bw_gbps: 6700")
    faster_run = build_simulation(load_scenario(str(_write(tmp_path, faster)))).run()
    assert faster_run["mean_tpot_ms"] < described_run["mean_tpot_ms"]


def test_a_described_device_in_the_wrong_units_is_refused(tmp_path: Path) -> None:
    """Figures a trillion times too small (FLOP/s and B/s where TFLOP/s and GB/s go)
    make each iteration take years; the build says so instead of simulating them."""
    from llmserve_env.build import build_simulation

    tiny = _H100_FIGURES.replace("bf16_tflops: 989", "bf16_tflops: 1.0e-9").replace(
        "mem_bw_gbps: 3350", "mem_bw_gbps: 1.0e-9"
    )
    scenario = load_scenario(str(_write(tmp_path, tiny + GOOD.replace("H100-SXM", "my-npu"))))
    with pytest.raises(
        ScenarioError,
        match=r"devices\.my-npu: one iteration of a prefill of \d+ tokens of "
        r"meta-llama/Llama-3.1-8B on my-npu takes [\d.e+]+ s by roofline:my-npu.*"
        r"bf16_tflops in TFLOP/s, mem_bw_gbps in GB/s",
    ):
        build_simulation(scenario)


def test_described_devices_are_checked(tmp_path: Path) -> None:
    shadow = _H100_FIGURES.replace("my-npu:", "h100:") + GOOD
    with pytest.raises(ScenarioError, match=r"devices\.h100.*catalog's 'H100-SXM' already"):
        load_scenario(str(_write(tmp_path, shadow)))
    typo = _H100_FIGURES + GOOD.replace("device: H100-SXM", "device: my-mpu")
    with pytest.raises(
        ScenarioError, match=r"device.*unknown device 'my-mpu'.*scenario's devices: my-npu"
    ):
        load_scenario(str(_write(tmp_path, typo)))
    half_pim = (
        _H100_FIGURES.replace("    idle_w: 75\n", "    idle_w: 75\n    pim_tflops: 4\n") + GOOD
    )
    with pytest.raises(ScenarioError, match=r"devices\.my-npu.*go together"):
        load_scenario_file(_write(tmp_path, half_pim))
    hot_idle = _H100_FIGURES.replace("idle_w: 75", "idle_w: 800") + GOOD
    with pytest.raises(
        ScenarioError, match=r"s\.yaml:\d+.*devices\.my-npu.*idle_w \(800.0\) must be below"
    ):
        load_scenario_file(_write(tmp_path, hot_idle))
    unknown = _H100_FIGURES.replace("vendor: nvidia", "vendor: nvidia\n    tflops: 3") + GOOD
    with pytest.raises(ScenarioError, match=r"devices\.my-npu\.tflops.*unknown key"):
        load_scenario_file(_write(tmp_path, unknown))
