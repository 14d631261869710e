"""Compile a :class:`Profile` into the few lookup tables the hot loop needs, with an
on-disk cache.

An iteration's latency decomposes into terms that each depend on one or two batch
figures, so the operators of the layer sequence are folded at compile time:

- every dense operator and every collective depends only on ``num_tokens``: their
  counts times their curves sum into one piecewise-linear function of ``num_tokens``
  (collectives at ``num_tokens * collective_bytes_per_token`` bytes);
- every per-sequence operator, and every collective whose message is per sequence
  (``all_gather@seq``, at ``num_seqs * collective_bytes_per_seq`` bytes), depends only on
  ``num_seqs``: one function of it;
- attention is a 4-D grid, times its count; MoE a 2-D grid, times its count;
- the skew factor is a 5-D bucket table, whose last axis (the skew rate of the decode
  lengths) has one bucket when the profile does not key by it.

Compiled tables are cached as ``.npz`` files under :func:`cache_dir`, keyed by a hash of
the source files and :data:`COMPILER_VERSION`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmserve_env.perf.comm import CommModel
from llmserve_env.perf.profile_format import (
    COLLECTIVE_OPS,
    Curve,
    Profile,
    collective_of,
)
from llmserve_env.perf.tables import (
    BucketTable,
    FloatArray,
    Grid,
    PiecewiseLinear,
    extend_axis_half_range,
    grid_from_points,
    sum_curves,
)

COMPILER_VERSION = "4"
"""Bump when compiled tables change meaning: old cache entries are then ignored."""


def cache_dir() -> Path:
    """``$LLMSERVE_CACHE`` or ``~/.cache/llmserve``."""
    override = os.environ.get("LLMSERVE_CACHE")
    return Path(override) if override else Path.home() / ".cache" / "llmserve"


@dataclass(frozen=True)
class CompiledProfile:
    """The lookup tables of one profile (all times in microseconds).

    Attributes:
        per_token: Dense operators and collectives of one iteration vs ``num_tokens``.
        per_seq: Per-sequence operators and per-sequence collectives of one iteration vs
            ``num_seqs``.
        attention: One attention call on axes (prefill chunk, prefill context, decodes,
            decode context).
        attention_count: Attention calls per iteration.
        skew: Skew factor ``alpha`` by (prefill chunk, prefill context, decodes, longest
            decode context, skew rate of the decode lengths).
        moe: One MoE block on axes (tokens, active experts), or ``None``.
        moe_count: MoE blocks per iteration.
        overhead_us: Fixed time per iteration.
        note: What the source says about its tables, for reports (the profile's
            ``provenance.note``; empty for none).
    """

    per_token: PiecewiseLinear
    per_seq: PiecewiseLinear
    attention: Grid
    attention_count: int
    skew: BucketTable | None
    moe: Grid | None
    moe_count: int
    overhead_us: float
    note: str = ""

    @property
    def min_prefill_chunk(self) -> float:
        """Smallest measured positive prefill chunk (smaller chunks clamp to it)."""
        axis = self.attention.axes[0]
        positive = axis[axis > 0]
        return float(positive[0]) if len(positive) else 1.0

    # ------------------------------------------------------------------ npz

    def to_arrays(self) -> dict[str, FloatArray]:
        """Flat arrays for ``np.savez``."""
        out: dict[str, FloatArray] = {
            "per_token_x": self.per_token.x,
            "per_token_y": self.per_token.y,
            "per_seq_x": self.per_seq.x,
            "per_seq_y": self.per_seq.y,
            "scalars": np.array(
                [
                    self.per_token.slope_hi,
                    self.per_seq.slope_hi,
                    self.attention_count,
                    self.moe_count,
                    self.overhead_us,
                    self.skew.default if self.skew else np.nan,
                ]
            ),
            "attention_values": self.attention.values,
            "note": np.array(self.note),
        }
        for i, axis in enumerate(self.attention.axes):
            out[f"attention_axis{i}"] = axis
        if self.skew is not None:
            out["skew_values"] = self.skew.values
            for i, edges in enumerate(self.skew.edges):
                out[f"skew_edges{i}"] = edges
        if self.moe is not None:
            out["moe_values"] = self.moe.values
            for i, axis in enumerate(self.moe.axes):
                out[f"moe_axis{i}"] = axis
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, FloatArray]) -> CompiledProfile:
        """Inverse of :meth:`to_arrays`."""
        s = arrays["scalars"]
        skew = None
        if "skew_values" in arrays:
            skew = BucketTable(
                tuple(arrays[f"skew_edges{i}"] for i in range(SKEW_AXES)),
                arrays["skew_values"],
                float(s[5]),
            )
        moe = None
        if "moe_values" in arrays:
            moe = Grid(tuple(arrays[f"moe_axis{i}"] for i in range(2)), arrays["moe_values"])
        return cls(
            per_token=PiecewiseLinear(arrays["per_token_x"], arrays["per_token_y"], float(s[0])),
            per_seq=PiecewiseLinear(arrays["per_seq_x"], arrays["per_seq_y"], float(s[1])),
            attention=Grid(
                tuple(arrays[f"attention_axis{i}"] for i in range(4)), arrays["attention_values"]
            ),
            attention_count=int(s[2]),
            skew=skew,
            moe=moe,
            moe_count=int(s[3]),
            overhead_us=float(s[4]),
            note=str(arrays["note"]) if "note" in arrays else "",
        )


# --------------------------------------------------------------------------- compile


def _curve(curve: Curve) -> PiecewiseLinear:
    return PiecewiseLinear.from_points(curve.x, curve.time_us)


def compile_attention(profile: Profile) -> Grid:
    """The attention grid, holes filled, with half-range extrapolation on every axis.

    Rows without decodes carry no decode context and rows without a prefill no prefill
    context: they are placed at the smallest value of that context axis, so that the
    fill makes them constant along it. The empty batch (no prefill, no decodes) is 0.
    """
    a = profile.attention
    if a is None:
        raise ValueError("the profile has no attention table")
    pc = a.prefill_chunk_tokens
    nd = a.num_decodes
    kp = a.prefill_context_tokens.copy()
    kd = a.decode_context_tokens.copy()
    kd_axis_min = kd[nd > 0].min() if np.any(nd > 0) else 0.0
    kp_axis_min = kp[pc > 0].min() if np.any(pc > 0) else 0.0
    kd = np.where(nd == 0, kd_axis_min, kd)
    kp = np.where(pc == 0, kp_axis_min, kp)
    t = a.time_us
    if not np.any((pc == 0) & (nd == 0)):
        pc = np.append(pc, 0.0)
        nd = np.append(nd, 0.0)
        kp = np.append(kp, kp_axis_min)
        kd = np.append(kd, kd_axis_min)
        t = np.append(t, 0.0)
    # Keep kd/kp axes from including unused zeros created above only when measured.
    grid = grid_from_points((pc, kp, nd, kd), t, fill_order=(3, 1, 2, 0))
    for axis in range(4):
        grid = extend_axis_half_range(grid, axis)
    return grid


def compile_moe(profile: Profile) -> Grid | None:
    """The MoE grid (tokens x active experts), holes filled, extrapolating."""
    m = profile.moe
    if m is None:
        return None
    grid = grid_from_points((m.num_tokens, m.num_active_experts), m.time_us, fill_order=(0, 1))
    for axis in range(2):
        grid = extend_axis_half_range(grid, axis)
    return grid


SKEW_AXES = 5
"""Axes of the compiled skew table: prefill chunk, prefill context, decodes, longest
decode context, skew rate."""


def compile_skew(profile: Profile) -> BucketTable | None:
    """The skew buckets, or ``None`` without ``attention_skew.csv``.

    A table without the ``decode_skew_rate`` key gets one skew-rate bucket (edge 1.0,
    which every rate falls in: a rate above the last edge takes the last bucket).
    """
    s = profile.attention_skew
    if s is None:
        return None
    rate = s.decode_skew_rate
    coords = (
        s.prefill_chunk_tokens,
        s.prefill_context_tokens,
        s.num_decodes,
        s.decode_max_context_tokens,
        np.ones_like(s.alpha) if rate is None else rate,
    )
    edges = tuple(np.unique(c) for c in coords)
    values = np.full(tuple(len(e) for e in edges), np.nan)
    index = tuple(np.searchsorted(e, c) for e, c in zip(edges, coords, strict=True))
    values[index] = s.alpha
    return BucketTable(edges, values, profile.meta.skew_alpha_default)


def compile_profile(profile: Profile) -> CompiledProfile:
    """Fold a profile's layer sequence into lookup tables.

    Raises:
        ValueError: when an operator of the sequence has no table, or a collective has
            no rows for the profile's ``tp`` (naming it).
    """
    meta = profile.meta
    counts = meta.sequence.counts(meta.num_layers)
    token_terms: list[tuple[float, PiecewiseLinear, float]] = []
    seq_terms: list[tuple[float, PiecewiseLinear, float]] = []
    attention_count = moe_count = 0
    for op, count in counts.items():
        table = profile.table_of(op)
        if table == "dense":
            token_terms.append((float(count), _curve(profile.dense[op]), 1.0))
        elif table == "per_sequence":
            seq_terms.append((float(count), _curve(profile.per_sequence[op]), 1.0))
        elif table == "attention":
            attention_count = count
        elif table == "moe":
            moe_count = count
        elif table == "collectives":
            if meta.tp == 1:
                continue  # a single GPU has nothing to reduce
            name, per_seq = collective_of(op) or (op, False)
            curve = profile.collectives.get((name, meta.tp))
            if curve is None:
                raise ValueError(
                    f"collective {name!r} has no measurements for {meta.tp} GPUs "
                    f"(collectives.csv or an analytical fill is needed)"
                )
            if per_seq:
                seq_terms.append(
                    (float(count), _curve(curve), float(meta.collective_bytes_per_seq))
                )
            else:
                token_terms.append(
                    (float(count), _curve(curve), float(meta.collective_bytes_per_token))
                )
        else:
            raise ValueError(f"operator {op!r} of the layer sequence is in no table")
    return CompiledProfile(
        per_token=sum_curves(token_terms),
        per_seq=sum_curves(seq_terms),
        attention=compile_attention(profile),
        attention_count=attention_count,
        skew=compile_skew(profile),
        moe=compile_moe(profile) if moe_count else None,
        moe_count=moe_count,
        overhead_us=meta.overhead_us,
        note=str(meta.provenance.get("note") or ""),
    )


# --------------------------------------------------------------------------- collectives


def analytical_collectives(
    num_gpus: int,
    comm: CommModel,
    ops: tuple[str, ...] = COLLECTIVE_OPS,
) -> dict[tuple[str, int], Curve]:
    """Collective curves tabulated from a link model, for profiles without measurements.

    Each of ``ops`` over ``num_gpus`` GPUs is timed by ``comm`` (an
    :class:`~llmserve_env.perf.comm.AlphaBetaComm` for a ring over a link) at message
    sizes from 1 KiB to 1 GiB, by powers of two; compiling interpolates them as it
    does measured curves.

    Args:
        num_gpus: GPUs taking part.
        comm: What one collective costs.
        ops: Collectives to produce.
    """
    sizes = np.array([2.0**k for k in range(10, 31)])
    return {(op, num_gpus): Curve(sizes, comm.times_s(op, sizes, num_gpus) * 1e6) for op in ops}


# --------------------------------------------------------------------------- cache


NO_FILL = "as-written"
"""Key suffix of a profile compiled as it is, with nothing filled in (``tp`` 1, or every
collective its sequence runs measured)."""


def cached_compile(key: str, build: Callable[[], Profile]) -> CompiledProfile:
    """Load the compiled tables cached under ``key``, or build the profile, compile it
    and cache the result.

    Args:
        key: A digest of everything the tables depend on (source files, fill settings).
        build: Reads or converts the profile; called only on a cache miss.
    """
    digest = hashlib.sha256(f"{COMPILER_VERSION}:{key}".encode()).hexdigest()[:32]
    path = cache_dir() / "profiles" / f"{digest}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return CompiledProfile.from_arrays({k: data[k] for k in data.files})
        except (OSError, ValueError, KeyError):
            pass  # a truncated or stale file: recompile and overwrite
    compiled = compile_profile(build())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, **compiled.to_arrays())  # type: ignore[arg-type]
        Path(tmp.name).replace(path)
    except OSError:
        pass  # a read-only home: run without the cache
    return compiled
