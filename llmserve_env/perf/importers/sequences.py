"""vLLM layer sequences per model family, in canonical operator names.

The operator names and order follow vLLM's modules (``vllm/model_executor/models``):
e.g. ``LlamaDecoderLayer`` runs ``input_layernorm`` (RMSNorm), ``self_attn`` (QKV
projection, rotary embedding, attention, O projection) then ``post_attention_layernorm``
and the gated MLP (``gate_up_proj``, ``SiluAndMul``, ``down_proj``). With tensor
parallelism the row-parallel linears (``o_proj``, ``down_proj``) and the MoE block end
in an all-reduce, and so does the input embedding: ``VocabParallelEmbedding`` looks up
the tokens in its shard of the vocabulary (zeros for the others) and all-reduces the
``num_tokens x hidden`` result (``tensor_model_parallel_all_reduce`` in its
``forward``), the same size as the layers' all-reduces. The LM head is
vocabulary-parallel too: ``LogitsProcessor._gather_logits`` all-gathers each GPU's
``num_seqs x vocab / tp`` logits (``tensor_model_parallel_all_gather``; vLLM 0.19 gathers
with an all-gather on every platform, ``Platform.use_all_gather``), a collective whose
message scales with the sequences sampled, not the tokens: ``all_gather@seq`` after
``lm_head``. LLMServingSim's layer sequence attaches all-reduces only after ``o_proj``
and ``down_proj``; a single GPU has nothing to reduce or gather, so the extra entries
cost nothing at ``tp`` 1. The names match LLMServingSim's vLLM-0.19 profiler tables.
"""

from __future__ import annotations

from llmserve_env.perf.profile_format import LayerSequence, collective_of

_PROLOGUE = ("embedding", "all_reduce")
_HEAD = ("final_layernorm", "lm_head", "all_gather@seq", "sampler")
_ATTN = ("layernorm", "qkv_proj", "rotary_emb", "attention", "o_proj", "all_reduce", "layernorm")
_ATTN_QK_NORM = (
    "layernorm",
    "qkv_proj",
    "qk_norm",
    "rotary_emb",
    "attention",
    "o_proj",
    "all_reduce",
    "layernorm",
)
_MLP = ("gate_up_proj", "act_fn", "down_proj", "all_reduce")
_MOE = ("moe", "all_reduce")

FAMILIES: dict[str, LayerSequence] = {
    "llama": LayerSequence(_PROLOGUE, _ATTN + _MLP, _HEAD),
    "qwen3": LayerSequence(_PROLOGUE, _ATTN_QK_NORM + _MLP, _HEAD),
    "qwen3_moe": LayerSequence(_PROLOGUE, _ATTN_QK_NORM + _MOE, _HEAD),
    "mixtral": LayerSequence(_PROLOGUE, _ATTN + _MOE, _HEAD),
    "phimoe": LayerSequence(_PROLOGUE, _ATTN + _MOE, _HEAD),
}
"""Layer sequence by family name (LLMServingSim's ``architecture`` / HF ``model_type``)."""

_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "MixtralForCausalLM": "mixtral",
    "PhiMoEForCausalLM": "phimoe",
}


def family_of(architecture: str) -> str:
    """Family name of a HuggingFace architecture class (or a family name itself).

    Raises:
        KeyError: naming the known families.
    """
    if architecture in FAMILIES:
        return architecture
    family = _ARCHITECTURES.get(architecture)
    if family is None:
        raise KeyError(
            f"no vLLM layer sequence known for {architecture!r}; known: "
            f"{', '.join(sorted(FAMILIES))} ({', '.join(sorted(_ARCHITECTURES))})"
        )
    return family


def restrict(sequence: LayerSequence, available: set[str]) -> tuple[LayerSequence, list[str]]:
    """Drop operators no table has (collectives and attention/moe always stay).

    Returns:
        The sequence and the names dropped (for the importer's warnings).
    """
    ops = set(sequence.prologue + sequence.layer + sequence.head)
    keep = {"attention", "moe", *available} | {op for op in ops if collective_of(op)}
    dropped = sorted(ops - keep)
    return (
        LayerSequence(
            tuple(op for op in sequence.prologue if op in keep),
            tuple(op for op in sequence.layer if op in keep),
            tuple(op for op in sequence.head if op in keep),
        ),
        dropped,
    )
