"""``llmserve profile``: time every operator of a model on this machine, in PyTorch.

The profiler builds one decoder layer of the model from its configuration (our
:class:`~llmserve_env.perf.model_arch.ModelArch`, i.e. a catalog name or any HuggingFace
``config.json``) with random weights, as plain torch modules: linear layers for the
fused QKV, O, gate-up and down projections and the LM head, RMSNorm with the residual
add before it (vLLM's fused add + norm), SiLU-and-mul, rotary embedding, the write of
the new keys and values into the KV cache (``reshape_and_cache``), attention through
``torch.nn.functional.scaled_dot_product_attention``
(prefill: one chunk after a cached context, causal; decode: a batch of one-token queries
over equal KV lengths), routed experts for MoE models, and the sampler. Every operator is
timed over a grid (tokens, chunk x context, decodes x KV length, sequences, tokens x
active experts) on the chosen device: on CUDA with CUDA events after warm-up, on the CPU
with ``time.perf_counter``, each operator with weights or a KV cache cycling through
copies of them so that it reads them from memory as in the model
(:func:`~llmserve_env.perf.profiler_torch.cold_calls`). The result is a profile in
llmserve's format (``profiles/README.md``) whose ``meta.yaml`` records the torch version, device name,
date, grid and, on NVIDIA GPUs with ``nvidia-ml-py`` installed, the board power NVML
reported while profiling.

The layer's times describe every layer (they are identical), so the cost of a run does
not grow with the layer count; ``--quick`` grids and small ``--max-*`` bounds make a CPU
run on a tiny model finish in seconds. Mixed prefill+decode batches are written as the
sum of their parts, which is how these modules run them (two attention calls).

torch is imported lazily, inside the functions: importing this module costs nothing and
the simulator never depends on torch.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from importlib import metadata
from typing import Any

import numpy as np

from llmserve_env.perf.model_arch import ModelArch
from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    LayerSequence,
    MoePoints,
    Profile,
    ProfileMeta,
)
from llmserve_env.perf.profiler_torch import (
    TORCH_DTYPES,
    Timer,
    TorchLayer,
    cold_calls,
    power_sampling,
    sample,
    timing_method,
)

_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}

NOISY_SHARE = 0.05
"""``llmserve profile`` warns when more than this share of the points timed call by call,
and three or more, were noisy (:data:`~llmserve_env.perf.profiler_torch.NOISY_SPREAD`; the count is
``provenance.noisy_points``)."""

DEFAULT_COLD_MIB = 256
"""Distinct data an operator cycles through when timed: above every GPU's L2 and what
this project's CPU keeps cached (a 23 MB weight matrix times one token in 0.84 ms
warm, in 1.08 ms cycling through 92 MB of copies and 1.48-1.50 ms through 184 or
369 MB)."""


@dataclass(frozen=True)
class ProfileGrid:
    """Where operators are timed.

    Attributes:
        tokens: Token counts of the dense operators (and MoE blocks).
        seqs: Sequence counts of the per-sequence operators.
        prefill_chunks: New tokens of a prefill chunk.
        prefill_contexts: Tokens cached before the chunk.
        decode_batches: Decoding requests.
        decode_contexts: Cached tokens of every decode.
    """

    tokens: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    seqs: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    prefill_chunks: tuple[int, ...] = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    prefill_contexts: tuple[int, ...] = (0, 512, 1024, 2048, 4096, 8192, 16384)
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    decode_contexts: tuple[int, ...] = (16, 128, 512, 1024, 2048, 4096, 8192, 16384)

    def __post_init__(self) -> None:
        for name in ("tokens", "seqs", "prefill_chunks", "decode_batches", "decode_contexts"):
            values = getattr(self, name)
            if not values or min(values) < 1:
                raise ValueError(f"grid {name} needs values >= 1, got {values}")
        if not self.prefill_contexts or min(self.prefill_contexts) < 0:
            raise ValueError(
                f"grid prefill_contexts needs values >= 0, got {self.prefill_contexts}"
            )
        for name in (
            "tokens",
            "seqs",
            "prefill_chunks",
            "prefill_contexts",
            "decode_batches",
            "decode_contexts",
        ):
            object.__setattr__(self, name, tuple(sorted(set(getattr(self, name)))))

    @staticmethod
    def _bounds(max_tokens: int | None, max_context: int | None) -> dict[str, int | None]:
        """Each axis's bound: new tokens (or sequences) for the batch axes, cached tokens
        for the context axes."""
        return {
            "tokens": max_tokens,
            "seqs": max_tokens,
            "prefill_chunks": max_tokens,
            "decode_batches": max_tokens,
            "prefill_contexts": max_context,
            "decode_contexts": max_context,
        }

    def above(self, max_tokens: int | None, max_context: int | None) -> list[str]:
        """The axes with values above the bounds, as ``name [values]`` (for a note)."""
        out = []
        for name, bound in self._bounds(max_tokens, max_context).items():
            over = [v for v in getattr(self, name) if bound is not None and v > bound]
            if over:
                out.append(f"{name} {over}")
        return out

    @classmethod
    def quick(cls) -> ProfileGrid:
        """A small grid: seconds on a CPU for a tiny model."""
        return cls(
            tokens=(1, 4, 16, 64, 256),
            seqs=(1, 4, 16),
            prefill_chunks=(16, 64, 256),
            prefill_contexts=(0, 256),
            decode_batches=(1, 4, 16),
            decode_contexts=(16, 256),
        )

    def bounded(self, max_tokens: int | None = None, max_context: int | None = None) -> ProfileGrid:
        """The grid without points above ``max_tokens`` new tokens / ``max_context`` cached.

        Each axis keeps its smallest value, and the decode contexts their two smallest
        (decode attention needs a slope over the KV length), even above the bound;
        :meth:`above` lists what was kept so."""

        def cap(values: tuple[int, ...], bound: int | None, least: int = 1) -> tuple[int, ...]:
            if bound is None:
                return values
            kept = tuple(v for v in values if v <= bound)
            return kept if len(kept) >= least else values[:least]

        bounds = self._bounds(max_tokens, max_context)
        return replace(
            self,
            **{
                name: cap(getattr(self, name), bound, 2 if name == "decode_contexts" else 1)
                for name, bound in bounds.items()
            },
        )


@dataclass(frozen=True)
class ProfilerOptions:
    """How to profile.

    Attributes:
        device: ``cuda``, ``cpu`` or ``auto`` (CUDA when available), or ``cuda:N``.
        dtype: Weights and activations: ``bf16``, ``fp16`` or ``fp32``.
        tp: Tensor-parallel degree of the shard to time (heads and widths split ``tp``
            ways; collectives are not measured here).
        grid: The measurement grid.
        warmup: Untimed calls before each measurement.
        repeat: Timed calls per measurement (CUDA: averaged between two events; CPU:
            the median of single calls).
        num_layers: Layer count written to the profile (default: the model's).
        device_name: Device name written to the profile (default: the catalog name of
            the GPU when known, else what the driver reports).
        seed: Seed of the random weights and inputs.
        sample_power: Sample board power through NVML on NVIDIA GPUs.
        cold_mib: Each operator with weights (or a KV cache) cycles through copies of
            them totalling this many MiB, so that it reads them from memory as in the
            model, not from a cache they stayed in
            (:func:`~llmserve_env.perf.profiler_torch.cold_calls`); ``None``: 256 MiB,
            or twice the GPU's L2 if that is more; 0: the same tensors every call (warm
            caches). Whole iterations (:mod:`~llmserve_env.perf.iteration_check`) flush
            this much before each timed call instead.
    """

    device: str = "auto"
    dtype: str = "bf16"
    tp: int = 1
    grid: ProfileGrid = ProfileGrid()
    warmup: int = 3
    repeat: int = 10
    num_layers: int | None = None
    device_name: str | None = None
    seed: int = 0
    sample_power: bool = True
    cold_mib: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in TORCH_DTYPES:
            raise ValueError(
                f"dtype {self.dtype!r} cannot be profiled; use one of {sorted(TORCH_DTYPES)}"
            )
        if self.tp < 1 or self.warmup < 0 or self.repeat < 1:
            raise ValueError("tp and repeat must be >= 1 and warmup >= 0")
        if self.num_layers is not None and self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.cold_mib is not None and self.cold_mib < 0:
            raise ValueError(f"cold_mib must be >= 0, got {self.cold_mib}")
        if len(self.grid.decode_contexts) < 2:
            raise ValueError(
                f"grid decode_contexts {self.grid.decode_contexts}: at least two are needed "
                "(decode attention is interpolated over the KV length)"
            )

    def cold_bytes(self, torch: Any, device: Any) -> int:
        """Bytes of distinct data a timed operator cycles through on ``device``."""
        if self.cold_mib is not None:
            return self.cold_mib * 2**20
        floor = DEFAULT_COLD_MIB * 2**20
        if device.type == "cuda":
            l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0))
            return max(floor, 2 * l2)
        return floor


# --------------------------------------------------------------------------- profiling


def _active_expert_grid(arch: ModelArch, tokens: int) -> list[int]:
    most = min(arch.num_experts, tokens * arch.experts_per_token)
    values = {min(most, 2**i) for i in range(int(math.log2(max(most, 1))) + 1)} | {most}
    return sorted(v for v in values if v >= 1)


def _dense_ops(
    layer: TorchLayer, timer: Timer, tokens: tuple[int, ...], cold: int
) -> dict[str, Curve]:
    torch, arch = layer.torch, layer.arch
    linear, embed = torch.nn.functional.linear, torch.nn.functional.embedding
    hd = arch.head_dim
    times: dict[str, list[float]] = {}

    def add(name: str, seconds: float) -> None:
        times.setdefault(name, []).append(seconds * 1e6)

    for n in tokens:
        x = layer.hidden(n)
        ids = torch.randint(0, layer.embedding.num_embeddings, (n,), device=layer.device)
        positions = torch.arange(n, device=layer.device)
        qkv = layer.qkv(x)
        q = qkv[:, : layer.heads * hd].reshape(n, layer.heads, hd)
        k = qkv[:, layer.heads * hd : (layer.heads + layer.kv_heads) * hd].reshape(
            n, layer.kv_heads, hd
        )
        add(
            "embedding",
            timer(cold_calls(partial(embed, ids), [layer.embedding.weight], cold)),
        )
        residual = layer.hidden(n)
        add("layernorm", timer(partial(layer.add_rms_norm, x, residual)))
        add("qkv_proj", timer(cold_calls(partial(linear, x), [layer.qkv.weight], cold)))
        if arch.qk_norm:
            add("qk_norm", timer(partial(layer.qk_norm, q, k)))
        add("rotary_emb", timer(partial(layer.rotary, q, k, positions)))
        # The cache holds other requests' blocks too: write into a region of 4 n slots.
        k_cache = torch.zeros(4 * n, layer.kv_heads, hd, device=layer.device, dtype=layer.dtype)
        slots = torch.randperm(4 * n, device=layer.device)[:n]
        write = partial(layer.cache_write, k, torch.randn_like(k), slots)
        add("reshape_and_cache", timer(cold_calls(write, [k_cache, k_cache.clone()], cold)))
        attn_out = torch.randn(n, layer.heads * hd, device=layer.device, dtype=layer.dtype)
        add("o_proj", timer(cold_calls(partial(linear, attn_out), [layer.o.weight], cold)))
        add("final_layernorm", timer(partial(layer.add_rms_norm, x, residual)))
        if not arch.is_moe:
            gu = layer.gate_up(x)
            act = layer.silu_and_mul(gu)
            add("gate_up_proj", timer(cold_calls(partial(linear, x), [layer.gate_up.weight], cold)))
            add("act_fn", timer(partial(layer.silu_and_mul, gu)))
            add("down_proj", timer(cold_calls(partial(linear, act), [layer.down.weight], cold)))
    x_axis = np.array(tokens, dtype=np.float64)
    return {name: Curve(x_axis, np.array(t)) for name, t in times.items()}


def _per_seq_ops(
    layer: TorchLayer, timer: Timer, seqs: tuple[int, ...], cold: int
) -> dict[str, Curve]:
    torch = layer.torch
    linear = torch.nn.functional.linear
    head, sampler = [], []
    for n in seqs:
        x = layer.hidden(n)
        logits = layer.lm_head(x)
        head.append(timer(cold_calls(partial(linear, x), [layer.lm_head.weight], cold)) * 1e6)
        sampler.append(timer(partial(sample, torch, logits)) * 1e6)
    x_axis = np.array(seqs, dtype=np.float64)
    return {"lm_head": Curve(x_axis, np.array(head)), "sampler": Curve(x_axis, np.array(sampler))}


def _attention(layer: TorchLayer, timer: Timer, grid: ProfileGrid, cold: int) -> AttentionPoints:
    prefill = np.zeros((len(grid.prefill_chunks), len(grid.prefill_contexts)))
    for i, chunk in enumerate(grid.prefill_chunks):
        for j, ctx in enumerate(grid.prefill_contexts):
            q, k, v, mask = layer.prefill_inputs(chunk, ctx)
            attend = partial(layer.sdpa, q, mask=mask, causal=ctx == 0)
            calls = cold_calls(attend, [k, v], cold)
            prefill[i, j] = timer(calls)
            del calls
    decode = np.zeros((len(grid.decode_batches), len(grid.decode_contexts)))
    for i, batch in enumerate(grid.decode_batches):
        for j, ctx in enumerate(grid.decode_contexts):
            q, k, v = layer.decode_inputs(batch, ctx)
            calls = cold_calls(partial(layer.sdpa, q), [k, v], cold)
            decode[i, j] = timer(calls)
            del calls
    prefill *= 1e6
    decode *= 1e6
    axes = [
        np.array(values, dtype=np.float64)
        for values in (
            grid.prefill_chunks,
            grid.prefill_contexts,
            grid.decode_batches,
            grid.decode_contexts,
        )
    ]
    pc, kp = (a.ravel() for a in np.meshgrid(axes[0], axes[1], indexing="ij"))
    nd, kk = (a.ravel() for a in np.meshgrid(axes[2], axes[3], indexing="ij"))
    mixed = np.add.outer(prefill, decode)  # two attention calls: the parts add up
    g = [a.ravel() for a in np.meshgrid(*axes, indexing="ij")]
    zeros_p, zeros_d = np.zeros_like(pc), np.zeros_like(nd)
    return AttentionPoints(
        np.concatenate([pc, zeros_d, g[0]]),
        np.concatenate([kp, zeros_d, g[1]]),
        np.concatenate([zeros_p, nd, g[2]]),
        np.concatenate([zeros_p, kk, g[3]]),
        np.concatenate([prefill.ravel(), decode.ravel(), mixed.ravel()]),
    )


def _moe(layer: TorchLayer, timer: Timer, tokens: tuple[int, ...], cold: int) -> MoePoints:
    rows: list[tuple[int, int, float]] = []
    for n in tokens:
        x = layer.hidden(n)
        for active in _active_expert_grid(layer.arch, n):
            # Copies of the experts the call reads (the first ``active``), not of all.
            experts = [layer.w13[:active], layer.w2[:active]]
            calls = cold_calls(partial(layer.moe, x, active), experts, cold)
            rows.append((n, active, timer(calls) * 1e6))
            del calls
    table = np.array(rows, dtype=np.float64)
    return MoePoints(table[:, 0], table[:, 1], table[:, 2])


def resolve_torch_device(torch: Any, name: str) -> Any:
    """The torch device ``name`` (``auto``: CUDA when available) names.

    Raises:
        ValueError: CUDA without a GPU, or a device type other than cuda and cpu.
    """
    given, name = name, name.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {given!r}: not a torch device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "CUDA was asked for but torch sees no GPU (torch.cuda.is_available() is False)"
        )
    if device.type not in ("cuda", "cpu"):
        raise ValueError(
            f"device {given!r}: only cuda and cpu are supported (auto, cpu, cuda or cuda:N)"
        )
    return device


def _device_label(torch: Any, device: Any) -> tuple[str, str]:
    """``(name for meta.device, what the driver reports)``."""
    from llmserve_env.perf.hardware import resolve_device

    if device.type == "cuda":
        reported = str(torch.cuda.get_device_name(device))
        for candidate in (reported, reported.replace("NVIDIA ", "")):
            try:
                return resolve_device(candidate).name, reported
            except KeyError:
                continue
        return reported, reported
    return "cpu", _cpu_model()


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _available_bytes(torch: Any, device: Any) -> int:
    """Memory free for the layer's weights: the GPU's free memory, or the host's
    available physical memory (0 when it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:  # MemAvailable counts the page cache the kernel would give back; MemFree does not
        with open("/proc/meminfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return 0


def _check_memory(torch: Any, device: Any, arch: ModelArch, tp: int, dtype: str) -> None:
    """Refuse a layer whose weights cannot be allocated, before torch tries (a 10^12-wide
    layer is a whole number but no model; torch's allocator would fail mid-build).

    Raises:
        ValueError: what one layer shard with its embedding and LM head needs, and what
            the device has free.
    """
    params = (arch.attn_params_per_layer + arch.mlp_params_per_layer) // tp
    params += 2 * arch.vocab_size * arch.hidden_size // tp
    need = params * _BYTES[dtype]
    free = _available_bytes(torch, device)
    if free and need > 0.9 * free:
        raise ValueError(
            f"{arch.name}: one layer at tp {tp} with its embedding and LM head needs "
            f"{need / 2**30:,.3g} GiB of {dtype} weights, and {device.type} has "
            f"{free / 2**30:,.3g} GiB free (hidden_size {arch.hidden_size}, vocab_size "
            f"{arch.vocab_size}, intermediate_size {arch.intermediate_size})"
        )


def profile_model(
    arch: ModelArch,
    options: ProfilerOptions | None = None,
    log: Callable[[str], None] | None = None,
) -> Profile:
    """Time every operator of ``arch`` on this machine and return the profile.

    Args:
        arch: The model.
        options: Device, dtype, grid and repetitions.
        log: Called with a line per profiling stage.

    Raises:
        ImportError: torch is not installed (``pip install llmserve-env[rl]``).
        ValueError: a bad option or an unavailable device.
    """
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised without torch only
        raise ImportError("llmserve profile needs PyTorch: pip install torch") from exc
    opts = options or ProfilerOptions()
    if (why := arch.tensor_parallel_problem(opts.tp)) is not None:
        raise ValueError(f"{arch.name}: vLLM cannot run it at this tp: {why}")
    say = log or (lambda line: None)
    device = resolve_torch_device(torch, opts.device)
    _check_memory(torch, device, arch, opts.tp, opts.dtype)
    torch.manual_seed(opts.seed)
    cold = opts.cold_bytes(torch, device)
    timer = Timer(torch, device, opts.warmup, opts.repeat)
    started = time.perf_counter()
    with torch.inference_mode(), power_sampling(torch, device, opts.sample_power) as power:
        layer = TorchLayer(torch, arch, opts.dtype, opts.tp, device)
        say(f"dense operators over {len(opts.grid.tokens)} token counts")
        dense = _dense_ops(layer, timer, opts.grid.tokens, cold)
        say(f"per-sequence operators over {len(opts.grid.seqs)} sequence counts")
        per_seq = _per_seq_ops(layer, timer, opts.grid.seqs, cold)
        say("attention: prefill chunks x contexts, decode batches x contexts")
        attention = _attention(layer, timer, opts.grid, cold)
        moe = None
        if arch.is_moe:
            say("MoE blocks over tokens x active experts")
            moe = _moe(layer, timer, opts.grid.tokens, cold)
    elapsed = time.perf_counter() - started
    name, reported = _device_label(torch, device)
    meta = _meta(arch, opts, name, reported, torch, device, power, elapsed, cold)
    if timer.points:
        noisy = {"noisy": timer.noisy, "of": timer.points}
        meta = replace(meta, provenance={**meta.provenance, "noisy_points": noisy})
    return Profile(
        meta=meta,
        dense=dense,
        per_sequence=per_seq,
        attention=attention,
        moe=moe,
    )


def _meta(
    arch: ModelArch,
    opts: ProfilerOptions,
    name: str,
    reported: str,
    torch: Any,
    device: Any,
    power: dict[str, Any],
    elapsed_s: float,
    cold_bytes: int,
) -> ProfileMeta:
    ar = ("all_reduce",) if opts.tp > 1 else ()
    mlp = ("moe",) if arch.is_moe else ("gate_up_proj", "act_fn", "down_proj")
    sequence = LayerSequence(
        prologue=("embedding",),
        layer=(
            "layernorm",
            "qkv_proj",
            *(("qk_norm",) if arch.qk_norm else ()),
            "rotary_emb",
            "reshape_and_cache",
            "attention",
            "o_proj",
            *ar,
            "layernorm",
            *mlp,
            *ar,
        ),
        head=("final_layernorm", "lm_head", "sampler"),
    )
    provenance: dict[str, Any] = {
        "tool": f"llmserve-env {_version()} profiler",
        "torch": str(torch.__version__),
        "device": reported,
        "device_type": device.type,
        "timing": timing_method(device),
        "warmup": opts.warmup,
        "repeat": opts.repeat,
        "cold_mib": cold_bytes / 2**20,
        "measured_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "duration_s": round(elapsed_s, 3),
        "grid": {k: list(getattr(opts.grid, k)) for k in opts.grid.__dataclass_fields__},
        "mixed_attention": "sum of the prefill and decode calls",
    }
    if device.type == "cuda":
        provenance["cuda"] = str(torch.version.cuda)
    if device.type == "cpu":
        provenance["cpu_threads"] = int(torch.get_num_threads())
    if power:
        provenance["power"] = power
    return ProfileMeta(
        device=opts.device_name or name,
        model=arch.name,
        dtype=opts.dtype,
        tp=opts.tp,
        num_layers=opts.num_layers or arch.num_layers,
        sequence=sequence,
        source="llmserve-profiler",
        collective_bytes_per_token=arch.hidden_size * _BYTES[opts.dtype] if opts.tp > 1 else 0,
        provenance=provenance,
    )


def _version() -> str:
    try:
        return metadata.version("llmserve-env")
    except metadata.PackageNotFoundError:  # pragma: no cover - source tree without install
        return "unknown"
