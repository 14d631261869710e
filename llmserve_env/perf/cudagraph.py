"""vLLM's CUDA-graph batch padding: the token count a forward pass really runs at.

vLLM V1 captures CUDA graphs for a list of token counts
(``compilation_config.cudagraph_capture_sizes``) and runs a batch of ``n`` tokens, when
``n`` is at most the largest of them, as the graph of the smallest captured size at or
above ``n`` (``CudagraphDispatcher._bs_to_padded_graph_size`` in
``vllm/v1/cudagraph_dispatcher.py``; ``GPUModelRunner._determine_batch_execution_and_padding``
in ``vllm/v1/worker/gpu_model_runner.py``). Both kinds of graph of the default
``FULL_AND_PIECEWISE`` mode pad: the token-parallel operators (linear layers, norms,
activations, rotary embedding, the MoE block and the tensor-parallel collectives) run
on the padded count. Attention does not do more work: piecewise graphs run it outside
the graph on the real tokens, and full decode graphs give the padding requests a
sequence length of 0. The LM head and the sampler run on the real sequences only
(``hidden_states[logits_indices]``, outside the graph). Larger batches run without a
graph and unpadded.

vLLM 0.19's default list (``VllmConfig._set_cudagraph_sizes`` in ``vllm/config/vllm.py``,
``performance_mode`` "balanced", no speculative decoding, no sequence parallelism) is
``[1, 2, 4]``, multiples of 8 below 256, then multiples of 16 from 256, up to
``min(2 * max_num_seqs, 512, max_num_batched_tokens)``: :func:`default_capture_sizes`.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

DEFAULT_MAX_CAPTURE_SIZE = 512
"""vLLM 0.19's cap on the default largest capture size."""


def default_capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> tuple[int, ...]:
    """vLLM 0.19's default ``cudagraph_capture_sizes`` for these scheduler limits.

    Args:
        max_num_seqs: The engine's ``max_num_seqs``.
        max_num_batched_tokens: The engine's ``max_num_batched_tokens``.
    """
    cap = min(2 * max_num_seqs, DEFAULT_MAX_CAPTURE_SIZE, max_num_batched_tokens)
    sizes = [n for n in (1, 2, 4) if n <= cap]
    sizes += range(8, min(cap + 1, 256), 8)
    sizes += range(256, cap + 1, 16)
    return tuple(sorted(set(sizes)))


class TokenPadding:
    """Maps a batch's token count to the count its forward pass runs at.

    Args:
        capture_sizes: The captured token counts (any order, duplicates allowed); empty
            for no padding.

    Raises:
        ValueError: a size below 1.
    """

    def __init__(self, capture_sizes: Sequence[int]) -> None:
        sizes = sorted(set(int(n) for n in capture_sizes))
        if sizes and sizes[0] < 1:
            raise ValueError(f"capture sizes must be at least 1, got {sizes[0]}")
        self.capture_sizes: tuple[int, ...] = tuple(sizes)
        largest = sizes[-1] if sizes else 0
        # padded[n] for n in 0..largest, so the hot loop pays one list index.
        self.table: list[int] = [0] + [
            sizes[bisect.bisect_left(sizes, n)] for n in range(1, largest + 1)
        ]

    def __call__(self, num_tokens: int) -> int:
        """The padded token count (``num_tokens`` itself above the largest size)."""
        table = self.table
        return table[num_tokens] if num_tokens < len(table) else num_tokens

    def __repr__(self) -> str:
        return f"TokenPadding({list(self.capture_sizes)})"
