"""Estimate the memory a training run needs, before loading anything, from the model's shape.

The estimate is the peak at the start of the backward pass: weights + gradients + AdamW states +
activations saved for backward + the loss's logits. It is an estimate for planning (does it fit?
which method?), not a measurement: allocator fragmentation, the CUDA context (~0.5 GiB), DataLoader
buffers and framework overhead are not counted.

Activations, per transformer layer and token (elements, times activation bytes):
    k = 4*h + 2*a*d + 2*kv*d + 4*i
    (two RMSNorm inputs and outputs 4h; q, k, v and the attention output 2ad + 2kvd; gated MLP gate,
    up, activation and product 4i), where h = hidden, a/kv = query/key-value heads, d = head dim,
    i = intermediate size. Eager attention adds the softmax matrix a*s per token (a*s^2 per
    sequence) twice (scores and probabilities); SDPA/flash kernels store only a log-sum-exp.
    So activations ~ layers * batch * seq * (k + attention term) * bytes, the same shape as the
    Korthikanti et al. 2022 formula s*b*h*(34 + 5*a*s/h) written for this architecture family.
    With gradient checkpointing only each layer's input (h per token) is kept, plus one layer live.
Logits: the loss upcasts batch*seq*vocab logits to fp32, keeps the log-softmax, and backward makes a
    gradient of the same size: (act bytes + 4 [+4 for the upcast copy when not fp32] + 4) per element.
    For a 262k vocabulary this is often the largest term.
Memory models (MemoryModel: what a method trains and how its base is stored; a training method names
its memory model in its registry entry, tunelab.train.methods, and passes it in):
    full  - weights, gradients in the weight dtype; AdamW two fp32 states per parameter.
    lora  - frozen base in the weight dtype; adapters r*(in+out) on every linear layer of every block
            (q, k, v, o, gate, up, down: PEFT's "all-linear"), adapters, their gradients and AdamW
            states in fp32. Activations as above (a frozen linear keeps no input for a weight
            gradient, but the adapter beside it keeps the same tensor) plus each adapter's rank-r
            output; with lora_dropout > 0 each adapter also keeps its own dropped-out input copy.
    qlora - block linear layers at 0.5 byte/param (NF4) + fp32 absmax per 64-weight block
            (no double quantisation); embeddings, norms and the rest in fp32 (as PEFT's
            prepare_model_for_kbit_training leaves them); adapters as in lora; activations in `dtype`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import TunelabError

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BYTES = 0.5
NF4_ABSMAX_BYTES = 4 / 64  # one fp32 scale per block of 64 weights
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32
GIB = 2**30


@dataclass(frozen=True)
class MemoryModel:
    """What a training method's memory depends on, in the terms of the module docstring."""

    name: str
    trainable: Literal["all", "lora"]  # every weight, or LoRA adapters on every block linear layer
    base: Literal["dtype", "nf4"]  # weights in the weight dtype, or block linear layers in 4-bit NF4


FULL = MemoryModel("full", trainable="all", base="dtype")
LORA = MemoryModel("lora", trainable="lora", base="dtype")
QLORA = MemoryModel("qlora", trainable="lora", base="nf4")
MEMORY_MODELS = {m.name: m for m in (FULL, LORA, QLORA)}
METHODS = tuple(MEMORY_MODELS)


@dataclass(frozen=True)
class ArchShape:
    """The shape numbers a memory estimate needs (read from a transformers config or a GGUF header)."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ArchShape:
        """Build from a config dict (multimodal configs: their text_config)."""
        cfg = dict(config.get("text_config") or config)
        try:
            hidden = int(cfg["hidden_size"])
            heads = int(cfg["num_attention_heads"])
            return cls(
                hidden_size=hidden,
                num_hidden_layers=int(cfg["num_hidden_layers"]),
                intermediate_size=int(cfg.get("intermediate_size") or 4 * hidden),
                num_attention_heads=heads,
                num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                tie_word_embeddings=bool(cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TunelabError(f"model config lacks the shape field {exc} needed for a memory estimate") from exc

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer in one block: q, k, v, o, gate, up, down."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    def block_linear_params(self) -> int:
        return self.num_hidden_layers * sum(a * b for a, b in self.linear_shapes())

    def estimated_params(self) -> int:
        """Parameter count from the shape (norm weights approximated), for when no exact count is known."""
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        norms = self.num_hidden_layers * 2 * self.hidden_size + self.hidden_size
        return embed + self.block_linear_params() + norms

    def lora_params(self, r: int) -> int:
        return self.num_hidden_layers * sum(r * (a + b) for a, b in self.linear_shapes())

    def activation_elems_per_token(self, seq_len: int, attention: str) -> int:
        """Per layer and token: the k of the module docstring plus the attention-matrix term."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        k = 4 * h + 2 * q + 2 * kv + 4 * i
        if attention == "eager":
            k += 2 * self.num_attention_heads * seq_len
        return k

    def lora_activation_elems_per_token(self, r: int, dropout: bool) -> int:
        return sum(r + (a if dropout else 0) for a, _ in self.linear_shapes())


def _memory_model(method: str | MemoryModel) -> MemoryModel:
    if isinstance(method, MemoryModel):
        return method
    if method not in MEMORY_MODELS:
        raise TunelabError(f"unknown method '{method}' for a memory estimate; use one of {', '.join(METHODS)}")
    return MEMORY_MODELS[method]


def _check(dtype: str, seq_len: int, batch: int, lora_r: int, attention: str) -> None:
    if dtype not in DTYPE_BYTES:
        raise TunelabError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPE_BYTES)}")
    if attention not in ("sdpa", "eager"):
        raise TunelabError(f"unknown attention '{attention}'; use sdpa or eager")
    if seq_len < 1 or batch < 1 or lora_r < 1:
        raise TunelabError("seq_len, batch and lora_r must be positive")


def estimate_training_memory(
    n_params: int | None,
    arch: ArchShape | Mapping[str, Any],
    method: str | MemoryModel = "lora",
    seq_len: int = 512,
    batch: int = 8,
    lora_r: int = 16,
    dtype: str = "float32",
    attention: str = "sdpa",
    gradient_checkpointing: bool = False,
    lora_dropout: float = 0.0,
) -> dict[str, Any]:
    """Peak training memory by component, in bytes and GiB (see the module docstring for the formulas).

    n_params: the exact parameter count if known (None: estimated from the shape). method: a memory
    model or its name. dtype: the weight dtype for full/lora, the compute dtype for qlora; activations
    are kept in it.
    """
    model = _memory_model(method)
    _check(dtype, seq_len, batch, lora_r, attention)
    full = model.trainable == "all"
    shape = arch if isinstance(arch, ArchShape) else ArchShape.from_config(arch)
    n = int(n_params) if n_params else shape.estimated_params()
    wbytes = DTYPE_BYTES[dtype]
    tokens = seq_len * batch
    linear = min(shape.block_linear_params(), n)
    lora = shape.lora_params(lora_r) if not full else 0

    if model.base == "nf4":
        weights = linear * (NF4_BYTES + NF4_ABSMAX_BYTES) + (n - linear) * 4
    else:
        weights = n * wbytes
    trainable = n if full else lora
    gradients = n * wbytes if full else lora * 4
    optimizer = trainable * ADAMW_STATE_BYTES

    per_layer = shape.activation_elems_per_token(seq_len, attention)
    if not full:
        per_layer += shape.lora_activation_elems_per_token(lora_r, dropout=lora_dropout > 0)
    if gradient_checkpointing:
        layer_elems = shape.num_hidden_layers * shape.hidden_size + per_layer
    else:
        layer_elems = shape.num_hidden_layers * per_layer
    activations = tokens * layer_elems * wbytes
    logit_bytes = wbytes + (4 if wbytes != 4 else 0) + 4 + 4
    logits = tokens * shape.vocab_size * logit_bytes

    parts = {
        "weights": weights,
        "lora_params": lora * 4,
        "gradients": gradients,
        "optimizer_states": optimizer,
        "activations": activations,
        "logits_and_loss": logits,
    }
    total = sum(parts.values())
    return {
        "method": model.name,
        "dtype": dtype,
        "seq_len": seq_len,
        "batch": batch,
        "lora_r": lora_r if not full else None,
        "attention": attention,
        "gradient_checkpointing": gradient_checkpointing,
        "lora_dropout": lora_dropout if not full else None,
        "n_params": n,
        "trainable_params": trainable,
        "bytes": {k: int(v) for k, v in parts.items()} | {"total": int(total)},
        "gib": {k: round(v / GIB, 3) for k, v in parts.items()} | {"total": round(total / GIB, 3)},
        "total_gib": round(total / GIB, 3),
        "assumptions": (
            "peak at start of backward; AdamW with 2 fp32 states per trainable parameter; LoRA on all "
            "block linear layers; qlora NF4 0.5 B/param + fp32 absmax per 64, rest fp32; logits upcast to "
            "fp32 with log-softmax and gradient kept; excludes CUDA context, allocator slack and buffers"
        ),
    }


def estimate_all_methods(
    n_params: int | None, arch: ArchShape | Mapping[str, Any], seq_len: int = 512, batch: int = 8,
    lora_r: int = 16, dtype: str = "float32", models: Mapping[str, MemoryModel] | None = None,
) -> dict[str, dict[str, Any]]:
    """`estimate_training_memory` for each of `models` (by the name to report it under; default: full,
    lora and qlora) with the same settings."""
    models = MEMORY_MODELS if models is None else models
    return {name: estimate_training_memory(n_params, arch, m, seq_len, batch, lora_r, dtype)
            for name, m in models.items()}
