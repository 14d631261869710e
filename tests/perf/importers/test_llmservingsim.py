"""LLMServingSim (vLLM-0.19 profiler) import: the shared samples and malformed copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.comm import AlphaBetaComm
from llmserve_env.perf.compiled import analytical_collectives, compile_profile
from llmserve_env.perf.importers.llmservingsim import (
    find_tp_folders,
    import_llmservingsim,
    read_tp_folder,
)
from llmserve_env.perf.profile_format import read_profile, write_profile

PERF = Path("llmservingsim/current/perf")
LLAMA = PERF / "RTXPRO6000/meta-llama/Llama-3.1-8B/bf16"


def test_dense_llama(shared: Path) -> None:
    result = read_tp_folder(shared / LLAMA / "tp1")
    p = result.profile
    assert p.meta.device == "RTX-PRO-6000"
    assert p.meta.num_layers == 32 and p.meta.tp == 1
    assert p.meta.collective_bytes_per_token == 4096 * 2
    assert p.meta.sequence.layer == (
        "layernorm", "qkv_proj", "rotary_emb", "attention", "o_proj", "all_reduce",
        "layernorm", "gate_up_proj", "act_fn", "down_proj", "all_reduce",
    )  # fmt: skip
    # VocabParallelEmbedding all-reduces its output under tensor parallelism
    assert p.meta.sequence.prologue == ("embedding", "all_reduce")
    counts = p.meta.sequence.counts(32)
    assert counts["layernorm"] == 64 and counts["lm_head"] == 1 and counts["attention"] == 32
    assert counts["all_reduce"] == 2 * 32 + 1
    assert p.dense["qkv_proj"].time_us[0] == pytest.approx(35.8297)  # tokens=1 row
    assert p.attention is not None and len(p.attention) == 19364
    assert p.attention_skew is not None
    assert p.meta.skew_alpha_default == pytest.approx(0.0543)
    assert result.relative_dir == Path("RTX-PRO-6000/meta-llama/Llama-3.1-8B/bf16/tp1")
    assert not result.warnings


def test_embedding_all_reduce_is_charged_only_with_tensor_parallelism(shared: Path) -> None:
    link = analytical_collectives(2, AlphaBetaComm(16.0, 20e-6, efficiency=1.0))
    tp2 = read_tp_folder(shared / LLAMA / "tp2").profile.with_collectives(link)
    compiled = compile_profile(tp2)
    layers = tp2.meta.num_layers
    for tokens in (1, 128, 2048):
        dense = sum(
            count * float(np.interp(tokens, tp2.dense[op].x, tp2.dense[op].time_us))
            for op, count in tp2.meta.sequence.counts(layers).items()
            if op in tp2.dense
        )
        size = tokens * tp2.meta.collective_bytes_per_token
        curve = link[("all_reduce", 2)]
        one = float(np.interp(size, curve.x, curve.time_us))
        assert compiled.per_token(tokens) == pytest.approx(dense + (2 * layers + 1) * one)
    # a single GPU reduces nothing: the extra entry costs nothing at tp 1
    tp1 = read_tp_folder(shared / LLAMA / "tp1").profile
    dense1 = sum(
        count * float(np.interp(2048, tp1.dense[op].x, tp1.dense[op].time_us))
        for op, count in tp1.meta.sequence.counts(layers).items()
        if op in tp1.dense
    )
    assert compile_profile(tp1).per_token(2048) == pytest.approx(dense1)


def test_logits_all_gather_is_charged_per_sequence_only_with_tensor_parallelism(
    shared: Path,
) -> None:
    link = analytical_collectives(2, AlphaBetaComm(16.0, 20e-6, efficiency=1.0))
    tp2 = read_tp_folder(shared / LLAMA / "tp2").profile
    # LogitsProcessor all-gathers num_seqs x vocab logits (Llama-3.1: 128,256, BF16)
    assert tp2.meta.sequence.head == ("final_layernorm", "lm_head", "all_gather@seq", "sampler")
    assert tp2.meta.collective_bytes_per_seq == 128_256 * 2
    compiled = compile_profile(tp2.with_collectives(link))
    gather = link[("all_gather", 2)]
    for seqs in (1, 64, 128):
        per_seq = sum(
            float(np.interp(seqs, tp2.per_sequence[op].x, tp2.per_sequence[op].time_us))
            for op in ("lm_head", "sampler")
        )
        size = seqs * tp2.meta.collective_bytes_per_seq
        one = float(np.interp(size, gather.x, gather.time_us))
        assert compiled.per_seq(seqs) == pytest.approx(per_seq + one)
    tp1 = read_tp_folder(shared / LLAMA / "tp1").profile
    lm_head = tp1.per_sequence["lm_head"]
    sampler = tp1.per_sequence["sampler"]
    expected = float(np.interp(64, lm_head.x, lm_head.time_us)) + float(
        np.interp(64, sampler.x, sampler.time_us)
    )
    assert compile_profile(tp1).per_seq(64) == pytest.approx(expected)


def test_skew_keeps_every_skew_rate_bucket(shared: Path, tmp_path: Path) -> None:
    profile = read_tp_folder(shared / LLAMA / "tp1").profile
    skew = profile.attention_skew
    assert skew is not None and skew.decode_skew_rate is not None
    assert len(skew.alpha) == 3982  # every row of skew_fit.csv
    # the upper edges of skew_rate_bins [-0.01, 0.05, 0.15, 0.4, 0.7, 1.01]
    assert sorted(set(skew.decode_skew_rate.tolist())) == [0.05, 0.15, 0.4, 0.7, 1.01]
    keys = np.column_stack(
        (
            skew.prefill_chunk_tokens,
            skew.prefill_context_tokens,
            skew.num_decodes,
            skew.decode_max_context_tokens,
            skew.decode_skew_rate,
        )
    )
    # skew_fit.csv: 0,n<=128,sr<=40%,kvB<=16k,kp=0,0.026 and 0,n<=128,sr>70%,kvB<=16k,kp=0,0.1023
    for rate, alpha in ((0.4, 0.026), (1.01, 0.1023)):
        (row,) = np.flatnonzero((keys == [0, 0, 128, 16384, rate]).all(axis=1))
        assert skew.alpha[row] == pytest.approx(alpha)
    # written, read back and compiled: a batch of 100 decodes, the longest at 9,000
    compiled = compile_profile(read_profile(write_profile(profile, tmp_path / "p")))
    assert compiled.skew is not None
    assert compiled.skew(0.0, 0.0, 100.0, 9000.0, 0.3) == pytest.approx(0.026)
    assert compiled.skew(0.0, 0.0, 100.0, 9000.0, 0.8) == pytest.approx(0.1023)


def test_moe_and_write_read(shared: Path, tmp_path: Path) -> None:
    (result,) = import_llmservingsim(
        shared / PERF / "RTXPRO6000/Qwen/Qwen3-30B-A3B-Instruct-2507/bf16/tp1"
    )
    p = result.profile
    assert p.moe is not None and "moe" in p.meta.sequence.layer
    assert "qk_norm" in p.meta.sequence.layer
    back = read_profile(write_profile(p, tmp_path / "out"))
    assert back.moe is not None
    np.testing.assert_allclose(back.moe.time_us, p.moe.time_us)
    compiled = compile_profile(back)
    assert compiled.moe is not None and compiled.moe_count == 48


def test_finds_every_folder(shared: Path) -> None:
    found = find_tp_folders(shared / PERF)
    assert len(found) == 7  # RTX 4090: tp1; RTX PRO 6000: tp1 and tp2 of three models
    assert all(f.name.startswith("tp") for f in found)


@pytest.fixture()
def copy(shared: Path, tmp_path: Path) -> Path:
    """A writable copy of the RTX 4090 profile (small enough to copy per test)."""
    src = shared / PERF / "RTX4090/meta-llama/Llama-3.1-8B/bf16"
    dst = tmp_path / "RTX4090/meta-llama/Llama-3.1-8B/bf16"
    shutil.copytree(src, dst)
    return dst / "tp1"


def _replace_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def test_bad_number_has_file_line_and_column(copy: Path) -> None:
    _replace_line(copy / "dense.csv", 6, "act_fn,6,slow")
    with pytest.raises(
        DataFileError, match=r"dense\.csv:7: column 'time_us': expected a number, got 'slow'"
    ):
        read_tp_folder(copy)


def test_short_row(copy: Path) -> None:
    _replace_line(copy / "attention.csv", 2, "0,0,1")
    with pytest.raises(
        DataFileError, match=r"attention\.csv:3: row has 3 field\(s\) but the header has 5"
    ):
        read_tp_folder(copy)


def test_missing_column(copy: Path) -> None:
    _replace_line(copy / "per_sequence.csv", 0, "layer,seqs,time_us")
    with pytest.raises(DataFileError, match=r"per_sequence\.csv:1: missing column\(s\) sequences"):
        read_tp_folder(copy)


def test_duplicate_grid_point(copy: Path) -> None:
    lines = (copy / "attention.csv").read_text().splitlines()
    (copy / "attention.csv").write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataFileError, match=r"attention\.csv:\d+: duplicate grid point"):
        read_tp_folder(copy)


def test_missing_attention(copy: Path) -> None:
    (copy / "attention.csv").unlink()
    with pytest.raises(DataFileError, match="no attention table"):
        read_tp_folder(copy)


@pytest.fixture()
def skew_copy(shared: Path, copy: Path) -> Path:
    """The RTX 4090 copy with its skew_fit enabled (bucket axes of the RTX PRO 6000 one)."""
    pro = yaml.safe_load((shared / LLAMA / "meta.yaml").read_text())
    meta = copy.parent / "meta.yaml"
    data = yaml.safe_load(meta.read_text())
    data["skew_fit"] = {
        "enabled": True,
        "bucket_axes": pro["skew_fit"]["bucket_axes"],
        "per_tp": {1: {"alpha_default": 0.05}},
    }
    meta.write_text(yaml.safe_dump(data))
    return copy


def test_skew_rate_label_not_in_the_bucket_axes(skew_copy: Path) -> None:
    assert read_tp_folder(skew_copy).profile.attention_skew is not None
    _replace_line(skew_copy / "skew_fit.csv", 4, "0,n<=128,sr<=45%,kvB<=16k,kp=0,0.0163,2")
    with pytest.raises(
        DataFileError,
        match=r"skew_fit\.csv:5: column 'skew_rate_label': label 'sr<=45%' is not in "
        r"meta\.yaml skew_fit\.bucket_axes \(allowed: sr<=5%, sr<=15%, sr<=40%, sr<=70%, sr>70%\)",
    ):
        read_tp_folder(skew_copy)


def test_skew_rate_bins_not_increasing(skew_copy: Path) -> None:
    meta = skew_copy.parent / "meta.yaml"
    data = yaml.safe_load(meta.read_text())
    data["skew_fit"]["bucket_axes"]["skew_rate_bins"] = [-0.01, 0.05, 0.4, 0.15, 0.7, 1.01]
    meta.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFileError, match=r"meta\.yaml: bucket axes: bins .* are not increasing"):
        read_tp_folder(skew_copy)


def test_meta_yaml_error(copy: Path) -> None:
    (copy.parent / "meta.yaml").write_text("hardware: [unclosed\n")
    with pytest.raises(DataFileError, match=r"meta\.yaml:\d+: YAML error"):
        read_tp_folder(copy)


def test_unknown_model(copy: Path) -> None:
    meta = copy.parent / "meta.yaml"
    text = meta.read_text().replace("model: meta-llama/Llama-3.1-8B", "model: acme/Nope-1B")
    meta.write_text(text)
    with pytest.raises(DataFileError, match="not in the model catalog"):
        read_tp_folder(copy)


def test_missing_operators_are_refused_not_left_out(copy: Path) -> None:
    """A header-only dense.csv used to import with every dense operator dropped (a
    prefill of 6 ms instead of 83 ms); an operator of the layer sequence that no table
    has is an error, as in the paper importer."""
    lines = (copy / "dense.csv").read_text().splitlines()
    (copy / "dense.csv").write_text("\n".join(line for line in lines if "qkv_proj" not in line))
    with pytest.raises(DataFileError, match=r"tp1: operator\(s\) qkv_proj of the .* sequence"):
        read_tp_folder(copy)
    (copy / "dense.csv").write_text(lines[0] + "\n")
    with pytest.raises(DataFileError, match=r"in neither dense\.csv nor per_sequence\.csv"):
        read_tp_folder(copy)


def test_attention_without_decode_rows_is_refused(copy: Path, tmp_path: Path) -> None:
    """Header-only (or prefill-only) attention imported, then crashed the run."""
    lines = (copy / "attention.csv").read_text().splitlines()
    header = lines[0].split(",")
    n_decode = header.index("n_decode")
    prefill_only = [lines[0], *(r for r in lines[1:] if r.split(",")[n_decode] == "0")]
    (copy / "attention.csv").write_text("\n".join(prefill_only) + "\n")
    profile = read_tp_folder(copy).profile
    out = tmp_path / "out"
    with pytest.raises(
        DataFileError,
        match=r"out: not a valid profile, nothing written: attention\.csv: needs prefill rows "
        r"\(prefill_chunk_tokens > 0\) and decode rows \(num_decodes > 0\); it has \d+ and 0",
    ):
        write_profile(profile, out)
    assert not out.exists()


def test_bad_meta_values_are_errors_not_tracebacks(skew_copy: Path) -> None:
    meta = skew_copy.parent / "meta.yaml"
    good = yaml.safe_load(meta.read_text())
    cases = {
        "n_bins": (["a", "b"], r"skew_fit\.bucket_axes: missing or bad"),
        "alpha": ("high", r"alpha_default: expected a number, got 'high'"),
        "per_tp": ([1, 2], r"skew_fit\.per_tp: expected a mapping"),
    }
    for what, (value, message) in cases.items():
        data = yaml.safe_load(yaml.safe_dump(good))
        if what == "n_bins":
            data["skew_fit"]["bucket_axes"]["n_bins"] = value
        elif what == "alpha":
            data["skew_fit"]["per_tp"][1]["alpha_default"] = value
        else:
            data["skew_fit"]["per_tp"] = value
        meta.write_text(yaml.safe_dump(data))
        with pytest.raises(DataFileError, match=message):
            read_tp_folder(skew_copy)
    meta.write_bytes(b"hardware: RTX4090\nmodel: \xff\n")
    with pytest.raises(DataFileError, match=r"meta\.yaml: not UTF-8 text"):
        read_tp_folder(skew_copy)
    data = yaml.safe_load(yaml.safe_dump(good))
    data["variant"] = "int4-awq"
    meta.write_text(yaml.safe_dump(data))
    with pytest.raises(DataFileError, match=r"dtype 'int4' is not one of bf16, fp16, fp8, fp32"):
        read_tp_folder(skew_copy)


def test_a_foreign_folder_used_as_perf_is_checked_like_a_written_one(
    copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`perf:` converts LLMServingSim folders in memory; a prefill-only attention table
    used to load and crash the first decode (IndexError)."""
    from llmserve_env.perf.factory import load_profile_tables
    from llmserve_env.perf.hardware import resolve_device
    from llmserve_env.perf.model_arch import load_model_arch

    monkeypatch.setenv("LLMSERVE_CACHE", str(tmp_path / "cache"))
    lines = (copy / "attention.csv").read_text().splitlines()
    n_decode = lines[0].split(",").index("n_decode")
    kept = [lines[0], *(r for r in lines[1:] if r.split(",")[n_decode] == "0")]
    (copy / "attention.csv").write_text("\n".join(kept) + "\n")
    arch = load_model_arch("meta-llama/Llama-3.1-8B")
    with pytest.raises(
        DataFileError, match=r"tp1: converts to an invalid profile: attention\.csv: needs"
    ):
        load_profile_tables(copy, arch, resolve_device("RTX 4090"), 1, "bf16")
