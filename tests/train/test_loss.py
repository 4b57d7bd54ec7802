"""The chunked loss equals the plain Hugging Face loss, in value and in gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tunelab.train.batching import collate_padded, example_from_rendered
from tunelab.train.loss import head_nll_sum, loss_head


def _examples(vocab: int, lengths=(7, 12, 5, 9), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [-100] * (n // 2) + ids[n // 2 :]  # a prompt half outside the loss, like SFT
        out.append((ids, labels))
    return out


@pytest.fixture
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_matches_hf_loss_and_gradients(tiny):
    pairs = _examples(tiny.config.vocab_size)
    batch = collate_padded([example_from_rendered(i, lab) for i, lab in pairs], pad_id=0, with_mask=False)
    labels = torch.full_like(batch.input_ids, -100)
    for r, (_, lab) in enumerate(pairs):
        labels[r, : len(lab)] = torch.tensor(lab)

    hf = tiny(input_ids=batch.input_ids, labels=labels).loss
    hf.backward()
    hf_grads = {n: p.grad.clone() for n, p in tiny.named_parameters()}
    tiny.zero_grad()

    with loss_head(tiny) as head:
        ours = head.nll_sum(batch) / batch.n_loss_tokens
    ours.backward()
    assert batch.n_loss_tokens == sum(sum(t != -100 for t in lab[1:]) for _, lab in pairs)
    assert torch.allclose(ours, hf, atol=1e-6)
    for name, p in tiny.named_parameters():
        assert torch.allclose(p.grad, hf_grads[name], atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize(("cap", "scale"), [(None, 1.0), (3.0, 1.0), (None, 0.25)])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_linear_cross_entropy_matches_autograd(cap, scale, bias):
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=bias)
    hidden = torch.randn(37, 16, requires_grad=True)
    targets = torch.randint(0, 50, (37,))

    logits = head(hidden) * scale
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    reference = F.cross_entropy(logits, targets, reduction="sum")
    ref_grads = torch.autograd.grad(reference * 0.5, [hidden, *head.parameters()])

    ours = head_nll_sum(hidden, targets, head, cap=cap, scale=scale, chunk=8)  # several chunks, the last one short
    our_grads = torch.autograd.grad(ours * 0.5, [hidden, *head.parameters()])
    assert torch.allclose(ours, reference, atol=1e-4)
    for a, b in zip(our_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_wrapped_head_uses_checkpointed_chunks():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 20))
    hidden = torch.randn(11, 8, requires_grad=True)
    targets = torch.randint(0, 20, (11,))
    reference = F.cross_entropy(head(hidden), targets, reduction="sum")
    ours = head_nll_sum(hidden, targets, head, chunk=4)
    assert torch.allclose(ours, reference, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours, hidden)
    (g_ref,) = torch.autograd.grad(reference, hidden)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def test_no_loss_tokens_gives_zero_with_a_graph():
    head = nn.Linear(4, 10)
    hidden = torch.randn(0, 4, requires_grad=True)
    loss = head_nll_sum(hidden, torch.zeros(0, dtype=torch.long), head)
    assert loss.item() == 0.0
    loss.backward()
