"""Power and energy model vs measurements: ML.ENERGY v2 and LLMServingSim's figure 6.

Prints the markdown tables of VALIDATION.md ("Power and energy"). Needs
``../shared/reference`` (``power/mlenergy_v2`` and ``llmservingsim/paper-v0``). Usage::

    python benchmarks/validation/power_validation.py               # both parts
    python benchmarks/validation/power_validation.py --mlenergy    # energy per token only
    python benchmarks/validation/power_validation.py --fig6 --plot # + out/fig6_power.png

ML.ENERGY v2 (vLLM 0.5.4, Llama-3.1-8B-Instruct) ran every request of its ShareGPT set
at once with ``max_num_seqs`` = the batch size and divided the GPU energy of the whole
run (Zeus/NVML, ramp-up and drain included) by the requests. We do the same: a burst of
``4 x batch`` requests with the measured mean output length, ``max_num_seqs`` = batch,
device energy from t = 0 to the last token, divided by the output tokens. The prompt
length is not in the data set; 256 tokens (a ShareGPT first turn plus the system prompt)
is assumed, and ``--prompt`` changes it.

Figure 6 of LLMServingSim 2.0 (A6000, Llama-3.1-8B, TP1 and TP2, three pulses of ten
ShareGPT requests 60 s apart) is imported as ``llmserve import llmservingsim`` does it,
run for 180 s, and its per-second server power (devices + node components, the
interval average of the integrated energy) is summarised per pulse phase.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve_env.build import build_simulation, check_references, load_scenario
from llmserve_env.config.loader import validate_scenario
from llmserve_env.interop.llmservingsim_config import ImportOptions
from llmserve_env.interop.llmservingsim_import import import_llmservingsim_setup

SHARED = Path(__file__).resolve().parents[2].parent / "shared/reference"
MLENERGY = SHARED / "power/mlenergy_v2/llm_energy_a100_h100.csv"
PAPER = SHARED / "llmservingsim/paper-v0"
OUT = Path(__file__).resolve().parent / "out"

MODEL = "meta-llama/Meta-Llama-3.1-8B-Instruct"
# ML.ENERGY's GPUs -> the catalog's closest device. The A100 they used is the 40 GB SXM
# part (1,555 GB/s); the catalog has the 80 GB one (2,039 GB/s), same compute and TDP.
GPUS = {"NVIDIA H100 80GB HBM3": "H100-SXM", "NVIDIA A100-SXM4-40GB": "A100-SXM-80GB"}


# --------------------------------------------------------------------------- ML.ENERGY


@dataclass(frozen=True)
class EnergyRow:
    """One batch size: measured and simulated energy per output token."""

    gpu: str
    device: str
    batch: int
    output_tokens: int
    meas_j_tok: float
    meas_tok_s: float
    sim_j_tok: float
    sim_tok_s: float
    sim_at_meas_idle_j_tok: float
    """The power model given the measured throughput: the simulated energy plus idle
    power for the extra time (the model's energy is idle x time + work-proportional
    dynamic energy, so only the idle part depends on time)."""
    sim_at_meas_standby_j_tok: float
    """The same with the extra time at standby power (clocks up, waiting on the host)."""
    sim_mean_batch: float

    @property
    def meas_w(self) -> float:
        return self.meas_j_tok * self.meas_tok_s

    @property
    def sim_w(self) -> float:
        return self.sim_j_tok * self.sim_tok_s


def mlenergy_rows() -> list[dict[str, str]]:
    """ML.ENERGY v2 rows of Llama-3.1-8B-Instruct, TP1."""
    with MLENERGY.open(newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if r["Model"] == MODEL and r["TP"] == "1"]


def burst_scenario(device: str, batch: int, prompt: int, output: int, num: int) -> Any:
    """One ``device`` with ``max_num_seqs = batch`` and ``num`` requests at t = 0."""
    data = {
        "name": f"mlenergy-{device}-bs{batch}",
        "cluster": {
            "nodes": [
                {
                    "num_devices": 1,
                    "instances": [{"model": "meta-llama/Llama-3.1-8B", "device": device}],
                }
            ]
        },
        "engine": {"max_num_seqs": batch, "enable_prefix_caching": False},
        "workload": {
            "kind": "synthetic",
            "arrival": {"process": "burst"},
            "prompt_tokens": {"dist": "fixed", "value": prompt},
            "output_tokens": {"dist": "fixed", "value": output},
            "num_requests": num,
        },
        "simulation": {"sample_interval_s": 0.1},
    }
    scenario = validate_scenario(data, source="power_validation")
    check_references(scenario)
    return scenario


def simulate_mlenergy(row: dict[str, str], prompt: int) -> EnergyRow:
    device = GPUS[row["GPU"]]
    batch = int(row["Max BS (reqs)"])
    output = round(float(row["Avg Output Tokens"]))
    sim = build_simulation(burst_scenario(device, batch, prompt, output, 4 * batch))
    summary = sim.run()
    tokens = summary["num_output_tokens"]
    sim_j = summary["energy_breakdown_j"]["devices"] / tokens
    sim_tok_s = tokens / summary["makespan_s"]
    meas_j = float(row["Energy/req (J)"]) / float(row["Avg Output Tokens"])
    meas_tok_s = float(row["Token tput (tok/s)"])
    power = sim.instances[0].power
    assert power is not None
    slack_s = 1.0 / meas_tok_s - 1.0 / sim_tok_s
    series = sim.metrics.timeseries_table()
    running = [float(x) for x in series["num_running"]]
    mean_batch = sum(running) / len(running) if running else 0.0
    return EnergyRow(
        gpu=row["GPU"],
        device=device,
        batch=batch,
        output_tokens=output,
        meas_j_tok=meas_j,
        meas_tok_s=meas_tok_s,
        sim_j_tok=sim_j,
        sim_tok_s=sim_tok_s,
        sim_at_meas_idle_j_tok=sim_j + power.spec.idle_w * slack_s,
        sim_at_meas_standby_j_tok=sim_j + power.spec.standby_w * slack_s,
        sim_mean_batch=mean_batch,
    )


def _err(sim: float, meas: float) -> str:
    return f"{100.0 * (sim - meas) / meas:+.0f} %"


def mlenergy_table(prompt: int) -> list[EnergyRow]:
    rows = [simulate_mlenergy(r, prompt) for r in mlenergy_rows()]
    print(f"\n### Energy per output token vs ML.ENERGY v2 (prompt {prompt} tokens assumed)\n")
    print(
        "| GPU (simulated as) | batch | sim mean batch | measured J/tok | simulated J/tok | "
        "error | measured tok/s | simulated tok/s | measured avg W | simulated avg W | "
        "sim J/tok at measured tok/s, slack at idle / standby W | error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gpu = "H100 SXM" if r.device == "H100-SXM" else "A100 SXM4 40GB (as A100-SXM-80GB)"
        print(
            f"| {gpu} | {r.batch} | {r.sim_mean_batch:.0f} | {r.meas_j_tok:.3f} | "
            f"{r.sim_j_tok:.3f} | {_err(r.sim_j_tok, r.meas_j_tok)} | {r.meas_tok_s:,.0f} | "
            f"{r.sim_tok_s:,.0f} | {r.meas_w:.0f} | {r.sim_w:.0f} | "
            f"{r.sim_at_meas_idle_j_tok:.3f} / {r.sim_at_meas_standby_j_tok:.3f} | "
            f"{_err(r.sim_at_meas_idle_j_tok, r.meas_j_tok)} / "
            f"{_err(r.sim_at_meas_standby_j_tok, r.meas_j_tok)} |"
        )
    return rows


# --------------------------------------------------------------------------- figure 6


@dataclass(frozen=True)
class PowerSeries:
    """Per-second server power of one imported run (second k covers (k-1, k])."""

    name: str
    time_s: list[float]
    total_w: list[float]
    devices_w: list[float]
    energy_j: dict[str, float]
    summary: dict[str, Any]
    last_token_s: list[float]
    llmservingsim_w: tuple[float, float, float]
    """(idle, standby, serving) server power LLMServingSim's own model assigns from the
    same config: devices at idle / standby / active power, node components, CPU busy."""


PHASES = ((0, 60), (60, 120), (120, 180))
"""The trace's pulses arrive at 1, 61 and 121 s; the trace loader starts the run at the
first arrival, so they arrive at 0, 60 and 120 s here."""


def fig6_setup(tp: int, work: Path) -> Path:
    """Import figure 6's TP``tp`` config as ``llmserve import llmservingsim`` does."""
    setup = import_llmservingsim_setup(
        PAPER / f"evaluation/figure_6/config/power_config_tp{tp}.json",
        PAPER / "dataset/sharegpt_pulse_req10_n3_delay60.jsonl",
        work / f"fig6_tp{tp}.yaml",
        ImportOptions(num_reqs=30, max_num_batched_tokens=2048),
        PAPER / "perf_models",
    )
    return setup.scenario_path


def run_fig6(tp: int, work: Path, until_s: int = 180) -> PowerSeries:
    scenario = load_scenario(fig6_setup(tp, work), [f"simulation.horizon_s={until_s}"])
    sim = build_simulation(scenario)
    times, total, devices = [], [], []
    prev_total, prev_dev = 0.0, 0.0
    for t in range(1, until_s + 1):
        sim.run_until(float(t))
        energy = sim.energy_j()
        now_total = sum(energy.values())
        times.append(float(t))
        total.append(now_total - prev_total)
        devices.append(energy["devices"] - prev_dev)
        prev_total, prev_dev = now_total, energy["devices"]
    summary = sim.summary()
    last = [float(x) for x in sim.metrics.request_table()["last_token_s"]]
    node = sim.nodes[0].spec
    static = sum(node.static_w.values())
    cpu_busy = (node.cpu_active_w - node.cpu_idle_w) * node.cpu_util
    spec = sim.instances[0].power.spec  # type: ignore[union-attr]
    levels = (
        static + tp * spec.idle_w,
        static + tp * spec.standby_w,
        static + cpu_busy + tp * spec.tdp_w,
    )
    return PowerSeries(f"TP{tp}", times, total, devices, sim.energy_j(), summary, last, levels)


@dataclass(frozen=True)
class Phase:
    """Power of one pulse phase."""

    name: str
    busy_s: float
    """From the pulse's arrival to its last token."""
    busy_mean_w: float
    """Mean over the whole seconds that contain work."""
    peak_w: float
    tail_w: float
    """Mean over the 10 s after the busy seconds (the standby tail)."""
    idle_w: float
    """The phase's last second (settled idle)."""
    mean_w: float
    energy_kj: float


def phases(series: PowerSeries) -> list[Phase]:
    out = []
    for k, (lo, hi) in enumerate(PHASES, start=1):
        done = max(t for t in series.last_token_s if lo <= t < hi)
        busy_end = int(done) + 1  # whole seconds containing work
        watts = dict(zip(series.time_s, series.total_w, strict=True))
        busy = [watts[float(t)] for t in range(lo + 1, busy_end + 1)]
        tail = [watts[float(t)] for t in range(busy_end + 1, busy_end + 11)]
        window = [watts[float(t)] for t in range(lo + 1, hi + 1)]
        out.append(
            Phase(
                name=f"pulse {k} ({lo}-{hi} s)",
                busy_s=done - lo,
                busy_mean_w=sum(busy) / len(busy),
                peak_w=max(window),
                tail_w=sum(tail) / len(tail),
                idle_w=window[-1],
                mean_w=sum(window) / len(window),
                energy_kj=sum(window) / 1e3,
            )
        )
    return out


def fig6_table(plot: bool) -> list[PowerSeries]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_fig6(tp, Path(tmp)) for tp in (1, 2)]
    print("\n### LLMServingSim figure 6 (A6000, Llama-3.1-8B, pulse trace), simulated\n")
    print(
        "| run | phase | serving s | mean W while serving | peak W (1 s) | standby tail W "
        "| settled idle W | mean W (60 s) | energy kJ |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in runs:
        for p in phases(s):
            print(
                f"| {s.name} | {p.name} | {p.busy_s:.1f} | {p.busy_mean_w:.0f} | "
                f"{p.peak_w:.0f} | {p.tail_w:.0f} | {p.idle_w:.0f} | {p.mean_w:.0f} | "
                f"{p.energy_kj:.1f} |"
            )
    print(
        "\n| run | total energy kJ (0-180 s) | devices | base | cpu | dram | links | nic "
        "| storage | mean TTFT ms | mean TPOT ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in runs:
        e = s.energy_j
        parts = " | ".join(f"{e[k] / 1e3:.2f}" for k in ("devices", "base", "cpu", "dram"))
        parts += " | " + " | ".join(f"{e[k] / 1e3:.2f}" for k in ("links", "nic", "storage"))
        print(
            f"| {s.name} | {sum(e.values()) / 1e3:.1f} | {parts} | "
            f"{s.summary['mean_ttft_ms']:.0f} | {s.summary['mean_tpot_ms']:.1f} |"
        )
    print("\n| run | LLMServingSim-model idle / standby / serving W (same config) |")
    print("|---|---|")
    for s in runs:
        idle, standby, serving = s.llmservingsim_w
        print(f"| {s.name} | {idle:.0f} / {standby:.0f} / {serving:.0f} |")
    if plot:
        _plot(runs)
    return runs


def _plot(runs: list[PowerSeries]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for s in runs:
        ax.step(s.time_s, s.total_w, where="pre", label=f"{s.name} server")
        ax.step(s.time_s, s.devices_w, where="pre", ls="--", label=f"{s.name} GPUs")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("power (W, 1 s average)")
    ax.set_title("LLMServingSim fig. 6 setup simulated by llmserve-env")
    ax.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    path = OUT / "fig6_power.png"
    fig.savefig(path, dpi=100)
    print(f"\nwrote {path}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mlenergy", action="store_true", help="only the ML.ENERGY part")
    parser.add_argument("--fig6", action="store_true", help="only the figure 6 part")
    parser.add_argument("--plot", action="store_true", help="write out/fig6_power.png")
    parser.add_argument("--prompt", type=int, default=256, help="assumed prompt tokens")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"reference data not found at {SHARED}")
    both = not (args.mlenergy or args.fig6)
    if both or args.mlenergy:
        mlenergy_table(args.prompt)
    if both or args.fig6:
        fig6_table(args.plot)


if __name__ == "__main__":
    main()
