"""One serving instance (a vLLM engine) with vLLM V1 scheduling semantics.

Each iteration the scheduler walks the running requests first (in order), giving each
``num_tokens - num_computed_tokens`` new tokens, capped by ``long_prefill_token_threshold``
and the remaining token budget; when KV blocks run out it preempts (recompute) the
lowest-priority running request (the newest under FCFS) until the request fits or is
itself preempted. If nothing was preempted it then admits waiting requests in queue
order while budget, ``max_num_seqs`` and KV blocks allow, taking prefix-cache hits first.
At the end of the iteration every request that caught up samples one token; requests
that reached their output length finish and free their blocks.

Speed without changing results: when every running request is decoding and no waiting
request can be admitted, consecutive iterations differ only in KV length, so the engine
evaluates a whole stretch of them at once (a line in the iteration index from the latency
model, or one vectorised call) and schedules one event at its end. The stretch stops
before the first request finishes or the KV cache would run out, and is cut at the next
iteration boundary when anything external happens
(an arrival, an action): :meth:`Instance.interrupt`. Observers call
:meth:`Instance.advance_to` to see the state after every iteration that has ended.

Async scheduling (``EngineParams.async_scheduling``, vLLM's ``--async-scheduling``, on by
default since vLLM 0.14): vLLM's engine core keeps two steps in its batch queue, so it
schedules step N+1 while step N runs and applies step N's output only after that
(``EngineCore.step_with_batch_queue``; ``AsyncScheduler`` counts the token step N will
sample as an output placeholder, so N+1 already decodes it, and skips a request that N
brings to its ``max_tokens``). The engine here still schedules at the boundary after
step N, but from the view vLLM had when N began: waiting requests that arrived after N
began are hidden (they join step N+2 at the earliest, so a decode stretch is cut one
iteration after an arrival instead of at it), and requests that finished at the end of
N still hold their ``max_num_seqs`` slots and KV blocks for step N+1. A step that would
be empty under that view is skipped (it costs vLLM no GPU time): the boundary then
schedules with everything it knows, as without the knob, and so does an idle engine.
Not modelled: the CPU time async scheduling hides (the latency model has no host
overhead term, so the knob only adds the one-step lag); preemption, which happens after
step N's output here but before it in vLLM (whose preempted request loses the token N
sampled); the wasted extra step vLLM runs for a request that stops early on EOS (output
lengths are known here); prefix-cache hits on blocks freed at the boundary, which count
against the set-aside blocks although vLLM would share them; speculative decoding and
pipeline-parallel batch queues deeper than two steps. Knob and clock changes still apply
from the next iteration.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llmserve_env.perf.base import BatchShape, LatencyModel
from llmserve_env.sim.events import EngineWake, IterationDone
from llmserve_env.sim.kernel import Kernel
from llmserve_env.sim.kv_cache import KVBlockPool
from llmserve_env.sim.power import InstancePower, NodePower, PowerState, StretchEnergy
from llmserve_env.sim.queues import WaitingQueue, make_waiting_queue
from llmserve_env.sim.request import RejectReason, Request, RequestStatus, clone_request
from llmserve_env.sim.stats import InstanceStats, ItlHistogram

if TYPE_CHECKING:
    from llmserve_env.sim.data_parallel import DPGroup


@dataclass(frozen=True, slots=True)
class EngineParams:
    """Resolved engine knobs of one instance (no ``None`` left)."""

    max_num_seqs: int
    max_num_batched_tokens: int
    block_size: int
    num_blocks: int
    enable_prefix_caching: bool
    enable_chunked_prefill: bool
    long_prefill_token_threshold: int
    max_model_len: int
    scheduling_policy: str
    max_num_waiting: int | None
    max_decode_run: int = 4096
    async_scheduling: bool = False
    """Schedule one step ahead as vLLM's async scheduling does (see the module doc)."""
    scheduler_reserve_full_isl: bool = False
    """Admit a waiting request only if blocks for its whole sequence are free, as vLLM's
    ``scheduler_reserve_full_isl``."""


FinishCallback = Callable[[Request], None]


class _BlockNeed:
    """Extra KV blocks a decode stretch needs after ``k`` iterations:
    ``sum(max(0, ceil((computed + k) / block_size) - held))`` over its requests.

    A request has ``held * block_size - computed`` free token slots (its slack); it needs
    ``ceil((k - slack) / block_size)`` blocks once ``k`` exceeds them. With the slacks
    sorted, the common case (every request short of room needs one block) is a bisection.

    Immutable after construction but for a cached copy of the slacks (forks share it).
    """

    __slots__ = ("_slack", "_slack_array", "block_size", "computed", "held")

    def __init__(self, computed: list[int], held: list[int], block_size: int) -> None:
        self.computed = computed
        self.held = held
        self.block_size = block_size
        slack: list[int] = []
        for index in range(len(computed)):
            slack.append(held[index] * block_size - computed[index])
        slack.sort()
        self._slack = slack
        self._slack_array: np.ndarray | None = None  # made on first use (large batches)

    def __call__(self, k: int) -> int:
        slack = self._slack
        short = bisect.bisect_left(slack, k)  # requests with fewer than k free slots
        bs = self.block_size
        if short == 0 or k - slack[0] <= bs:
            return short  # none, or one block each
        if short > 24:
            if self._slack_array is None:
                self._slack_array = np.asarray(slack, dtype=np.int64)
            lacking = k - self._slack_array[:short]
            return int(((lacking + bs - 1) // bs).sum())
        total = 0
        for index in range(short):
            total += (k - slack[index] + bs - 1) // bs
        return total


class Instance:
    """A serving engine: waiting queue, running batch, KV pool and latency model.

    Args:
        instance_id: Index in the cluster.
        name: Label for outputs.
        kernel: The simulation's event kernel.
        params: Resolved engine knobs.
        latency: Iteration latency model.
        itl: Shared inter-token-latency histogram.
        on_finish: Called once per request that finishes here (the simulation sets it).
        node_id: Index of the node hosting the instance.
        num_devices: Devices the instance spans (its tensor-parallel degree).
        power: Power state and energy of the instance's devices (``None``: no power
            model; iterations run at full clock and no energy is counted).
    """

    def __init__(
        self,
        instance_id: int,
        name: str,
        kernel: Kernel,
        params: EngineParams,
        latency: LatencyModel,
        itl: ItlHistogram,
        on_finish: FinishCallback | None = None,
        node_id: int = 0,
        num_devices: int = 1,
        power: InstancePower | None = None,
    ) -> None:
        self.instance_id = instance_id
        self.name = name
        self.node_id = node_id
        self.num_devices = num_devices
        self.power = power
        self.kernel = kernel
        self.params = params
        # Variants of the parameters (knob changes, the step async scheduling runs
        # ahead), see _params_with; immutable values, shared by forks.
        self._derived_params: dict[tuple[int, int, str, int], EngineParams] = {}
        self.latency = latency
        self.itl = itl
        self.on_finish: FinishCallback = on_finish or (lambda request: None)
        self.pool = KVBlockPool(params.num_blocks, params.block_size, params.enable_prefix_caching)
        self.waiting: WaitingQueue = make_waiting_queue(params.scheduling_policy)
        self.running: list[Request] = []
        self.stats = InstanceStats()
        self.generation = 0
        self.busy = False
        self._wake_pending = False
        # A single in-flight iteration.
        self._batch: list[tuple[Request, int]] = []
        self._iter_start = 0.0
        # An in-flight decode stretch.
        self._run: list[Request] = []
        self._run_ends: list[float] = []
        self._run_start = 0.0
        self._run_done = 0
        self._run_len = 0
        self._run_need = _BlockNeed([], [], params.block_size)
        self._run_last0: list[float] = []
        self._run_blocks = 0
        self._run_materialized = 0
        self._run_energy: StretchEnergy | None = None
        self._iter_watts = 0.0
        # Time integral of the waiting-queue length (request-seconds), kept lazily.
        self._waiting_area = 0.0
        self._waiting_t = 0.0
        # Async scheduling: (time, request) of arrivals while busy, until an iteration
        # that began after them ends.
        self._arrivals: list[tuple[float, Request]] = []
        # The lockstep data-parallel group this engine is a rank of (DPGroup sets both).
        self.dp: DPGroup | None = None
        self.dp_rank = 0

    # ------------------------------------------------------------------ queries

    @property
    def num_waiting(self) -> int:
        """Requests queued, not yet running (preempted ones included)."""
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        """Requests in the running batch."""
        return len(self.running)

    @property
    def num_outstanding(self) -> int:
        """Requests routed here and not yet ended."""
        return len(self.waiting) + len(self.running)

    @property
    def kv_usage_frac(self) -> float:
        """Fraction of KV blocks in use."""
        return self.pool.usage_frac

    def waiting_area(self, now: float) -> float:
        """Request-seconds spent in this waiting queue up to ``now``."""
        return self._waiting_area + len(self.waiting) * (now - self._waiting_t)

    def _touch_waiting(self, now: float) -> None:
        """Close the waiting-area integral at ``now`` before the queue changes."""
        self._waiting_area += len(self.waiting) * (now - self._waiting_t)
        self._waiting_t = now

    def admission_check(self, request: Request) -> RejectReason:
        """Why this instance could never serve ``request`` (``NONE`` if it could)."""
        total = request.num_prompt_tokens + request.max_output_tokens
        if total > self.params.max_model_len:
            return RejectReason.PROMPT_TOO_LONG
        if self.pool.blocks_for(total) > self.params.num_blocks:
            return RejectReason.EXCEEDS_KV_CAPACITY
        if (
            self.params.max_num_waiting is not None
            and len(self.waiting) >= self.params.max_num_waiting
        ):
            return RejectReason.QUEUE_FULL
        return RejectReason.NONE

    # ------------------------------------------------------------------ inputs

    def add_request(self, request: Request) -> None:
        """Queue a routed request; wake the engine or cut a decode stretch short."""
        request.instance_id = self.instance_id
        request.status = RequestStatus.WAITING
        self.stats.num_routed += 1
        self._touch_waiting(self.kernel.now)
        self.waiting.push(request)
        if self.params.async_scheduling and self.busy:
            # The next step was scheduled when the one in flight began: this request can
            # join the step after it, so a decode stretch runs one iteration more.
            self._arrivals.append((self.kernel.now, request))
            if self._run:
                self._cut_run(1)
        else:
            self.interrupt()

    def set_knobs(
        self,
        max_num_seqs: int | None = None,
        max_num_batched_tokens: int | None = None,
        scheduling_policy: str | None = None,
    ) -> None:
        """Change engine knobs on the fly (from the next iteration on).

        Lowering ``max_num_seqs`` below the running count preempts nothing; it only
        stops admissions until requests finish, as a restarted vLLM scheduler would.
        """
        params = self.params
        key = (
            params.max_num_seqs if max_num_seqs is None else max_num_seqs,
            (
                params.max_num_batched_tokens
                if max_num_batched_tokens is None
                else max_num_batched_tokens
            ),
            params.scheduling_policy if scheduling_policy is None else scheduling_policy,
        )
        if key == (params.max_num_seqs, params.max_num_batched_tokens, params.scheduling_policy):
            return
        changed = self._params_with(*key, params.max_decode_run)
        if key[2] != params.scheduling_policy:
            queue = make_waiting_queue(key[2])
            for request in self.waiting:
                queue.push(request)
            self.waiting = queue
        self.params = changed
        if self._run and not self.waiting and len(self._run) <= changed.max_num_batched_tokens:
            # A decode stretch with nothing to admit is what the scheduler would run under
            # the new knobs too (lowering max_num_seqs preempts nothing).
            return
        self.interrupt()

    def _params_with(
        self,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        scheduling_policy: str,
        max_decode_run: int,
    ) -> EngineParams:
        """The parameters with these four fields (the others never change): made once
        per combination, since agents cycle through a few knob levels."""
        key = (max_num_seqs, max_num_batched_tokens, scheduling_policy, max_decode_run)
        params = self._derived_params.get(key)
        if params is None:
            params = dataclasses.replace(
                self.params,
                max_num_seqs=max_num_seqs,
                max_num_batched_tokens=max_num_batched_tokens,
                scheduling_policy=scheduling_policy,
                max_decode_run=max_decode_run,
            )
            self._derived_params[key] = params
        return params

    def interrupt(self) -> None:
        """Something external changed: reconsider scheduling at the next boundary."""
        if self.busy:
            if self._run:
                self._cut_run()
        elif not self._wake_pending:
            self._wake_pending = True
            self.kernel.schedule(self.kernel.now, EngineWake(self.instance_id, self.generation))

    def on_wake(self, event: EngineWake) -> None:
        """Handler of :class:`EngineWake`."""
        self._wake_pending = False
        if not self.busy:
            self._start_iteration(self.kernel.now)

    def on_iteration_done(self, event: IterationDone) -> None:
        """Handler of :class:`IterationDone`."""
        if event.generation != self.generation:
            return  # a stretch that was cut short; a newer event stands for it
        if self.params.async_scheduling:
            self._iteration_done_ahead()
            return
        now = self.kernel.now
        if self._run:
            self._commit_run(self._run_len)
            self.stats.busy_s += now - self._run_start
            self._run = []
        else:
            self._commit_iteration(now)
            self.stats.busy_s += now - self._iter_start
        if self.power is not None:
            self.power.end_busy(now)
        self.busy = False
        self._start_iteration(now)

    # ------------------------------------------------------------------ lazy state

    def advance_to(self, time: float) -> None:
        """Apply every iteration of the in-flight decode stretch that ended by ``time``."""
        if self._run:
            done = bisect.bisect_right(self._run_ends, time)
            done = min(done, self._run_len - 1)  # the last one belongs to its event
            if done > self._run_done:
                self._account_run(done)

    def _cut_run(self, later: int = 0) -> None:
        """End the decode stretch at the boundary of the iteration in flight now, or
        ``later`` iterations after it."""
        in_flight = bisect.bisect_right(self._run_ends, self.kernel.now) + later
        if in_flight + 1 < self._run_len:
            self._run_len = in_flight + 1
            end = self._run_ends[in_flight]
            if self.power is not None:
                self.power.cut_stretch(end)
            self.generation += 1
            self.kernel.schedule(end, IterationDone(self.instance_id, self.generation))

    # ------------------------------------------------------------------ scheduling

    @property
    def serving(self) -> bool:
        """Whether the engine may run iterations (its devices are on)."""
        return self.power is None or self.power.state == PowerState.ON

    def _start_iteration(self, now: float) -> None:
        if not self.serving:
            return
        if self.dp is not None:
            # A lockstep rank: schedule its batch; the group times and starts the step.
            batch = self._schedule(now)
            if batch:
                self._batch = batch
                self.busy = True
                self.dp.request_launch(now)
            return
        if self._try_decode_run(now):
            return
        batch = self._schedule(now)
        if not batch:
            return
        shape = self._shape(batch)
        self._batch = batch
        self._iter_start = now
        self.busy = True
        self.generation += 1
        self.stats.scheduled_tokens_last = shape.num_tokens
        duration = self.latency.iteration_time_s(shape)
        if self.power is not None:
            duration, watts = self.power.iteration(shape, duration)
            self.power.begin_busy(now, now + duration, watts)
            self._iter_watts = watts
        self.kernel.schedule(now + duration, IterationDone(self.instance_id, self.generation))

    def _shape(self, batch: list[tuple[Request, int]]) -> BatchShape:
        prefill_new: list[int] = []
        prefill_ctx: list[int] = []
        num_decodes = kv_sum = kv_max = kv_min = 0
        for request, num_new in batch:
            computed = request.num_computed_tokens
            if (
                num_new == 1
                and request.num_output_tokens
                and computed == request.num_prompt_tokens + request.num_output_tokens - 1
            ):
                num_decodes += 1
                kv_sum += computed + 1
                if computed + 1 > kv_max:
                    kv_max = computed + 1
                if kv_min == 0 or computed + 1 < kv_min:
                    kv_min = computed + 1
            else:
                prefill_new.append(num_new)
                prefill_ctx.append(computed)
        return BatchShape(
            tuple(prefill_new), tuple(prefill_ctx), num_decodes, kv_sum, kv_max, kv_min
        )

    def _victim(self) -> Request:
        if self.params.scheduling_policy == "priority":
            return max(self.running, key=lambda r: (r.priority, r.arrival_s, r.request_id))
        return self.running[-1]

    def _preempt(self, victim: Request) -> None:
        self._touch_waiting(self.kernel.now)
        self.running.remove(victim)
        self.pool.free(victim)
        victim.status = RequestStatus.PREEMPTED
        victim.num_computed_tokens = 0
        victim.num_preemptions += 1
        self.stats.num_preemptions += 1
        self.waiting.push_preempted(victim)

    def _schedule(self, now: float) -> list[tuple[Request, int]]:
        """One vLLM V1 ``schedule()`` call: running first, then waiting."""
        params = self.params
        pool = self.pool
        running = self.running
        threshold = params.long_prefill_token_threshold
        budget = params.max_num_batched_tokens
        bs = params.block_size
        scheduled: list[tuple[Request, int]] = []
        preempted = False
        index = 0
        while index < len(running) and budget > 0:
            request = running[index]
            computed = request.num_computed_tokens
            num_new = request.num_prompt_tokens + request.num_output_tokens - computed
            if threshold and num_new > threshold:
                num_new = threshold
            if num_new > budget:
                num_new = budget
            fits = True
            if (computed + num_new + bs - 1) // bs <= request.num_blocks:
                scheduled.append((request, num_new))  # fast path: no new block needed
                budget -= num_new
                index += 1
                continue
            while not pool.grow(request, computed + num_new):
                victim = self._victim()
                victim_index = running.index(victim)
                if victim_index < index:  # already scheduled this step: take it back
                    for pos, (req, tokens) in enumerate(scheduled):
                        if req is victim:
                            budget += tokens
                            del scheduled[pos]
                            break
                    index -= 1
                self._preempt(victim)
                preempted = True
                if victim is request:
                    fits = False
                    break
            if not fits:
                break
            scheduled.append((request, num_new))
            budget -= num_new
            index += 1
        if preempted:
            return scheduled
        waiting = self.waiting
        if waiting:
            self._touch_waiting(now)
        while waiting and budget > 0 and len(running) < params.max_num_seqs:
            request = waiting.peek()
            hit_blocks = pool.num_hit_blocks(request)
            computed = hit_blocks * params.block_size
            num_new = request.num_tokens - computed
            if threshold and num_new > threshold:
                num_new = threshold
            if num_new > budget:
                if not params.enable_chunked_prefill:
                    break
                num_new = budget
            if params.scheduler_reserve_full_isl and not pool.fits_whole(request, hit_blocks):
                break
            if not pool.admit(request, hit_blocks, num_new):
                break
            waiting.pop()
            request.num_computed_tokens = computed
            if request.num_cached_tokens < 0:
                request.num_cached_tokens = computed
                self.stats.prefix_query_tokens += request.num_prompt_tokens
                self.stats.prefix_hit_tokens += computed
            if math.isnan(request.first_scheduled_s):
                request.first_scheduled_s = now
            request.status = RequestStatus.RUNNING
            running.append(request)
            scheduled.append((request, num_new))
            budget -= num_new
        return scheduled

    # ------------------------------------------------------------------ async scheduling

    def _iteration_done_ahead(self) -> None:
        """:meth:`on_iteration_done` under async scheduling: the same commit, noting what
        the step scheduled ahead could not see (when the ended iteration began, and the
        slots and blocks its finished requests freed)."""
        now = self.kernel.now
        pool = self.pool
        num_running = len(self.running)
        if self._run:
            n = self._run_len
            began = self._run_ends[n - 2] if n > 1 else self._run_start
            self._account_run(n)  # the stretch's own blocks first: only frees count below
            free = pool.num_free_blocks
            self._commit_run(n)
            self.stats.busy_s += now - self._run_start
            self._run = []
        else:
            began = self._iter_start
            free = pool.num_free_blocks
            self._commit_iteration(now)
            self.stats.busy_s += now - began
        if self.power is not None:
            self.power.end_busy(now)
        self.busy = False
        self._start_ahead(now, began, num_running - len(self.running), pool.num_free_blocks - free)

    def _start_ahead(self, now: float, began: float, freed_seqs: int, freed_blocks: int) -> None:
        """Start the step vLLM scheduled when the iteration that ended now ``began``:
        waiting requests that arrived after that are hidden, and the ``freed_seqs``
        slots and ``freed_blocks`` KV blocks freed now are still held. It runs as one
        general iteration (the view lasts one step); if it would be empty, the boundary
        schedules with everything, as without the knob."""
        arrivals = self._arrivals
        seen = 0
        while seen < len(arrivals) and arrivals[seen][0] <= began:
            seen += 1
        if seen:
            del arrivals[:seen]
        hidden = [r for _, r in arrivals if r.status == RequestStatus.WAITING]
        params = self.params
        pool = self.pool
        num = len(self.running)
        if (not hidden and not freed_seqs and not freed_blocks) or (
            # Nothing can be admitted, now or during a stretch ...
            (not self.waiting or num >= params.max_num_seqs)
            # ... and the running requests cannot grow into the held blocks (a chunk of
            # n tokens needs at most ceil(n / block_size) new blocks).
            and (
                not freed_blocks
                or pool.num_free_blocks - freed_blocks
                >= num + params.max_num_batched_tokens // params.block_size + 1
            )
        ):
            self._start_iteration(now)  # the view of the step scheduled ahead is moot
            return
        ahead = self._params_with(
            max(params.max_num_seqs - freed_seqs, 0),
            params.max_num_batched_tokens,
            params.scheduling_policy,
            1,
        )
        self._touch_waiting(now)  # before the queue shrinks for a moment
        if hidden:
            self.waiting.remove_many(hidden)
        pool.set_aside(freed_blocks)
        self.params = ahead
        self._start_iteration(now)
        self.params = params
        pool.put_back(freed_blocks)
        for request in hidden:
            self.waiting.push(request)
        if not self.busy:
            self._start_iteration(now)

    # ------------------------------------------------------------------ completion

    def _finish(self, request: Request, now: float) -> None:
        request.status = RequestStatus.FINISHED
        request.finish_s = now
        self.pool.free(request)
        self.stats.num_finished += 1
        self.on_finish(request)

    def _commit_iteration(self, now: float) -> None:
        """The iteration in flight ended at ``now``: requests that caught up emit one
        output token each (first token, or one inter-token gap), finished ones leave."""
        pool = self.pool
        stats = self.stats
        batch = self._batch
        stats.num_iterations += 1
        per_token = 0.0
        if self.power is not None:
            # The iteration's energy goes to its requests in proportion to their tokens.
            tokens = sum(n for _, n in batch)
            if tokens:
                per_token = self._iter_watts * (now - self._iter_start) / tokens
        caching = pool.enable_prefix_caching
        gaps: list[float] = []
        finished = False
        for request, num_new in batch:
            if per_token:
                request.energy_j += per_token * num_new
            if request.status != RequestStatus.RUNNING:
                continue
            computed = request.num_computed_tokens
            out = request.num_output_tokens
            num_tokens = request.num_prompt_tokens + out
            if not (num_new == 1 and out and computed == num_tokens - 1):
                stats.prompt_tokens += num_new
            computed += num_new
            request.num_computed_tokens = computed
            if caching and request.content is not None:
                pool.register_computed(request)
            if computed == num_tokens:
                out += 1
                request.num_output_tokens = out
                if out == 1:
                    request.first_token_s = now
                else:
                    gap = now - request.last_token_s
                    gaps.append(gap)
                    if gap > request.itl_max_s:
                        request.itl_max_s = gap
                request.last_token_s = now
                stats.generation_tokens += 1
                if out >= request.max_output_tokens:
                    self._finish(request, now)
                    finished = True
        if gaps:
            self.itl.add_list(gaps)
        self._batch = []
        if finished:
            self.running = [r for r in self.running if r.status == RequestStatus.RUNNING]

    # ------------------------------------------------------------------ decode stretches

    def _head_admissible(self) -> bool:
        """Whether the scheduler would admit the head of the waiting queue now."""
        request = self.waiting.peek()
        pool = self.pool
        hit_blocks = pool.num_hit_blocks(request)
        num_new = request.num_tokens - hit_blocks * self.params.block_size
        threshold = self.params.long_prefill_token_threshold
        if threshold and num_new > threshold:
            num_new = threshold
        budget = self.params.max_num_batched_tokens - len(self.running)
        if budget <= 0:
            return False
        if num_new > budget:
            if not self.params.enable_chunked_prefill:
                return False
            num_new = budget
        hashes = request.block_hashes(pool.block_size) if hit_blocks else ()
        reclaim = pool.num_evictable_among(hashes[:hit_blocks])
        need = pool.blocks_for(hit_blocks * pool.block_size + num_new) - hit_blocks
        # Decodes of this iteration also need their next block.
        bs = pool.block_size
        decode_need = sum(
            1 for r in self.running if -(-(r.num_computed_tokens + 1) // bs) > r.num_blocks
        )
        if self.params.scheduler_reserve_full_isl and not pool.fits_whole(
            request, hit_blocks, decode_need
        ):
            return False
        return need + reclaim + decode_need <= pool.num_free_blocks

    def _try_decode_run(self, now: float) -> bool:
        """Start a vectorised decode stretch if the next iterations are decode-only."""
        running = self.running
        num = len(running)
        params = self.params
        if num == 0 or num > params.max_num_batched_tokens:
            return False
        last = running[-1]  # the newest request is the likeliest to be prefilling
        if last.num_prompt_tokens + last.num_output_tokens - last.num_computed_tokens != 1:
            return False
        # The scheduler would admit a waiting request (checked first: the commonest
        # reason, right after an arrival, to take the general path).
        if self.waiting and num < params.max_num_seqs and self._head_admissible():
            return False
        # One pass: every request must be decoding; gather what the stretch needs.
        steps = params.max_decode_run
        computed: list[int] = []
        held: list[int] = []
        last0: list[float] = []
        kv_sum = kv_max = 0
        kv_min = -1
        for request in running:
            c = request.num_computed_tokens
            out = request.num_output_tokens
            if request.num_prompt_tokens + out - c != 1:
                return False
            left = request.max_output_tokens - out
            if left < steps:
                steps = left
            computed.append(c)
            held.append(request.num_blocks)
            last0.append(request.last_token_s)
            kv_sum += c
            if c > kv_max:
                kv_max = c
            if kv_min < 0 or c < kv_min:
                kv_min = c
        if steps < 2:
            return False  # a single iteration: the general path is as cheap
        free = self.pool.num_free_blocks
        need = _BlockNeed(computed, held, params.block_size)
        if need(steps) > free:  # need(k) grows with k: check the whole stretch first
            if need(1) > free:
                return False  # the general path preempts
            lo, hi = 1, steps  # need(lo) fits, need(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if need(mid) <= free:
                    lo = mid
                else:
                    hi = mid
            steps = lo
            if steps < 2:
                return False
        kv_sum0 = float(kv_sum)
        kv_max0 = float(kv_max)
        kv_min0 = float(kv_min)
        line = self.latency.decode_line_s(num, kv_sum0, kv_max0, kv_min0, steps)
        durations: list[float]
        if line is None:
            i = np.arange(1, steps + 1, dtype=np.float64)
            durations = self.latency.decode_times_s(
                num, kv_sum0 + num * i, kv_max0 + i, kv_min0 + i
            ).tolist()
        else:
            a, b = line
            durations = [a + b * k for k in range(1, steps + 1)]
        energy: list[float] | tuple[float, float, float] | None = None
        if self.power is not None:
            durations, energy = self.power.stretch(num, kv_sum0, durations)
        self._run = list(running)
        self._run_need = need
        self._run_last0 = last0
        self._run_blocks = 0
        self._run_materialized = 0
        ends: list[float] = []
        t = now
        for duration in durations:
            t += duration
            ends.append(t)
        self._run_ends = ends
        if self.power is not None and energy is not None:
            self._run_energy = self.power.begin_stretch(now, self._run_ends, energy)
        self._run_start = now
        self._run_done = 0
        self._run_len = steps
        self.busy = True
        self.generation += 1
        self.stats.scheduled_tokens_last = num
        self.kernel.schedule(ends[-1], IterationDone(self.instance_id, self.generation))
        return True

    def _account_run(self, upto: int) -> None:
        """Apply iterations ``[_run_done, upto)`` of the stretch to the instance's
        aggregates (token counters, KV blocks); requests and the ITL histogram are
        updated when the stretch is materialised."""
        count = upto - self._run_done
        if count <= 0:
            return
        stats = self.stats
        stats.num_iterations += count
        stats.generation_tokens += len(self._run) * count
        blocks = self._run_need(upto)
        if blocks > self._run_blocks:
            self.pool.take_private(blocks - self._run_blocks)
            self._run_blocks = blocks
        self._run_done = upto

    def _materialize_run(self) -> None:
        """Bring the stretch's requests and the ITL histogram up to the iterations
        applied so far (idempotent)."""
        done = self._run_done
        materialized = self._run_materialized
        if done == materialized:
            return
        run = self._run
        ends = self._run_ends
        itl = self.itl
        first_gaps: list[float] | None = None
        if materialized == 0:
            # Each request's first token in the stretch measures from its previous one.
            t_first = ends[0]
            first_gaps = [t_first - last for last in self._run_last0]
            itl.add_list(first_gaps)
        lo = materialized if materialized > 1 else 1
        peak = 0.0
        if done > lo:
            gaps = [ends[k] - ends[k - 1] for k in range(lo, done)]
            itl.add_many(gaps, len(run))
            peak = max(gaps)
        t_end = ends[done - 1]
        bs = self.params.block_size
        added = done - materialized
        need = self._run_need
        energy_each = 0.0
        cum = self._run_energy
        if cum is not None:
            before = cum.at(materialized - 1) if materialized else 0.0
            energy_each = (cum.at(done - 1) - before) / len(run)
        pool = self.pool
        caching = pool.enable_prefix_caching
        computed0 = need.computed
        held0 = need.held
        for index in range(len(run)):  # indexed: a zip is a generic iterator when compiled
            request = run[index]
            c0 = computed0[index]
            b0 = held0[index]
            first = first_gaps[index] if first_gaps is not None else 0.0
            top = first if first > peak else peak
            if top > request.itl_max_s:
                request.itl_max_s = top
            computed = c0 + done
            request.num_computed_tokens = computed
            request.num_output_tokens += added
            request.last_token_s = t_end
            request.energy_j += energy_each
            blocks = (computed + bs - 1) // bs
            request.num_blocks = blocks if blocks > b0 else b0
            if caching and request.content is not None:
                pool.register_computed(request)
        self._run_materialized = done

    def materialize(self) -> None:
        """Make every request's own fields current (cheap aggregates are always current
        after :meth:`advance_to`; per-request fields of a decode stretch are updated on
        demand)."""
        if self._run:
            self._materialize_run()

    def _commit_run(self, upto: int) -> None:
        """Apply iterations up to ``upto`` and, at the stretch's end, finish requests."""
        self._account_run(upto)
        self._materialize_run()
        if upto == self._run_len:
            t_end = self._run_ends[upto - 1]
            finished = False
            for request in self._run:
                if request.num_output_tokens >= request.max_output_tokens:
                    self._finish(request, t_end)
                    finished = True
            if finished:
                self.running = [r for r in self.running if r.status == RequestStatus.RUNNING]

    # ------------------------------------------------------------------ horizon

    def drain_unfinished(self) -> list[Request]:
        """Remove and return every live request (used at the horizon)."""
        self.advance_to(self.kernel.now)
        self.materialize()
        self._touch_waiting(self.kernel.now)
        live = list(self.running) + list(self.waiting)
        for request in self.running:
            self.pool.free(request)
        self.running = []
        self.waiting = make_waiting_queue(self.params.scheduling_policy)
        self._arrivals = []
        self._run = []
        self._batch = []
        self.busy = False
        self.generation += 1
        return live

    def evacuate(self) -> list[Request]:
        """Stop serving (the devices go to sleep or off): preempt running requests
        (their KV is dropped; they are recomputed later), remove every live request
        and return them, running ones first."""
        now = self.kernel.now
        self.advance_to(now)
        self.materialize()
        self._touch_waiting(now)
        running = list(self.running)
        for request in running:
            self.pool.free(request)
            request.status = RequestStatus.PREEMPTED
            request.num_computed_tokens = 0
            request.num_preemptions += 1
            self.stats.num_preemptions += 1
        live = running + list(self.waiting)
        self.running = []
        self.waiting = make_waiting_queue(self.params.scheduling_policy)
        self._arrivals = []
        self._run = []
        self._batch = []
        if self.busy and self.power is not None:
            self.power.abort_busy(now)
        self.busy = False
        self.generation += 1
        return live

    def requeue(self, request: Request) -> None:
        """Keep an evacuated request queued here (served after the devices wake)."""
        self._touch_waiting(self.kernel.now)
        self.waiting.push_preempted(request)

    # ------------------------------------------------------------------ copies

    def clone(
        self,
        kernel: Kernel,
        itl: ItlHistogram,
        mapping: dict[int, Request],
        nodes: dict[int, NodePower] | None = None,
    ) -> Instance:
        """An independent copy on ``kernel``; ``mapping`` translates shared requests.

        The latency model and engine parameters are immutable and shared.
        """
        self.materialize()
        power = None
        if self.power is not None:
            node = (nodes or {}).get(id(self.power.node), self.power.node)
            power = self.power.clone(node)
        other = Instance(
            self.instance_id,
            self.name,
            kernel,
            self.params,
            self.latency,
            itl,
            self.on_finish,
            self.node_id,
            self.num_devices,
            power,
        )
        other.pool = self.pool.clone()
        other.stats = dataclasses.replace(self.stats)
        other.generation = self.generation
        other.busy = self.busy
        other._wake_pending = self._wake_pending
        other._iter_start = self._iter_start
        # The stretch's arrays, block need and energy are never mutated: shared.
        other._run_ends = self._run_ends
        other._run_start = self._run_start
        other._run_done = self._run_done
        other._run_len = self._run_len
        other._run_need = self._run_need
        other._run_last0 = self._run_last0
        other._run_blocks = self._run_blocks
        other._run_materialized = self._run_materialized
        other._run_energy = self._run_energy
        other._iter_watts = self._iter_watts
        other._derived_params = self._derived_params
        other._waiting_area = self._waiting_area
        other._waiting_t = self._waiting_t
        # The lockstep group is the simulation's: its clone takes the copied ranks.
        other.dp_rank = self.dp_rank

        other.running = _copy_requests(self.running, mapping)
        _copy_requests(self.waiting, mapping)
        other.waiting = self.waiting.clone(mapping)
        other._run = _copy_requests(self._run, mapping)
        arrived = _copy_requests([r for _, r in self._arrivals], mapping)
        other._arrivals = [(t, r) for (t, _), r in zip(self._arrivals, arrived, strict=True)]
        batch = _copy_requests([r for r, _ in self._batch], mapping)
        other._batch = [(r, n) for r, (_, n) in zip(batch, self._batch, strict=True)]
        return other


def _copy_requests(requests: Iterable[Request], mapping: dict[int, Request]) -> list[Request]:
    """The copies of ``requests``, one per request across a whole fork: ``mapping``
    translates ``id(original)`` to its copy and gains the ones made here."""
    out = []
    for request in requests:
        key = id(request)
        new = mapping.get(key)
        if new is None:
            new = clone_request(request)
            mapping[key] = new
        out.append(new)
    return out
