"""The fused LoRA layer computes PEFT's function: same outputs and gradients, the same dropout in law."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tunelab.train import fast_lora


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(24, 40, bias=True)
        self.o = nn.Linear(40, 24, bias=False)

    def forward(self, x):
        return self.o(torch.relu(self.q(x)))


def _pair(dropout: float, seed: int = 0):
    """(PEFT model, the same model with the fused path installed), B non-zero so the adapter matters."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = _Tiny()
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules=["q", "o"])
    ref = get_peft_model(copy.deepcopy(base), cfg)
    for name, p in ref.named_parameters():
        if "lora_B" in name:
            with torch.no_grad():
                p.copy_(torch.randn_like(p) * 0.1)
    fused = copy.deepcopy(ref)
    assert fast_lora.install(fused) == 2
    return ref, fused


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_without_dropout_outputs_and_gradients_match_peft():
    ref, fused = _pair(0.0)
    x = torch.randn(3, 7, 24, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    out_ref, out_fused = ref(x), fused(x2)
    torch.testing.assert_close(out_fused, out_ref, rtol=1e-5, atol=1e-6)
    (out_ref.square().sum()).backward()
    (out_fused.square().sum()).backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-5, atol=1e-6)
    g_ref, g_fused = _grads(ref), _grads(fused)
    assert set(g_ref) == set(g_fused) and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-5, atol=1e-6)
    # the frozen base weights get no gradient
    assert all(p.grad is None for n, p in fused.named_parameters() if not p.requires_grad)


def test_with_dropout_gradients_match_the_masked_reference(monkeypatch):
    """With the mask fixed, the fused layer equals x -> base(x) + s * B A (m * x / keep) computed by autograd."""
    _, fused = _pair(0.25)
    layer = fused.base_model.model.q
    threshold, keep_scale = fast_lora.keep_threshold(0.25)
    torch.manual_seed(3)
    mask = torch.rand(5, 24) > 0.25
    monkeypatch.setattr(fast_lora, "dropout_mask", lambda shape, thr, device: mask.view(shape))
    x = torch.randn(5, 24, requires_grad=True)
    y = layer(x)
    (y * torch.arange(40.0)).sum().backward()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    grads_fused = (x.grad.clone(), a.grad.clone(), b.grad.clone())
    x.grad = a.grad = b.grad = None
    s = layer.scaling["default"]
    ref = layer.base_layer(x) + (x * mask * keep_scale) @ a.T @ b.T * s
    (ref * torch.arange(40.0)).sum().backward()
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_fused, (x.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_dropout_rate_and_scale():
    threshold, scale = fast_lora.keep_threshold(0.05)
    assert threshold == -32768 + 3277 and scale == pytest.approx(65536 / (65536 - 3277))
    torch.manual_seed(0)
    kept = fast_lora.dropout_mask(torch.Size([1000, 1000]), threshold, torch.device("cpu"))
    rate = 1 - kept.float().mean().item()
    assert abs(rate - 3277 / 65536) < 5 * (0.05 * 0.95 / 1e6) ** 0.5  # within 5 standard errors
    # the four lanes of a random word are independent uniform draws: each keeps at the same rate
    lanes = kept.view(-1, 4).float().mean(0)
    assert torch.all((lanes - (1 - 3277 / 65536)).abs() < 0.002)


def test_dropout_is_unbiased_and_seeded():
    _, fused = _pair(0.3)
    fused.train()
    x = torch.ones(4000, 24)
    layer = fused.base_model.model.q
    torch.manual_seed(7)
    first = layer(x)
    torch.manual_seed(7)
    again = layer(x)
    torch.testing.assert_close(first, again, rtol=0, atol=0)  # the same seed, the same masks
    layer.eval()
    with torch.no_grad():
        expected = layer(x)  # no dropout in eval mode
    assert torch.allclose(first.mean(0), expected.mean(0), atol=0.02)
    assert not torch.allclose(first, expected)


def test_falls_back_to_peft_when_adapters_are_off_or_merged():
    ref, fused = _pair(0.0)
    x = torch.randn(2, 24)
    with ref.disable_adapter(), fused.disable_adapter():
        torch.testing.assert_close(fused(x), ref(x))
        torch.testing.assert_close(fused(x), ref.base_model.model.o(torch.relu(ref.base_model.model.q.base_layer(x))))
    fused.base_model.model.q.merge()
    ref.base_model.model.q.merge()
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-6)


def test_under_bf16_autocast_matches_peft_under_autocast():
    ref, fused = _pair(0.0)
    x = torch.randn(3, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ref, out_fused = ref(x), fused(x)
    assert out_fused.dtype == out_ref.dtype == torch.bfloat16
    torch.testing.assert_close(out_fused.float(), out_ref.float(), rtol=2e-2, atol=2e-2)
    out_fused.float().sum().backward()
    a = fused.base_model.model.q.lora_A["default"].weight
    assert a.grad is not None and a.grad.dtype == torch.float32


def test_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("TUNELAB_FUSED_LORA", "0")
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(_Tiny(), LoraConfig(r=2, target_modules=["q"]))
    assert fast_lora.install(model) == 0


def test_dropout_of_one_drops_the_whole_low_rank_path():
    _, fused = _pair(1.0)
    fused.train()
    layer = fused.base_model.model.q
    x = torch.randn(6, 24)
    torch.testing.assert_close(layer(x), layer.base_layer(x))
