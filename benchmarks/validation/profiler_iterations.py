"""`llmserve profile` against whole forward passes: how well does the operator sum hold?

Profiles a model with the PyTorch profiler, then runs whole forward passes of the same
model (every layer with its own weights, residual adds, KV writes) for a set of batches
and compares each with the profile's prediction (``llmserve_env.perf.iteration_check``).
Runs ``--rounds`` times per ``--cold-mib`` value, the settings alternating, and reports
per batch the medians over rounds, so the profiler's cold-weight timing (the default)
can be set against warm caches (``0``, how operators were timed before). Prints the
VALIDATION.md table ("Our profiler against whole iterations"). Usage::

    python benchmarks/validation/profiler_iterations.py                 # CPU, small Llama
    python benchmarks/validation/profiler_iterations.py --device cuda \\
        --model meta-llama/Llama-3.1-8B --dtype bf16 --full-grid --json out.json

The default model is a small Llama (hidden 1024, 8 layers, 32k vocabulary; about
490 MB of fp32 weights, more than this project's CPU keeps cached), built from the
config below with random weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llmserve_env.perf.iteration_check import check_iterations
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profiler import ProfileGrid, ProfilerOptions, profile_model

SMALL_LLAMA = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 8,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}

CPU_GRID = ProfileGrid(
    tokens=(1, 4, 16, 64, 256, 512),
    seqs=(1, 4, 16, 32),
    prefill_chunks=(16, 64, 256, 512),
    prefill_contexts=(0, 256, 1024),
    decode_batches=(1, 4, 16, 32),
    decode_contexts=(16, 256, 1024),
)


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "small-llama.json")
            Path(model).write_text(json.dumps(SMALL_LLAMA))
        arch = load_model_arch(model)
    grid = ProfileGrid() if args.full_grid else CPU_GRID
    if args.max_tokens or args.max_context:
        grid = grid.bounded(args.max_tokens, args.max_context)
    out: dict[str, Any] = {"model": args.model or "small-llama (inline config)", "runs": []}
    rounds: dict[int, list[dict[str, Any]]] = {cold: [] for cold in args.cold_mib}
    for index in range(args.rounds):  # settings alternate, so slow drift hits each alike
        for cold in args.cold_mib:
            options = ProfilerOptions(
                device=args.device,
                dtype=args.dtype,
                grid=grid,
                warmup=args.warmup,
                repeat=args.repeat,
                seed=args.seed,
                cold_mib=cold,
            )
            started = time.perf_counter()
            profile = profile_model(arch, options)
            profiled_s = time.perf_counter() - started
            # The whole iterations always run with the default setting (cold on CUDA).
            check = check_iterations(profile, arch, replace(options, cold_mib=None))
            rounds[cold].append(check.as_dict() | {"profile_s": profiled_s})
            if args.keep_profile and index == 0 and cold == args.cold_mib[0]:
                from llmserve_env.output import write_json_atomic
                from llmserve_env.perf.profile_format import write_profile

                folder = write_profile(profile, args.keep_profile)
                write_json_atomic(folder / "iteration_check.json", check.as_dict())
    for cold, done in rounds.items():
        out["runs"].append(_median_run(cold, done))
    return out


def _median_run(cold: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per case the median over rounds of the measured and predicted times (the error
    is the medians'); each round's mean absolute error is kept as well."""
    first = rounds[0]
    cases = []
    for i, case in enumerate(first["cases"]):
        measured = float(np.median([r["cases"][i]["measured_ms"] for r in rounds]))
        predicted = float(np.median([r["cases"][i]["predicted_ms"] for r in rounds]))
        row = {k: case[k] for k in ("label", "num_tokens")}
        row |= {
            "measured_ms": measured,
            "predicted_ms": predicted,
            "err_pct": 100.0 * (predicted - measured) / measured,
        }
        replays = [r["cases"][i]["graph_ms"] for r in rounds if "graph_ms" in r["cases"][i]]
        if replays:  # a round whose capture failed has none
            graph = float(np.median(replays))
            row |= {"graph_ms": graph, "graph_err_pct": 100.0 * (predicted - graph) / graph}
        cases.append(row)
    result: dict[str, Any] = {
        "cold_mib": cold,
        "device": first["device"],
        "num_layers": first["num_layers"],
        "setting": first["setting"],
        "cases": cases,
        "mape_pct": float(np.mean([abs(c["err_pct"]) for c in cases])),
        "round_mape_pct": [r["mape_pct"] for r in rounds],
        "rounds": rounds,
    }
    if all("graph_err_pct" in c for c in cases):
        result["graph_mape_pct"] = float(np.mean([abs(c["graph_err_pct"]) for c in cases]))
    return result


def table(out: dict[str, Any]) -> str:
    runs = out["runs"]
    head = "| batch | tokens |" + "".join(
        f" cold {r['cold_mib']} MiB: measured ms | predicted ms | err % |" for r in runs
    )
    lines = [head, "|---|---|" + "---|---|---|" * len(runs)]
    for i, case in enumerate(runs[0]["cases"]):
        row = f"| {case['label']} | {case['num_tokens']} |"
        for r in runs:
            c = r["cases"][i]
            row += f" {c['measured_ms']:.2f} | {c['predicted_ms']:.2f} | {c['err_pct']:+.1f} |"
        lines.append(row)
    lines.append("| mean absolute error | |" + "".join(f" | | {r['mape_pct']:.1f} |" for r in runs))
    lines.append(
        "| each round's | |"
        + "".join(
            " | | " + " / ".join(f"{m:.1f}" for m in r["round_mape_pct"]) + " |" for r in runs
        )
    )
    if "graph_mape_pct" in runs[0]:
        lines.append(
            "| mean absolute error vs CUDA graphs | |"
            + "".join(f" | | {r.get('graph_mape_pct', float('nan')):.1f} |" for r in runs)
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="catalog name or config.json (default: small Llama)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="fp32", choices=["bf16", "fp16", "fp32"])
    parser.add_argument(
        "--cold-mib",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[256, 0],
        help="comma-separated profiler cold_mib values, one run each (default 256,0)",
    )
    parser.add_argument("--full-grid", action="store_true", help="the profiler's default grid")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--max-context", type=int)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rounds", type=int, default=3, help="profile and check this often per setting"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's)")
    parser.add_argument("--keep-profile", type=Path, help="write the first run's profile here")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    out = run(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    first = out["runs"][0]
    print(f"{out['model']} on {first['device']}, {first['num_layers']} layers, {args.dtype}")
    print(table(out))


if __name__ == "__main__":
    main()
