"""Trace loaders: the public sample files, format detection, cuts and malformed input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from llmserve_env.config.errors import DataFileError
from llmserve_env.config.schema import TraceWorkload
from llmserve_env.sim.workload.base import WorkloadData
from llmserve_env.sim.workload.traces import (
    detect_format,
    load_azure_csv,
    load_llmservingsim_jsonl,
    load_mooncake_jsonl,
    load_trace,
    load_vidur_csv,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "reference"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/reference not present")

LSS_EXAMPLE = SHARED / "llmservingsim" / "paper-v0" / "dataset" / "example_trace.jsonl"
LSS_NO_IDS = SHARED / "llmservingsim" / "current" / "workloads" / "workload_me2_01_mixed.jsonl"
LSS_PULSE = (
    SHARED / "llmservingsim" / "paper-v0" / "dataset" / "sharegpt_pulse_req10_n3_delay60.jsonl"
)
AZURE_CODE = SHARED / "traces" / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
MOONCAKE_CONV = SHARED / "traces" / "mooncake" / "conversation_trace.jsonl"
VIDUR_CODE = SHARED / "traces" / "vidur" / "splitwise_code.csv"
VIDUR_STATS = (
    SHARED / "traces" / "vidur" / "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv"
)
SHAREGPT_STATS = (
    SHARED / "traces" / "sharegpt_lengths" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
)


def _check_invariants(data: WorkloadData) -> None:
    assert len(data) > 0
    assert data.arrival_s[0] == 0.0
    assert np.all(np.diff(data.arrival_s) >= 0)
    assert data.prompt_tokens.min() >= 1
    assert data.output_tokens.min() >= 1


def _jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _vidur(path: Path, rows: list[tuple[float, int, int]]) -> Path:
    lines = ["arrived_at,num_prefill_tokens,num_decode_tokens"]
    lines += [f"{t},{p},{d}" for t, p, d in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _trace_cfg(path: Path, **kwargs: Any) -> TraceWorkload:
    return TraceWorkload(kind="trace", path=str(path), **kwargs)


# --------------------------------------------------------------------------- shared samples


@needs_shared
def test_llmservingsim_example_has_token_contents() -> None:
    data = load_llmservingsim_jsonl(LSS_EXAMPLE)
    _check_invariants(data)
    assert len(data) == 10
    assert (data.prompt_tokens[0], data.output_tokens[0]) == (10, 70)
    assert data.arrival_s[1] == pytest.approx((347938952 - 46926808) * 1e-9)
    assert data.contents is not None
    first = data.contents[0]
    assert first is not None and first.tokens is not None
    np.testing.assert_array_equal(first.tokens, np.arange(1, 81))
    for content, p, o in zip(data.contents, data.prompt_tokens, data.output_tokens, strict=True):
        assert content is not None and content.num_tokens == p + o
    assert data.source == str(LSS_EXAMPLE)


@needs_shared
def test_llmservingsim_without_ids_and_with_late_start() -> None:
    data = load_llmservingsim_jsonl(LSS_NO_IDS)
    _check_invariants(data)
    assert len(data) == 608
    assert data.contents is None
    assert (data.prompt_tokens[0], data.output_tokens[0]) == (27369, 1626)
    assert data.arrival_s[1] == pytest.approx((144370000 - 101537000) * 1e-9)
    # This file's first request arrives at 1 s; times still start at 0.
    pulse = load_llmservingsim_jsonl(LSS_PULSE)
    _check_invariants(pulse)
    assert len(pulse) == 30
    assert pulse.duration_s == pytest.approx(120.0)


@needs_shared
def test_azure_matches_vidur_splitwise_conversion() -> None:
    azure = load_azure_csv(AZURE_CODE)
    _check_invariants(azure)
    assert len(azure) == 8819
    assert (azure.prompt_tokens[0], azure.output_tokens[0]) == (4808, 10)
    assert azure.arrival_s[1] == pytest.approx(0.052, abs=1e-9)
    assert azure.duration_s == pytest.approx(3435.948056, abs=1e-6)
    assert azure.contents is None
    # Vidur's splitwise_code.csv is the same trace with times already in seconds.
    vidur = load_vidur_csv(VIDUR_CODE)
    _check_invariants(vidur)
    np.testing.assert_allclose(azure.arrival_s, vidur.arrival_s, atol=1e-6)
    np.testing.assert_array_equal(azure.prompt_tokens, vidur.prompt_tokens)
    np.testing.assert_array_equal(azure.output_tokens, vidur.output_tokens)


@needs_shared
def test_mooncake_segments_cover_the_prompt() -> None:
    data = load_mooncake_jsonl(MOONCAKE_CONV)
    _check_invariants(data)
    assert len(data) == 12031
    assert (data.prompt_tokens[0], data.output_tokens[0]) == (6758, 500)
    assert data.duration_s == pytest.approx(3536.999)
    assert data.contents is not None
    first = data.contents[0]
    assert first is not None and first.segments is not None
    assert first.segments[:2] == ((0, 512), (1, 512))
    assert first.segments[-1] == (13, 6758 - 13 * 512)
    assert len(first.segments) == 14
    # Every request shares block 0 (the common system prompt) in this trace.
    second = data.contents[1]
    assert second is not None and second.segments is not None
    assert second.segments[0] == (0, 512)
    assert all(
        c is not None and c.num_tokens == p
        for c, p in zip(data.contents, data.prompt_tokens, strict=True)
    )
    assert first.block_hashes(512)[0] == second.block_hashes(512)[0]


@needs_shared
@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (LSS_EXAMPLE, "llmservingsim"),
        (LSS_NO_IDS, "llmservingsim"),
        (AZURE_CODE, "azure"),
        (MOONCAKE_CONV, "mooncake"),
        (VIDUR_CODE, "vidur"),
    ],
)
def test_detect_format_on_samples(path: Path, fmt: str) -> None:
    assert detect_format(path) == fmt
    data = load_trace(_trace_cfg(path, num_requests=5))
    assert len(data) == 5
    assert data.meta["format"] == fmt


@needs_shared
@pytest.mark.parametrize("path", [VIDUR_STATS, SHAREGPT_STATS])
def test_length_tables_are_not_traces(path: Path) -> None:
    with pytest.raises(DataFileError, match="length table") as info:
        detect_format(path)
    assert "empirical" in str(info.value)
    with pytest.raises(DataFileError, match="length table"):
        load_vidur_csv(path)


# --------------------------------------------------------------------------- small files


def test_llmservingsim_token_ids_follow_the_lengths(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "t.jsonl",
        [
            # More input ids than input_toks: content cut to input_toks + output_toks.
            {
                "input_toks": 3,
                "output_toks": 2,
                "arrival_time_ns": 2_000_000_000,
                "input_tok_ids": [1, 2, 3, 4, 5],
                "output_tok_ids": [6, 7],
            },
            {
                "input_toks": 2,
                "output_toks": 4,
                "arrival_time_ns": 1_000_000_000,
                "input_tok_ids": [8, 9],
            },
            {"input_toks": 0, "output_toks": 0, "arrival_time_ns": 3_000_000_000},
        ],
    )
    data = load_llmservingsim_jsonl(path)
    _check_invariants(data)
    np.testing.assert_allclose(data.arrival_s, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(data.prompt_tokens, [2, 3, 1])  # sorted; 0 becomes 1
    np.testing.assert_array_equal(data.output_tokens, [4, 2, 1])
    assert data.contents is not None
    first, second, third = data.contents
    assert first is not None and first.tokens is not None
    assert second is not None and second.tokens is not None
    np.testing.assert_array_equal(first.tokens, [8, 9])
    np.testing.assert_array_equal(second.tokens, [1, 2, 3, 4, 5])
    assert third is None


def test_mooncake_segments_are_cut_to_the_prompt(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "m.jsonl",
        [
            {"timestamp": 500, "input_length": 600, "output_length": 5, "hash_ids": [7, 8]},
            {"timestamp": 1500, "input_length": 2000, "output_length": 5, "hash_ids": [7, 9]},
            {"timestamp": 2500, "input_length": 1024, "output_length": 0, "hash_ids": [7, 8]},
        ],
    )
    data = load_mooncake_jsonl(path)
    _check_invariants(data)
    np.testing.assert_allclose(data.arrival_s, [0.0, 1.0, 2.0])
    assert data.output_tokens[2] == 1
    assert data.contents is not None
    assert [c.segments if c else None for c in data.contents] == [
        ((7, 512), (8, 88)),
        ((7, 512), (9, 512)),  # the prompt is longer than its blocks
        ((7, 512), (8, 512)),
    ]


def test_azure_timestamps_across_midnight(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
        "2023-11-16 23:59:59.9000000,10,2\r\n"
        "2023-11-17 00:00:00.1000001,20,3\r\n"
        "2023-11-17 00:00:01,30,4\r\n"
    )
    data = load_azure_csv(path)
    np.testing.assert_allclose(data.arrival_s, [0.0, 0.2000001, 1.1], atol=1e-9)
    np.testing.assert_array_equal(data.prompt_tokens, [10, 20, 30])


def test_detect_format_small_files(tmp_path: Path) -> None:
    lss = _jsonl(tmp_path / "x.jsonl", [{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0}])
    moon = tmp_path / "trace"  # no extension: sniffed from the first character
    _jsonl(moon, [{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": [1]}])
    azure = tmp_path / "a.csv"
    azure.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,1,1\n")
    vidur = _vidur(tmp_path / "v.csv", [(0.0, 1, 1)])
    assert [detect_format(p) for p in (lss, moon, azure, vidur)] == [
        "llmservingsim",
        "mooncake",
        "azure",
        "vidur",
    ]


def test_detect_format_unknown_keys(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "x.jsonl", [{"input_toks": 1, "arrival_time_ns": 0}])
    with pytest.raises(DataFileError) as info:
        detect_format(path)
    message = str(info.value)
    assert str(path) in message
    assert "input_toks, arrival_time_ns" in message  # what was found
    assert "missing output_toks" in message
    assert "mooncake needs timestamp, input_length, output_length, hash_ids" in message


def test_detect_format_unknown_columns(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("time,prompt,output\n0,1,1\n")
    with pytest.raises(DataFileError, match=r"x\.csv:1: .*found columns time, prompt, output"):
        detect_format(path)


# --------------------------------------------------------------------------- load_trace cuts


@pytest.fixture
def ten_requests(tmp_path: Path) -> Path:
    """Arrivals at 5, 6, ..., 14 s; prompt 100 * (i + 1), output 10 * (i + 1)."""
    return _vidur(tmp_path / "v.csv", [(5.0 + i, 100 * (i + 1), 10 * (i + 1)) for i in range(10)])


def test_load_trace_scaling(ten_requests: Path) -> None:
    plain = load_trace(_trace_cfg(ten_requests))
    np.testing.assert_allclose(plain.arrival_s, np.arange(10.0))
    assert plain.meta == {"format": "vidur", "num_requests_in_file": 10, "notes": []}
    slow = load_trace(_trace_cfg(ten_requests, time_scale=2.0))
    np.testing.assert_allclose(slow.arrival_s, 2 * np.arange(10.0))
    fast = load_trace(_trace_cfg(ten_requests, time_scale=2.0, rate_scale=4.0))
    np.testing.assert_allclose(fast.arrival_s, 0.5 * np.arange(10.0))
    assert fast.source == str(ten_requests)


def test_load_trace_window_and_count(ten_requests: Path) -> None:
    # start_s and duration_s are in scaled seconds: arrivals 0, 2, 4, ... -> 3 <= t < 3 + 10.
    data = load_trace(_trace_cfg(ten_requests, time_scale=2.0, start_s=3.0, duration_s=10.0))
    np.testing.assert_allclose(data.arrival_s, [1.0, 3.0, 5.0, 7.0, 9.0])
    np.testing.assert_array_equal(data.prompt_tokens, [300, 400, 500, 600, 700])
    first_two = load_trace(_trace_cfg(ten_requests, start_s=3.0, num_requests=2))
    np.testing.assert_allclose(first_two.arrival_s, [0.0, 1.0])
    np.testing.assert_array_equal(first_two.output_tokens, [40, 50])
    assert first_two.meta["notes"] == [] and data.meta["notes"] == []


def test_load_trace_notes_a_count_beyond_the_trace(ten_requests: Path) -> None:
    """num_requests above what is left replays everything and says so, unless a
    duration_s window is the cut (where num_requests is only a cap)."""
    short = load_trace(_trace_cfg(ten_requests, start_s=3.0, num_requests=50))
    assert len(short) == 7
    assert short.meta["notes"] == [
        f"workload.num_requests is 50, but {ten_requests} has 7 requests after start_s=3: "
        "all 7 are replayed"
    ]
    windowed = load_trace(_trace_cfg(ten_requests, duration_s=4.0, num_requests=50))
    assert len(windowed) == 4 and windowed.meta["notes"] == []


def test_load_trace_clips_lengths(ten_requests: Path) -> None:
    data = load_trace(_trace_cfg(ten_requests, max_prompt_tokens=250, max_output_tokens=35))
    assert data.prompt_tokens.max() == 250
    assert data.output_tokens.max() == 35
    assert data.prompt_tokens[0] == 100


def test_load_trace_keeps_contents_aligned(tmp_path: Path) -> None:
    records = [
        {"timestamp": 1000 * i, "input_length": 512, "output_length": 1, "hash_ids": [i]}
        for i in range(4)
    ]
    path = _jsonl(tmp_path / "m.jsonl", records)
    data = load_trace(_trace_cfg(path, start_s=1.5, max_prompt_tokens=100))
    assert data.contents is not None
    assert [c.segments if c else None for c in data.contents] == [((2, 512),), ((3, 512),)]
    np.testing.assert_array_equal(data.prompt_tokens, [100, 100])


def test_load_trace_explicit_format_and_empty_window(ten_requests: Path) -> None:
    with pytest.raises(DataFileError, match=r"v\.csv:1: .*azure needs TIMESTAMP"):
        load_trace(_trace_cfg(ten_requests, format="azure"))
    with pytest.raises(DataFileError, match="no requests left after start_s=100"):
        load_trace(_trace_cfg(ten_requests, start_s=100.0))


# --------------------------------------------------------------------------- malformed input


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0})
    path.write_text(f"{good}\n{good}\n{{not json\n{good}\n")
    with pytest.raises(DataFileError, match=r"bad\.jsonl:3: invalid JSON") as info:
        load_llmservingsim_jsonl(path)
    assert info.value.line == 3
    assert info.value.path == str(path)


def test_missing_key(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0},
            {"input_toks": 1, "arrival_time_ns": 5},
        ],
    )
    with pytest.raises(DataFileError, match=r"t\.jsonl:2: missing key 'output_toks'"):
        load_llmservingsim_jsonl(path)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"output_toks": 1.5}, "output_toks: expected a non-negative integer, got 1.5"),
        ({"input_toks": -3}, "input_toks: expected a non-negative integer, got -3"),
        ({"input_toks": "12"}, None),  # numeric strings are accepted
        ({"arrival_time_ns": "soon"}, "arrival_time_ns: expected a non-negative number"),
        ({"input_tok_ids": [1, "a"]}, "input_tok_ids: expected a list of integers"),
    ],
)
def test_bad_llmservingsim_fields(
    tmp_path: Path, record: dict[str, Any], message: str | None
) -> None:
    path = _jsonl(
        tmp_path / "t.jsonl", [{"input_toks": 1, "output_toks": 1, "arrival_time_ns": 0, **record}]
    )
    if message is None:
        assert load_llmservingsim_jsonl(path).prompt_tokens[0] == 12
        return
    with pytest.raises(DataFileError, match=":1: " + message.replace(".", r"\.")):
        load_llmservingsim_jsonl(path)


def test_bad_mooncake_fields(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "m.jsonl",
        [{"timestamp": 0, "input_length": 1, "output_length": 1, "hash_ids": 5}],
    )
    with pytest.raises(DataFileError, match=":1: hash_ids: expected a list of integers, got 5"):
        load_mooncake_jsonl(path)
    _jsonl(path, [[1, 2, 3]])
    with pytest.raises(DataFileError, match=":1: expected one JSON object per line, got a list"):
        load_mooncake_jsonl(path)


def test_non_integer_csv_field(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:17:03.9799600,4808,10\n"
        "2023-11-16 18:17:04.0319600,abc,8\n"
    )
    with pytest.raises(DataFileError) as info:
        load_azure_csv(path)
    assert str(info.value) == (
        f"{path}:3: ContextTokens: expected a non-negative integer, got 'abc'"
    )


def test_bad_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 25:17:03.97,1,1\n")
    with pytest.raises(DataFileError, match=r":2: TIMESTAMP: expected a date-time"):
        load_azure_csv(path)


def test_wrong_header(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("TIMESTAMP,Context,GeneratedTokens\n2023-11-16 18:17:03.97,1,1\n")
    with pytest.raises(DataFileError) as info:
        load_azure_csv(path)
    message = str(info.value)
    assert f"{path}:1:" in message
    assert "found columns TIMESTAMP, Context, GeneratedTokens" in message
    assert "missing ContextTokens" in message


def test_wrong_column_count(tmp_path: Path) -> None:
    path = _vidur(tmp_path / "v.csv", [(0.0, 1, 1)])
    path.write_text(path.read_text() + "1.0,2\n")
    with pytest.raises(
        DataFileError, match=r"v\.csv:3: expected 3 columns as in the header, got 2"
    ):
        load_vidur_csv(path)


def test_empty_file(tmp_path: Path) -> None:
    jsonl, csv = tmp_path / "e.jsonl", tmp_path / "e.csv"
    for path in (jsonl, csv):
        path.write_text("\n")
        with pytest.raises(DataFileError, match=r"e\.(jsonl|csv): empty file"):
            detect_format(path)
    with pytest.raises(DataFileError, match=r"e\.jsonl: no requests in the file"):
        load_mooncake_jsonl(jsonl)
    with pytest.raises(DataFileError, match=r"e\.csv:1: empty file \(expected a header row\)"):
        load_vidur_csv(csv)


def test_header_only_csv_has_no_requests(tmp_path: Path) -> None:
    path = _vidur(tmp_path / "v.csv", [])
    with pytest.raises(DataFileError, match="no requests in the file"):
        load_vidur_csv(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cannot read"):
        load_mooncake_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataFileError, match="cannot read"):
        detect_format(tmp_path / "nope.csv")
