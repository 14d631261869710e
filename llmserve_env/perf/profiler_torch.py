"""The PyTorch side of ``llmserve profile``: timing, NVML power sampling and one decoder
layer as plain torch modules.

Nothing here imports torch at module level: callers pass the ``torch`` module in, so
importing :mod:`llmserve_env.perf.profiler` stays free and the simulator never depends
on torch.
"""

from __future__ import annotations

import itertools
import math
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np

from llmserve_env.perf.model_arch import ModelArch

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
"""Profiler dtypes -> torch dtype names."""


# --------------------------------------------------------------------------- timing


def timing_method(device: Any) -> str:
    """How :class:`Timer` times on ``device``, for provenance."""
    return "cuda events" if device.type == "cuda" else "time.perf_counter (median)"


NOISY_SPREAD = 0.5
"""A point is noisy when the interquartile range of its repeats exceeds this share of
their median. On a quiet 2-core CPU host, at 10 repeats, 0-1 of the 9-11 judged points
of tiny-llama's quick grid and none of the 33-35 of Llama-3.1-8B's (64 tokens, 256 of
context) are; with two busy processes beside it 12 of 38."""
NOISY_MIN_S = 1e-4
"""Points shorter than this are not judged: the timer's and Python's own jitter is
tens of microseconds."""
NOISY_MIN_REPEATS = 8
"""Fewer repeats estimate the quartiles too roughly to tell (at 5, 9 of 68 points of a
quiet run pass the threshold)."""


class Timer:
    """Times a callable on one device: CUDA events after warm-up, or perf_counter.

    Args:
        torch: The torch module.
        device: The torch device.
        warmup: Untimed calls first.
        repeat: Timed calls.
        flush_bytes: Before each timed call, overwrite a buffer this large (0: none).
            For whole iterations of a model that, unlike a real one, fits in the
            caches; operators are kept cold by :func:`cold_calls` instead.
    """

    def __init__(
        self, torch: Any, device: Any, warmup: int, repeat: int, flush_bytes: int = 0
    ) -> None:
        self.torch, self.device = torch, device
        self.warmup, self.repeat = warmup, repeat
        self.cuda = device.type == "cuda"
        self.points = self.noisy = 0
        """Points timed call by call with :data:`NOISY_MIN_REPEATS` or more repeats, and
        those of them whose repeats spread widely (:data:`NOISY_SPREAD`): a busy
        machine's signature."""
        self._flush = (
            torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)
            if flush_bytes >= 4
            else None
        )

    def __call__(self, fn: Callable[[], object] | Sequence[Callable[[], object]]) -> float:
        """Seconds one call of ``fn`` takes (CUDA: the mean, CPU: the median). A
        sequence of callables (:func:`cold_calls`) is called in turn."""
        torch = self.torch
        calls = [fn] if callable(fn) else list(fn)
        turn = itertools.cycle(calls)
        for _ in range(self.warmup):
            next(turn)()
        flush = self._flush
        if self.cuda:
            torch.cuda.synchronize(self.device)
            if flush is None:  # one event pair around the whole loop
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(self.repeat):
                    next(turn)()
                end.record()
                end.synchronize()
                return float(start.elapsed_time(end)) * 1e-3 / self.repeat
            pairs = []
            for _ in range(self.repeat):
                flush.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                next(turn)()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize(self.device)
            return float(np.mean([a.elapsed_time(b) for a, b in pairs])) * 1e-3
        samples = []
        for _ in range(self.repeat):
            call = next(turn)
            if flush is not None:
                flush.zero_()
            t0 = time.perf_counter()
            call()
            samples.append(time.perf_counter() - t0)
        median = float(statistics.median(samples))
        if len(samples) >= NOISY_MIN_REPEATS and median >= NOISY_MIN_S:
            q1, _, q3 = statistics.quantiles(samples, n=4)
            self.points += 1
            self.noisy += (q3 - q1) > NOISY_SPREAD * median
        return median


def cold_calls(
    fn: Callable[..., object], tensors: Sequence[Any], budget_bytes: int, limit: int = 64
) -> list[Callable[[], object]]:
    """``fn(*tensors)`` over enough copies of ``tensors`` that one turn through the
    calls reads ``budget_bytes`` of distinct data (at most ``limit`` copies).

    An operator in a model reads its weights (and attention its KV cache) once per
    iteration, long evicted by the other layers' since the last time; timed back to back
    on the same tensors it finds them in the GPU's L2 or the CPU's last-level cache and
    looks faster than it runs (on this project's 2-core CPU a 23 MB weight matrix
    multiplies one token in 0.84 ms warm, 1.55 ms cold). Cycling through copies keeps
    the weights cold and everything else (inputs made by the previous operator, the
    framework's own state) as warm as in the model; a cache flush before each call
    would also chill those, and on the CPU that makes a 12 us norm take over 200 us.
    ``budget_bytes`` 0: the tensors themselves, every call (warm).
    """
    size = sum(int(t.numel()) * int(t.element_size()) for t in tensors)
    count = 1 if budget_bytes <= 0 or size <= 0 else min(limit, -(-budget_bytes // size))
    sets = [tuple(tensors)] + [tuple(t.clone() for t in tensors) for _ in range(count - 1)]
    return [partial(fn, *each) for each in sets]


class PowerSampler:
    """Board power through NVML in a background thread (NVIDIA GPUs, optional)."""

    def __init__(self, index: int, interval_s: float = 0.02) -> None:
        import pynvml  # provided by nvidia-ml-py; optional

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._interval_s = interval_s
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read_w(self) -> float:
        """Instantaneous board power (W)."""
        return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1e3

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self.read_w())
            self._stop.wait(self._interval_s)

    def start(self) -> None:
        """Start sampling."""
        self._thread.start()

    def stop(self) -> dict[str, float]:
        """Stop and summarise (W)."""
        self._stop.set()
        self._thread.join()
        self._nvml.nvmlShutdown()
        s = self._samples or [math.nan]
        return {
            "mean_w": float(np.mean(s)),
            "max_w": float(np.max(s)),
            "num_samples": len(self._samples),
        }


@contextmanager
def power_sampling(torch: Any, device: Any, enabled: bool) -> Iterator[dict[str, Any]]:
    """Yield a dict that holds the power summary once the block ends (empty if off)."""
    out: dict[str, Any] = {}
    sampler: PowerSampler | None = None
    if enabled and device.type == "cuda":
        try:
            index = device.index if device.index is not None else torch.cuda.current_device()
            sampler = PowerSampler(index)
            out["idle_w"] = sampler.read_w()
            sampler.start()
        except Exception as exc:  # NVML missing or unsupported: profile without power
            out["unavailable"] = f"{type(exc).__name__}: {exc}"
            sampler = None
    try:
        yield out
    finally:
        if sampler is not None:
            out.update(sampler.stop())


# --------------------------------------------------------------------------- the layer


class TorchLayer:
    """One decoder layer shard (plus embedding and head) as plain torch modules with
    random weights.

    Args:
        torch: The torch module.
        arch: The model.
        dtype: ``bf16``, ``fp16`` or ``fp32``.
        tp: Tensor-parallel degree of the shard (heads and widths split ``tp`` ways).
        device: The torch device.
        head: Build the embedding and the LM head too (off for the further layers of a
            whole-model stack, which share the first layer's).
    """

    def __init__(
        self, torch: Any, arch: ModelArch, dtype: str, tp: int, device: Any, head: bool = True
    ) -> None:
        nn = torch.nn
        self.torch, self.arch, self.device = torch, arch, device
        self.dtype = getattr(torch, TORCH_DTYPES[dtype])
        h, hd = arch.hidden_size, arch.head_dim
        self.heads = max(1, arch.num_heads // tp)
        self.kv_heads = arch.kv_heads_per_gpu(tp)
        kw = {"device": device, "dtype": self.dtype}
        if head:
            self.embedding = nn.Embedding(max(1, arch.vocab_size // tp), h, **kw)
            self.lm_head = nn.Linear(h, max(1, arch.vocab_size // tp), bias=False, **kw)
        self.norm_weight = torch.ones(h, **kw)
        self.head_norm_weight = torch.ones(hd, **kw)  # Qwen3's q_norm / k_norm
        self.qkv = nn.Linear(h, (self.heads + 2 * self.kv_heads) * hd, bias=False, **kw)
        self.o = nn.Linear(self.heads * hd, h, bias=False, **kw)
        if arch.is_moe:
            mi = max(1, arch.moe_intermediate_size // tp)
            self.router = nn.Linear(h, arch.num_experts, bias=False, **kw)
            scale = 1.0 / math.sqrt(h)
            self.w13 = torch.randn(arch.num_experts, 2 * mi, h, **kw) * scale
            self.w2 = torch.randn(arch.num_experts, h, mi, **kw) * scale
        else:
            inter = max(1, arch.intermediate_size // tp)
            self.gate_up = nn.Linear(h, 2 * inter, bias=False, **kw)
            self.down = nn.Linear(inter, h, bias=False, **kw)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, device=device).float() / hd))
        self.inv_freq = inv_freq
        self._gqa_native = True

    # ---------------------------------------------------------------- operators

    def hidden(self, n: int) -> Any:
        """Random hidden states of ``n`` tokens."""
        return self.torch.randn(n, self.arch.hidden_size, device=self.device, dtype=self.dtype)

    def rms_norm(self, x: Any, weight: Any = None) -> Any:
        """RMSNorm over the last axis in fp32, as vLLM's reference implementation
        (``weight``: the hidden width's norm weight unless given)."""
        var = x.float().pow(2).mean(-1, keepdim=True)
        scale = self.norm_weight if weight is None else weight
        return (x.float() * self.torch.rsqrt(var + 1e-6)).to(x.dtype) * scale

    def qk_norm(self, q: Any, k: Any) -> tuple[Any, Any]:
        """RMSNorm of each head of q ``[n, heads, hd]`` and k ``[n, kv, hd]`` over its
        ``hd`` values (vLLM's ``Qwen3Attention`` before the rotary embedding)."""
        return self.rms_norm(q, self.head_norm_weight), self.rms_norm(k, self.head_norm_weight)

    def add_rms_norm(self, x: Any, residual: Any) -> tuple[Any, Any]:
        """RMSNorm of ``x + residual``, and the sum: vLLM's fused add + norm, which every
        norm of the model runs but the first layer's input norm."""
        h = x + residual
        return self.rms_norm(h), h

    def cache_write(self, k: Any, v: Any, slots: Any, k_cache: Any, v_cache: Any) -> None:
        """Write the keys and values ``[n, kv_heads, hd]`` of ``n`` new tokens into the
        cache ``[slots, kv_heads, hd]`` at ``slots`` (vLLM's ``reshape_and_cache``)."""
        k_cache.index_copy_(0, slots, k)
        v_cache.index_copy_(0, slots, v)

    def silu_and_mul(self, x: Any) -> Any:
        """SiLU of the gate half times the up half."""
        gate, up = x.chunk(2, dim=-1)
        return self.torch.nn.functional.silu(gate) * up

    def rotary(self, q: Any, k: Any, positions: Any) -> tuple[Any, Any]:
        """Neox-style rotary embedding of q ``[n, heads, hd]`` and k ``[n, kv, hd]``."""
        torch = self.torch
        freqs = torch.outer(positions.float(), self.inv_freq)
        cos, sin = freqs.cos().to(q.dtype)[:, None, :], freqs.sin().to(q.dtype)[:, None, :]

        def rot(x: Any) -> Any:
            x1, x2 = x.chunk(2, dim=-1)
            return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)

        return rot(q), rot(k)

    def sdpa(self, q: Any, k: Any, v: Any, mask: Any = None, causal: bool = False) -> Any:
        """Attention with grouped KV heads (native GQA where torch has it)."""
        f = self.torch.nn.functional.scaled_dot_product_attention
        # A mask with grouped heads has only PyTorch's math kernel on CUDA (flash takes no
        # mask, the memory-efficient kernel no GQA), which materialises the fp32 scores:
        # 24 GiB for a 8,192-token chunk after 16,384. Equal heads keep it fused.
        if self._gqa_native and not (mask is not None and q.device.type == "cuda"):
            try:
                return f(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
            except TypeError:  # torch < 2.5
                self._gqa_native = False
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        return f(q, k, v, attn_mask=mask, is_causal=causal)

    def prefill_inputs(self, chunk: int, ctx: int) -> tuple[Any, ...]:
        """``(q, k, v, mask)`` of a ``chunk``-token prefill after ``ctx`` cached tokens."""
        torch, hd = self.torch, self.arch.head_dim
        kw = {"device": self.device, "dtype": self.dtype}
        q = torch.randn(1, self.heads, chunk, hd, **kw)
        k = torch.randn(1, self.kv_heads, ctx + chunk, hd, **kw)
        v = torch.randn(1, self.kv_heads, ctx + chunk, hd, **kw)
        mask = None
        if ctx > 0:  # causal with an offset: query i sees keys up to ctx + i
            rows = torch.arange(chunk, device=self.device)[:, None] + ctx
            mask = torch.arange(ctx + chunk, device=self.device)[None, :] <= rows
        return q, k, v, mask

    def decode_inputs(self, batch: int, ctx: int) -> tuple[Any, ...]:
        """``(q, k, v)`` of ``batch`` one-token decodes over ``ctx`` cached tokens each."""
        torch, hd = self.torch, self.arch.head_dim
        kw = {"device": self.device, "dtype": self.dtype}
        q = torch.randn(batch, self.heads, 1, hd, **kw)
        k = torch.randn(batch, self.kv_heads, ctx + 1, hd, **kw)
        v = torch.randn(batch, self.kv_heads, ctx + 1, hd, **kw)
        return q, k, v

    def moe(self, x: Any, active: int, w13: Any = None, w2: Any = None) -> Any:
        """Router plus ``active`` experts sharing the routed tokens evenly (the experts'
        weights ``w13`` and ``w2``, default the layer's)."""
        torch, arch = self.torch, self.arch
        w13 = self.w13 if w13 is None else w13
        w2 = self.w2 if w2 is None else w2
        self.router(x)
        assignments = x.shape[0] * arch.experts_per_token
        per_expert = max(1, math.ceil(assignments / active))
        rows = x.repeat(math.ceil(per_expert * active / x.shape[0]), 1)[: per_expert * active]
        out = torch.zeros_like(x)
        for e in range(active):
            xe = rows[e * per_expert : (e + 1) * per_expert]
            y = self.silu_and_mul(xe @ w13[e].T) @ w2[e].T
            out[: min(len(y), len(out))] += y[: len(out)]
        return out


def sample(torch: Any, logits: Any) -> Any:
    """The sampler's GPU work: softmax over the vocabulary in fp32, then a pick."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.argmax(probs, dim=-1)
