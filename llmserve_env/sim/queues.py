"""Waiting queues: the scheduling-policy seam of an engine.

``fcfs`` keeps arrival order (a preempted request goes back to the front, as in vLLM);
``priority`` orders by ``(priority, arrival)`` like vLLM's priority policy;
``shortest_prompt_first`` orders by prompt length, then arrival.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import Protocol

from llmserve_env.sim.request import Request


class WaitingQueue(Protocol):
    """What an engine needs of its waiting queue."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Request]: ...
    def push(self, request: Request) -> None:
        """Add a new arrival."""
        ...

    def push_preempted(self, request: Request) -> None:
        """Put back a preempted request."""
        ...

    def peek(self) -> Request:
        """The next request to admit."""
        ...

    def pop(self) -> Request:
        """Remove and return the next request to admit."""
        ...

    def remove(self, request: Request) -> None:
        """Take a request out (rerouting, cancellation)."""
        ...

    def remove_many(self, requests: list[Request]) -> None:
        """Take several requests out, typically the latest arrivals in arrival order
        (async scheduling hides them for one step; :meth:`push` in the same order
        restores the queue)."""
        ...

    def clone(self, mapping: dict[int, Request]) -> WaitingQueue:
        """A copy holding ``mapping[id(r)]`` for each request ``r``."""
        ...


class FCFSQueue:
    """First come, first served; preempted requests return to the front."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[Request] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._items)

    def push(self, request: Request) -> None:
        self._items.append(request)

    def push_preempted(self, request: Request) -> None:
        self._items.appendleft(request)

    def peek(self) -> Request:
        return self._items[0]

    def pop(self) -> Request:
        return self._items.popleft()

    def remove(self, request: Request) -> None:
        self._items.remove(request)

    def remove_many(self, requests: list[Request]) -> None:
        items = self._items
        for request in reversed(requests):
            if items and items[-1] is request:
                items.pop()  # the latest arrivals are at the back
            else:
                items.remove(request)

    def clone(self, mapping: dict[int, Request]) -> FCFSQueue:
        other = FCFSQueue()
        other._items = deque(mapping[id(r)] for r in self._items)
        return other


class KeyedQueue:
    """A heap ordered by ``(key, arrival, request id)``.

    Args:
        by_prompt: Order by prompt length (shortest first) instead of priority value.
    """

    __slots__ = ("_by_prompt", "_heap")

    def __init__(self, by_prompt: bool) -> None:
        self._by_prompt = by_prompt
        self._heap: list[tuple[int, float, int, Request]] = []

    def _key(self, request: Request) -> tuple[int, float, int, Request]:
        first = request.num_prompt_tokens if self._by_prompt else request.priority
        return (first, request.arrival_s, request.request_id, request)

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        # Request ids are unique, so tuples never compare their requests.
        return (item[3] for item in sorted(self._heap))

    def push(self, request: Request) -> None:
        heapq.heappush(self._heap, self._key(request))

    def push_preempted(self, request: Request) -> None:
        # The key orders a preempted request back into place (a real method, not an
        # alias: compiled classes do not support method aliases in the class body).
        heapq.heappush(self._heap, self._key(request))

    def peek(self) -> Request:
        return self._heap[0][3]

    def pop(self) -> Request:
        return heapq.heappop(self._heap)[3]

    def remove(self, request: Request) -> None:
        for index, item in enumerate(self._heap):
            if item[3] is request:
                self._heap[index] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return
        raise ValueError(f"request {request.request_id} is not waiting")

    def remove_many(self, requests: list[Request]) -> None:
        ids = {id(request) for request in requests}
        heap = [item for item in self._heap if id(item[3]) not in ids]
        if len(heap) + len(ids) != len(self._heap):
            raise ValueError("some of these requests are not waiting")
        heapq.heapify(heap)
        self._heap = heap

    def clone(self, mapping: dict[int, Request]) -> KeyedQueue:
        other = KeyedQueue(self._by_prompt)
        other._heap = [(a, b, c, mapping[id(r)]) for a, b, c, r in self._heap]
        return other


def make_waiting_queue(policy: str) -> WaitingQueue:
    """The waiting queue of a scheduling policy."""
    match policy:
        case "fcfs":
            return FCFSQueue()
        case "priority":
            return KeyedQueue(by_prompt=False)
        case "shortest_prompt_first":
            return KeyedQueue(by_prompt=True)
        case _:
            raise ValueError(
                f"unknown scheduling policy {policy!r}; allowed: fcfs, priority, shortest_prompt_first"
            )
