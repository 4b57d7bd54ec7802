"""Packing without cross-example attention, length bucketing, the epoch order, and token-normalised
gradient accumulation (8x1 == 2x4 == packed, to floating-point tolerance)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tunelab.config import TrainConfig
from tunelab.train.batching import (
    Layout,
    collate_packed,
    collate_padded,
    epoch_steps,
    example_from_rendered,
    micro_batches,
    pack_rows,
    split_long,
)
from tunelab.train.loss import loss_head


def _examples(vocab: int, lengths, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        cut = (i % 3) + 1
        out.append(example_from_rendered(ids, [-100] * cut + ids[cut:]))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_pack_rows_respects_capacity_and_balances():
    lengths = [30, 5, 17, 22, 8, 40, 3, 11]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    sums = [sum(lengths[i] for i in row) for row in rows]
    assert max(sums) <= 64
    assert len(rows) == -(-sum(lengths) // 64)  # as few rows as the tokens need
    assert max(sums) - min(sums) <= max(lengths)


def test_pack_rows_opens_a_row_when_nothing_fits():
    rows = pack_rows([60, 60, 60], 64)
    assert len(rows) == 3


def test_packed_and_unpacked_logits_agree(tiny):
    examples = _examples(tiny.config.vocab_size, [9, 14, 5, 21, 7, 12])
    packed = collate_packed(examples, capacity=32, pad_id=0)
    padded = collate_padded(examples, pad_id=0, with_mask=False)
    assert packed.input_ids.shape[0] < len(examples)  # really packed
    rows = pack_rows([len(e) for e in examples], 32)
    with torch.no_grad(), loss_head(tiny) as head:
        packed_logits = head.token_logits(packed)
        padded_logits = head.token_logits(padded)
    compared = 0
    for r, row in enumerate(rows):
        cursor = 0
        for i in row:
            n = len(examples[i])
            torch.testing.assert_close(packed_logits[r, cursor : cursor + n], padded_logits[i, :n], atol=1e-5, rtol=0)
            cursor += n
            compared += 1
    assert compared == len(examples)
    # Without restarting positions the same rows WOULD attend across examples: the test can fail.
    leaky = collate_packed(examples, capacity=32, pad_id=0)
    leaky.position_ids = None
    with torch.no_grad(), loss_head(tiny) as head:
        leaky_logits = head.token_logits(leaky)
    assert not torch.allclose(leaky_logits, packed_logits, atol=1e-3)


def test_packed_targets_never_cross_examples():
    examples = [example_from_rendered([5, 6, 7], [-100, 6, 7]), example_from_rendered([8, 9], [-100, 9])]
    batch = collate_packed(examples, capacity=8, pad_id=0)
    # row: 5 6 7 | 8 9 ; the last token of each example predicts nothing
    flat_ids, flat_targets = batch.input_ids[0].tolist(), batch.targets[0].tolist()
    assert sorted(zip(flat_ids, flat_targets, strict=True)) == sorted(
        [(5, 6), (6, 7), (7, -100), (8, 9), (9, -100)]
    )
    assert batch.n_loss_tokens == 3


def test_epoch_order_is_a_pure_function_of_seed_and_epoch():
    lengths = list(range(1, 40))
    a = epoch_steps(lengths, 8, seed=3, epoch=1, bucket=False)
    assert a == epoch_steps(lengths, 8, seed=3, epoch=1, bucket=False)
    assert a != epoch_steps(lengths, 8, seed=3, epoch=2, bucket=False)
    assert sorted(i for s in a for i in s) == list(range(len(lengths)))
    assert [len(s) for s in a] == [8, 8, 8, 8, 7]


def test_bucketing_groups_similar_lengths():
    lengths = [1, 100, 2, 99, 3, 98, 4, 97] * 4
    steps = epoch_steps(lengths, 4, seed=0, epoch=0, bucket=True)
    assert sorted(i for s in steps for i in s) == list(range(len(lengths)))
    for step in steps:
        spread = max(lengths[i] for i in step) - min(lengths[i] for i in step)
        assert spread < 10
    assert micro_batches([3, 0, 1], 2, lengths, bucket=True) == [[0, 3], [1]]


def test_split_long_keeps_every_token():
    ex = example_from_rendered(list(range(10, 35)), [-100] + list(range(11, 35)))
    windows = split_long(ex, 10)
    assert [len(w) for w in windows] == [10, 10, 5]
    assert [t for w in windows for t in w.input_ids] == ex.input_ids
    assert [t for w in windows for t in w.targets] == ex.targets


def _step_loss_and_grads(model, examples, layout: Layout, batch_size: int):
    """One optimizer step's loss and gradients, split as the loop splits it."""
    from tunelab.train.loop import LoopSetup, train_step

    cfg = TrainConfig(batch_size=batch_size, grad_accum=max(1, len(examples) // batch_size), max_grad_norm=None)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    captured = {}

    class Capture(torch.optim.SGD):
        def step(self, closure=None):
            captured.update({n: p.grad.clone() for n, p in params.items()})

    optimizer = Capture(list(params.values()), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    with loss_head(model) as head:
        setup = LoopSetup(
            model=model, head=head, optimizer=optimizer, scheduler=scheduler, params=params, train=examples, val=[],
            layout=layout, cfg=cfg, total_steps=1, steps_per_epoch=1, device=torch.device("cpu"),
            autocast=contextlib.nullcontext,
            emit=lambda e: None, save=lambda *a: None, flush_log=lambda rows: None, stop_requested=lambda: False,
        )
        result = train_step(setup, list(range(len(examples))))
    return result.loss, captured


def test_gradient_accumulation_is_token_normalised(tiny):
    examples = _examples(tiny.config.vocab_size, [5, 19, 8, 30, 11, 6, 24, 13])  # very different loss counts
    padded = Layout(packing=False, capacity=64, pad_id=0)
    packed = Layout(packing=True, capacity=64, pad_id=0)
    loss_8x1, grads_8x1 = _step_loss_and_grads(tiny, examples, padded, batch_size=8)
    for layout, batch_size in ((padded, 2), (padded, 1), (packed, 8), (packed, 4)):
        loss, grads = _step_loss_and_grads(tiny, examples, layout, batch_size=batch_size)
        assert loss == pytest.approx(loss_8x1, abs=1e-5)
        for name, g in grads.items():
            torch.testing.assert_close(g, grads_8x1[name], atol=1e-6, rtol=1e-4)
    # The naive mean of micro-batch means (what token-unaware accumulation does) differs: the test can fail.
    naive = []
    with torch.no_grad(), loss_head(tiny) as head:
        for i in range(0, 8, 2):
            b = padded.collate(examples[i : i + 2])
            naive.append(float(head.nll_sum(b)) / b.n_loss_tokens)
    assert abs(sum(naive) / len(naive) - loss_8x1) > 1e-3
