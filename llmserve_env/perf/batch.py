"""The composition of one engine iteration, as the latency models read it.

Its own module, compiled with the simulator core (:mod:`llmserve_env.perf.base`, whose
runtime-checkable protocol cannot be compiled, re-exports it): the engine builds a
shape per general iteration, which in compiled code costs a seventh of what a frozen
dataclass does, and the models read its fields as struct members.
"""

from __future__ import annotations

from typing import Final


class BatchShape:
    """The composition of one engine iteration (one forward pass of one instance).

    Attributes:
        prefill_new: New tokens of each prefill chunk in the batch.
        prefill_ctx: Tokens already in the KV cache before each chunk (same order).
        num_decodes: Requests decoding one token.
        decode_kv_sum: Sum over decoding requests of the KV length each attends to
            (its computed tokens plus the new one).
        decode_kv_max: Longest such KV length (0 without decodes).
        decode_kv_min: Shortest such KV length (0 without decodes). Callers that do not
            track it leave it 0; a model keyed by the skew rate then reads the rate as
            ``mean / max``, as if the shortest decode were empty.

    Immutable: the attributes are ``Final`` (mypy rejects an assignment; compiled, the
    class refuses it at run time). Shapes compare and hash by value.
    """

    __slots__ = (
        "decode_kv_max",
        "decode_kv_min",
        "decode_kv_sum",
        "num_decodes",
        "prefill_ctx",
        "prefill_new",
    )

    def __init__(
        self,
        prefill_new: tuple[int, ...] = (),
        prefill_ctx: tuple[int, ...] = (),
        num_decodes: int = 0,
        decode_kv_sum: int = 0,
        decode_kv_max: int = 0,
        decode_kv_min: int = 0,
    ) -> None:
        self.prefill_new: Final = prefill_new
        self.prefill_ctx: Final = prefill_ctx
        self.num_decodes: Final = num_decodes
        self.decode_kv_sum: Final = decode_kv_sum
        self.decode_kv_max: Final = decode_kv_max
        self.decode_kv_min: Final = decode_kv_min

    @property
    def num_tokens(self) -> int:
        """Tokens processed by the iteration (prefill chunks plus one per decode)."""
        return sum(self.prefill_new) + self.num_decodes

    @property
    def num_seqs(self) -> int:
        """Requests in the batch (each produces one row of logits)."""
        return len(self.prefill_new) + self.num_decodes

    def _fields(self) -> tuple[tuple[int, ...], tuple[int, ...], int, int, int, int]:
        return (
            self.prefill_new,
            self.prefill_ctx,
            self.num_decodes,
            self.decode_kv_sum,
            self.decode_kv_max,
            self.decode_kv_min,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchShape):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return (
            f"BatchShape(prefill_new={self.prefill_new!r}, prefill_ctx={self.prefill_ctx!r}, "
            f"num_decodes={self.num_decodes}, decode_kv_sum={self.decode_kv_sum}, "
            f"decode_kv_max={self.decode_kv_max}, decode_kv_min={self.decode_kv_min})"
        )
