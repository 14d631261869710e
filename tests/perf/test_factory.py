"""Latency-model resolution: analytical, auto (measured, aiconfigurator, roofline), paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.build import build_simulation
from llmserve_env.config.errors import DataFileError, ScenarioError
from llmserve_env.config.loader import validate_scenario
from llmserve_env.perf import factory
from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.comm import alpha_beta_for
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.model_arch import load_model_arch, models_dir
from llmserve_env.perf.profile_format import Profile, write_profile
from llmserve_env.perf.profile_model import ProfileLatencyModel
from llmserve_env.perf.roofline import RooflineModel
from tests.perf.crafted import crafted_profile

ARCH = load_model_arch("meta-llama/Llama-3.1-8B")
H100 = resolve_device("H100-SXM")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "measured"
    monkeypatch.setattr(factory, "measured_dir", lambda: root)
    return root


def test_analytical_is_the_roofline() -> None:
    assert isinstance(
        factory.make_latency_model(ARCH, H100, 1, "bf16", "analytical"), RooflineModel
    )


def test_auto_falls_back_to_the_roofline(measured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(factory, "_aiconfigurator", lambda *args, **kwargs: None)
    assert isinstance(factory.make_latency_model(ARCH, H100, 1, "bf16", "auto"), RooflineModel)


def test_auto_prefers_aiconfigurator_over_the_roofline(
    measured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = RooflineModel(ARCH, H100)
    monkeypatch.setattr(factory, "_aiconfigurator", lambda *args, **kwargs: sentinel)
    assert factory.make_latency_model(ARCH, H100, 1, "bf16", "auto") is sentinel


def test_auto_prefers_a_measured_profile(measured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        factory, "_aiconfigurator", lambda *args, **kwargs: pytest.fail("not reached")
    )
    write_profile(crafted_profile(), measured / "H100-SXM/meta-llama/Llama-3.1-8B/bf16/tp1")
    model = factory.make_latency_model(ARCH, H100, 1, "bf16", "auto")
    assert isinstance(model, ProfileLatencyModel)
    assert factory.find_measured_profile(H100, ARCH.name, "bf16", 2) is None


def test_profile_path(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(), tmp_path / "p")
    model = factory.make_latency_model(ARCH, H100, 1, "bf16", str(folder))
    assert isinstance(model, ProfileLatencyModel)
    assert model.iteration_time_s(BatchShape((16,), (0,))) > 0


@pytest.mark.parametrize("tp", [1, 2])
def test_a_written_profile_is_compiled_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tp: int
) -> None:
    # write_profile's check compiles the staged folder under the key a run of the moved
    # folder looks up, so the run loads the cached tables instead of compiling again
    # (at tp 2 with every collective measured: nothing is filled in).
    folder = write_profile(crafted_profile(tp=tp), tmp_path / "p")
    assert len(list((tmp_path / "cache" / "profiles").glob("*.npz"))) == 1
    monkeypatch.setattr(
        "llmserve_env.perf.compiled.compile_profile",
        lambda profile: pytest.fail("compiled again"),
    )
    model = factory.make_latency_model(ARCH, H100, tp, "bf16", str(folder))
    assert model.iteration_time_s(BatchShape((16,), (0,))) > 0


def test_profile_must_match_the_instance(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(), tmp_path / "p")
    with pytest.raises(DataFileError, match="measured at tp=1 but the instance has tp=2"):
        factory.make_latency_model(ARCH, H100, 2, "bf16", str(folder))
    with pytest.raises(DataFileError, match="measured on 'H100-SXM' but the instance runs on"):
        factory.make_latency_model(ARCH, resolve_device("A100"), 1, "bf16", str(folder))
    with pytest.raises(DataFileError, match="for model"):
        other = load_model_arch("Qwen/Qwen3-32B")
        factory.make_latency_model(other, H100, 1, "bf16", str(folder))


def test_missing_collectives_are_filled_from_the_device_link(tmp_path: Path) -> None:
    profile = crafted_profile(tp=2)
    profile = Profile(**{**profile.__dict__, "collectives": {}})
    folder = write_profile(profile, tmp_path / "p")
    model = factory.make_latency_model(ARCH, H100, 2, "bf16", str(folder))
    one = factory.make_latency_model(
        ARCH, H100, 1, "bf16", str(write_profile(crafted_profile(), tmp_path / "q"))
    )
    batch = BatchShape((), (), 1, 101, 101)
    gap = model.iteration_time_s(batch) - one.iteration_time_s(batch)
    # two all-reduces (one per layer) of one token's 100 bytes, each at least the link
    # model's time at its smallest tabulated size (1 KiB): Hopper's fixed cost dominates
    link = alpha_beta_for(H100)
    assert (link.latency_s, link.efficiency, link.base_s) == pytest.approx((0.0, 0.69, 5e-6))
    assert gap == pytest.approx(2 * link.time_s("all_reduce", 1024, 2))
    assert 10e-6 < gap < 10.1e-6


def test_not_a_profile_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="not a profile folder"):
        factory.make_latency_model(ARCH, H100, 1, "bf16", str(tmp_path))


def _scenario(perf: str, base: Path) -> dict:
    return {
        "cluster": {
            "nodes": [{"instances": [{"model": ARCH.name, "device": "H100-SXM", "perf": perf}]}]
        },
        "workload": {
            "kind": "synthetic",
            "arrival": {"process": "poisson", "rate_rps": 5},
            "prompt_tokens": {"dist": "fixed", "value": 100},
            "output_tokens": {"dist": "fixed", "value": 20},
            "num_requests": 20,
        },
    }


def test_scenario_with_a_profile_runs(tmp_path: Path) -> None:
    write_profile(crafted_profile(), tmp_path / "prof")
    scenario = validate_scenario(_scenario("prof", tmp_path), base_dir=tmp_path)
    summary = build_simulation(scenario).run()
    assert summary["num_finished"] == 20
    assert np.isfinite(summary["mean_tpot_ms"])


def test_scenario_with_a_bad_profile_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    scenario = validate_scenario(_scenario("empty", tmp_path), base_dir=tmp_path)
    with pytest.raises(ScenarioError, match=r"cluster\.nodes\[0\]\.instances\[0\]\.perf"):
        build_simulation(scenario)


def test_cudagraph_capture_sizes_reach_the_profile_model(tmp_path: Path) -> None:
    from llmserve_env.build import SimulationFactory
    from llmserve_env.perf.cudagraph import default_capture_sizes

    write_profile(crafted_profile(), tmp_path / "prof")
    data = _scenario("prof", tmp_path)
    data["engine"] = {"max_num_seqs": 64, "cudagraph_capture_sizes": "auto"}
    model = SimulationFactory(validate_scenario(data, base_dir=tmp_path)).latency_models[0]
    assert isinstance(model, ProfileLatencyModel) and model.padding is not None
    assert model.padding.capture_sizes == default_capture_sizes(64, 8192)
    # an explicit list drops sizes above the token budget, as vLLM does
    data["engine"] = {"max_num_batched_tokens": 256, "cudagraph_capture_sizes": [512, 8, 1, 64]}
    model = SimulationFactory(validate_scenario(data, base_dir=tmp_path)).latency_models[0]
    assert isinstance(model, ProfileLatencyModel) and model.padding is not None
    assert model.padding.capture_sizes == (1, 8, 64)
    # off by default
    model = SimulationFactory(validate_scenario(_scenario("prof", tmp_path), base_dir=tmp_path))
    assert isinstance(model.latency_models[0], ProfileLatencyModel)
    assert model.latency_models[0].padding is None


def test_cudagraph_capture_sizes_need_a_profile_model(tmp_path: Path) -> None:
    data = _scenario("analytical", tmp_path)
    data["engine"] = {"cudagraph_capture_sizes": "auto"}
    scenario = validate_scenario(data, base_dir=tmp_path)
    with pytest.raises(ScenarioError, match=r"measured profile folders only.*the roofline model"):
        build_simulation(scenario)
    data["engine"] = {"cudagraph_capture_sizes": []}
    with pytest.raises(ScenarioError, match="at least one size"):
        validate_scenario(data, base_dir=tmp_path)


def test_a_tp_vllm_cannot_shard_names_the_key() -> None:
    data = _scenario("auto", Path("."))
    data["cluster"]["nodes"][0]["instances"][0] |= {
        "model": "meta-llama/Llama-3.1-8B",
        "tp": 3,
        "perf": "analytical",
    }
    data["cluster"]["nodes"][0]["num_devices"] = 4
    scenario = validate_scenario(data)
    with pytest.raises(
        ScenarioError,
        match=r"cluster\.nodes\[0\]\.instances\[0\]\.tp: .*32 attention heads are not "
        r"divisible by tp 3",
    ):
        build_simulation(scenario)


def test_unknown_perf_source_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="allowed: auto, analytical or a profile folder"):
        validate_scenario(_scenario("roofline", tmp_path), base_dir=tmp_path)


def test_factory_refuses_a_tp_vllm_cannot_shard() -> None:
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    for tp in (3, 64):
        with pytest.raises(ValueError, match=f"not divisible by tp {tp}"):
            factory.make_latency_model(arch, H100, tp, "bf16", "analytical")


def test_latency_source_names_what_perf_resolved_to(tmp_path: Path) -> None:
    roofline = factory.make_latency_model(ARCH, H100, 1, "bf16", "analytical")
    assert factory.latency_source(roofline) == "roofline:H100-SXM"
    write_profile(crafted_profile(), tmp_path / "prof")
    profiled = factory.make_latency_model(ARCH, H100, 1, "bf16", str(tmp_path / "prof"))
    assert factory.latency_source(profiled) == str(tmp_path / "prof")
    mi300x = factory.make_latency_model(ARCH, resolve_device("MI300X"), 1, "bf16", "auto")
    assert factory.latency_source(mi300x) == "roofline:MI300X"  # the model there, no fallback


def test_auto_says_why_it_fell_back_on_a_covered_device() -> None:
    pytest.importorskip("aiconfigurator_core", reason="aiconfigurator-core is not installed")
    a100 = resolve_device("A100")
    fp8 = factory.make_latency_model(ARCH, a100, 1, "fp8", "auto")
    assert isinstance(fp8, RooflineModel)
    assert factory.latency_source(fp8) == (
        "roofline:A100-SXM-80GB (FP8 weights, 16-bit math: no FP8 units) (no aiconfigurator "
        "tables: a100_sxm has no fp8 tensor cores in aiconfigurator-core)"
    )
    bf16 = factory.make_latency_model(ARCH, a100, 1, "bf16", "auto")
    assert factory.latency_source(bf16) == "aiconfigurator:A100-SXM-80GB"


def test_tp_refusals_name_the_sizes_that_work() -> None:
    tiny = load_model_arch("llmserve/tiny-llama")
    with pytest.raises(
        ValueError, match=r"4 attention heads are not divisible by tp 8; tp 1, 2 or 4 would work"
    ):
        factory.make_latency_model(tiny, H100, 8, "bf16", "analytical")
    assert ARCH.tensor_parallel_problem(8) is None


def test_auto_fallback_keeps_the_devices_measured_collectives() -> None:
    pytest.importorskip("aiconfigurator_core", reason="aiconfigurator-core is not installed")
    from llmserve_env.perf.comm import CollectiveTable

    phi = load_model_arch("microsoft/Phi-mini-MoE-instruct")  # no MoE data in aiconfigurator
    model = factory.make_latency_model(phi, H100, 2, "bf16", "auto")
    assert isinstance(model, RooflineModel) and isinstance(model.comm, CollectiveTable)
    assert "with measured collectives" in factory.latency_source(model)
    # perf: analytical stays the calibrated roofline throughout, its link model included.
    analytical = factory.make_latency_model(phi, H100, 2, "bf16", "analytical")
    assert isinstance(analytical, RooflineModel)
    assert not isinstance(analytical.comm, CollectiveTable)


def test_a_profile_in_the_wrong_units_is_refused(tmp_path: Path) -> None:
    """A profile whose times are a billion times too long (seconds written as us, then
    scaled again) would step the time series through years of simulated time."""
    from dataclasses import replace

    from llmserve_env.build import MAX_ITERATION_S
    from llmserve_env.perf.profile_format import Curve

    profile = crafted_profile()
    slow = replace(
        profile, dense={k: Curve(c.x, c.time_us * 1e9) for k, c in profile.dense.items()}
    )
    write_profile(slow, tmp_path / "slow")
    scenario = validate_scenario(_scenario("slow", tmp_path), base_dir=tmp_path)
    with pytest.raises(
        ScenarioError,
        match=rf"instances\[0\]\.perf: one iteration of a prefill of 8192 tokens .* takes "
        rf"[\d.e+]+ s by .*slow.*at most {MAX_ITERATION_S:.0f} s: check the latency model's "
        r"units",
    ):
        build_simulation(scenario)
    write_profile(profile, tmp_path / "fine")
    fine = validate_scenario(_scenario("fine", tmp_path), base_dir=tmp_path)
    assert build_simulation(fine).run()["num_finished"] == 20


def test_profiles_match_the_model_by_name_and_kind(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(), tmp_path / "p")  # model meta-llama/Llama-3.1-8B
    # A copy of the catalog's config is the same model (its file stem) ...
    copy = tmp_path / "Llama-3.1-8B.json"
    copy.write_text((models_dir() / "meta-llama/Llama-3.1-8B.json").read_text())
    factory.make_latency_model(load_model_arch(str(copy)), H100, 1, "bf16", str(folder))
    # ... and so is a config.json in a folder of that name, but not another folder's.
    for name, ok in (("Llama-3.1-8B", True), ("other-model", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(copy.read_text())
        arch = load_model_arch(str(tmp_path / name / "config.json"))
        if ok:
            factory.make_latency_model(arch, H100, 1, "bf16", str(folder))
        else:
            with pytest.raises(DataFileError, match=r"it is for model 'meta-llama/Llama-3\.1-8B'"):
                factory.make_latency_model(arch, H100, 1, "bf16", str(folder))
    # A HuggingFace cache snapshot is named for its repository (its config.json links
    # into the repository's blobs/, which names nothing).
    for repo, ok in (("models--meta-llama--Llama-3.1-8B", True), ("models--org--Other", False)):
        blob = tmp_path / "hub" / repo / "blobs" / "0123abcd"
        blob.parent.mkdir(parents=True)
        blob.write_text(copy.read_text())
        snapshot = (
            tmp_path / "hub" / repo / "snapshots" / "4e20de362430cd3b72f300e6b0f18e50e7166e08"
        )
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").symlink_to(Path("../../blobs/0123abcd"))
        arch = load_model_arch(str(snapshot / "config.json"))
        if ok:
            factory.make_latency_model(arch, H100, 1, "bf16", str(folder))
        else:
            with pytest.raises(DataFileError, match=r"but the instance runs '.*models--org--Other"):
                factory.make_latency_model(arch, H100, 1, "bf16", str(folder))
    # A profile records the config path of the machine that measured it, separators and
    # all: a Windows cache snapshot or a relative folder names the model, not this cwd.
    from dataclasses import replace

    base = crafted_profile()
    for i, recorded in enumerate(
        (
            r"C:\hf\models--meta-llama--Llama-3.1-8B\snapshots\abc\config.json",
            r"models\Llama-3.1-8B\config.json",
            "weights/Llama-3.1-8B/config.json",
        )
    ):
        measured = replace(base, meta=replace(base.meta, model=recorded))
        where = write_profile(measured, tmp_path / f"recorded-{i}")
        factory.make_latency_model(ARCH, H100, 1, "bf16", str(where))
    # A dense model's profile does not serve an MoE model of the same name, nor the reverse.
    moe = write_profile(crafted_profile(moe=True), tmp_path / "moe")
    with pytest.raises(
        DataFileError, match=r"'meta-llama/Llama-3\.1-8B' is a dense model, and the profile has an"
    ):
        factory.make_latency_model(ARCH, H100, 1, "bf16", str(moe))


def test_a_foreign_folders_tables_are_cached_per_model_shape(shared: Path, tmp_path: Path) -> None:
    """An LLMServingSim folder converts with the model's layer count: a 16-layer copy of
    the catalog config (same name) gets its own tables, whichever ran first."""
    folder = shared / "llmservingsim/current/perf/RTX4090/meta-llama/Llama-3.1-8B/bf16/tp1"
    device = resolve_device("RTX4090")
    config = json.loads((models_dir() / "meta-llama/Llama-3.1-8B.json").read_text())
    path = tmp_path / "Llama-3.1-8B.json"
    path.write_text(json.dumps(config | {"num_hidden_layers": 16}))
    batch = BatchShape((), (), 8, 8 * 1024, 1024, 1024)
    half = factory.make_latency_model(load_model_arch(str(path)), device, 1, "bf16", str(folder))
    full = factory.make_latency_model(ARCH, device, 1, "bf16", str(folder))
    ratio = half.iteration_time_s(batch) / full.iteration_time_s(batch)
    assert 0.45 < ratio < 0.6
