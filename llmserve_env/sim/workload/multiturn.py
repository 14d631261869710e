"""A multi-turn chat generator whose requests carry prefix content.

Sessions arrive by an arrival process; each picks one of a few shared system prompts and
runs a number of turns. Turn ``k``'s prompt is the system prompt, every earlier user
message and answer, and the new user message, so consecutive turns share a growing
prefix and sessions share their system prompt. Content is expressed as segments
(:class:`~llmserve_env.sim.request.TokenContent`), which the prefix cache hashes at any
block size. A request's content also covers its own answer, so once the answer has been
decoded its blocks are cached and the next turn can hit them.

The schedule is open loop: turn ``k+1`` arrives an exponential think time (mean
``think_time_s``) after turn ``k`` arrived, whatever the simulated latency; choose a
think time longer than the typical response time for realistic reuse.
"""

from __future__ import annotations

import numpy as np

from llmserve_env.config.schema import MultiTurnWorkload
from llmserve_env.sim.request import TokenContent
from llmserve_env.sim.workload.arrivals import sample_arrivals
from llmserve_env.sim.workload.base import WorkloadData
from llmserve_env.sim.workload.lengths import sample_lengths


def generate_multi_turn(
    cfg: MultiTurnWorkload,
    arrivals_rng: np.random.Generator,
    lengths_rng: np.random.Generator,
    content_rng: np.random.Generator,
) -> WorkloadData:
    """Generate every turn of every session.

    Args:
        cfg: The generator's settings.
        arrivals_rng: Stream for session arrivals and think times.
        lengths_rng: Stream for turn counts and token lengths.
        content_rng: Stream for system-prompt choice.
    """
    starts = sample_arrivals(cfg.session_arrival, arrivals_rng, cfg.num_sessions, None)
    num_sessions = len(starts)
    sys_lengths = sample_lengths(cfg.system_prompt_tokens, lengths_rng, cfg.num_system_prompts)
    turns = sample_lengths(cfg.turns, lengths_rng, num_sessions)
    sys_choice = content_rng.integers(0, cfg.num_system_prompts, num_sessions)
    arrival: list[float] = []
    prompt: list[int] = []
    output: list[int] = []
    session: list[int] = []
    contents: list[TokenContent | None] = []
    next_segment = cfg.num_system_prompts  # segment ids 0..P-1 are the system prompts
    for s in range(num_sessions):
        sys_id = int(sys_choice[s])
        history: list[tuple[int, int]] = [(sys_id, int(sys_lengths[sys_id]))]
        history_tokens = int(sys_lengths[sys_id])
        n_turns = int(turns[s])
        user = sample_lengths(cfg.user_tokens, lengths_rng, n_turns)
        answer = sample_lengths(cfg.output_tokens, lengths_rng, n_turns)
        gaps = (
            arrivals_rng.exponential(cfg.think_time_s, n_turns)
            if cfg.think_time_s > 0
            else np.zeros(n_turns)
        )
        t = float(starts[s])
        for k in range(n_turns):
            u, o = int(user[k]), int(answer[k])
            if history_tokens + u > cfg.max_prompt_tokens:
                break
            user_seg = (next_segment, u)
            answer_seg = (next_segment + 1, o)
            next_segment += 2
            prompt_segments = (*history, user_seg)
            arrival.append(t)
            prompt.append(history_tokens + u)
            output.append(o)
            session.append(s)
            contents.append(TokenContent(segments=(*prompt_segments, answer_seg)))
            history = [*prompt_segments, answer_seg]
            history_tokens += u + o
            t += float(gaps[k])
    priority = None
    if cfg.priority is not None:
        weights = np.asarray(cfg.priority.weights, dtype=np.float64)
        per_session = content_rng.choice(
            np.asarray(cfg.priority.values, dtype=np.int64),
            size=num_sessions,
            p=weights / weights.sum(),
        )
        priority = per_session[np.asarray(session, dtype=np.int64)]
    return WorkloadData.from_arrays(
        arrival,
        prompt,
        output,
        priority=priority,
        session_id=session,
        contents=contents,
        source="multi_turn",
    )
