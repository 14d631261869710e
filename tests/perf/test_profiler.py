"""The PyTorch operator profiler on CPU with the tiny catalog model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers import TINY_LLAMA, tiny_moe_config

torch = pytest.importorskip("torch", reason="the profiler needs PyTorch")

from llmserve_env.perf.base import BatchShape  # noqa: E402
from llmserve_env.perf.compiled import compile_profile  # noqa: E402
from llmserve_env.perf.model_arch import load_model_arch  # noqa: E402
from llmserve_env.perf.profile_format import read_profile, write_profile  # noqa: E402
from llmserve_env.perf.profile_model import ProfileLatencyModel  # noqa: E402
from llmserve_env.perf.profiler import ProfileGrid, ProfilerOptions, profile_model  # noqa: E402

TINY = TINY_LLAMA
GRID = ProfileGrid(
    tokens=(1, 8, 64, 256),
    seqs=(1, 8),
    prefill_chunks=(16, 128),
    prefill_contexts=(0, 128),
    decode_batches=(1, 8),
    decode_contexts=(16, 128),
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _options(**overrides: object) -> ProfilerOptions:
    values: dict[str, object] = dict(device="cpu", dtype="fp32", grid=GRID, warmup=1, repeat=3)
    values.update(overrides)
    return ProfilerOptions(**values)  # type: ignore[arg-type]


def test_tiny_model_profile_loads_and_predicts(tmp_path: Path) -> None:
    arch = load_model_arch(str(TINY))
    profile = profile_model(arch, _options())
    folder = write_profile(profile, tmp_path / "tiny")
    loaded = read_profile(folder)
    meta = loaded.meta
    assert meta.source == "llmserve-profiler" and meta.device == "cpu"
    assert meta.num_layers == arch.num_layers and meta.tp == 1
    assert meta.provenance["torch"] == torch.__version__
    assert "measured_at" in meta.provenance and "power" not in meta.provenance
    assert set(loaded.dense) >= {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "layernorm"}
    assert set(loaded.per_sequence) == {"lm_head", "sampler"}
    model = ProfileLatencyModel(compile_profile(loaded), arch)
    # Monotone in tokens: take the running maximum of noisy single-core timings into
    # account by comparing points far apart.
    times = [model.iteration_time_s(BatchShape((n,), (0,))) for n in (16, 256, 2048)]
    assert all(t > 0 for t in times)
    assert times[0] < times[1] < times[2]
    each = np.array([16.0, 128.0])
    decode = model.decode_times_s(8, 8 * each, each, each)
    assert np.all(decode > 0)


def test_moe_model_has_a_moe_table(tmp_path: Path) -> None:
    arch = load_model_arch(str(tiny_moe_config(tmp_path)))
    grid = ProfileGrid(
        tokens=(1, 8),
        seqs=(1,),
        prefill_chunks=(16,),
        prefill_contexts=(0,),
        decode_batches=(1,),
        decode_contexts=(16, 32),
    )
    profile = profile_model(arch, _options(grid=grid, repeat=1, warmup=0))
    assert profile.moe is not None
    assert "moe" in profile.meta.sequence.layer and "gate_up_proj" not in profile.dense
    loaded = read_profile(write_profile(profile, tmp_path / "moe"))
    model = ProfileLatencyModel(compile_profile(loaded), arch)
    assert model.iteration_time_s(BatchShape((8,), (0,))) > 0


def test_tensor_parallel_shard_lists_collectives() -> None:
    arch = load_model_arch(str(TINY))
    profile = profile_model(
        arch, _options(tp=2, grid=ProfileGrid.quick().bounded(16, 16), repeat=1)
    )
    assert profile.meta.sequence.layer.count("all_reduce") == 2
    assert profile.meta.collective_bytes_per_token == arch.hidden_size * 4


def test_grid_and_options_validation() -> None:
    assert ProfileGrid(tokens=(4, 1, 4)).tokens == (1, 4)
    bounded = ProfileGrid().bounded(max_tokens=64, max_context=512)
    assert max(bounded.tokens) <= 64 and max(bounded.prefill_contexts) <= 512
    assert ProfileGrid().bounded(max_tokens=0).tokens == (1,)
    with pytest.raises(ValueError, match="tokens"):
        ProfileGrid(tokens=(0, 1))
    with pytest.raises(ValueError, match="dtype"):
        ProfilerOptions(dtype="fp8")
    with pytest.raises(ValueError, match="repeat"):
        ProfilerOptions(repeat=0)
    # decode attention needs two KV lengths: a bound keeps the two smallest and says so
    tight = ProfileGrid.quick().bounded(max_tokens=1, max_context=0)
    assert tight.decode_contexts == (16, 256) and tight.prefill_chunks == (16,)
    assert tight.above(1, 0) == ["prefill_chunks [16]", "decode_contexts [16, 256]"]
    with pytest.raises(ValueError, match=r"decode_contexts \(16,\): at least two"):
        ProfilerOptions(grid=ProfileGrid(decode_contexts=(16,)))


def test_cuda_request_without_gpu_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="CUDA"):
        profile_model(load_model_arch(str(TINY)), _options(device="cuda"))


def test_cli(tmp_path: Path) -> None:
    from llmserve_env.cli.main import main

    out = tmp_path / "cli-profile"
    result = CliRunner().invoke(
        main,
        [
            "profile",
            str(TINY),
            "-o",
            str(out),
            "--device",
            "cpu",
            "--dtype",
            "fp32",
            "--quick",
            "--max-tokens",
            "64",
            "--repeat",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--device-name",
            "my-cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_profile(out).meta.device == "my-cpu"
    assert "which the catalog lacks" in " ".join(result.output.split())
    # points the bounds could not drop are named
    assert "the grid keeps points above --max-tokens / --max-context" not in result.output
    bad = CliRunner().invoke(main, ["profile", "no-such-model", "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "unknown model" in bad.output
    # an output under a file is refused before any profiling
    (tmp_path / "afile").write_text("x")
    args = ["profile", str(TINY), "-o", str(tmp_path / "afile" / "sub"), "--device", "cpu"]
    bad = CliRunner().invoke(main, [*args, "--quick"])
    assert bad.exit_code == 2 and "is a file, not a folder" in bad.output
    assert "timing" not in bad.output.lower()


def test_tp_that_vllm_cannot_shard_is_refused(tmp_path: Path) -> None:
    arch = load_model_arch(str(TINY))  # 4 heads, 2 key/value heads
    assert arch.tensor_parallel_problem(1) is None
    assert arch.tensor_parallel_problem(4) is None  # KV heads replicated, 2 divides 4
    assert "4 attention heads are not divisible by tp 3" in str(arch.tensor_parallel_problem(3))
    with pytest.raises(ValueError, match="not divisible by tp 3"):
        profile_model(arch, ProfilerOptions(device="cpu", dtype="fp32", tp=3, grid=GRID))
    from llmserve_env.cli.main import main

    out = tmp_path / "p"
    args = ["profile", str(TINY), "-o", str(out), "--device", "cpu", "--quick", "--tp", "3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "not divisible by tp 3" in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [("tpu", "not a torch device; use auto, cpu, cuda"), ("xla", "only cuda and cpu")],
)
def test_unknown_device_names_the_choices(name: str, message: str) -> None:
    from llmserve_env.perf.profiler import resolve_torch_device

    with pytest.raises(ValueError, match=message):
        resolve_torch_device(torch, name)


def test_qwen3_layers_time_the_query_key_norm(tmp_path: Path) -> None:
    config = json.loads(TINY.read_text()) | {"architectures": ["Qwen3ForCausalLM"]}
    path = tmp_path / "tiny-qwen3.json"
    path.write_text(json.dumps(config))
    arch = load_model_arch(str(path))
    profile = profile_model(arch, _options())
    layer = profile.meta.sequence.layer
    assert layer.index("qkv_proj") + 1 == layer.index("qk_norm") == layer.index("rotary_emb") - 1
    assert np.all(profile.dense["qk_norm"].time_us > 0)
    plain = profile_model(load_model_arch(str(TINY)), _options())
    assert "qk_norm" not in plain.meta.sequence.layer and "qk_norm" not in plain.dense


def test_a_layer_the_memory_cannot_hold_is_refused_before_allocating(tmp_path: Path) -> None:
    config = json.loads(TINY.read_text()) | {"hidden_size": 10**12, "head_dim": 64}
    config["num_attention_heads"] = config["num_key_value_heads"] = 4
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(config))
    arch = load_model_arch(str(path))
    with pytest.raises(ValueError, match=r"one layer at tp 1 with its embedding and LM head needs"):
        profile_model(arch, _options())
    from llmserve_env.cli.main import main

    out = tmp_path / "p"
    result = CliRunner().invoke(main, ["profile", str(path), "-o", str(out), "--device", "cpu"])
    assert result.exit_code == 2 and "GiB free" in " ".join(result.output.split())
    assert not out.exists()


def test_device_flags(tmp_path: Path) -> None:
    from llmserve_env.cli.main import main
    from llmserve_env.perf.profiler import resolve_torch_device

    assert resolve_torch_device(torch, "CPU").type == "cpu"
    base = ["profile", str(TINY), "--quick", "--warmup", "0", "--repeat", "1", "--dtype", "fp32"]
    bad = CliRunner().invoke(main, [*base, "-o", str(tmp_path / "x"), "--device", "FOO"])
    assert bad.exit_code == 2 and "Invalid value for --device: device 'FOO'" in bad.output
    # A catalog alias is the catalog's device; CPU times under a GPU's name are noted.
    out = tmp_path / "alias"
    args = [*base, "-o", str(out), "--device", "cpu", "--device-name", "h100"]
    result = CliRunner().invoke(main, args)
    text = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "catalog lacks" not in text and "these are the CPU's times" in text
    assert read_profile(out).meta.provenance["device"]  # the CPU's model name


def test_timer_counts_points_whose_repeats_spread_widely() -> None:
    import itertools
    import time

    from llmserve_env.perf.profiler_torch import NOISY_MIN_REPEATS, Timer

    timer = Timer(torch, torch.device("cpu"), warmup=0, repeat=NOISY_MIN_REPEATS)
    timer(lambda: time.sleep(0.002))  # steady
    assert (timer.points, timer.noisy) == (1, 0)
    pauses = itertools.cycle([0.0005, 0.0005, 0.004, 0.004])  # half the calls 8x longer
    timer(lambda: time.sleep(next(pauses)))
    assert (timer.points, timer.noisy) == (2, 1)
    few = Timer(torch, torch.device("cpu"), warmup=0, repeat=NOISY_MIN_REPEATS - 1)
    few(lambda: time.sleep(next(pauses)))
    assert few.points == 0  # too few repeats to judge


def test_profile_records_how_many_points_were_noisy() -> None:
    profile = profile_model(load_model_arch(str(TINY)), _options(repeat=8))
    noisy = profile.meta.provenance["noisy_points"]
    assert noisy["of"] > 0 and 0 <= noisy["noisy"] <= noisy["of"]
    assert (
        "noisy_points" not in profile_model(load_model_arch(str(TINY)), _options()).meta.provenance
    )
