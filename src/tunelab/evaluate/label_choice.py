"""Labelled tasks scored by log-likelihood: the model's answer is the label it finds most likely.

Instead of parsing a label out of free generation (metrics/classification.py), every label of the
label set is scored as the continuation of the prompt's exact generation-prompt token ids (what
generation would start from), and the label with the highest log-probability wins. The prompt is not
re-split lm-eval style (that rule moves the template's trailing newline into the continuation, which
would add the newline's log-probability to every label). Two conventions, as in lm-evaluation-harness's acc / acc_norm: "sum" compares summed token
log-probabilities (favours short labels), "mean_char" divides by the label's length in characters.
No answer is ever unparsed in this mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..errors import TunelabError
from ..models.generate import GenerationOutput, Generator, Prompt

NORMALISATIONS = ("sum", "mean_char")


def choose_labels(model: Any, tokenizer: Any, prompts: list[Prompt], labels: list[str], *,
                  chat_template: bool = True, batch_size: int = 32, normalise: str = "mean_char",
                  threads: int | None = None, on_batch: Callable[[int], None] | None = None) -> list[GenerationOutput]:
    """One GenerationOutput per prompt whose text is the most likely label; `on_batch(n)` is called as
    n more prompts have all their labels scored."""
    if normalise not in NORMALISATIONS:
        raise TunelabError(f"unknown label normalisation '{normalise}'; use one of {', '.join(NORMALISATIONS)}")
    labels = list(dict.fromkeys(labels))
    if len(labels) < 2:
        raise TunelabError(f"choosing a label by log-likelihood needs at least two labels, got {labels}")
    from ..models.generate import is_prompt_learning

    if is_prompt_learning(model):
        raise TunelabError("label_mode 'loglik' does not support prompt/prefix-tuning adapters (their virtual "
                           "tokens shift the positions); use label_mode 'generate'")
    generator = Generator(model, tokenizer, chat_template=chat_template, threads=threads)
    contexts = [generator.encode(p) for p in prompts]
    label_ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    if any(not ids for ids in label_ids):
        raise TunelabError(f"a label encodes to no tokens: {labels}")
    start = time.perf_counter()
    rows = [(ctx, ids) for ctx in contexts for ids in label_ids]
    results: list[float] = []
    for i in range(0, len(rows), batch_size):
        before = len(results) // len(labels)
        results += _score(model, rows[i : i + batch_size])
        if on_batch is not None and len(results) // len(labels) > before:
            on_batch(len(results) // len(labels) - before)
    per_prompt = (time.perf_counter() - start) / max(1, len(prompts))
    outputs = []
    for i, ctx in enumerate(contexts):
        scores = [results[i * len(labels) + j] for j in range(len(labels))]
        if normalise == "mean_char":
            scores = [s / max(1, len(label)) for s, label in zip(scores, labels, strict=True)]
        best = max(range(len(labels)), key=lambda j: scores[j])
        outputs.append(GenerationOutput(text=labels[best], n_prompt_tokens=len(ctx), n_new_tokens=0,
                                        finish_reason="loglik", latency_s=per_prompt))
    return outputs


@torch.inference_mode()
def _score(model: Any, rows: list[tuple[list[int], list[int]]]) -> list[float]:
    """Summed log-probability of each row's label tokens after its context tokens (right padded batch)."""
    device = next(model.parameters()).device
    width = max(len(c) + len(x) for c, x in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for r, (ctx, lab) in enumerate(rows):
        seq = ctx + lab
        ids[r, : len(seq)] = torch.tensor(seq, device=device)
        mask[r, : len(seq)] = 1
    logprobs = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for r, (ctx, lab) in enumerate(rows):
        positions = torch.arange(len(ctx) - 1, len(ctx) + len(lab) - 1, device=device)
        out.append(float(logprobs[r, positions, torch.tensor(lab, device=device)].sum()))
    return out
