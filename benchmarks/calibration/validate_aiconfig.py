"""Validate the default NVIDIA latency model (aiconfigurator-core tables) end to end.

Two comparisons, each printed as a markdown table with per-case errors:

1. aiconfigurator-core's own measured end-to-end vLLM benchmarks
   (``systems/silicon_sample.csv``: aggregated serving at a fixed concurrency, fixed
   prompt/output lengths): the same benchmark is simulated through our simulator
   (closed loop, see ``common.closed_loop``) and mean TTFT / TPOT are compared.
2. Splitwise's measured Llama-2-70B prompt and token times on DGX-A100 / DGX-H100
   (``../shared/reference/profiles/splitwise/perf_model.csv``): the same batch shapes
   go through the latency model (a prompt batch is one iteration; token time is the
   mean decode iteration over the generated tokens).

The roofline model (with its per-family calibration) is scored on the same cases.

Usage::

    python benchmarks/calibration/validate_aiconfig.py [--quick] [--skip-silicon]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import ape, closed_loop, markdown_table, shared_or_exit, summarise

from llmserve_env.perf.aiconfig import aiconfigurator_model, aiconfigurator_version
from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.roofline import RooflineModel, calibration_for

SILICON_MODELS = {
    "meta-llama/Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "nvidia/Llama-3.1-8B-Instruct-FP8": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "Qwen/Qwen3-32B": "Qwen/Qwen3-32B",
}
SYSTEM_DEVICES = {
    "h100_sxm": "H100-SXM",
    "h200_sxm": "H200",
    "b200_sxm": "B200",
    "a100_sxm": "A100",
}
SPLITWISE_DEVICES = {"a100-80gb": "A100", "h100-80gb": "H100-SXM"}


def _roofline(model: str, device: str, tp: int, dtype: str) -> RooflineModel:
    spec = resolve_device(device)
    return RooflineModel(
        load_model_arch(model), spec, tp=tp, dtype=dtype, calibration=calibration_for(spec)
    )


def silicon_cases(quick: bool) -> list[dict[str, str]]:
    """vLLM aggregated-serving rows of silicon_sample.csv for catalog models and devices."""
    import aiconfigurator_core

    path = Path(aiconfigurator_core.__file__).parent / "systems" / "silicon_sample.csv"
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["backend"] != "vllm" or row["mode"] != "agg":
                continue
            if row["model_path"] not in SILICON_MODELS or row["system"] not in SYSTEM_DEVICES:
                continue
            if row["gemm_quant_mode"] not in ("fp8", "bfloat16", "") or row["pp_size"] not in (
                "1",
                "1.0",
            ):
                continue
            if row["attention_dp_size"] not in ("", "1", "1.0"):
                continue
            rows.append(row)
    if quick:
        rows = rows[::6]
    return rows


def validate_silicon(quick: bool, roofline: bool = True) -> list[list[object]]:
    """Per-case TTFT / TPOT errors against the measured vLLM benchmarks.

    Besides the simulated TTFT, a column adds the API-server share aiconfigurator itself
    adds to vLLM's TTFT (0.8 ms per layer, its ``_prefill_dispatch_overhead_ms``): the
    measured TTFT includes HTTP, tokenisation and scheduling outside the engine, which
    the simulator does not model.
    """
    out = []
    for row in silicon_cases(quick):
        model = SILICON_MODELS[row["model_path"]]
        device = SYSTEM_DEVICES[row["system"]]
        tp = int(float(row["tp_size"]))
        dtype = "fp8" if row["gemm_quant_mode"] == "fp8" else "bf16"
        conc = int(float(row["batch_size"]))
        isl, osl = int(row["isl"]), int(row["osl"])
        lm = aiconfigurator_model(model, device, tp, dtype, kv_dtype="bf16")
        if lm is None:
            continue
        ttft, tpot = closed_loop(
            lm,
            model_name=model,
            device=device,
            tp=tp,
            dtype=dtype,
            concurrency=conc,
            isl=isl,
            osl=osl,
        )
        true_ttft, true_tpot = float(row["silicon_ttft_ms"]), float(row["silicon_tpot_ms"])
        frontend_ms = 0.8 * load_model_arch(model).num_layers
        line: list[object] = [
            model.split("/")[-1],
            device,
            tp,
            dtype,
            conc,
            f"{isl}/{osl}",
            true_ttft,
            ttft,
            ape(ttft, true_ttft),
            ape(ttft + frontend_ms, true_ttft),
            true_tpot,
            tpot,
            ape(tpot, true_tpot),
        ]
        if roofline:
            roof = _roofline(model, device, tp, dtype)
            r_ttft, r_tpot = closed_loop(
                roof,
                model_name=model,
                device=device,
                tp=tp,
                dtype=dtype,
                concurrency=conc,
                isl=isl,
                osl=osl,
            )
            line += [r_tpot, ape(r_ttft + frontend_ms, true_ttft), ape(r_tpot, true_tpot)]
        out.append(line)
    return out


def _splitwise_predict(
    lm: LatencyModel, prompt: int, batch: int, tokens: int
) -> tuple[float, float]:
    prompt_s = lm.iteration_time_s(BatchShape((prompt,) * batch, (0,) * batch))
    kv_each = prompt + np.arange(1, tokens, dtype=np.float64)
    token_s = lm.decode_times_s(batch, kv_each * batch, kv_each, kv_each)
    return prompt_s * 1e3, float(np.mean(token_s)) * 1e3


def validate_splitwise(shared: Path) -> list[list[object]]:
    """Per-case prompt / token time errors against Splitwise's Llama-2-70B measurements."""
    groups: dict[tuple[str, int, int, int, int], list[tuple[float, float]]] = defaultdict(list)
    with (shared / "profiles" / "splitwise" / "perf_model.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["model"] != "llama2-70b" or row["hardware"] not in SPLITWISE_DEVICES:
                continue
            key = (
                row["hardware"],
                int(row["tensor_parallel"]),
                int(row["prompt_size"]),
                int(row["batch_size"]),
                int(row["token_size"]),
            )
            groups[key].append((float(row["prompt_time"]), float(row["token_time"])))
    out = []
    models: dict[tuple[str, int], tuple[LatencyModel | None, LatencyModel]] = {}
    for (hw, tp, prompt, batch, tokens), values in sorted(groups.items()):
        device = SPLITWISE_DEVICES[hw]
        if (device, tp) not in models:
            models[(device, tp)] = (
                aiconfigurator_model("meta-llama/Llama-2-70b-hf", device, tp, "fp16"),
                _roofline("meta-llama/Llama-2-70b-hf", device, tp, "fp16"),
            )
        aic, roof = models[(device, tp)]
        true_prompt = float(np.median([v[0] for v in values]))
        true_token = float(np.median([v[1] for v in values]))
        roof_prompt, roof_token = _splitwise_predict(roof, prompt, batch, tokens)
        row: list[object] = [hw, tp, prompt, batch, tokens, true_prompt, true_token]
        if aic is not None:
            aic_prompt, aic_token = _splitwise_predict(aic, prompt, batch, tokens)
            row += [aic_prompt, ape(aic_prompt, true_prompt), aic_token, ape(aic_token, true_token)]
        else:
            row += ["-", "-", "-", "-"]
        row += [roof_prompt, ape(roof_prompt, true_prompt), roof_token, ape(roof_token, true_token)]
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every sixth silicon case only")
    parser.add_argument("--skip-silicon", action="store_true", help="Splitwise comparison only")
    args = parser.parse_args()
    shared = shared_or_exit()
    if aiconfigurator_version() is None:
        print("skipped: aiconfigurator-core is not installed (pip install llmserve-env[nvidia])")
        sys.exit(0)
    print(f"aiconfigurator-core {aiconfigurator_version()}\n")
    if not args.skip_silicon:
        rows = validate_silicon(args.quick)
        header = [
            "model",
            "device",
            "tp",
            "dtype",
            "conc",
            "isl/osl",
            "TTFT meas ms",
            "TTFT sim ms",
            "TTFT err %",
            "TTFT+frontend err %",
            "TPOT meas ms",
            "TPOT sim ms",
            "TPOT err %",
            "roofline TPOT ms",
            "roofline TTFT+fe err %",
            "roofline TPOT err %",
        ]
        print("### aiconfigurator silicon_sample.csv (vLLM, aggregated serving)\n")
        print(markdown_table(header, rows))
        col = lambda i: [float(r[i]) for r in rows]  # type: ignore[arg-type]  # noqa: E731
        print(f"\naiconfigurator TTFT error mean / median / max: {summarise(col(8))}")
        print(f"aiconfigurator TTFT + frontend error mean / median / max: {summarise(col(9))}")
        print(f"aiconfigurator TPOT error mean / median / max: {summarise(col(12))}")
        print(f"roofline TTFT + frontend error mean / median / max: {summarise(col(14))}")
        print(f"roofline TPOT error mean / median / max: {summarise(col(15))}\n")
        groups: dict[tuple[object, object], list[list[object]]] = defaultdict(list)
        for r in rows:
            groups[(r[0], r[1])].append(r)
        summary = []
        for (model, device), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
            mean = lambda i, m=members: float(np.mean([float(r[i]) for r in m]))  # type: ignore[arg-type]  # noqa: E731
            summary.append(
                [model, device, len(members), mean(8), mean(9), mean(12), mean(14), mean(15)]
            )
        print(
            markdown_table(
                [
                    "model",
                    "device",
                    "cases",
                    "aic TTFT err %",
                    "aic TTFT+fe err %",
                    "aic TPOT err %",
                    "roofline TTFT+fe err %",
                    "roofline TPOT err %",
                ],
                summary,
            )
        )
        print()
        dense = [r for r in rows if r[0] != "Llama-3.1-8B"]
        col = lambda i: [float(r[i]) for r in dense]  # type: ignore[arg-type]  # noqa: E731
        print(
            f"without the Llama-3.1-8B-FP8 rows ({len(dense)} cases): aiconfigurator TPOT "
            f"{summarise(col(12))}, roofline TPOT {summarise(col(15))}\n"
        )
    rows = validate_splitwise(shared)
    header = [
        "hardware",
        "tp",
        "prompt",
        "batch",
        "tokens",
        "prompt meas ms",
        "token meas ms",
        "aic prompt ms",
        "err %",
        "aic token ms",
        "err %",
        "roofline prompt ms",
        "err %",
        "roofline token ms",
        "err %",
    ]
    print("### Splitwise perf_model.csv (Llama-2-70B, fp16)\n")
    print(markdown_table(header, rows))
    aic_p = [float(r[8]) for r in rows if isinstance(r[8], float)]  # type: ignore[arg-type]
    aic_t = [float(r[10]) for r in rows if isinstance(r[10], float)]  # type: ignore[arg-type]
    print(f"\naiconfigurator prompt error mean / median / max: {summarise(aic_p)}")
    print(f"aiconfigurator token error mean / median / max: {summarise(aic_t)}")
    print(f"roofline prompt error mean / median / max: {summarise([float(r[12]) for r in rows])}")  # type: ignore[arg-type]
    print(f"roofline token error mean / median / max: {summarise([float(r[14]) for r in rows])}\n")  # type: ignore[arg-type]
    groups: dict[tuple[object, object], list[list[object]]] = defaultdict(list)
    for r in rows:
        groups[(r[0], r[1])].append(r)
    summary = []
    for (hw, tp), members in sorted(groups.items(), key=lambda kv: str(kv[0])):
        mean = lambda i, m=members: float(np.mean([float(r[i]) for r in m]))  # type: ignore[arg-type]  # noqa: E731
        summary.append([hw, tp, len(members), mean(8), mean(10), mean(12), mean(14)])
    print(
        markdown_table(
            [
                "hardware",
                "tp",
                "cases",
                "aic prompt err %",
                "aic token err %",
                "roofline prompt err %",
                "roofline token err %",
            ],
            summary,
        )
    )


if __name__ == "__main__":
    main()
