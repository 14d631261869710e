"""The profile-driven latency model: measured operator tables summed over the layer
sequence (``profiles/README.md`` defines the tables and the composition).

For a batch with ``T`` tokens and ``S`` sequences, one iteration takes::

    overhead + per_token(T') + per_seq(S)
      + n_attn * attention(prefill chunk, its context, decodes, mean decode context)
      + n_moe * moe(T', expected distinct experts hit by T' tokens)

where ``T'`` is ``T`` padded to the engine's CUDA-graph capture sizes when the model is
given a :class:`~llmserve_env.perf.cudagraph.TokenPadding` (else ``T``: the eager run the
profiles measure), with the skew correction ``alpha * (attention at the longest decode - at the mean)``
when the profile has one, ``alpha`` looked up by the batch and the skew rate of its
decode lengths (:func:`skew_rate`). Decode-only stretches are evaluated with numpy over
all their iterations at once, or as a line in the iteration index when no knot of the
curves falls inside the stretch (the usual case: knots double in KV length); the skew
rate is constant over a stretch, so its bucket is too, and so is the padded token count
(the number of decodes is).
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from llmserve_env.perf.base import BatchShape, FloatArray
from llmserve_env.perf.compiled import CompiledProfile
from llmserve_env.perf.cudagraph import TokenPadding
from llmserve_env.perf.expert_parallel import ExpertParallel
from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.tables import PiecewiseLinear

US = 1e-6

SkewFactors = tuple[FloatArray, FloatArray, FloatArray]
"""Skew factors of one decode-only batch size: longest-context bucket edges, skew-rate
bucket edges, and ``alpha`` over the two (rows: longest context)."""


def skew_rate(num_decodes: int, kv_sum: float, kv_max: float, kv_min: float) -> float:
    """The skew rate ``(mean - min) / (max - min)`` of the decode KV lengths.

    As LLMServingSim defines it (for decodes of two lengths: the share of long ones);
    in [0, 1] when ``kv_min`` is the shortest length. All lengths equal (or fewer than
    two decodes): 0; no correction applies there anyway, since the longest is the
    mean. Computed as
    ``(kv_sum - n * kv_min) / (n * (kv_max - kv_min))``, in whole numbers up to the
    division, so every iteration of a decode stretch (where ``kv_sum`` grows by ``n``
    and both ends by 1) gives the same value to the last bit.
    """
    spread = kv_max - kv_min
    if spread <= 0.0:
        return 0.0
    return (kv_sum - num_decodes * kv_min) / (num_decodes * spread)


def fold_prefills(new: tuple[int, ...], ctx: tuple[int, ...]) -> tuple[float, float]:
    """One equivalent prefill chunk ``(q, c)`` for several, keeping tokens and work.

    The attention work of a chunk of ``q`` new tokens after ``c`` cached ones is
    ``q * (c + (q + 1) / 2)`` query-key pairs. The folded chunk keeps ``q = sum q_i``
    and the summed work; where that needs a negative context it keeps the work with
    ``c = 0`` and ``q = sqrt(2 W)`` instead.
    """
    if len(new) == 1:
        return float(new[0]), float(ctx[0])
    if len(ctx) != len(new):
        raise ValueError(f"{len(new)} prefill chunks but {len(ctx)} contexts")
    q = float(sum(new))
    work = 0.0
    for index in range(len(new)):  # indexed: compiled, a zip(strict=True) is generic
        n = new[index]
        work += n * (ctx[index] + (n + 1) / 2.0)
    c_eq = work / q - (q + 1) / 2.0
    if c_eq >= 0.0:
        return q, c_eq
    return max(math.sqrt(2.0 * work + 0.25) - 0.5, 1.0), 0.0


def expected_active_experts(num_tokens: float, num_experts: int, top_k: int) -> float:
    """Distinct experts ``num_tokens`` tokens hit under uniform top-``k`` routing."""
    if num_experts <= 0 or num_tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** num_tokens)


class ProfileLatencyModel:
    """Iteration latency from a compiled profile.

    Args:
        tables: The compiled profile.
        arch: The model (its expert count and top-k for MoE profiles).
        name: A label for reports (the profile folder).
        padding: vLLM's CUDA-graph padding of the token count, applied to the
            token-parallel operators and the MoE blocks (``None``: none, as measured).
        expert_parallel: The rank's layout when it is one rank of a DP+EP engine: its
            MoE blocks run its own experts on every rank's tokens, plus their dispatch
            and combine collectives (:mod:`llmserve_env.perf.expert_parallel`). Tables
            without an MoE table must have been timed for that layout (aiconfigurator's
            ``expert_parallel_size``): then only the collectives are added, one pair a
            layer.
    """

    def __init__(
        self,
        tables: CompiledProfile,
        arch: ModelArch,
        name: str = "",
        padding: TokenPadding | None = None,
        expert_parallel: ExpertParallel | None = None,
    ) -> None:
        self.tables = tables
        self.arch = arch
        self.name = name
        self.padding = padding
        self.expert_parallel = expert_parallel
        self._pad = padding.table if padding is not None else [0]
        self._pc_min = tables.min_prefill_chunk
        self._decode_cache: dict[int, tuple[float, PiecewiseLinear, SkewFactors | None]] = {}

    # ------------------------------------------------------------------ pieces

    def _attention_us(
        self, pc: float, kp: float, nd: int, kd_mean: float, kd_max: float, rate: float
    ) -> float:
        grid = self.tables.attention
        if pc > 0.0 and pc < self._pc_min:
            pc = self._pc_min
        t_mean = grid(pc, kp, nd, kd_mean)
        skew = self.tables.skew
        if skew is None or nd < 2 or kd_max <= kd_mean:
            return t_mean
        alpha = skew(pc, kp, nd, kd_max, rate)
        if alpha == 0.0:
            return t_mean
        t_max = grid(pc, kp, nd, kd_max)
        return t_mean + alpha * (t_max - t_mean) if t_max > t_mean else t_mean

    def _moe_us(self, num_tokens: float) -> float:
        moe = self.tables.moe
        ep = self.expert_parallel
        if ep is not None and num_tokens > 0:
            if moe is None:
                # Tables timed for expert parallelism: the experts are among the
                # token-parallel operators; only the dispatch and combine are added.
                return self.arch.num_layers * ep.collectives_s(num_tokens) / US
            tokens, experts = ep.kernel_shape(num_tokens)
            return self.tables.moe_count * (
                moe(tokens, experts) + ep.collectives_s(num_tokens) / US
            )
        if moe is None or num_tokens <= 0:
            return 0.0
        arch = self.arch
        experts = expected_active_experts(num_tokens, arch.num_experts, arch.experts_per_token)
        return self.tables.moe_count * moe(num_tokens, experts)

    def _fixed_us(self, num_tokens: int, num_seqs: int) -> float:
        t = self.tables
        pad = self._pad
        if num_tokens < len(pad):
            num_tokens = pad[num_tokens]
        return (
            t.overhead_us + t.per_token(num_tokens) + t.per_seq(num_seqs) + self._moe_us(num_tokens)
        )

    # ------------------------------------------------------------------ protocol

    def iteration_time_s(self, batch: BatchShape) -> float:
        """Seconds one iteration with this batch takes."""
        return self.rank_time_s(batch, 0)

    def rank_time_s(self, batch: BatchShape, group_tokens: int) -> float:
        """Seconds one rank of a lockstep data-parallel group takes for its ``batch``
        when the group's largest batch has ``group_tokens`` tokens: the token-parallel
        operators and MoE blocks run at that size (vLLM pads every rank to it, a rank
        without requests running a dummy batch of that size), attention and the
        per-sequence operators on the rank's own requests. ``group_tokens`` at most the
        batch's own token count: :meth:`iteration_time_s`."""
        num_decodes = batch.num_decodes
        new = batch.prefill_new
        num_tokens = sum(new) + num_decodes
        padded = num_tokens if group_tokens < num_tokens else group_tokens
        if padded == 0:
            return 0.0
        total = self._fixed_us(padded, len(new) + num_decodes)
        if num_tokens == 0:
            return total * US
        if new:
            pc, kp = fold_prefills(new, batch.prefill_ctx)
        else:
            pc = kp = 0.0
        if num_decodes:
            kd_mean = batch.decode_kv_sum / num_decodes - 1.0
            kd_max = batch.decode_kv_max - 1.0
            rate = skew_rate(
                num_decodes, batch.decode_kv_sum, batch.decode_kv_max, batch.decode_kv_min
            )
        else:
            kd_mean = kd_max = rate = 0.0
        total += self.tables.attention_count * self._attention_us(
            pc, kp, num_decodes, kd_mean, kd_max, rate
        )
        return total * US

    def _decode_curves(self, num_decodes: int) -> tuple[float, PiecewiseLinear, SkewFactors | None]:
        """For a decode-only batch of ``num_decodes`` requests (cached per size): the
        fixed part, attention vs decode context, and the skew factor as a step
        function of the longest context and the skew rate (every bucket of both, so
        the cache needs no other key)."""
        cached = self._decode_cache.get(num_decodes)
        if cached is not None:
            return cached
        grid = self.tables.attention
        kd_axis = grid.axes[3]
        values = np.array([grid(0.0, 0.0, num_decodes, k) for k in kd_axis])
        # The last knot of every compiled axis holds the half-range extrapolation, so
        # the slope of the last segment continues it.
        slope = float((values[-1] - values[-2]) / (kd_axis[-1] - kd_axis[-2]))
        attn = PiecewiseLinear(kd_axis, values, max(slope, 0.0), zero_at_zero=False)
        fixed = self._fixed_us(num_decodes, num_decodes)
        alpha: SkewFactors | None = None
        skew = self.tables.skew
        if skew is not None and num_decodes >= 2:
            kd_edges, rate_edges = skew.edges[3], skew.edges[4]
            factors = skew.many(
                0.0, 0.0, float(num_decodes), kd_edges[:, np.newaxis], rate_edges[np.newaxis, :]
            )
            alpha = (kd_edges, rate_edges, factors)
        result = (fixed, attn, alpha)
        if len(self._decode_cache) < 4096:
            self._decode_cache[num_decodes] = result
        return result

    def decode_times_s(
        self, num_decodes: int, kv_sum: FloatArray, kv_max: FloatArray, kv_min: FloatArray
    ) -> FloatArray:
        """Latencies of consecutive decode-only iterations (vectorised)."""
        fixed, attn, alpha = self._decode_curves(num_decodes)
        sums = np.asarray(kv_sum, dtype=np.float64)
        kd_mean = sums / num_decodes - 1.0
        t_attn = attn.many(kd_mean)
        if alpha is not None:
            kd_edges, rate_edges, factors = alpha
            longest = np.asarray(kv_max, dtype=np.float64)
            shortest = np.asarray(kv_min, dtype=np.float64)
            spread = longest - shortest
            rate = np.divide(
                sums - num_decodes * shortest,
                num_decodes * spread,
                out=np.zeros_like(sums),
                where=spread > 0.0,
            )  # as skew_rate(), elementwise
            kd_max = longest - 1.0
            row = np.minimum(np.searchsorted(kd_edges, kd_max, side="left"), len(kd_edges) - 1)
            col = np.minimum(np.searchsorted(rate_edges, rate, side="left"), len(rate_edges) - 1)
            gap = np.maximum(attn.many(kd_max) - t_attn, 0.0)
            t_attn = t_attn + np.where(kd_max > kd_mean, factors[row, col] * gap, 0.0)
        return (fixed + self.tables.attention_count * t_attn) * US

    def decode_line_s(
        self, num_decodes: int, kv_sum0: float, kv_max0: float, kv_min0: float, steps: int
    ) -> tuple[float, float] | None:
        """``(a, b)`` such that decode iteration ``i`` (1..``steps``), with KV sum
        ``kv_sum0 + num_decodes * i``, longest KV ``kv_max0 + i`` and shortest
        ``kv_min0 + i``, takes ``a + b * i`` seconds; ``None`` when a knot of the curves
        falls inside the stretch. The skew rate, hence its bucket, is the same for every
        iteration."""
        fixed, attn, alpha = self._decode_curves(num_decodes)
        mean0 = kv_sum0 / num_decodes - 1.0  # the mean decode context at i is mean0 + i
        line = attn.line(mean0 + 1.0, mean0 + steps)
        if line is None:
            return None
        c0, c1 = line
        a, b = c0 + c1 * mean0, c1  # attention at i: a + b * i
        max0 = kv_max0 - 1.0
        if alpha is not None and max0 > mean0:
            kd_edges, rate_edges, factors = alpha
            hi = max0 + steps
            index = bisect.bisect_left(kd_edges, max0 + 1.0)
            if index < len(kd_edges) - 1 and bisect.bisect_left(kd_edges, hi) != index:
                return None  # the skew factor changes within the stretch
            line = attn.line(max0 + 1.0, hi)
            if line is None:
                return None
            gap_a = line[0] + line[1] * max0 - a  # attention at the longest less the mean
            gap_b = line[1] - b
            if min(gap_a + gap_b, gap_a + gap_b * steps) < 0.0:
                return None
            rate = skew_rate(num_decodes, kv_sum0, kv_max0, kv_min0)
            col = min(bisect.bisect_left(rate_edges, rate), len(rate_edges) - 1)
            factor = float(factors[min(index, len(kd_edges) - 1), col])
            a, b = a + factor * gap_a, b + factor * gap_b
        count = self.tables.attention_count
        return (fixed + count * a) * US, count * b * US
