"""Model architectures from HuggingFace ``config.json`` files (catalog or user path)."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmserve_env.config.errors import DataFileError
from llmserve_env.paths import profiles_dir

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}

VOCAB_PADDING = 64
"""vLLM pads the vocabulary of ``VocabParallelEmbedding`` and ``ParallelLMHead`` to a
multiple of this (``DEFAULT_VOCAB_PADDING_SIZE``)."""


@dataclass(frozen=True, slots=True)
class ModelArch:
    """The dimensions of a decoder-only transformer that the latency and memory models need.

    Attributes:
        name: Catalog name (``org/model``) or the config path.
        architecture: HuggingFace class name, e.g. ``LlamaForCausalLM``.
        num_layers: Decoder layers.
        hidden_size: Model width.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (GQA).
        head_dim: Per-head width.
        intermediate_size: Dense MLP width (per expert width for MoE models without a
            separate ``moe_intermediate_size``).
        vocab_size: Vocabulary size.
        max_position_embeddings: Context length.
        num_experts: Routed experts per MoE layer (0 for dense models).
        experts_per_token: Experts activated per token.
        moe_intermediate_size: Width of one expert's MLP.
        tie_word_embeddings: Whether the LM head shares the embedding matrix.
        qk_norm: Whether each attention head's queries and keys are RMS-normalised
            before the rotary embedding (Qwen3's ``q_norm`` / ``k_norm``:
            :data:`QK_NORM_ARCHITECTURES`).
    """

    name: str
    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    tie_word_embeddings: bool = False
    qk_norm: bool = False

    @property
    def is_moe(self) -> bool:
        """True for mixture-of-experts models."""
        return self.num_experts > 0

    def tensor_parallel_problem(self, tp: int) -> str | None:
        """Why vLLM cannot shard this model over ``tp`` GPUs, or ``None`` if it can.

        vLLM's rules: query heads divisible by ``tp``; key/value heads divisible by
        ``tp``, or, when fewer than ``tp``, dividing it (each is then replicated); the
        dense MLP's width divisible by ``tp`` (column-parallel linear layers). The
        answer ends with the sizes that work, up to 64.
        """
        why = self._tp_problem(tp)
        if why is None:
            return None
        fits = [str(t) for t in (1, 2, 4, 8, 16, 32, 64) if self._tp_problem(t) is None]
        sizes = ", ".join(fits[:-1]) + f" or {fits[-1]}" if len(fits) > 1 else fits[0]
        return f"{why}; tp {sizes} would work"

    def _tp_problem(self, tp: int) -> str | None:
        kv = self.num_kv_heads
        if self.num_heads % tp:
            return f"{self.num_heads} attention heads are not divisible by tp {tp}"
        if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
            return (
                f"{kv} key/value heads cannot be split over tp {tp} "
                "(they must divide by it, or divide it when fewer)"
            )
        if not self.is_moe and self.intermediate_size % tp:
            return f"MLP width {self.intermediate_size} is not divisible by tp {tp}"
        return None

    @property
    def attn_params_per_layer(self) -> int:
        """Weights of q, k, v and o projections in one layer."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        return self.hidden_size * (q + 2 * kv) + q * self.hidden_size

    @property
    def mlp_params_per_layer(self) -> int:
        """Weights of the (gated) MLP of one layer: all experts for MoE models."""
        if self.is_moe:
            router = self.hidden_size * self.num_experts
            return self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size + router
        return 3 * self.hidden_size * self.intermediate_size

    @property
    def active_mlp_params_per_layer(self) -> int:
        """MLP weights one token touches in one layer."""
        if self.is_moe:
            router = self.hidden_size * self.num_experts
            return (
                self.experts_per_token * 3 * self.hidden_size * self.moe_intermediate_size + router
            )
        return self.mlp_params_per_layer

    @property
    def expert_params_per_layer(self) -> int:
        """Weights of the routed experts of one layer (0 for dense models): what expert
        parallelism splits across devices (the router stays whole on every device)."""
        return self.num_experts * 3 * self.hidden_size * self.moe_intermediate_size

    @property
    def embedding_params(self) -> int:
        """Embedding plus LM head weights."""
        table = self.vocab_size * self.hidden_size
        return table if self.tie_word_embeddings else 2 * table

    @property
    def num_params(self) -> int:
        """Total parameter count (norms ignored)."""
        layers = self.num_layers * (self.attn_params_per_layer + self.mlp_params_per_layer)
        return layers + self.embedding_params

    def weight_bytes(self, dtype: str) -> int:
        """Bytes of all weights in ``dtype``."""
        return self.num_params * DTYPE_BYTES[dtype]

    def logits_bytes_per_seq(self, dtype: str = "bf16") -> int:
        """Bytes of one sequence's gathered logits, the per-sequence message of the LM
        head's tensor-parallel all-gather: the vocabulary padded as vLLM pads it, in the
        activation ``dtype`` (vLLM gathers before the sampler's float cast)."""
        padded = -(-self.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
        return padded * DTYPE_BYTES.get(dtype, 2)

    def kv_bytes_per_token(self, dtype: str) -> int:
        """KV-cache bytes one token occupies across all layers (whole model, all GPUs)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * DTYPE_BYTES[dtype]

    def kv_heads_per_gpu(self, tp: int) -> int:
        """Key/value heads each of ``tp`` GPUs holds: its share, or one replicated head
        when there are fewer heads than GPUs (vLLM's ``QKVParallelLinear``)."""
        return max(1, self.num_kv_heads // tp)

    def kv_bytes_per_token_per_gpu(self, dtype: str, tp: int) -> int:
        """KV-cache bytes one token occupies on each GPU of a ``tp``-way instance."""
        heads = self.kv_heads_per_gpu(tp)
        return 2 * self.num_layers * heads * self.head_dim * DTYPE_BYTES[dtype]


def _get(cfg: dict[str, Any], path: Path, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if key in cfg and cfg[key] is not None:
            return cfg[key]
    if default is not None:
        return default
    raise DataFileError(path, f"model config lacks {' / '.join(keys)}")


def _int(
    cfg: dict[str, Any], path: Path, *keys: str, default: int | None = None, least: int = 1
) -> int:
    """The first of ``keys`` present, as a whole number of at least ``least``."""
    value = _get(cfg, path, *keys, default=default)
    key = next((k for k in keys if cfg.get(k) is not None), keys[0])
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or value != int(value)
    ):
        raise DataFileError(path, f"{key}: expected a whole number, got {value!r}")
    if value < least:
        raise DataFileError(path, f"{key}: must be at least {least}, got {value!r}")
    return int(value)


def _bool(cfg: dict[str, Any], path: Path, key: str) -> bool:
    value = cfg.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise DataFileError(path, f"{key}: expected true or false, got {value!r}")
    return value


QK_NORM_ARCHITECTURES = frozenset(
    {
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
    }
)
"""Model classes whose attention normalises each head's queries and keys (vLLM's
``Qwen3Attention``: ``q_norm`` and ``k_norm``, RMSNorm over ``head_dim``): Qwen3's, and
the multimodal wrappers whose language model is Qwen3's."""

QK_NORM_MODEL_TYPES = frozenset(
    {"qwen3", "qwen3_moe", "qwen3_vl", "qwen3_vl_moe", "qwen3_vl_text", "qwen3_vl_moe_text"}
)
"""``model_type`` values (the config's or its ``text_config``'s) of the same models, for
configs whose ``architectures`` names another wrapper class or is missing."""


def _has_qk_norm(cfg: dict[str, Any], architectures: list[str]) -> bool:
    """Whether the config (``cfg``, before its ``text_config`` is merged in) is one of
    Qwen3's: by a class of ``architectures`` (the merged one) or of the outer config's,
    or by either ``model_type``."""
    text = cfg.get("text_config")
    outer = cfg.get("architectures")
    names = [*architectures, *(outer if isinstance(outer, list) else [])]
    types = [cfg.get("model_type"), text.get("model_type") if isinstance(text, dict) else None]
    return any(isinstance(n, str) and n in QK_NORM_ARCHITECTURES for n in names) or any(
        isinstance(t, str) and t in QK_NORM_MODEL_TYPES for t in types
    )


def _unmodelled(cfg: dict[str, Any]) -> list[str]:
    """Features of ``cfg`` the latency and memory models do not have, each with its key:
    refused, as a model without them would be silently another model."""
    out = []

    def positive(key: str) -> bool:
        value = cfg.get(key)
        return isinstance(value, int | float) and not isinstance(value, bool) and value > 0

    for key in ("shared_expert_intermediate_size", "n_shared_experts", "num_shared_experts"):
        if positive(key):
            out.append(f"{key} {cfg[key]!r}: shared experts")
    if positive("kv_lora_rank"):
        out.append(f"kv_lora_rank {cfg['kv_lora_rank']!r}: multi-head latent attention")
    experts = ("num_local_experts", "num_experts", "n_routed_experts")
    if not any(positive(key) for key in experts):
        return out  # the layer-layout keys below only mean something with experts
    if isinstance(cfg.get("mlp_only_layers"), list) and cfg["mlp_only_layers"]:
        out.append("mlp_only_layers: dense layers among the MoE ones")
    for key in ("decoder_sparse_step", "moe_layer_freq", "interleave_moe_layer_step"):
        if positive(key) and cfg[key] > 1:
            out.append(f"{key} {cfg[key]!r}: dense layers among the MoE ones")
    if positive("first_k_dense_replace"):
        out.append(f"first_k_dense_replace {cfg['first_k_dense_replace']!r}: leading dense layers")
    return out


def arch_from_hf_config(cfg: dict[str, Any], name: str, path: Path) -> ModelArch:
    """Build a :class:`ModelArch` from a parsed HuggingFace ``config.json``.

    Raises:
        DataFileError: a key missing, a value that is not a positive whole number, a
            feature the models do not have (shared experts, latent attention, dense layers
            among MoE ones), or dimensions no model has (heads that do not divide the width, KV heads that
            do not divide the query heads, an odd head width, top-k above the experts).
    """
    outer = cfg
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = {**cfg, **cfg["text_config"]}
    if unmodelled := _unmodelled(cfg):
        raise DataFileError(
            path,
            "the simulator does not model " + "; ".join(unmodelled) + " (every layer is "
            "taken as one attention block and one MLP or routed-expert block)",
        )
    hidden = _int(cfg, path, "hidden_size", "d_model", "n_embd")
    heads = _int(cfg, path, "num_attention_heads", "n_head")
    kv_heads = _int(cfg, path, "num_key_value_heads", default=heads)
    if heads % kv_heads:
        raise DataFileError(
            path, f"num_key_value_heads ({kv_heads}) must divide num_attention_heads ({heads})"
        )
    if cfg.get("head_dim") is None and hidden % heads:
        raise DataFileError(
            path,
            f"num_attention_heads ({heads}) must divide hidden_size ({hidden}) "
            "when head_dim is not given",
        )
    head_dim = _int(cfg, path, "head_dim", default=hidden // heads)
    if head_dim % 2:
        raise DataFileError(path, f"head_dim ({head_dim}) must be even (rotary embedding)")
    num_experts = _int(
        cfg, path, "num_local_experts", "num_experts", "n_routed_experts", default=0, least=0
    )
    experts_per_token = _int(cfg, path, "num_experts_per_tok", "moe_top_k", default=0, least=0)
    if num_experts and not any(
        cfg.get(k) is not None for k in ("num_experts_per_tok", "moe_top_k")
    ):
        raise DataFileError(
            path, f"num_experts_per_tok: missing (the model has {num_experts} experts)"
        )
    if num_experts and not 1 <= experts_per_token <= num_experts:
        raise DataFileError(
            path,
            f"num_experts_per_tok must be between 1 and the {num_experts} experts, "
            f"got {experts_per_token}",
        )
    # GPT-2's n_inner null means 4 x the width (its config's documented default); any
    # other model states its MLP width (an MoE model its experts', or one width for both).
    gpt2_default = "n_inner" in cfg and cfg["n_inner"] is None
    moe_inter = 0
    if num_experts:
        moe_inter = _int(cfg, path, "moe_intermediate_size", "intermediate_size", "ffn_dim")
    intermediate = _int(
        cfg,
        path,
        "intermediate_size",
        "ffn_dim",
        "n_inner",
        default=4 * hidden if gpt2_default else (moe_inter or None),
    )
    architectures = cfg.get("architectures") or ["unknown"]
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise DataFileError(
            path, f"architectures: expected a list of class names, got {architectures!r}"
        )
    return ModelArch(
        name=name,
        architecture=architectures[0],
        num_layers=_int(cfg, path, "num_hidden_layers", "n_layer", "num_layers"),
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        vocab_size=_int(cfg, path, "vocab_size"),
        max_position_embeddings=_int(
            cfg, path, "max_position_embeddings", "n_positions", "seq_length", default=4096
        ),
        num_experts=num_experts,
        experts_per_token=experts_per_token if num_experts else 0,
        moe_intermediate_size=moe_inter,
        tie_word_embeddings=_bool(cfg, path, "tie_word_embeddings"),
        qk_norm=_has_qk_norm(outer, architectures),
    )


def models_dir() -> Path:
    """Folder of catalog model configs (``profiles/models/<org>/<name>.json``)."""
    return profiles_dir() / "models"


def model_catalog() -> list[str]:
    """Names of the catalog models."""
    root = models_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.json"))


@functools.cache
def load_model_arch(name_or_path: str) -> ModelArch:
    """Load a catalog model by name (``meta-llama/Llama-3.1-8B``, or just the last part)
    or any HuggingFace ``config.json`` by path.

    Raises:
        KeyError: an unknown model name, naming the catalog.
        DataFileError: a malformed config file.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file() and path.suffix != ".json":
        raise DataFileError(
            path, "a model config is a HuggingFace config.json (JSON), not this file"
        )
    if path.suffix == ".json" or path.is_dir():
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise DataFileError(path, "model config not found")
        name = str(path)
    else:
        root = models_dir()
        candidate = root / f"{name_or_path}.json"
        if not candidate.is_file():
            short = name_or_path.lower().split("/")[-1]
            matches = [p for p in root.rglob("*.json") if p.stem.lower() == short]
            if len(matches) != 1:
                raise KeyError(
                    f"unknown model {name_or_path!r}; catalog models: {', '.join(model_catalog())} "
                    "(or give a path to a HuggingFace config.json)"
                )
            candidate = matches[0]
        path = candidate
        name = str(candidate.relative_to(root).with_suffix(""))
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFileError(path, f"not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise DataFileError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from exc
    if not isinstance(cfg, dict):
        raise DataFileError(path, "a model config must be a JSON object")
    return arch_from_hf_config(cfg, name, path)
