"""A fused LoRA linear layer for training on the CPU: the same function as PEFT's, in fewer passes.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as five autograd nodes. On a CPU two of
them cost more than the matrix products they surround (profiled on SmolLM2-135M, LoRA r16 on all seven
linear layers of all 30 blocks, batch 8 of handbook chat examples):
- dropout: `nn.Dropout` draws one Bernoulli variate per element from the CPU generator, ~15 ms for a
  562 x 1536 input, so 18% of a training step went into dropout masks;
- the `* scaling` and `+` passes over the output, forward and backward.

Here one autograd function does it all: the low-rank product is added into the base output by `addmm_`
with `scaling` as its alpha, and the dropout mask comes from 64-bit random words cut into four 16-bit
lanes, compared against a threshold (about 6x faster to draw). The dropout rate is therefore p rounded
to a multiple of 1/65536 (0.05 becomes 0.0500030...), and kept values are scaled by 1/(1 - that rate),
so the layer stays unbiased; the draws come from torch's generator, so a seeded run repeats exactly and a
resumed run restores them with the rest of the RNG state.

The backward pass computes what LoRA training needs and nothing else: the input gradient (base and
low-rank parts, the dropout mask applied to the latter) and the gradients of A and B; the frozen base
weight gets none. Under CPU autocast (bf16 where the CPU supports it) the products run in the autocast
dtype as autocast would run them, and A and B receive gradients in their own dtype.

Only the plain case is fused: one active vanilla LoRA adapter (not DoRA, no LoRA bias), not merged,
adapters enabled, a plain `nn.Linear` base layer on the CPU, no per-call adapter names. Anything else
(evaluation with the adapter switched off, DoRA, 4-bit bases, CUDA) runs PEFT's own forward unchanged.
TUNELAB_FUSED_LORA=0 turns the fused path off altogether (for comparisons, or to rule it out).
"""

from __future__ import annotations

import math
import os
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_LANES = 65536  # 16-bit lanes of the random words


def keep_threshold(p: float) -> tuple[int, float]:
    """(signed 16-bit threshold, scale for kept values) of dropout rate p: a lane value >= threshold is kept."""
    dropped = round(p * _LANES)
    return -32768 + dropped, _LANES / (_LANES - dropped)


def dropout_mask(shape: torch.Size, threshold: int, device: torch.device) -> torch.Tensor:
    """Boolean keep-mask of `shape`: four independent 16-bit uniform lanes per 64-bit random word."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    return words.view(torch.int16)[:n].view(shape) >= threshold


class _FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + b + scaling * (m * x) A^T B^T, with m the scaled dropout mask (or none)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, threshold: int | None,  # type: ignore[override]
                keep_scale: float):
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        shape = x.shape
        with torch.autocast("cpu", enabled=False):
            x2 = x.reshape(-1, shape[-1]).to(dtype)
            w, a, b = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
            out = F.linear(x2, w, None if bias is None else bias.to(dtype))
            mask = None
            if threshold is not None:
                mask = dropout_mask(x2.shape, threshold, x2.device)
                h = x2 * mask.view(torch.uint8).to(dtype).mul_(keep_scale)
            else:
                h = x2
            t = h @ a.T  # (tokens, r): small
            out.addmm_(t, b.T, alpha=scaling)
        ctx.save_for_backward(w, a, b, h, t, mask)
        ctx.scaling, ctx.keep_scale = scaling, keep_scale
        ctx.dtypes = (x.dtype, None if bias is None else bias.dtype, lora_a.dtype, lora_b.dtype)
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        w, a, b, h, t, mask = ctx.saved_tensors
        need_x, _, need_bias, need_a, need_b = ctx.needs_input_grad[:5]
        x_dtype, bias_dtype, a_dtype, b_dtype = ctx.dtypes
        dy = grad_out.reshape(-1, grad_out.shape[-1]).to(w.dtype)
        u = dy @ b  # (tokens, r)
        grad_x = grad_a = grad_b = grad_bias = None
        if need_x:
            grad_x = dy @ w
            if mask is None:
                grad_x.addmm_(u, a, alpha=ctx.scaling)
            else:
                grad_x.add_((u @ a).mul_(mask.view(torch.uint8).to(w.dtype).mul_(ctx.keep_scale * ctx.scaling)))
            grad_x = grad_x.view(*grad_out.shape[:-1], w.shape[1]).to(x_dtype)
        if need_a:
            grad_a = (u.T @ h).mul_(ctx.scaling).to(a_dtype)
        if need_b:
            grad_b = (dy.T @ t).mul_(ctx.scaling).to(b_dtype)
        if need_bias:
            grad_bias = dy.sum(0).to(bias_dtype)
        return grad_x, None, grad_bias, grad_a, grad_b, None, None, None


def _plain_adapter(layer: Any) -> str | None:
    """The one active vanilla LoRA adapter of a PEFT layer, or None when the fused path does not apply."""
    if layer.disable_adapters or layer.merged or layer.base_layer.weight.requires_grad:
        return None
    active = layer.active_adapters
    if len(active) != 1:
        return None
    name = active[0]
    if name not in layer.lora_A or name in getattr(layer, "lora_variant", {}):
        return None
    if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
        return None
    return name


def _fused_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    name = None if (args or kwargs or x.device.type != "cpu") else _plain_adapter(self)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    dropout = self.lora_dropout[name]
    p = dropout.p if isinstance(dropout, nn.Dropout) and self.training else 0.0
    if p >= 1.0:  # everything dropped: nothing to gain, and no scale to keep
        return type(self).forward(self, x, *args, **kwargs)
    threshold, keep_scale = keep_threshold(p) if p > 0 else (None, 1.0)
    base = self.base_layer
    return _FusedLoraLinear.apply(x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight,
                                  float(self.scaling[name]), threshold, keep_scale)


def install(model: nn.Module) -> int:
    """Route every plain PEFT LoRA Linear of `model` through the fused path; returns how many. A layer
    falls back to PEFT's forward by itself whenever the fused path does not apply."""
    if os.environ.get("TUNELAB_FUSED_LORA", "1") == "0":
        return 0
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # pragma: no cover - peft is a dependency
        return 0
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear:
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
