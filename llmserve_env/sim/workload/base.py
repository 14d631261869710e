"""The workload as read-only arrays, generated or loaded once before the run.

Every request the simulation will see is known up front (arrival time, lengths,
priority, content for prefix hashing). The arrays are shared, never copied, by forks,
which therefore replay exactly the same future arrivals (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from llmserve_env.sim.request import TokenContent

_Scalar = TypeVar("_Scalar", bound=np.generic)


@dataclass(frozen=True)
class WorkloadData:
    """All requests of a workload, sorted by arrival time.

    Attributes:
        arrival_s: Arrival times (seconds from the start), non-decreasing.
        prompt_tokens: Prompt length per request (>= 1).
        output_tokens: Output length per request (>= 1).
        priority: Priority per request (lower is served first by ``priority``).
        session_id: Session per request (-1 for independent requests).
        contents: Token content per request for prefix caching, or ``None`` when no
            request has content.
        source: Where the requests came from (file path or generator name).
    """

    arrival_s: NDArray[np.float64]
    prompt_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]
    priority: NDArray[np.int64]
    session_id: NDArray[np.int64]
    contents: tuple[TokenContent | None, ...] | None = None
    source: str = ""
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        for name in ("prompt_tokens", "output_tokens", "priority", "session_id"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"workload {name} has {len(getattr(self, name))} entries, expected {n}"
                )
        if self.contents is not None and len(self.contents) != n:
            raise ValueError(f"workload contents has {len(self.contents)} entries, expected {n}")
        if n and np.any(np.diff(self.arrival_s) < 0):
            raise ValueError("workload arrival times must be sorted")
        for array in (
            self.arrival_s,
            self.prompt_tokens,
            self.output_tokens,
            self.priority,
            self.session_id,
        ):
            array.setflags(write=False)

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        """Time of the last arrival."""
        return float(self.arrival_s[-1]) if len(self.arrival_s) else 0.0

    @classmethod
    def from_arrays(
        cls,
        arrival_s: NDArray[np.floating] | list[float],
        prompt_tokens: NDArray[np.integer] | list[int],
        output_tokens: NDArray[np.integer] | list[int],
        *,
        priority: NDArray[np.integer] | list[int] | None = None,
        session_id: NDArray[np.integer] | list[int] | None = None,
        contents: list[TokenContent | None] | None = None,
        source: str = "",
    ) -> WorkloadData:
        """Build from (possibly unsorted) columns; sorts stably by arrival time."""
        arrival = np.asarray(arrival_s, dtype=np.float64)
        n = len(arrival)
        # Generated arrivals usually come sorted: then a copy is all a column needs.
        order: NDArray[np.intp] | slice = slice(None)
        if n > 1 and bool((arrival[1:] < arrival[:-1]).any()):
            order = np.argsort(arrival, kind="stable")
        prio = (
            np.zeros(n, dtype=np.int64)
            if priority is None
            else np.asarray(priority, dtype=np.int64)
        )
        sess = (
            np.full(n, -1, dtype=np.int64)
            if session_id is None
            else np.asarray(session_id, dtype=np.int64)
        )
        sorted_contents = None
        if contents is not None and any(c is not None for c in contents):
            if isinstance(order, slice):
                sorted_contents = tuple(contents)
            else:
                sorted_contents = tuple(contents[i] for i in order)

        def column(values: NDArray[_Scalar]) -> NDArray[_Scalar]:
            # Our own copy in arrival order (it is made read-only).
            return values[order].copy() if isinstance(order, slice) else values[order]

        return cls(
            arrival_s=column(arrival),
            prompt_tokens=column(np.asarray(prompt_tokens, dtype=np.int64)),
            output_tokens=column(np.asarray(output_tokens, dtype=np.int64)),
            priority=column(prio),
            session_id=column(sess),
            contents=sorted_contents,
            source=source,
        )
