"""Whole iterations against a profile's prediction: does the operator sum hold?

A profile times each operator on its own; the simulator charges an iteration as the sum
over the layer sequence (:mod:`llmserve_env.perf.compiled`). This module measures what
that sum stands for: it builds the whole model from its configuration with random
weights (every layer its own weights, the first layer's embedding and LM head), runs
real forward passes for a set of batch compositions (prefill chunks after cached
contexts, decode batches, mixed batches) on the profiler's device, and sets each
measured iteration against :class:`~llmserve_env.perf.profile_model.ProfileLatencyModel`'s
prediction from the profile.

A forward pass has vLLM's structure (``LlamaForCausalLM``: the residual stream with its
adds fused into the next norm, the final norm over every token, the LM head on each
sequence's last one) and does what the profiled operators do plus what they leave out:
slicing and reshaping between operators, the concatenation of the attention outputs,
and the Python dispatch of every kernel; it writes the new keys and values into the
cache in place (the profile's ``reshape_and_cache`` times a scatter of them). On CUDA each case is also
captured as a CUDA graph and its replays timed (``cuda_graphs``), the way vLLM runs
its steps; the eager time then includes kernel launches that the graph removes.

The KV cache of a case is one set of buffers that every layer reads (a real cache has
a region per layer; holding ``layers`` copies of long contexts would not fit beside
the weights). The decodes of a case all attend to the same KV length, as the
profile's decode grid measured them, so the skew correction plays no part.

torch is imported by the caller and passed in, as in :mod:`llmserve_env.perf.profiler`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from llmserve_env.perf.base import BatchShape
from llmserve_env.perf.compiled import compile_profile
from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.profile_format import Profile
from llmserve_env.perf.profile_model import ProfileLatencyModel, expected_active_experts
from llmserve_env.perf.profiler import ProfileGrid, ProfilerOptions, resolve_torch_device
from llmserve_env.perf.profiler_torch import Timer, TorchLayer, sample, timing_method


@dataclass(frozen=True)
class IterationCase:
    """One batch composition to run.

    Attributes:
        label: A short name for reports.
        prefill_new: New tokens of each prefill chunk.
        prefill_ctx: Cached tokens before each chunk.
        num_decodes: Requests decoding one token.
        decode_kv: KV length every decode attends to (its cached tokens plus the new one).
    """

    label: str
    prefill_new: tuple[int, ...] = ()
    prefill_ctx: tuple[int, ...] = ()
    num_decodes: int = 0
    decode_kv: int = 0

    def __post_init__(self) -> None:
        if len(self.prefill_new) != len(self.prefill_ctx):
            raise ValueError(f"case {self.label!r}: one cached context per prefill chunk")
        if any(n < 1 for n in self.prefill_new) or any(c < 0 for c in self.prefill_ctx):
            raise ValueError(f"case {self.label!r}: chunks need >= 1 token, contexts >= 0")
        if self.num_decodes < 0 or (self.num_decodes and self.decode_kv < 1):
            raise ValueError(f"case {self.label!r}: decodes need a KV length >= 1")
        if not self.prefill_new and not self.num_decodes:
            raise ValueError(f"case {self.label!r} has no tokens")

    @property
    def num_tokens(self) -> int:
        """Tokens the iteration computes."""
        return self.shape().num_tokens

    @property
    def num_seqs(self) -> int:
        """Sequences in the batch."""
        return self.shape().num_seqs

    def shape(self) -> BatchShape:
        """The simulator's description of this iteration."""
        nd, kv = self.num_decodes, self.decode_kv if self.num_decodes else 0
        return BatchShape(self.prefill_new, self.prefill_ctx, nd, nd * kv, kv, kv)


def _between(values: Sequence[int], upper: int) -> int:
    """A point between the two largest grid rows at most ``upper`` (their geometric
    mean, or the midpoint from a row of 0), so the prediction interpolates; the largest
    row itself if only one fits."""
    rows = [v for v in values if v <= upper]
    if len(rows) < 2:
        return rows[-1] if rows else min(values)
    low, high = rows[-2], rows[-1]
    point = math.sqrt(low * high) if low > 0 else (low + high) / 2
    return min(high, max(low + 1, round(point)))


def default_cases(grid: ProfileGrid) -> list[IterationCase]:
    """Batch compositions inside ``grid`` (no extrapolation): prefills on and between
    its rows, with and without cached context, decode batches on and between its rows,
    a mixed batch and a batch of two prefill chunks."""
    top = min(max(grid.tokens), max(grid.prefill_chunks))
    chunks = [c for c in grid.prefill_chunks if c <= top] or [min(grid.prefill_chunks)]
    big, mid = chunks[-1], _between(chunks, top)
    ctx_rows = grid.prefill_contexts
    ctx = _between(ctx_rows, max(ctx_rows)) if max(ctx_rows) > 0 else 0
    decode_top = min(max(grid.decode_batches), max(grid.tokens), max(grid.seqs))
    batches = [b for b in grid.decode_batches if b <= decode_top] or [1]
    kv_rows = grid.decode_contexts
    kv = _between(kv_rows, max(kv_rows)) + 1
    cases = [
        IterationCase(f"prefill {big}", (big,), (0,)),
        IterationCase(f"prefill {mid}", (mid,), (0,)),
        IterationCase(f"prefill {chunks[0]}", (chunks[0],), (0,)),
    ]
    if ctx > 0:
        cases.append(IterationCase(f"prefill {mid} after {ctx}", (mid,), (ctx,)))
    cases += [IterationCase(f"decode 1 x {kv}", num_decodes=1, decode_kv=kv)]
    mid_batch = _between(batches, decode_top)
    if mid_batch > 1:
        cases.append(
            IterationCase(f"decode {mid_batch} x {kv}", num_decodes=mid_batch, decode_kv=kv)
        )
    if batches[-1] not in (1, mid_batch):
        cases.append(
            IterationCase(f"decode {batches[-1]} x {kv}", num_decodes=batches[-1], decode_kv=kv)
        )
    decodes = min(mid_batch, max(1, top - chunks[0]))
    mixed_chunk = max(chunks[0], min(mid, top - decodes))
    cases.append(
        IterationCase(
            f"prefill {mixed_chunk} + decode {decodes} x {kv}",
            (mixed_chunk,),
            (0,),
            num_decodes=decodes,
            decode_kv=kv,
        )
    )
    if mid // 2 >= chunks[0]:
        cases.append(
            IterationCase(
                f"prefills {mid // 2} + {mid // 2} after {ctx}", (mid // 2, mid // 2), (0, ctx)
            )
        )
    unique = {case.label: case for case in reversed(cases)}  # a grid of few rows repeats
    return [case for case in cases if unique.get(case.label) is case]


@dataclass(frozen=True)
class IterationResult:
    """One case measured and predicted.

    Attributes:
        case: The batch composition.
        measured_s: Eager forward pass, seconds.
        predicted_s: The profile's iteration time, seconds.
        graph_s: CUDA-graph replay, seconds (``None`` off CUDA or when not asked for).
        graph_error: Why the graph could not be captured, if it could not.
    """

    case: IterationCase
    measured_s: float
    predicted_s: float
    graph_s: float | None = None
    graph_error: str | None = None

    @property
    def err_pct(self) -> float:
        """(predicted - measured eager) / measured eager, percent."""
        return 100.0 * (self.predicted_s - self.measured_s) / self.measured_s

    @property
    def graph_err_pct(self) -> float | None:
        """(predicted - graph replay) / graph replay, percent."""
        if self.graph_s is None:
            return None
        return 100.0 * (self.predicted_s - self.graph_s) / self.graph_s


@dataclass
class IterationCheck:
    """Every case of one check, with the setting it ran in.

    Attributes:
        results: One per case, in order.
        num_layers: Layers of the model run (and of the prediction).
        device: What the driver reports (or ``cpu``).
        setting: Dtype, repetitions, threads and the like, for the record.
        skipped: Cases the device had no memory for, with the allocator's message.
    """

    results: list[IterationResult]
    num_layers: int
    device: str
    setting: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[IterationCase, str]] = field(default_factory=list)

    def mape_pct(self, graphs: bool = False) -> float:
        """Mean absolute error of the predictions, percent (eager or graph replays)."""
        errs = [r.graph_err_pct if graphs else r.err_pct for r in self.results]
        kept = [abs(e) for e in errs if e is not None]
        return float(np.mean(kept)) if kept else math.nan

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        rows = []
        for r in self.results:
            row = asdict(r.case)
            row |= {
                "num_tokens": r.case.num_tokens,
                "measured_ms": r.measured_s * 1e3,
                "predicted_ms": r.predicted_s * 1e3,
                "err_pct": r.err_pct,
            }
            if r.graph_s is not None:
                row |= {"graph_ms": r.graph_s * 1e3, "graph_err_pct": r.graph_err_pct}
            if r.graph_error is not None:
                row["graph_error"] = r.graph_error
            rows.append(row)
        out: dict[str, Any] = {
            "num_layers": self.num_layers,
            "device": self.device,
            "setting": self.setting,
            "mape_pct": self.mape_pct(),
            "cases": rows,
        }
        if self.skipped:
            out["skipped"] = [asdict(case) | {"error": why} for case, why in self.skipped]
        if any(r.graph_s is not None for r in self.results):
            out["graph_mape_pct"] = self.mape_pct(graphs=True)
        return out


class _Forward:
    """One case's forward pass over a stack of layers, inputs built once."""

    def __init__(self, torch: Any, layers: list[TorchLayer], case: IterationCase) -> None:
        self.torch, self.layers, self.case = torch, layers, case
        first = layers[0]
        arch, device, dtype = first.arch, first.device, first.dtype
        kw = {"device": device, "dtype": dtype}
        self.ids = torch.randint(
            0, first.embedding.num_embeddings, (case.num_tokens,), device=device
        )
        positions: list[Any] = []
        self.caches: list[tuple[Any, Any, Any]] = []  # prefill chunks: (k, v, mask)
        for new, ctx in zip(case.prefill_new, case.prefill_ctx, strict=True):
            positions.append(torch.arange(ctx, ctx + new, device=device))
            k = torch.randn(1, first.kv_heads, ctx + new, arch.head_dim, **kw)
            mask = None
            if ctx > 0:
                rows = torch.arange(new, device=device)[:, None] + ctx
                mask = torch.arange(ctx + new, device=device)[None, :] <= rows
            self.caches.append((k, torch.randn_like(k), mask))
        nd, kv = case.num_decodes, case.decode_kv
        if nd:
            positions.append(torch.full((nd,), kv - 1, device=device))
            k = torch.randn(nd, first.kv_heads, kv, arch.head_dim, **kw)
            self.decode_cache: tuple[Any, Any] | None = (k, torch.randn_like(k))
        else:
            self.decode_cache = None
        self.positions = torch.cat(positions)
        ends = np.cumsum([*case.prefill_new, *([1] * nd)]) - 1
        self.last = torch.as_tensor(ends, device=device)
        self.active = 0
        if arch.is_moe:
            hit = expected_active_experts(case.num_tokens, arch.num_experts, arch.experts_per_token)
            self.active = max(1, min(arch.num_experts, round(hit)))

    def _attention(self, layer: TorchLayer, q: Any, k: Any, v: Any) -> Any:
        """Write the new keys and values into the cache, attend, ``[tokens, heads x hd]``."""
        torch, case = self.torch, self.case
        outs, start = [], 0
        for (kc, vc, mask), new, ctx in zip(
            self.caches, case.prefill_new, case.prefill_ctx, strict=True
        ):
            end = start + new
            kc[0, :, ctx:, :] = k[start:end].transpose(0, 1)
            vc[0, :, ctx:, :] = v[start:end].transpose(0, 1)
            qi = q[start:end].transpose(0, 1).unsqueeze(0)
            o = layer.sdpa(qi, kc, vc, mask=mask, causal=ctx == 0)
            outs.append(o[0].transpose(0, 1).reshape(new, -1))
            start = end
        if self.decode_cache is not None:
            kc, vc = self.decode_cache
            kv = case.decode_kv
            kc[:, :, kv - 1, :] = k[start:]
            vc[:, :, kv - 1, :] = v[start:]
            o = layer.sdpa(q[start:].unsqueeze(2), kc, vc)
            outs.append(o.reshape(case.num_decodes, -1))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def __call__(self) -> Any:
        first = self.layers[0]
        arch = first.arch
        hd = arch.head_dim
        h = first.embedding(self.ids)
        n = h.shape[0]
        residual = None
        for layer in self.layers:  # vLLM's LlamaDecoderLayer, residual stream and all
            if residual is None:
                residual, x = h, layer.rms_norm(h)
            else:
                x, residual = layer.add_rms_norm(h, residual)
            qkv = layer.qkv(x)
            q = qkv[:, : layer.heads * hd].reshape(n, layer.heads, hd)
            k = qkv[:, layer.heads * hd : (layer.heads + layer.kv_heads) * hd]
            k = k.reshape(n, layer.kv_heads, hd)
            v = qkv[:, (layer.heads + layer.kv_heads) * hd :].reshape(n, layer.kv_heads, hd)
            if arch.qk_norm:
                q, k = layer.qk_norm(q, k)
            q, k = layer.rotary(q, k, self.positions)
            h = layer.o(self._attention(layer, q, k, v))
            x, residual = layer.add_rms_norm(h, residual)
            if arch.is_moe:
                h = layer.moe(x, self.active)
            else:
                h = layer.down(layer.silu_and_mul(layer.gate_up(x)))
        x, _ = first.add_rms_norm(h, residual)  # the model's final norm, every token
        return sample(self.torch, first.lm_head(x[self.last]))


def _graph_timer(torch: Any, timer: Timer, fn: Callable[[], object]) -> float:
    """Seconds one replay of ``fn`` captured as a CUDA graph takes."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on a side stream, as torch's capture docs ask
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return timer(graph.replay)


def _measure(
    torch: Any,
    layers: list[TorchLayer],
    case: IterationCase,
    timer: Timer,
    model: ProfileLatencyModel,
    graphs: bool,
) -> IterationResult:
    """One case: eager forward passes, CUDA-graph replays if asked, the prediction."""
    forward = _Forward(torch, layers, case)
    measured = timer(forward)
    graph_s: float | None = None
    graph_error: str | None = None
    if graphs:
        try:
            graph_s = _graph_timer(torch, timer, forward)
        except RuntimeError as exc:  # capture refused by this torch/driver
            graph_error = f"{type(exc).__name__}: {exc}"
    predicted = model.iteration_time_s(case.shape())
    return IterationResult(case, measured, predicted, graph_s, graph_error)


def _out_of_memory(torch: Any, exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA's own type, or the CPU allocator's)."""
    oom = getattr(torch, "OutOfMemoryError", None)
    if isinstance(exc, MemoryError) or (oom is not None and isinstance(exc, oom)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def check_iterations(
    profile: Profile,
    arch: ModelArch,
    options: ProfilerOptions | None = None,
    cases: Sequence[IterationCase] | None = None,
    num_layers: int | None = None,
    cuda_graphs: bool = True,
    log: Callable[[str], None] | None = None,
) -> IterationCheck:
    """Run every case through the whole model and set it against the profile.

    Args:
        profile: The profile to check (a single-device one, ``tp`` 1).
        arch: Its model.
        options: Device, dtype, warm-up, repetitions and seed (the profiler's; its grid
            gives the default cases).
        cases: Batch compositions (default :func:`default_cases` of the grid).
        num_layers: Layers to build and predict (default: the profile's).
        cuda_graphs: On CUDA, also time each case as a captured CUDA graph.
        log: Called with a line per case.

    Raises:
        ImportError: torch is not installed.
        ValueError: a tensor-parallel profile, or a bad option or device.
    """
    if profile.meta.tp != 1:
        raise ValueError(
            f"the iteration check runs one device; profile tp is {profile.meta.tp} "
            "(its collectives cannot be measured here): check a tp 1 profile"
        )
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised without torch only
        raise ImportError("the iteration check needs PyTorch: pip install torch") from exc
    opts = options or ProfilerOptions()
    layers_n = num_layers or profile.meta.num_layers
    if layers_n < 1:
        raise ValueError(f"num_layers must be >= 1, got {layers_n}")
    model = ProfileLatencyModel(
        compile_profile(replace(profile, meta=replace(profile.meta, num_layers=layers_n))), arch
    )
    chosen = list(cases) if cases is not None else default_cases(opts.grid)
    say = log or (lambda line: None)
    device = resolve_torch_device(torch, opts.device)
    torch.manual_seed(opts.seed)
    # A model smaller than the caches would run warm from one iteration to the next,
    # so on CUDA the L2 is flushed before each; not on the CPU, where a flush also
    # evicts the framework's own state (a 12 us norm then takes over 200 us): there the
    # model should be larger than the last-level cache.
    flush = opts.cold_bytes(torch, device) if device.type == "cuda" else 0
    timer = Timer(torch, device, opts.warmup, opts.repeat, flush)
    graphs = cuda_graphs and device.type == "cuda"
    results: list[IterationResult] = []
    skipped: list[tuple[IterationCase, str]] = []
    with torch.inference_mode():
        layers = [
            TorchLayer(torch, arch, opts.dtype, 1, device, head=i == 0) for i in range(layers_n)
        ]
        for case in chosen:
            try:
                result = _measure(torch, layers, case, timer, model, graphs)
            except (RuntimeError, MemoryError) as exc:
                if not _out_of_memory(torch, exc):
                    raise
                # One batch too large for the device ends that case, not the check.
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                skipped.append((case, why))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                say(f"{case.label}: skipped, out of memory ({why})")
                continue
            results.append(result)
            say(
                f"{case.label}: measured {result.measured_s * 1e3:.3f} ms, predicted "
                f"{result.predicted_s * 1e3:.3f} ms ({result.err_pct:+.1f} %)"
            )
    setting: dict[str, Any] = {
        "dtype": opts.dtype,
        "warmup": opts.warmup,
        "repeat": opts.repeat,
        "cache_flush_mib": flush / 2**20,
        "torch": str(torch.__version__),
        "timing": timing_method(device),
        "cuda_graphs": graphs,
    }
    if device.type == "cpu":
        setting["cpu_threads"] = int(torch.get_num_threads())
    reported = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return IterationCheck(results, layers_n, str(reported), setting, skipped)
