"""The training loss: token NLL summed over loss positions only, without materialising full logits.

A causal LM's output layer is the largest activation of a step (batch x seq x vocab; Gemma's 262k
vocabulary makes it gigabytes). We run the model to its last hidden states (a forward hook on the decoder
captures them; the model itself is asked for the logits of one position only), keep only the positions
whose target is not ignored, and apply the output layer plus cross-entropy in chunks. For a plain Linear
output layer the gradient of each chunk is computed right away (softmax minus one-hot) and the chunk's
logits are dropped, so peak memory is one chunk of logits whatever the vocabulary.

The loss returned is a *sum* of token NLLs; the loop divides by the loss-token count of the whole
optimizer step, which is what makes gradient accumulation independent of how a step is split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .batching import IGNORE_INDEX, Batch

# Logit elements per chunk (fp32: 64 MiB): ~340 tokens for a 49k vocabulary, ~64 for 262k.
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_ELEMENTS // max(1, vocab_size))


def _softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    return logits if cap is None else torch.tanh(logits / cap) * cap


def logit_transform(config) -> tuple[float, float | None]:
    """(scale, softcap) a model applies to its output logits (Cohere/Granite scale them, Gemma 2 caps them)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text, "logit_scale", None)
    if scale is None:
        scale = getattr(text, "output_multiplier", None) or getattr(text, "lm_head_multiplier", None)
    if scale is None and getattr(text, "logits_scaling", None):
        scale = text.logits_scaling if text.model_type == "hyperclovax" else 1.0 / text.logits_scaling
    return float(scale if scale is not None else 1.0), getattr(text, "final_logit_softcapping", None)


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i NLL(softcap(h_i W^T + b), t_i), gradients computed chunk by chunk during the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk: int, cap: float | None,  # type: ignore[override]
                scale: float = 1.0):
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            raw = F.linear(h, weight, bias).float() * scale
            logits = _softcap(raw, cap)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if not (need_h or need_w or need_b):
                continue
            dlogits = torch.exp(logits - lse[:, None])
            dlogits[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if cap is not None:
                dlogits *= 1.0 - torch.tanh(raw / cap) ** 2
            if scale != 1.0:
                dlogits *= scale
            if need_h:
                grad_h[start : start + chunk] = (dlogits.to(weight.dtype) @ weight).to(hidden.dtype)
            if need_w:
                grad_w += dlogits.T @ h.float()
            if need_b:
                grad_b += dlogits.sum(0)
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)))
        ctx.has = (need_h, need_w, need_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        saved = ctx.saved_tensors
        out = []
        for has, g, dtype in zip(ctx.has, saved, ctx.dtypes, strict=True):
            out.append((g * grad_out).to(dtype) if has else None)
        return (*out, None, None, None, None)


def _plain_nll_sum(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, chunk: int,
                   cap: float | None, scale: float = 1.0) -> torch.Tensor:
    """Any output module (a wrapped or adapted head): chunked, each chunk recomputed in backward."""
    from torch.utils.checkpoint import checkpoint

    def piece(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = _softcap(head(h).float() * scale, cap)
        return F.cross_entropy(logits, t, reduction="sum")

    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        h, t = hidden[start : start + chunk], targets[start : start + chunk]
        total = total + (checkpoint(piece, h, t, use_reentrant=False) if torch.is_grad_enabled() else piece(h, t))
    return total


def head_nll_sum(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, *, cap: float | None = None,
                 scale: float = 1.0, chunk: int | None = None) -> torch.Tensor:
    """Summed NLL of `targets` (N,) given final hidden states (N, H) and the output layer."""
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0  # keeps the graph connected for an all-masked micro-batch
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if weight is not None else int(head(hidden[:1]).shape[-1])
    chunk = chunk or chunk_rows(vocab)
    if type(head) is nn.Linear:
        if torch.is_grad_enabled():
            return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, chunk, cap, scale)
        with torch.no_grad():
            return _plain_nll_sum(hidden, targets, head, chunk, cap, scale)
    return _plain_nll_sum(hidden, targets, head, chunk, cap, scale)


# -- wiring to a (possibly PEFT-wrapped) causal LM ---------------------------------------------------


def base_causal_lm(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@dataclass
class LossHead:
    """Captures the decoder's final hidden states and scores them with the model's output layer."""

    model: nn.Module
    virtual_tokens: int = 0  # prompt tuning prepends this many positions to the hidden states

    def __post_init__(self) -> None:
        causal = base_causal_lm(self.model)
        self.decoder = causal.get_decoder()
        self.head = causal.get_output_embeddings()
        self.scale, self.cap = logit_transform(causal.config)
        self._captured: torch.Tensor | None = None
        self._hook = self.decoder.register_forward_hook(self._capture)
        self._keep_arg = True

    def _capture(self, _module, _inputs, output) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        self._captured = hidden if hidden is not None else output[0]

    def close(self) -> None:
        self._hook.remove()

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """Run the model; return the final hidden states aligned with batch.input_ids (B, T, H)."""
        kwargs: dict = {"input_ids": batch.input_ids, "use_cache": False}
        if batch.position_ids is not None:
            kwargs["position_ids"] = batch.position_ids
        if batch.attention_mask is not None:
            kwargs["attention_mask"] = batch.attention_mask
        self._captured = None
        if self._keep_arg:
            try:
                self.model(**kwargs, logits_to_keep=1)  # the model's own head runs on one position only
            except TypeError:
                self._keep_arg = False  # an architecture without logits_to_keep: full logits, still correct
        if not self._keep_arg:
            self.model(**kwargs)
        hidden = self._captured
        self._captured = None
        if hidden is None:
            raise RuntimeError("the decoder forward hook captured no hidden states")
        if self.virtual_tokens:
            hidden = hidden[:, self.virtual_tokens :]
        return hidden

    def nll_sum(self, batch: Batch) -> torch.Tensor:
        """Summed token NLL of one micro-batch (divide by the step's loss tokens for the mean)."""
        hidden = self.hidden_states(batch)
        keep = batch.targets != IGNORE_INDEX
        selected = hidden[keep]
        return head_nll_sum(selected, batch.targets[keep], self.head, cap=self.cap, scale=self.scale)

    def token_logits(self, batch: Batch) -> torch.Tensor:
        """Full logits (B, T, V): for tests and small checks only."""
        hidden = self.hidden_states(batch)
        return _softcap(self.head(hidden).float() * self.scale, self.cap)


@contextlib.contextmanager
def loss_head(model: nn.Module, virtual_tokens: int = 0) -> Iterator[LossHead]:
    head = LossHead(model, virtual_tokens)
    try:
        yield head
    finally:
        head.close()
