"""The profile format: write/read round trip and clear errors for malformed folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.profile_format import (
    is_profile_folder,
    profile_digest,
    read_profile,
    write_profile,
)
from tests.perf.crafted import SKEW_BY_RATE, crafted_profile


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    return write_profile(crafted_profile(tp=2, skew_alpha=0.5, moe=True), tmp_path / "p")


def test_round_trip(folder: Path) -> None:
    original = crafted_profile(tp=2, skew_alpha=0.5, moe=True)
    back = read_profile(folder)
    assert back.meta.sequence == original.meta.sequence
    assert back.meta.tp == 2 and back.meta.num_layers == 2
    assert back.meta.provenance["notes"] == "hand-computable test profile"
    for op, c in original.dense.items():
        np.testing.assert_allclose(back.dense[op].time_us, c.time_us)
    assert back.attention is not None and original.attention is not None
    assert len(back.attention) == len(original.attention)
    np.testing.assert_allclose(np.sort(back.attention.time_us), np.sort(original.attention.time_us))
    assert back.attention_skew is not None and back.moe is not None
    assert ("all_reduce", 2) in back.collectives
    assert is_profile_folder(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "attention.csv",
        "attention_skew.csv",
        "collectives.csv",
        "dense.csv",
        "meta.yaml",
        "moe.csv",
        "per_sequence.csv",
    ]


def test_digest_changes_with_content(folder: Path) -> None:
    before = profile_digest(folder)
    (folder / "dense.csv").write_text(
        (folder / "dense.csv").read_text().replace("10.1", "10.2"), encoding="utf-8"
    )
    assert profile_digest(folder) != before


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_bad_number_names_file_line_and_column(folder: Path) -> None:
    lines = (folder / "dense.csv").read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",fast"
    (folder / "dense.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataFileError, match=r"dense\.csv:4: column 'time_us': expected a number, got 'fast'"
    ):
        read_profile(folder)


def test_missing_column(folder: Path) -> None:
    _edit(folder / "per_sequence.csv", "num_seqs", "seqs")
    with pytest.raises(DataFileError, match=r"per_sequence\.csv:1: missing column\(s\) num_seqs"):
        read_profile(folder)


def test_duplicate_row(folder: Path) -> None:
    text = (folder / "dense.csv").read_text()
    second = text.splitlines()[1]
    (folder / "dense.csv").write_text(text + second + "\n")
    with pytest.raises(
        DataFileError, match=r"duplicate row \(op=embedding, num_tokens=1\.0\); first at line 2"
    ):
        read_profile(folder)


def test_negative_time(folder: Path) -> None:
    lines = (folder / "moe.csv").read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",-1"
    (folder / "moe.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=r"moe\.csv:3: column 'time_us': expected a value >= 0"):
        read_profile(folder)


def test_empty_attention_batch_row(folder: Path) -> None:
    with (folder / "attention.csv").open("a") as f:
        f.write("0,0,0,0,1.0\n")
    with pytest.raises(DataFileError, match="empty batch"):
        read_profile(folder)


def test_unknown_meta_key_names_its_line(folder: Path) -> None:
    _edit(folder / "meta.yaml", "num_layers: 2", "num_layers: 2\nnum_heads: 32")
    with pytest.raises(DataFileError, match=r"meta\.yaml:\d+: num_heads: unknown key"):
        read_profile(folder)


def test_wrong_format_version(folder: Path) -> None:
    _edit(folder / "meta.yaml", "format_version: 1", "format_version: 9")
    with pytest.raises(DataFileError, match="reads version 1, got 9"):
        read_profile(folder)


def test_operator_in_no_table(folder: Path) -> None:
    _edit(folder / "meta.yaml", "- proj", "- gate_proj")
    with pytest.raises(DataFileError, match="operator 'gate_proj' is in no table"):
        read_profile(folder)


def test_skew_rate_key_round_trip(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE), tmp_path / "p")
    header = (folder / "attention_skew.csv").read_text().splitlines()[0]
    assert header == (
        "prefill_chunk_tokens,prefill_context_tokens,num_decodes,"
        "decode_max_context_tokens,decode_skew_rate,alpha"
    )
    back = read_profile(folder).attention_skew
    assert back is not None and back.decode_skew_rate is not None
    np.testing.assert_array_equal(back.decode_skew_rate, [0.15, 0.4, 1.0, 0.15, 0.4, 1.0])
    np.testing.assert_array_equal(back.alpha, [0.1, 0.3, 0.6, 0.1, 0.3, 0.6])


def test_skew_without_rate_key_reads_as_before(folder: Path) -> None:
    back = read_profile(folder).attention_skew
    assert back is not None and back.decode_skew_rate is None


def test_negative_skew_rate(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE), tmp_path / "p")
    _edit(folder / "attention_skew.csv", ",0.4,", ",-0.4,")
    with pytest.raises(
        DataFileError,
        match=r"attention_skew\.csv:3: column 'decode_skew_rate': expected a value >= 0",
    ):
        read_profile(folder)


def test_duplicate_skew_row_with_rate_key(tmp_path: Path) -> None:
    folder = write_profile(crafted_profile(skew_by_rate=SKEW_BY_RATE), tmp_path / "p")
    _edit(folder / "attention_skew.csv", ",0.4,", ",0.15,")
    with pytest.raises(DataFileError, match=r"attention_skew\.csv:3: duplicate row"):
        read_profile(folder)


def test_not_a_profile_folder(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"meta\.yaml not found"):
        read_profile(tmp_path)
    assert not is_profile_folder(tmp_path)


def test_per_sequence_collective_round_trip(tmp_path: Path) -> None:
    import dataclasses

    import yaml

    from llmserve_env.perf.profile_format import LayerSequence, collective_of
    from tests.perf.crafted import line

    base = crafted_profile(tp=2)
    seq = base.meta.sequence
    profile = dataclasses.replace(
        base,
        meta=dataclasses.replace(
            base.meta,
            sequence=LayerSequence(seq.prologue, seq.layer, ("lm_head", "all_gather@seq")),
            collective_bytes_per_seq=303_872,
        ),
        collectives={**base.collectives, ("all_gather", 2): line([1024, 1 << 24], 5.0, 1e-4)},
    )
    folder = write_profile(profile, tmp_path / "p")
    meta = yaml.safe_load((folder / "meta.yaml").read_text())
    assert meta["collective_bytes_per_seq"] == 303_872
    back = read_profile(folder)
    assert back.meta.collective_bytes_per_seq == 303_872
    assert back.meta.sequence.head == ("lm_head", "all_gather@seq")
    assert back.table_of("all_gather@seq") == "collectives"
    assert collective_of("all_gather@seq") == ("all_gather", True)
    assert collective_of("all_reduce") == ("all_reduce", False)
    assert collective_of("lm_head") is None and collective_of("lm_head@seq") is None
    # profiles without the key do not write it
    plain = write_profile(crafted_profile(tp=2), tmp_path / "plain")
    assert "collective_bytes_per_seq" not in yaml.safe_load((plain / "meta.yaml").read_text())
    assert read_profile(plain).meta.collective_bytes_per_seq == 0


def test_a_refused_write_keeps_the_existing_profile(tmp_path: Path) -> None:
    """write_profile checks first and moves files into place only then: a profile that
    would not load leaves the folder as it was (it used to delete the old files first)."""
    from dataclasses import replace

    from llmserve_env.perf.profile_format import AttentionPoints, Curve

    folder = write_profile(crafted_profile(), tmp_path / "p")
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    good = crafted_profile()
    a = good.attention
    assert a is not None
    decode = a.num_decodes > 0
    one_context = AttentionPoints(
        *(
            c[~decode | (a.decode_context_tokens == a.decode_context_tokens[decode].min())]
            for c in (
                a.prefill_chunk_tokens,
                a.prefill_context_tokens,
                a.num_decodes,
                a.decode_context_tokens,
                a.time_us,
            )
        )
    )
    bad = {
        "one decode context": (
            replace(good, attention=one_context),
            r"attention\.csv: decode rows at one decode_context_tokens value only",
        ),
        "negative time": (
            replace(good, dense={**good.dense, "proj": Curve(np.array([1.0]), np.array([-1.0]))}),
            r"dense\.csv:\d+: column 'time_us'",
        ),
    }
    for profile, message in bad.values():
        with pytest.raises(
            DataFileError, match=rf"p: not a valid profile, nothing written: {message}"
        ):
            write_profile(profile, folder)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataFileError, match=r"file: exists and is not a folder"):
        write_profile(good, tmp_path / "file")
    with pytest.raises(DataFileError, match=r"cannot create the folder"):
        write_profile(good, tmp_path / "file" / "sub")
