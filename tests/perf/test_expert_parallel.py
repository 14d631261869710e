"""Expert parallelism over data-parallel ranks: the MoE kernel's shape, the dispatch and
combine collectives, the rank latency of the profile and roofline models, and the
scenario layout (devices, KV cache, refusals)."""

from __future__ import annotations

import dataclasses

import pytest

from llmserve_env.build import SimulationFactory
from llmserve_env.config.errors import ScenarioError
from llmserve_env.config.loader import validate_scenario
from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.comm import AlphaBetaComm
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.expert_parallel import ExpertParallel
from llmserve_env.perf.hardware import resolve_device
from llmserve_env.perf.model_arch import load_model_arch
from llmserve_env.perf.profile_model import ProfileLatencyModel
from llmserve_env.perf.roofline import RooflineModel
from tests.helpers import run_accounted
from tests.perf.crafted import crafted_profile

LINK = AlphaBetaComm(bandwidth_gbps=10.0, latency_s=1e-6, efficiency=1.0)
"""10 GB/s, 1 us a ring step: a collective of B bytes over 2 devices takes 1 us + B/2e10 s."""

MOE = "Qwen/Qwen3-30B-A3B-Instruct-2507"


def layout(num_experts: int = 8, top_k: int = 2, dp: int = 2) -> ExpertParallel:
    return ExpertParallel(dp, num_experts, top_k, 100.0, 60.0, LINK)


def test_kernel_shape_and_collectives_by_hand() -> None:
    ep = layout()
    tokens, experts = ep.kernel_shape(8)
    # 16 gathered tokens hit 4 * (1 - (3/4)**16) of the rank's 4 experts, with 16 x 2 / 2
    # = 16 token-expert pairs: the work of 8 tokens of 2 pairs each.
    assert tokens == 8
    assert experts == pytest.approx(4 * (1 - 0.75**16))
    all_gather = 1e-6 + 0.5 * 16 * 100 / 1e10
    reduce_scatter = 1e-6 + 0.5 * 16 * 60 / 1e10
    assert ep.collectives_s(8) == pytest.approx(all_gather + reduce_scatter)


def test_layout_checks() -> None:
    with pytest.raises(ValueError, match="dp_size >= 2"):
        layout(dp=1)
    with pytest.raises(ValueError, match="do not split evenly"):
        layout(num_experts=9, dp=2)
    with pytest.raises(ValueError, match="dense"):
        ExpertParallel.for_model(load_model_arch("meta-llama/Llama-3.1-8B"), "bf16", 2, LINK)
    arch = load_model_arch(MOE)
    ep = ExpertParallel.for_model(arch, "bf16", 2, LINK)
    assert ep.local_experts == arch.num_experts // 2
    assert ep.dispatch_bytes_per_token == (arch.hidden_size + arch.num_experts) * 2
    assert ep.combine_bytes_per_token == arch.hidden_size * 2


def test_profile_rank_time_pads_dense_and_moe_but_not_attention() -> None:
    arch = dataclasses.replace(
        load_model_arch("meta-llama/Llama-3.1-8B"),
        num_experts=8,
        experts_per_token=2,
        moe_intermediate_size=64,
    )
    tables = compile_profile(crafted_profile(moe=True))
    ep = layout()
    m = ProfileLatencyModel(tables, arch, expert_parallel=ep)
    plain = ProfileLatencyModel(tables, arch)
    decodes = BatchShape((), (), 4, 4 * 51, 51, 51)
    # MoE at the group's 8 tokens on the rank's experts, plus the two collectives, in
    # each of the profile's 2 MoE blocks (crafted MoE: 3 + 0.5 tokens + 2 experts us).
    tokens, experts = ep.kernel_shape(8)
    moe_us = 3 + 0.5 * tokens + 2 * experts + ep.collectives_s(8) * 1e6
    t = tables
    own_attention = plain._attention_us(0.0, 0.0, 4, 50.0, 50.0, 0.0)
    expected_us = (
        t.overhead_us
        + t.per_token(8)  # the token-parallel operators at the group's size
        + t.per_seq(4)  # the rank's own sequences
        + t.moe_count * moe_us
        + t.attention_count * own_attention
    )
    expected = expected_us * 1e-6
    assert m.rank_time_s(decodes, 8) == pytest.approx(expected)
    # A smaller group than the batch changes nothing; a dummy batch pays the padded part.
    assert m.rank_time_s(decodes, 2) == m.iteration_time_s(decodes)
    dummy = m.rank_time_s(BatchShape(), 8)
    assert 0 < dummy < m.rank_time_s(decodes, 8)


def test_roofline_rank_reads_only_its_experts() -> None:
    arch = load_model_arch(MOE)
    device = resolve_device("H100-SXM")
    ep = ExpertParallel.for_model(arch, "bf16", 4, LINK)
    rank = RooflineModel(arch, device, expert_parallel=ep)
    whole = RooflineModel(arch, device)
    batch = BatchShape((), (), 64, 64 * 500, 500, 500)
    # 64 tokens per rank hit nearly all 128 experts; a rank reads a quarter of them.
    read = rank._experts_bytes(64) / whole._experts_bytes(64)
    assert read == pytest.approx(0.25 * (1 - (1 - 8 / 128) ** 256) / (1 - (1 - 8 / 128) ** 64))
    assert rank.iteration_time_s(batch) < whole.iteration_time_s(batch)
    assert rank.rank_time_s(batch, 256) > rank.iteration_time_s(batch)


def scenario(**group: object) -> dict[str, object]:
    instances = {"model": MOE, "device": "H100-SXM", "perf": "analytical", **group}
    return {
        "name": "dp-ep",
        "cluster": {"nodes": [{"num_devices": 4, "instances": [instances]}]},
        "engine": {"max_num_seqs": 64},
        "router": {"policy": "vllm_data_parallel"},
        "workload": {
            "kind": "synthetic",
            "arrival": {"process": "poisson", "rate_rps": 20},
            "prompt_tokens": {"dist": "fixed", "value": 300},
            "output_tokens": {"dist": "fixed", "value": 20},
            "num_requests": 60,
        },
    }


def test_a_dp_ep_scenario_builds_lockstep_ranks_with_split_experts() -> None:
    factory = SimulationFactory(
        validate_scenario(scenario(data_parallel_size=4, enable_expert_parallel=True))
    )
    sim = factory.build()
    assert len(sim.instances) == 4
    (group,) = sim.dp_groups
    assert group.ranks == sim.instances
    # A quarter of the experts per device leaves more memory to the KV cache.
    replicas = SimulationFactory(validate_scenario(scenario(count=4)))
    assert factory.plans[0].params.num_blocks > replicas.plans[0].params.num_blocks
    assert replicas.build().dp_groups == []
    summary = run_accounted(sim)
    assert summary["num_finished"] == 60
    assert len({inst.stats.num_iterations for inst in sim.instances}) == 1


@pytest.mark.parametrize(
    ("group", "message"),
    [
        ({"enable_expert_parallel": True}, "needs data_parallel_size >= 2"),
        (
            {"data_parallel_size": 2, "enable_expert_parallel": True, "tp": 2},
            "modelled for tp: 1 ranks only",
        ),
        ({"data_parallel_size": 8, "enable_expert_parallel": True}, "instances need 8 devices"),
    ],
)
def test_schema_refuses_layouts_it_cannot_model(group: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError, match=message):
        validate_scenario(scenario(**group))


def test_build_refuses_moe_ranks_without_expert_parallelism_and_dense_ep() -> None:
    with pytest.raises(ScenarioError, match="enable_expert_parallel") as info:
        SimulationFactory(validate_scenario(scenario(data_parallel_size=2)))
    assert "cluster.nodes[0].instances[0].enable_expert_parallel" in str(info.value)
    dense = scenario(data_parallel_size=2, enable_expert_parallel=True)
    dense["cluster"]["nodes"][0]["instances"][0]["model"] = "meta-llama/Llama-3.1-8B"  # type: ignore[index]
    with pytest.raises(ScenarioError, match="dense model"):
        SimulationFactory(validate_scenario(dense))
