"""Vidur import: compute and network profiles, roofline fills, malformed files."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.importers.vidur import import_vidur

VIDUR = Path("profiles/vidur")


def test_tp2_with_network(shared: Path) -> None:
    result = import_vidur(
        shared / VIDUR / "compute/h100/meta-llama/Llama-2-7b-hf/mlp.csv",
        model="meta-llama/Llama-2-7b-hf",
        device=resolve_device("H100"),
        tp=2,
        network=shared / VIDUR / "network/h100_pairwise_nvlink",
    )
    p = result.profile
    assert p.meta.source == "vidur" and p.meta.tp == 2
    assert ("all_reduce", 2) in p.collectives
    assert p.meta.sequence.layer.count("add") == 2
    assert any("roofline" in w for w in result.warnings)
    compiled = compile_profile(p)
    assert compiled.per_token(4096) > compiled.per_token(1) > 0


def test_missing_tp_degree(shared: Path) -> None:
    with pytest.raises(
        DataFileError, match=r"no rows for 3 tensor-parallel workers; the file has \[1, 2, 4, 8\]"
    ):
        import_vidur(
            shared / VIDUR / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv",
            model="meta-llama/Meta-Llama-3-8B",
            device=resolve_device("A100"),
            tp=3,
        )


def test_malformed_row(shared: Path, tmp_path: Path) -> None:
    src = shared / VIDUR / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"
    lines = src.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[5].split(",")
    fields[header.index("time_stats.emb.median")] = "n/a"
    lines[5] = ",".join(fields)
    bad = tmp_path / "mlp.csv"
    bad.write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(DataFileError, match=r"mlp\.csv:6: column 'time_stats\.emb\.median'"):
        import_vidur(bad, model="meta-llama/Meta-Llama-3-8B", device=resolve_device("A100"), tp=1)
