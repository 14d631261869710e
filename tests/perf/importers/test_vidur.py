"""Vidur import: compute and network profiles, roofline fills, malformed files."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.comm import CollectiveTable
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
    # the fills say which family's fitted constants they used
    assert "lm_head filled by roofline (nvidia-hopper calibration)" in p.meta.provenance["notes"]
    assert any("roofline (nvidia-hopper calibration)" in w for w in result.warnings)
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


def test_network_keeps_the_single_node_rows(shared: Path) -> None:
    """``a100_dgx`` times 4 GPUs on one node and 2 + 2 over the network; the instance's
    all-reduce is the single-node one."""
    net = shared / VIDUR / "network/a100_dgx"
    size = 31195136
    with (net / "all_reduce.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["num_workers"] == "4"]
    ms = {
        node: float(np.median([float(r["time_stats.all_reduce.median"]) for r in group]))
        for node in ("4", "2")
        if (group := [r for r in rows if r["devices_per_node"] == node and int(r["size"]) == size])
    }
    assert ms["2"] > 10 * ms["4"]  # the inter-node rows the import must leave out
    result = import_vidur(
        shared / VIDUR / "compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv",
        model="meta-llama/Llama-2-70b-hf",
        device=resolve_device("H100"),
        tp=4,
        network=net,
    )
    curve = result.profile.collectives[("all_reduce", 4)]
    i = int(np.flatnonzero(curve.x == size)[0])
    assert curve.time_us[i] == pytest.approx(ms["4"] * 1e3)
    table = CollectiveTable.from_vidur(net)
    # The simulator's own loader reads the same rows (it keeps its curve monotone).
    assert table.time_s("all_reduce", size, 4) == pytest.approx(ms["4"] * 1e-3, rel=0.05)
    # An A100 network under an H100 profile is allowed, and said.
    assert any("looks measured on A100, not H100-SXM" in w for w in result.warnings)


def test_file_of_another_model_is_refused(shared: Path) -> None:
    with pytest.raises(DataFileError, match=r"column n_head is \[64\], but .* has num_heads 32"):
        import_vidur(
            shared / VIDUR / "compute/h100/meta-llama/Llama-2-70b-hf/mlp.csv",
            model="meta-llama/Llama-3.1-8B",
            device=resolve_device("H100"),
            tp=1,
        )


def test_network_zero_time_is_refused(shared: Path, tmp_path: Path) -> None:
    lines = (shared / VIDUR / "network/h100_dgx/all_reduce.csv").read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[3].split(",")
    fields[header.index("time_stats.all_reduce.median")] = "0"
    (tmp_path / "all_reduce.csv").write_text("\n".join([lines[0], *lines[1:3], ",".join(fields)]))
    with pytest.raises(DataFileError, match=r"all_reduce\.csv:4: column .* must be > 0"):
        CollectiveTable.from_vidur(tmp_path)


def test_empty_files_are_named_not_misread(shared: Path, tmp_path: Path) -> None:
    src = shared / VIDUR / "compute/a100/meta-llama/Meta-Llama-3-8B/mlp.csv"
    lines = src.read_text().splitlines()
    (tmp_path / "mlp.csv").write_text(lines[0] + "\n")
    with pytest.raises(DataFileError, match=r"mlp\.csv: no data rows \(only the header\)"):
        import_vidur(
            tmp_path / "mlp.csv",
            model="meta-llama/Meta-Llama-3-8B",
            device=resolve_device("A100"),
            tp=1,
        )
    # A network folder with no rows for the tp would leave the profile's all-reduce to
    # the link model without a word.
    net = tmp_path / "net"
    net.mkdir()
    header = (shared / VIDUR / "network/a100_dgx/all_reduce.csv").read_text().splitlines()[0]
    (net / "all_reduce.csv").write_text(header + "\n")
    with pytest.raises(DataFileError, match=r"all_reduce\.csv: no single-node rows for 2 GPUs"):
        import_vidur(
            src,
            model="meta-llama/Meta-Llama-3-8B",
            device=resolve_device("A100"),
            tp=2,
            network=net,
        )
