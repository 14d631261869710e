"""Model architectures from HuggingFace config.json files: the catalog and bad configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.model_arch import load_model_arch, model_catalog, models_dir

TINY = models_dir() / "llmserve" / "tiny-llama.json"


def test_every_catalog_model_loads() -> None:
    for name in model_catalog():
        arch = load_model_arch(name)
        assert arch.num_heads % arch.num_kv_heads == 0 and arch.head_dim % 2 == 0


def test_llmservingsim_model_configs_load(shared: Path) -> None:
    """The full HuggingFace configs LLMServingSim ships (sliding-window and bias keys,
    Qwen3-MoE's empty ``mlp_only_layers``) load as the catalog's do."""
    configs = sorted((shared / "llmservingsim").glob("*/model_config/*/*.json"))
    assert len(configs) >= 10
    for path in configs:
        arch = load_model_arch(str(path))
        catalog = load_model_arch(f"{path.parent.name}/{path.stem}")
        assert (arch.num_layers, arch.hidden_size, arch.num_experts) == (
            catalog.num_layers,
            catalog.hidden_size,
            catalog.num_experts,
        ), path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_attention_heads": 0}, r"num_attention_heads: must be at least 1, got 0"),
        ({"num_key_value_heads": 0}, r"num_key_value_heads: must be at least 1, got 0"),
        ({"num_attention_heads": -4}, r"num_attention_heads: must be at least 1"),
        ({"num_attention_heads": 4.7}, r"num_attention_heads: expected a whole number, got 4\.7"),
        ({"hidden_size": True}, r"hidden_size: expected a whole number, got True"),
        ({"hidden_size": 0}, r"hidden_size: must be at least 1"),
        ({"vocab_size": 0}, r"vocab_size: must be at least 1"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers: must be at least 1"),
        ({"intermediate_size": 0}, r"intermediate_size: must be at least 1"),
        ({"num_key_value_heads": 3}, r"num_key_value_heads \(3\) must divide"),
        ({"head_dim": 7}, r"head_dim \(7\) must be even"),
        ({"num_local_experts": 4}, r"num_experts_per_tok: missing \(the model has 4 experts\)"),
        (
            {"num_local_experts": 4, "num_experts_per_tok": 5},
            r"num_experts_per_tok must be between 1 and the 4 experts, got 5",
        ),
        ({"architectures": "LlamaForCausalLM"}, r"architectures: expected a list"),
        ({"vocab_size": None}, r"model config lacks vocab_size$"),
        ({"vocab_size": float("nan")}, r"vocab_size: expected a whole number, got nan"),
        ({"hidden_size": float("inf")}, r"hidden_size: expected a whole number, got inf"),
        (
            {"tie_word_embeddings": "false"},
            r"tie_word_embeddings: expected true or false, got 'false'",
        ),
        ({"intermediate_size": None}, r"model config lacks intermediate_size / ffn_dim / n_inner$"),
        (
            {"shared_expert_intermediate_size": 5632},
            r"the simulator does not model shared_expert_intermediate_size 5632: shared experts",
        ),
        (
            {"n_shared_experts": 2},
            r"the simulator does not model n_shared_experts 2: shared experts",
        ),
        (
            {"kv_lora_rank": 512},
            r"the simulator does not model kv_lora_rank 512: multi-head latent attention",
        ),
        (
            {"num_local_experts": 4, "num_experts_per_tok": 2, "mlp_only_layers": [0]},
            r"the simulator does not model mlp_only_layers: dense layers among",
        ),
        (
            {"num_local_experts": 4, "num_experts_per_tok": 2, "decoder_sparse_step": 2},
            r"the simulator does not model decoder_sparse_step 2: dense layers among",
        ),
        (
            {"num_local_experts": 4, "num_experts_per_tok": 2, "first_k_dense_replace": 3},
            r"the simulator does not model first_k_dense_replace 3: leading dense layers",
        ),
        (
            {"num_local_experts": 4, "num_experts_per_tok": 2, "intermediate_size": None},
            r"model config lacks moe_intermediate_size / intermediate_size / ffn_dim$",
        ),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, change: dict, message: str) -> None:
    cfg = json.loads(TINY.read_text())
    cfg.update(change)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(DataFileError, match=rf"config\.json: {message}"):
        load_model_arch(str(path))


def test_width_must_split_over_the_heads_without_head_dim(tmp_path: Path) -> None:
    cfg = json.loads(TINY.read_text())
    cfg.pop("head_dim", None)
    cfg["hidden_size"] = cfg["num_attention_heads"] * 8 + 1
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    with pytest.raises(DataFileError, match=r"must divide hidden_size"):
        load_model_arch(str(path))


def test_unreadable_configs_name_the_file(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"model_type": "llama", "name": "caf\xe9"}')
    with pytest.raises(DataFileError, match=r"latin1\.json: not UTF-8 text \(byte 36\)"):
        load_model_arch(str(latin1))
    as_yaml = tmp_path / "tiny.yaml"
    as_yaml.write_text(TINY.read_text())
    with pytest.raises(DataFileError, match=r"tiny\.yaml: a model config is a HuggingFace"):
        load_model_arch(str(as_yaml))


def test_gpt2_style_n_inner_null_is_four_times_the_width(tmp_path: Path) -> None:
    cfg = json.loads(TINY.read_text())
    cfg.pop("intermediate_size")
    cfg["n_inner"] = None
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert load_model_arch(str(path)).intermediate_size == 4 * cfg["hidden_size"]


def test_qwen3_normalises_queries_and_keys() -> None:
    assert load_model_arch("Qwen/Qwen3-32B").qk_norm
    assert load_model_arch("Qwen/Qwen3-30B-A3B-Instruct-2507").qk_norm
    assert not load_model_arch("meta-llama/Llama-3.1-8B").qk_norm


def test_a_multimodal_wrapper_of_qwen3_normalises_queries_and_keys(tmp_path: Path) -> None:
    """The language model of a vision-language config sits in ``text_config``; whether it
    is Qwen3's is told by any class in ``architectures`` or by either ``model_type``."""
    text = json.loads((models_dir() / "Qwen/Qwen3-32B.json").read_text())
    del text["architectures"]  # a text_config names no class
    llama = json.loads((models_dir() / "meta-llama/Llama-3.1-8B.json").read_text())
    cases = {
        "by-class": ({"architectures": ["Qwen3VLForConditionalGeneration"]}, text, True),
        "second-class": ({"architectures": ["Wrapper", "Qwen3ForCausalLM"]}, text, True),
        "by-type": ({"architectures": ["Wrapper"], "model_type": "qwen3_vl"}, text, True),
        "text-type": (
            {"architectures": ["Wrapper"]},
            {**text, "model_type": "qwen3_vl_text"},
            True,
        ),
        "outer-class": (  # the text model names its own class; the wrapper's decides
            {"architectures": ["Qwen3VLForConditionalGeneration"]},
            {**text, "architectures": ["Qwen3VLTextModel"]},
            True,
        ),
        "type-list": ({"architectures": ["Wrapper"], "model_type": ["qwen3"]}, text, False),
        "llama": (
            {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"},
            {k: v for k, v in llama.items() if k != "architectures"},
            False,
        ),
    }
    for name, (outer, inner, expected) in cases.items():
        path = tmp_path / name / "config.json"
        path.parent.mkdir()
        path.write_text(json.dumps({**outer, "text_config": inner}))
        assert load_model_arch(str(path)).qk_norm is expected, name


def test_layout_keys_only_matter_with_experts(tmp_path: Path) -> None:
    cfg = json.loads(TINY.read_text()) | {"moe_layer_freq": 2, "kv_lora_rank": 0}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert not load_model_arch(str(path)).is_moe  # a dense model, no latent attention
    # An integer beyond any float loads (the profiler's memory check refuses it) rather
    # than crashing the finiteness check.
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps(json.loads(TINY.read_text()) | {"vocab_size": 10**400}))
    assert load_model_arch(str(huge)).vocab_size == 10**400
