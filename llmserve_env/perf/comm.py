"""Collective-communication latency: measured tables where present, alpha-beta otherwise.

Two implementations of one small protocol, :class:`CommModel`:

- :class:`AlphaBetaComm` charges each collective ``steps x latency + bytes_factor x
  bytes / bandwidth`` with the ring algorithm's step counts and byte factors (the
  latency-bandwidth or "alpha-beta" model). It needs only a link's bandwidth and latency,
  so it serves every device, including user-described ones.
- :class:`CollectiveTable` interpolates measured curves (seconds by message size, per
  collective and device count) in log-log space; collectives or device counts it lacks
  fall through to an alpha-beta model. Loaders read Vidur's ``network/*/all_reduce.csv``
  and ``send_recv.csv`` here; :mod:`llmserve_env.perf.aiconfig` builds one from NVIDIA's
  measured NCCL tables.

Message sizes are bytes everywhere: for all-reduce the buffer every device holds, for
all-gather and reduce-scatter the full (gathered) buffer, for all-to-all the bytes each
device sends in total, for send/recv the bytes sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np

from llmserve_env.config.errors import DataFileError
from llmserve_env.perf.base import FloatArray
from llmserve_env.perf.csv_table import read_csv_columns
from llmserve_env.perf.hardware import DeviceSpec

Collective = Literal["all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv"]
COLLECTIVES: tuple[str, ...] = get_args(Collective)


def _check(op: str, num_devices: int) -> None:
    if op not in COLLECTIVES:
        raise ValueError(f"unknown collective {op!r}; known: {', '.join(COLLECTIVES)}")
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")


def ring_factors(op: str, num_devices: int) -> tuple[int, float]:
    """Steps and bytes factor of the ring algorithm for ``op`` over ``num_devices``.

    Returns:
        ``(steps, factor)``: the collective takes ``steps`` link latencies and moves
        ``factor x message bytes`` over each device's link.
    """
    _check(op, num_devices)
    n = num_devices
    if op == "send_recv":
        return 1, 1.0
    if n == 1:
        return 0, 0.0
    if op == "all_reduce":
        return 2 * (n - 1), 2.0 * (n - 1) / n
    return n - 1, (n - 1) / n


class CommModel(Protocol):
    """Latency of collectives between devices of one instance."""

    def time_s(self, op: str, nbytes: float, num_devices: int) -> float:
        """Seconds one collective of ``nbytes`` bytes over ``num_devices`` devices takes."""
        ...

    def times_s(self, op: str, nbytes: FloatArray, num_devices: int) -> FloatArray:
        """Vectorised :meth:`time_s` over an array of message sizes."""
        ...


@dataclass(frozen=True, slots=True)
class AlphaBetaComm:
    """Alpha-beta (latency + bytes / bandwidth) collectives with ring step counts.

    A collective costs ``base_s + steps x latency_s + factor x bytes / (bandwidth x
    efficiency)``; ``base_s`` is the fixed cost of launching it (one-shot all-reduce
    kernels, as vLLM's custom all-reduce, pay little else on small messages).

    Attributes:
        bandwidth_gbps: Link bandwidth per device and direction (GB/s, 1e9 bytes).
        latency_s: Latency of one step (one hop of the ring), seconds.
        efficiency: Fraction of ``bandwidth_gbps`` a collective reaches.
        base_s: Fixed cost of one collective, seconds.
    """

    bandwidth_gbps: float
    latency_s: float
    efficiency: float = 0.75
    base_s: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_gbps <= 0:
            raise ValueError(f"bandwidth_gbps must be positive, got {self.bandwidth_gbps}")
        if self.latency_s < 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.base_s < 0:
            raise ValueError(f"base_s must be >= 0, got {self.base_s}")

    @property
    def bytes_per_s(self) -> float:
        """Effective link bandwidth in bytes per second."""
        return self.bandwidth_gbps * 1e9 * self.efficiency

    def time_s(self, op: str, nbytes: float, num_devices: int) -> float:
        """Seconds one collective takes (0 on a single device, except send/recv)."""
        steps, factor = ring_factors(op, num_devices)
        if steps == 0 or nbytes <= 0:
            return 0.0
        return self.base_s + steps * self.latency_s + factor * nbytes / self.bytes_per_s

    def times_s(self, op: str, nbytes: FloatArray, num_devices: int) -> FloatArray:
        """Vectorised :meth:`time_s`."""
        steps, factor = ring_factors(op, num_devices)
        sizes = np.asarray(nbytes, dtype=np.float64)
        if steps == 0:
            return np.zeros_like(sizes)
        out = self.base_s + steps * self.latency_s + factor * sizes / self.bytes_per_s
        return np.where(sizes > 0, out, 0.0)


def alpha_beta_for(
    device: DeviceSpec,
    latency_s: float | None = None,
    efficiency: float | None = None,
    base_s: float | None = None,
) -> AlphaBetaComm:
    """The alpha-beta model of a device's scale-up link (NVLink, Infinity Fabric, ICI,
    or PCIe where that is all it has), with the device family's fitted constants
    (:func:`llmserve_env.perf.roofline.calibration_for`) unless given."""
    from llmserve_env.perf.roofline import calibration_for

    cal = calibration_for(device)
    return AlphaBetaComm(
        device.scaleup_bw_gbps,
        cal.comm_latency_s if latency_s is None else latency_s,
        cal.comm_eff if efficiency is None else efficiency,
        cal.comm_base_s if base_s is None else base_s,
    )


class CollectiveTable:
    """Measured collective latencies, interpolated in log-log space over message size.

    Below the smallest measured size the time is flat (latency-bound); above the largest
    it grows linearly with bytes from the last point (bandwidth-bound). A collective or
    device count without a curve uses ``fallback``, never below the measured curve of
    the largest smaller count; with no fallback, looking it up raises.

    Args:
        curves: ``(op, num_devices) -> (bytes, seconds)``, sizes strictly increasing.
        fallback: Model for what the table lacks.
        source: Where the measurements come from (for reports).
    """

    def __init__(
        self,
        curves: Mapping[tuple[str, int], tuple[FloatArray, FloatArray]],
        fallback: CommModel | None = None,
        source: str = "",
    ) -> None:
        self._curves: dict[tuple[str, int], tuple[FloatArray, FloatArray, FloatArray]] = {}
        for (op, n), (sizes, times) in curves.items():
            _check(op, n)
            x = np.asarray(sizes, dtype=np.float64)
            y = np.asarray(times, dtype=np.float64)
            if x.ndim != 1 or x.shape != y.shape or len(x) == 0:
                raise ValueError(f"{op} x{n}: sizes and times must be equal-length 1-D arrays")
            if np.any(x <= 0) or np.any(np.diff(x) <= 0):
                raise ValueError(f"{op} x{n}: sizes must be positive and strictly increasing")
            if np.any(y <= 0):
                raise ValueError(f"{op} x{n}: times must be positive")
            # More bytes never take less time: clean measurement noise once, here.
            y = np.maximum.accumulate(y)
            self._curves[(op, int(n))] = (x, np.log(x), np.log(y))
        self.fallback = fallback
        self.source = source

    def keys(self) -> list[tuple[str, int]]:
        """The measured ``(collective, num_devices)`` pairs."""
        return sorted(self._curves)

    def has(self, op: str, num_devices: int) -> bool:
        """Whether a measured curve covers ``op`` over ``num_devices``."""
        return (op, num_devices) in self._curves

    def points(self, op: str, num_devices: int) -> tuple[FloatArray, FloatArray]:
        """The measured ``(bytes, seconds)`` of one curve (noise cleaned: non-decreasing).

        Raises:
            KeyError: no measured curve for ``op`` over ``num_devices``.
        """
        x, _, log_y = self._curves[(op, num_devices)]
        return x.copy(), np.exp(log_y)

    def times_s(self, op: str, nbytes: FloatArray, num_devices: int) -> FloatArray:
        """Vectorised lookup in seconds."""
        _check(op, num_devices)
        sizes = np.asarray(nbytes, dtype=np.float64)
        if num_devices == 1 and op != "send_recv":
            return np.zeros_like(sizes)
        curve = self._curves.get((op, num_devices))
        if curve is None:
            if self.fallback is None:
                raise KeyError(
                    f"no measured {op} over {num_devices} devices in {self.source or 'table'} "
                    f"and no fallback; measured: {self.keys()}"
                )
            out = self.fallback.times_s(op, sizes, num_devices)
            # More devices never make a collective of the same message faster: a
            # fallback below the largest measured count beneath it takes that curve.
            below = [n for (o, n) in self._curves if o == op and n < num_devices]
            if below:
                out = np.maximum(out, self.times_s(op, sizes, max(below)))
            return out
        x, log_x, log_y = curve
        clipped = np.clip(sizes, x[0], x[-1])
        out = np.exp(np.interp(np.log(clipped), log_x, log_y))
        # Bandwidth-bound beyond the measured range.
        out = np.where(sizes > x[-1], out * sizes / x[-1], out)
        return np.where(sizes > 0, out, 0.0)

    def time_s(self, op: str, nbytes: float, num_devices: int) -> float:
        """Seconds one collective takes."""
        if nbytes <= 0:
            return 0.0
        return float(self.times_s(op, np.array([nbytes], dtype=np.float64), num_devices)[0])

    @classmethod
    def from_vidur(cls, folder: Path, fallback: CommModel | None = None) -> CollectiveTable:
        """Load Vidur's ``all_reduce.csv`` / ``send_recv.csv`` from one network folder.

        Vidur records ``size`` in bytes and times in milliseconds; rows are grouped by
        ``num_workers`` (and ``devices_per_node``, of which the intra-node rows are kept),
        and the median is used.

        Raises:
            DataFileError: the folder has neither file, or a file lacks a column.
        """
        curves: dict[tuple[str, int], tuple[FloatArray, FloatArray]] = {}
        found = False
        for op in ("all_reduce", "send_recv"):
            path = folder / f"{op}.csv"
            if not path.is_file():
                continue
            found = True
            for workers, (sizes, ms) in read_vidur_network(path, op).items():
                curves[(op, workers)] = (sizes, ms * 1e-3)
        if not found:
            raise DataFileError(folder, "neither all_reduce.csv nor send_recv.csv found")
        return cls(curves, fallback=fallback, source=f"vidur:{folder.name}")


def read_vidur_network(path: Path, op: str) -> dict[int, tuple[FloatArray, FloatArray]]:
    """Vidur's ``all_reduce.csv`` or ``send_recv.csv``: the intra-node curve per GPU count.

    Vidur measures each GPU count both with all workers on one node and spread over
    nodes (``devices_per_node`` below ``num_workers``: the inter-node network, 25x
    slower at 31 MB on ``a100_dgx``); only the single-node rows describe one
    instance's scale-up link, so only they are kept (a file without the column is
    all single-node). Repeated sizes take the median.

    Returns:
        ``{num_workers: (sizes in bytes, median times in ms)}``, sizes ascending.

    Raises:
        DataFileError: a missing column or a bad value, naming the file and line.
    """
    column = f"time_stats.{op}.median"
    cols = read_csv_columns(
        path,
        numeric=(column, "num_workers", "size", "devices_per_node"),
        optional=("devices_per_node",),
        integer=("num_workers", "size", "devices_per_node"),
    )
    n = cols.numbers
    workers = n["num_workers"].astype(int)
    per_node = n["devices_per_node"].astype(int) if "devices_per_node" in n else workers
    groups: dict[int, dict[float, list[float]]] = {}
    for w, node, size, ms, line in zip(
        workers, per_node, n["size"], n[column], cols.lines, strict=True
    ):
        if ms <= 0:
            raise DataFileError(path, f"column {column!r} must be > 0, got {ms}", line=int(line))
        if node == w:
            groups.setdefault(int(w), {}).setdefault(float(size), []).append(float(ms))
    curves: dict[int, tuple[FloatArray, FloatArray]] = {}
    for w, by_size in groups.items():
        sizes = sorted(by_size)
        curves[w] = (
            np.array(sizes, dtype=np.float64),
            np.array([np.median(by_size[size]) for size in sizes], dtype=np.float64),
        )
    return curves
