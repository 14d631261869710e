"""LLMServingSim 2.0 paper-artifact import."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.importers.llmservingsim_paper import read_tp_folder

MODELS = Path("llmservingsim/paper-v0/perf_models")


def test_a6000_llama(shared: Path) -> None:
    result = read_tp_folder(shared / MODELS / "A6000/meta-llama/Llama-3.1-8B/tp1")
    p = result.profile
    assert p.meta.device == "RTX-A6000" and p.meta.source == "llmservingsim-paper"
    assert "lm_head" in p.per_sequence and "q_proj" in p.dense
    assert p.dense["embedding"].x[0] == 1
    compiled = compile_profile(p)
    assert compiled.attention_count == 32
    # latency(ns) / 1000: lm_head for one sequence is 1406276 ns on the A6000
    assert compiled.per_seq(1) == pytest.approx(1406.276)


def test_moe_block_is_derived(shared: Path) -> None:
    p = read_tp_folder(shared / MODELS / "A6000/microsoft/Phi-mini-MoE-instruct/tp1").profile
    assert p.moe is not None and "moe" in p.meta.sequence.layer


def test_profile_without_attention_predictions_is_refused(shared: Path) -> None:
    with pytest.raises(DataFileError, match="no attention predictions"):
        read_tp_folder(shared / MODELS / "H100/meta-llama/Llama-3.1-8B/tp1")


def test_tpu_fused_operators_are_left_out_with_a_warning(shared: Path) -> None:
    result = read_tp_folder(shared / MODELS / "TPU-v6e-1/meta-llama/Llama-3.1-8B/tp1")
    assert "k_proj" not in result.profile.meta.sequence.layer
    assert any("fused by XLA" in w for w in result.warnings)


def test_malformed_layers_csv(shared: Path, tmp_path: Path) -> None:
    src = shared / MODELS / "A6000/meta-llama/Llama-3.1-8B/tp1"
    dst = tmp_path / "A6000/meta-llama/Llama-3.1-8B/tp1"
    dst.mkdir(parents=True)
    shutil.copytree(src / "predictions", dst / "predictions")
    lines = (src / "layers.csv").read_text().splitlines()[:40]
    lines[9] = "q_proj,3,0,1,abc"
    (dst / "layers.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFileError, match=r"layers\.csv:10: column 'latency\(ns\)': expected a number"
    ):
        read_tp_folder(dst)
    lines[9] = "q_proj,3,512,1,100"
    (dst / "layers.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=r"layers\.csv:10: column 'kv_cache'"):
        read_tp_folder(dst)


def test_rows_of_another_tp_are_refused(shared: Path, tmp_path: Path) -> None:
    src = shared / MODELS / "A6000/meta-llama/Llama-3.1-8B/tp1"
    dst = tmp_path / "A6000/meta-llama/Llama-3.1-8B/tp1"
    shutil.copytree(src, dst)
    lines = (dst / "layers.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",0,1,", ",0,4,", 1)
    (dst / "layers.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFileError, match=r"layers\.csv:4: column 'tp_size': 4 in the folder of tp 1 \(tp1\)"
    ):
        read_tp_folder(dst)
