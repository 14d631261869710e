"""Data-parallel ranks of an MoE engine stepping in lockstep (vLLM DP + EP).

vLLM runs an MoE model with ``--data-parallel-size D`` as ``D`` engines, each with its
own scheduler, KV cache and requests, whose MoE layers exchange tokens every forward
pass. So the ranks step together: each step, every rank schedules its own batch
(vLLM's ``schedule()``), the ranks agree on the largest token count and pad to it, and a
rank with nothing to run joins with a dummy batch. A step ends when the slowest rank
ends; then every rank commits its batch and schedules the next. When no rank has work
the group rests, and the first rank to receive some starts the next step for all.

Here each rank is an :class:`~llmserve_env.sim.instance.Instance` whose
``_start_iteration`` only forms its batch and asks its :class:`DPGroup` to launch; the
launch (a :class:`StepLaunch` event, after every simultaneous iteration end, arrival and
wake) times each rank's batch with its latency model's
:meth:`~llmserve_env.perf.profile_model.ProfileLatencyModel.rank_time_s` at the group's
token count, and schedules every rank's :class:`~llmserve_env.sim.events.IterationDone`
at the end of the slowest. Decode stretches are not vectorised for lockstep ranks (their
lengths would depend on every rank's arrivals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from llmserve_env.perf.base import BatchShape
from llmserve_env.sim.events import IterationDone, StepLaunch

if TYPE_CHECKING:
    from llmserve_env.sim.instance import Instance


class RankLatency(Protocol):
    """A latency model that times one rank of a lockstep group."""

    def rank_time_s(self, batch: BatchShape, group_tokens: int) -> float:
        """Seconds the rank takes for ``batch`` when the group's largest has
        ``group_tokens`` tokens."""
        ...


class DPGroup:
    """The lockstep ranks of one data-parallel engine.

    Args:
        group_id: Index among the simulation's groups (what :class:`StepLaunch` names).
        ranks: The ranks' instances, in rank order.
        latencies: Each rank's latency model (same order).
    """

    def __init__(self, group_id: int, ranks: list[Instance], latencies: list[RankLatency]) -> None:
        if len(ranks) < 2:
            raise ValueError(f"a data-parallel group needs at least 2 ranks, got {len(ranks)}")
        self.group_id = group_id
        self.ranks = ranks
        self.latencies = latencies
        self.step_end = float("-inf")
        """When the step in flight ends (``-inf`` before the first)."""
        self.launch_pending = False
        self.num_steps = 0
        for index, rank in enumerate(ranks):
            rank.dp = self
            rank.dp_rank = index

    def request_launch(self, now: float) -> None:
        """A rank has a batch: launch the group's next step now, or when the step in
        flight ends."""
        if self.launch_pending:
            return
        self.launch_pending = True
        kernel = self.ranks[0].kernel
        kernel.schedule(max(now, self.step_end), StepLaunch(self.group_id))

    def on_launch(self, event: StepLaunch) -> None:
        """Handler of :class:`StepLaunch`: start one step of every serving rank."""
        self.launch_pending = False
        kernel = self.ranks[0].kernel
        now = kernel.now
        ranks = [rank for rank in self.ranks if rank.serving or rank.busy]
        for rank in ranks:
            if not rank.busy:  # idle since the last step: may have admissible work
                rank._batch = rank._schedule(now)
        shapes = [rank._shape(rank._batch) for rank in ranks]
        group_tokens = max((shape.num_tokens for shape in shapes), default=0)
        if group_tokens == 0:
            for rank in ranks:
                rank.busy = False
            return
        timed: list[tuple[float, float]] = []
        for rank, shape in zip(ranks, shapes, strict=True):
            duration = self.latencies[rank.dp_rank].rank_time_s(shape, group_tokens)
            watts = 0.0
            if rank.power is not None:
                # A dummy batch runs the token-parallel operators at the group's size.
                work = shape if shape.num_tokens else BatchShape((group_tokens,), (0,))
                duration, watts = rank.power.iteration(work, duration)
            timed.append((duration, watts))
        end = now + max(duration for duration, _ in timed)
        self.step_end = end
        self.num_steps += 1
        for rank, shape, (_, watts) in zip(ranks, shapes, timed, strict=True):
            rank.busy = True
            rank._iter_start = now
            rank.generation += 1
            rank.stats.scheduled_tokens_last = shape.num_tokens
            if rank.power is not None:
                rank.power.begin_busy(now, end, watts)
                rank._iter_watts = watts
            kernel.schedule(end, IterationDone(rank.instance_id, rank.generation))

    def clone(self, ranks: list[Instance]) -> DPGroup:
        """This group over the copies ``ranks`` of its ranks (same order)."""
        other = DPGroup(self.group_id, ranks, self.latencies)
        other.step_end = self.step_end
        other.launch_pending = self.launch_pending
        other.num_steps = self.num_steps
        return other
