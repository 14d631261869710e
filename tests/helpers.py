"""Small, hand-computable building blocks for simulator tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from llmserve_env.perf.base import BatchShape, FloatArray
from llmserve_env.sim.instance import EngineParams, Instance
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.metrics import SLO, MetricsRecorder
from llmserve_env.sim.router import make_router
from llmserve_env.sim.simulation import Simulation
from llmserve_env.sim.stats import ItlHistogram
from llmserve_env.sim.workload.base import WorkloadData

TINY_LLAMA = Path(__file__).resolve().parents[1] / "profiles/models/llmserve/tiny-llama.json"
"""The catalog's tiny Llama config (profiler tests on CPU)."""


def tiny_moe_config(folder: Path) -> Path:
    """The tiny Llama with 4 experts of which 2 per token, written into ``folder``."""
    config = json.loads(TINY_LLAMA.read_text())
    config |= {"num_local_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 128}
    path = folder / "tiny-moe.json"
    path.write_text(json.dumps(config))
    return path


class LinearLatency:
    """``base + per_token x tokens + per_kv x attended KV`` seconds; records every batch."""

    def __init__(
        self, base_s: float = 0.01, per_token_s: float = 1e-5, per_kv_s: float = 0.0
    ) -> None:
        self.base_s = base_s
        self.per_token_s = per_token_s
        self.per_kv_s = per_kv_s
        self.shapes: list[BatchShape] = []

    def iteration_time_s(self, batch: BatchShape) -> float:
        self.shapes.append(batch)
        return (
            self.base_s + self.per_token_s * batch.num_tokens + self.per_kv_s * batch.decode_kv_sum
        )

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray, kv_min: FloatArray
    ) -> FloatArray:
        for total, peak, low in zip(kv_sum, kv_max, kv_min, strict=True):
            self.shapes.append(BatchShape((), (), num_decodes, int(total), int(peak), int(low)))
        return self.base_s + self.per_token_s * num_decodes + self.per_kv_s * np.asarray(kv_sum)

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        return None  # per-iteration shapes are recorded by decode_times_s


def params(**overrides: object) -> EngineParams:
    values: dict[str, object] = dict(
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        block_size=16,
        num_blocks=10_000,
        enable_prefix_caching=True,
        enable_chunked_prefill=True,
        long_prefill_token_threshold=0,
        max_model_len=100_000,
        scheduling_policy="fcfs",
        max_num_waiting=None,
        max_decode_run=4096,
    )
    values.update(overrides)
    return EngineParams(**values)  # type: ignore[arg-type]


def make_sim(
    workload: WorkloadData,
    *,
    num_instances: int = 1,
    latency: LinearLatency | None = None,
    router: str = "round_robin",
    horizon_s: float | None = None,
    slo: SLO | None = None,
    **engine: object,
) -> tuple[Simulation, LinearLatency]:
    """A simulation of identical instances sharing one latency model."""
    latency = latency or LinearLatency()
    kernel = Kernel()
    itl = ItlHistogram()
    instances = [
        Instance(i, f"i{i}", kernel, params(**engine), latency, itl) for i in range(num_instances)
    ]
    sim = Simulation(
        kernel,
        instances,
        make_router(router, np.random.default_rng(0)),
        workload,
        MetricsRecorder(slo or SLO()),
        itl,
        horizon_s=horizon_s,
        sample_interval_s=1.0,
    )
    return sim, latency


def run_accounted(sim: Simulation) -> dict[str, Any]:
    """Run ``sim`` to the end, check its invariants and that every arrival ended in
    exactly one terminal state; returns the summary."""
    summary = sim.run()
    sim.check_invariants()
    assert summary["num_arrived"] > 0
    assert (
        summary["num_finished"] + summary["num_rejected"] + summary["num_unfinished"]
        == summary["num_arrived"]
    )
    return summary


def workload(
    arrivals: list[float], prompts: list[int], outputs: list[int], **kw: object
) -> WorkloadData:
    return WorkloadData.from_arrays(arrivals, prompts, outputs, **kw)  # type: ignore[arg-type]
