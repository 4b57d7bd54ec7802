"""Turn rendered examples into micro-batches: the data order of an epoch, packing and length bucketing.

The unit of optimisation is the *step*: `batch_size x grad_accum` examples chosen by the epoch order.
How those examples are laid out in tensors (packed into shared rows, or padded rows of similar length)
changes speed, never the loss: the loss of a step is the sum of token NLLs over the step divided by its
loss-token count (see loss.py), so packing on/off and 8x1 vs 2x4 give the same step losses.

Packing puts several examples into one row and restarts `position_ids` at 0 for each of them.
transformers (masking_utils.find_packed_sequence_indices) turns position ids that restart into a
block-diagonal causal mask when no attention_mask is passed, so no example attends to another. Padding
at the end of a row forms its own block (its positions restart too) and carries no loss.

Length bucketing (packing off) sorts examples of a window of steps by length before cutting it into
steps, so rows of a micro-batch have similar lengths and little padding; without an attention mask the
model takes the fast `is_causal` attention path, which is exact because padding only ever follows the
real tokens of a row.

Targets are stored pre-shifted (`targets[t]` is the label of token t+1), per example, before packing,
so the last token of one example can never be trained to predict the first token of the next.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
# Steps sorted together when bucketing: large enough for similar lengths, small enough to stay random.
BUCKET_WINDOW_STEPS = 16


@dataclass(slots=True)
class Example:
    """One training example: ids and pre-shifted targets (IGNORE_INDEX = not in the loss)."""

    input_ids: list[int]
    targets: list[int]
    n_loss_tokens: int
    task: str | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(slots=True)
class Batch:
    """One micro-batch as tensors. `position_ids` is set for packed rows, `attention_mask` only where the
    method needs one (prompt and prefix tuning, whose PEFT forward ignores position ids)."""

    input_ids: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor | None
    attention_mask: torch.Tensor | None
    n_loss_tokens: int
    n_tokens: int
    n_examples: int

    def to(self, device: torch.device | str) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return Batch(
            move(self.input_ids), move(self.targets), move(self.position_ids), move(self.attention_mask),
            self.n_loss_tokens, self.n_tokens, self.n_examples,
        )


def shift_labels(labels: Sequence[int]) -> list[int]:
    """HF labels (labels[t] is the target at t, predicted from t-1) -> targets predicted *at* t."""
    return list(labels[1:]) + [IGNORE_INDEX]


def example_from_rendered(input_ids: Sequence[int], labels: Sequence[int], task: str | None = None) -> Example:
    targets = shift_labels(labels)
    return Example(list(input_ids), targets, sum(t != IGNORE_INDEX for t in targets), task)


def split_long(example: Example, max_length: int) -> list[Example]:
    """Cut an example into windows of max_length (continued pre-training keeps whole documents). Each
    window's targets are its own slice, so the first token of a window is an input with no loss-free gap."""
    if len(example) <= max_length:
        return [example]
    out = []
    for start in range(0, len(example), max_length):
        ids = example.input_ids[start : start + max_length]
        targets = example.targets[start : start + max_length]
        n_loss = sum(t != IGNORE_INDEX for t in targets)
        if n_loss:
            out.append(Example(ids, targets, n_loss, example.task))
    return out


# -- epoch order -------------------------------------------------------------------------------------


def epoch_steps(
    lengths: Sequence[int], step_size: int, *, seed: int, epoch: int, bucket: bool
) -> list[list[int]]:
    """Example indices of every optimizer step of one epoch, a pure function of (seed, epoch): resuming
    only needs the epoch and the step reached. The last step may be smaller (its loss is still a token mean)."""
    rng = np.random.default_rng([seed, epoch])
    return steps_from_order(rng.permutation(len(lengths)), lengths, step_size, rng, bucket=bucket)


def steps_from_order(order: np.ndarray, lengths: Sequence[int], step_size: int, rng: np.random.Generator, *,
                     bucket: bool) -> list[list[int]]:
    """Cut an epoch's shuffled example order into steps (an index may repeat: mixtures upsample). With
    bucketing, each window of steps is sorted by length and the steps are shuffled again."""
    if not bucket:
        return [order[i : i + step_size].tolist() for i in range(0, len(order), step_size)]
    window = step_size * BUCKET_WINDOW_STEPS
    steps: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: lengths[i])
        steps += [chunk[i : i + step_size] for i in range(0, len(chunk), step_size)]
    perm = rng.permutation(len(steps))
    return [steps[i] for i in perm]


def micro_batches(step: Sequence[int], batch_size: int, lengths: Sequence[int], *, bucket: bool) -> list[list[int]]:
    """Split one step's examples into micro-batches of batch_size (similar lengths together when bucketing)."""
    items = sorted(step, key=lambda i: lengths[i]) if bucket else list(step)
    return [items[i : i + batch_size] for i in range(0, len(items), batch_size)]


# -- layouts -----------------------------------------------------------------------------------------


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Assign examples to as few rows of at most `capacity` tokens as possible, balancing row lengths so
    the padded tensor wastes little (longest first, each onto the currently shortest row that fits)."""
    if not lengths:
        return []
    total = sum(lengths)
    n_rows = max(1, -(-total // capacity))
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    heap = [(0, r) for r in range(n_rows)]  # (tokens in row, row index)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        used, r = heap[0]
        if used + lengths[i] <= capacity:  # the shortest row is the only one worth trying
            rows[r].append(i)
            heapq.heapreplace(heap, (used + lengths[i], r))
        else:
            rows.append([i])
            heapq.heappush(heap, (lengths[i], len(rows) - 1))
    return [sorted(row) for row in rows if row]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple if multiple > 1 else n


def collate_packed(examples: Sequence[Example], capacity: int, pad_id: int, multiple: int = 1) -> Batch:
    """Pack examples into rows (position ids restart per example: block-diagonal attention)."""
    lengths = [len(e) for e in examples]
    rows = pack_rows(lengths, max(capacity, max(lengths)))
    width = _round_up(max(sum(lengths[i] for i in row) for row in rows), multiple)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        cursor = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            ids[r, cursor : cursor + n] = torch.tensor(ex.input_ids)
            targets[r, cursor : cursor + n] = torch.tensor(ex.targets)
            positions[r, cursor : cursor + n] = torch.arange(n)
            cursor += n
        # The padding tail is a block of its own: its positions restart, so real tokens never see it.
        positions[r, cursor:] = torch.arange(width - cursor)
    return Batch(
        ids, targets, positions, None,
        n_loss_tokens=sum(e.n_loss_tokens for e in examples),
        n_tokens=sum(lengths),
        n_examples=len(examples),
    )


def collate_padded(examples: Sequence[Example], pad_id: int, *, with_mask: bool, multiple: int = 1) -> Batch:
    """One example per row, right-padded to the longest (causal attention never looks at the padding)."""
    lengths = [len(e) for e in examples]
    width = _round_up(max(lengths), multiple)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long) if with_mask else None
    for r, ex in enumerate(examples):
        n = len(ex)
        ids[r, :n] = torch.tensor(ex.input_ids)
        targets[r, :n] = torch.tensor(ex.targets)
        if mask is not None:
            mask[r, :n] = 1
    return Batch(
        ids, targets, None, mask,
        n_loss_tokens=sum(e.n_loss_tokens for e in examples),
        n_tokens=sum(lengths),
        n_examples=len(examples),
    )


@dataclass(frozen=True, slots=True)
class Layout:
    """How a method's micro-batches are laid out; fixed for a run."""

    packing: bool
    capacity: int
    pad_id: int
    with_mask: bool = False
    multiple: int = 1

    def collate(self, examples: Sequence[Example]) -> Batch:
        if self.packing:
            return collate_packed(examples, self.capacity, self.pad_id, self.multiple)
        return collate_padded(examples, self.pad_id, with_mask=self.with_mask, multiple=self.multiple)


def eval_batches(examples: Sequence[Example], layout: Layout, tokens_per_batch: int) -> list[Batch]:
    """Validation batches: sorted by length and filled up to a token budget (no gradients, so larger)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    batches: list[Batch] = []
    group: list[Example] = []
    for i in order:
        ex = examples[i]
        if group and (len(group) + 1) * max(len(ex), len(group[-1])) > tokens_per_batch:
            batches.append(layout.collate(group))
            group = []
        group.append(ex)
    if group:
        batches.append(layout.collate(group))
    return batches
