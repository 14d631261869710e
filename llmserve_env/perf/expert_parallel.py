"""Expert parallelism over data-parallel ranks, as vLLM runs an MoE model with
``--data-parallel-size D --enable-expert-parallel`` (tensor-parallel degree 1).

Each of the ``D`` ranks is an engine of its own (scheduler, KV cache, requests) holding
the attention and dense weights whole and ``num_experts / D`` whole experts. The ranks
step in lockstep (the simulator's :class:`~llmserve_env.sim.data_parallel.DPGroup`):
every step, each pads its token count to the largest of the group (a rank with nothing
to run takes a dummy batch), and every MoE layer

1. all-gathers the hidden states and router logits of every rank's tokens (vLLM's
   default ``allgather_reducescatter`` all-to-all backend),
2. runs the fused MoE kernel over its own experts for all gathered tokens (the others'
   experts are masked out), and
3. reduce-scatters the expert outputs back to the ranks their tokens came from.

The kernel of step 2 is looked up in the profile's MoE table (tokens x active experts,
measured with every expert local) by the work it does: ``D x T`` gathered tokens hit,
under uniform top-``k`` routing, an expected ``E_loc (1 - (1 - k / E) ** (D T))`` of the
rank's ``E_loc = E / D`` experts with ``D T k / D = T k`` token-expert pairs, which the
table holds under ``T k / k = D T / D`` tokens. The collectives of steps 1 and 3 come from
a :class:`~llmserve_env.perf.comm.CommModel` over the ``D`` devices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmserve_env.perf.comm import CommModel
from llmserve_env.perf.model_arch import DTYPE_BYTES, ModelArch


@dataclass(frozen=True, slots=True)
class ExpertParallel:
    """The expert-parallel layout of one rank of a DP+EP engine.

    Attributes:
        dp_size: Data-parallel ranks in lockstep (= the expert-parallel size at TP 1).
        num_experts: Routed experts of each MoE layer (all ranks together).
        top_k: Experts each token is routed to.
        dispatch_bytes_per_token: Bytes the all-gather moves per token (hidden state and
            router logits).
        combine_bytes_per_token: Bytes the reduce-scatter moves per token (hidden state).
        comm: Collective latency between the ranks' devices.
    """

    dp_size: int
    num_experts: int
    top_k: int
    dispatch_bytes_per_token: float
    combine_bytes_per_token: float
    comm: CommModel
    _collectives: dict[float, float] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    """:meth:`collectives_s` by token count (a step's ranks and its decodes repeat them)."""

    def __post_init__(self) -> None:
        if self.dp_size < 2:
            raise ValueError(f"expert parallelism needs dp_size >= 2, got {self.dp_size}")
        if self.num_experts % self.dp_size:
            raise ValueError(
                f"{self.num_experts} experts do not split evenly over {self.dp_size} ranks"
            )

    @classmethod
    def for_model(
        cls, arch: ModelArch, dtype: str, dp_size: int, comm: CommModel
    ) -> ExpertParallel:
        """The layout of ``arch`` over ``dp_size`` ranks, activations in ``dtype``.

        Raises:
            ValueError: a dense model, or experts that do not split evenly.
        """
        if not arch.is_moe:
            raise ValueError(f"expert parallelism needs an MoE model; {arch.name} is dense")
        width = max(DTYPE_BYTES[dtype], 2)  # activations travel in 16 bits under fp8 weights
        return cls(
            dp_size=dp_size,
            num_experts=arch.num_experts,
            top_k=arch.experts_per_token,
            dispatch_bytes_per_token=(arch.hidden_size + arch.num_experts) * width,
            combine_bytes_per_token=arch.hidden_size * width,
            comm=comm,
        )

    @property
    def local_experts(self) -> int:
        """Experts each rank holds."""
        return self.num_experts // self.dp_size

    def kernel_shape(self, padded_tokens: float) -> tuple[float, float]:
        """``(tokens, active experts)`` to look the rank's MoE kernel up by, when every
        rank runs ``padded_tokens`` tokens (module doc)."""
        miss = (1.0 - self.top_k / self.num_experts) ** (padded_tokens * self.dp_size)
        return padded_tokens, self.local_experts * (1.0 - miss)

    def collectives_s(self, padded_tokens: float) -> float:
        """Seconds of one MoE layer's dispatch all-gather and combine reduce-scatter
        when every rank runs ``padded_tokens`` tokens."""
        cached = self._collectives.get(padded_tokens)
        if cached is None:
            gathered = padded_tokens * self.dp_size
            n = self.dp_size
            cached = self.comm.time_s(
                "all_gather", gathered * self.dispatch_bytes_per_token, n
            ) + self.comm.time_s("reduce_scatter", gathered * self.combine_bytes_per_token, n)
            if len(self._collectives) < 65536:
                self._collectives[padded_tokens] = cached
        return cached
