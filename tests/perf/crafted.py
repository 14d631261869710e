"""A small hand-computable profile for the profile-format, table and model tests.

Per-call times (microseconds), ``x`` the tokens or sequences of the iteration:

- ``embedding`` 1; ``norm`` 1 + 0.01 x; ``proj`` 10 + 0.1 x; ``lm_head`` 100 + x;
- attention ``5 + 0.01 pc + 0.001 pc kp + nd (1 + 0.002 kd)`` (bilinear in each pair of
  axes, so multilinear lookups are exact); the empty batch is absent;
- ``all_reduce`` at 2 GPUs: ``2 + bytes / 1000``; MoE ``3 + 0.5 tokens + 2 experts``;
- skew ``alpha``: one value for every batch (``skew_alpha``), or one per skew-rate
  bucket (``skew_by_rate``, upper edge -> alpha).

Sequence: ``embedding`` | ``norm, proj, attention, all_reduce`` x 2 layers | ``lm_head``.
"""

from __future__ import annotations

import itertools

import numpy as np

from llmserve_env.perf.profile_format import (
    AttentionPoints,
    Curve,
    LayerSequence,
    MoePoints,
    Profile,
    ProfileMeta,
    SkewTable,
)

PC = (0, 16, 32, 64)
SKEW_BY_RATE = {0.15: 0.1, 0.4: 0.3, 1.0: 0.6}
"""Skew-rate buckets ``(0, 0.15], (0.15, 0.4], (0.4, 1]`` and their alphas."""
KP = (0, 64, 128)
ND = (0, 1, 2, 4)
KD = (16, 64, 256)


def attention_us(pc: float, kp: float, nd: float, kd: float) -> float:
    """The crafted attention time."""
    return 5 + 0.01 * pc + 0.001 * pc * kp + nd * (1 + 0.002 * kd)


def attention_points() -> AttentionPoints:
    rows = []
    for pc, kp, nd, kd in itertools.product(PC, KP, ND, KD):
        if (pc == 0 and kp) or (nd == 0 and kd != KD[0]) or (pc == 0 and nd == 0):
            continue
        rows.append((pc, kp, nd, 0 if nd == 0 else kd, attention_us(pc, kp, nd, kd)))
    a = np.array(rows, dtype=float)
    return AttentionPoints(a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4])


def line(x: list[float], a: float, b: float) -> Curve:
    xs = np.array(x, dtype=float)
    return Curve(xs, a + b * xs)


def crafted_profile(
    tp: int = 1,
    *,
    skew_alpha: float | None = None,
    skew_by_rate: dict[float, float] | None = None,
    moe: bool = False,
    overhead_us: float = 0.0,
) -> Profile:
    layer: tuple[str, ...] = ("norm", "proj", "attention", "all_reduce")
    if moe:
        layer = ("norm", "proj", "attention", "moe", "all_reduce")
    meta = ProfileMeta(
        device="H100-SXM",
        model="meta-llama/Llama-3.1-8B",
        dtype="bf16",
        tp=tp,
        num_layers=2,
        sequence=LayerSequence(("embedding",), layer, ("lm_head",)),
        source="synthetic",
        collective_bytes_per_token=100,
        overhead_us=overhead_us,
        provenance={"notes": "hand-computable test profile"},
    )
    skew = None
    if skew_alpha is not None:
        skew = SkewTable(
            np.array([0.0, 2048.0]),
            np.array([0.0, 0.0]),
            np.array([256.0, 256.0]),
            np.array([16384.0, 16384.0]),
            np.array([skew_alpha, skew_alpha]),
        )
    elif skew_by_rate is not None:
        rates = np.array(list(skew_by_rate), dtype=float)
        ones = np.ones(2 * len(rates))
        skew = SkewTable(
            np.repeat([0.0, 2048.0], len(rates)),
            0.0 * ones,
            256.0 * ones,
            16384.0 * ones,
            np.tile(list(skew_by_rate.values()), 2),
            decode_skew_rate=np.tile(rates, 2),
        )
    moe_points = None
    if moe:
        rows = [(t, e, 3 + 0.5 * t + 2 * e) for t in (1, 8, 64, 512) for e in (1, 2, 4, 8)]
        m = np.array(rows, dtype=float)
        moe_points = MoePoints(m[:, 0], m[:, 1], m[:, 2])
    collectives = {}
    if tp > 1:
        collectives[("all_reduce", tp)] = line([1024, 1 << 20], 2.0, 1e-3)
    return Profile(
        meta=meta,
        dense={
            "embedding": line([1, 1024], 1.0, 0.0),
            "norm": line([1, 512, 1024], 1.0, 0.01),
            "proj": line([1, 512, 1024], 10.0, 0.1),
        },
        per_sequence={"lm_head": line([1, 256], 100.0, 1.0)},
        attention=attention_points(),
        attention_skew=skew,
        moe=moe_points,
        collectives=collectives,
    )
