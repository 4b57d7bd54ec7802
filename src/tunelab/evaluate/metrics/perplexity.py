"""Perplexity of the model on the reference completions.

Convention (named in the output as "token-level, completion tokens, teacher-forced"): each example is
the prompt followed by its reference answer, fed in one pass; only the answer's tokens are scored.
perplexity = exp(total NLL of all completion tokens / number of completion tokens), pooled over the
eval set: the number a fine-tuning user reads next to eval loss (exp of it), not a mean of
per-example perplexities (HF evaluate's convention) nor rolling-window perplexity (lm-eval's).

Completion tokens: for a chat prompt, the reference rendered as the assistant turn by the chat
template, from the end of the rendered prompt up to and including the template's end-of-turn token
(what the model must emit to answer); for a raw-text prompt, the tokens of prompt + reference past
the prompt's own tokens (the lm-eval boundary rule).

Batched: examples are left-padded and only the last (longest completion + 1) positions are
projected onto the vocabulary, in sub-batches bounded in logits memory.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ...errors import TunelabError
from ...models.generate import accepts_logits_to_keep, is_prompt_learning
from .base import MetricInputs, Score, bootstrap_ci

CONVENTION = "token-level, completion tokens, teacher-forced"
_MAX_LOGIT_ELEMENTS = 64 * 1024 * 1024  # one sub-batch's logits stay under ~256 MB in fp32


def completion_ids(
    tokenizer: Any, prompt: Any, reference: str, chat_template: bool = True
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) for one example, as the model sees them."""
    if isinstance(prompt, str) or not chat_template:
        text = prompt if isinstance(prompt, str) else "\n\n".join(m["content"] for m in prompt)
        head = tokenizer(text, add_special_tokens=True)["input_ids"]
        whole = tokenizer(text + reference, add_special_tokens=True)["input_ids"]
        return list(head), list(whole[len(head) :])
    if not getattr(tokenizer, "chat_template", None):
        raise TunelabError("this tokenizer has no chat template; score perplexity with chat_template=False")
    head_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        [*prompt, {"role": "assistant", "content": reference}], tokenize=False
    )
    if not full_text.startswith(head_text):
        raise TunelabError(
            "the chat template renders the prompt differently once the answer is added, so the answer's "
            "tokens cannot be isolated; score perplexity with chat_template=False"
        )
    head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    whole = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    tail = list(whole[len(head) :])
    return list(head), _through_end_of_turn(tail, tokenizer)


def _through_end_of_turn(tail: list[int], tokenizer: Any) -> list[int]:
    """Cut what the template adds after the turn's end marker (ChatML's trailing newline)."""
    from ...models import stop_token_ids

    ends = set(stop_token_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        ends.add(int(tokenizer.eos_token_id))
    for i, tok in enumerate(tail):
        if tok in ends:
            return tail[: i + 1]
    return tail


def completion_nll(
    model: Any, examples: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[tuple[float, int]]:
    """(sum of NLL over completion tokens, number of completion tokens) for each example."""
    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    if is_prompt_learning(model):
        batch_size = 1  # PEFT ignores position ids under prompt learning: padding would shift rows
    order = sorted(range(len(examples)), key=lambda i: -(len(examples[i][0]) + len(examples[i][1])))
    out: list[tuple[float, int] | None] = [None] * len(examples)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            i = 0
            while i < len(order):
                batch = _sub_batch(order[i : i + batch_size], examples, vocab)
                for idx, res in zip(batch, _score_batch(model, [examples[j] for j in batch], device), strict=True):
                    out[idx] = res
                i += len(batch)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _sub_batch(candidates: list[int], examples: list[tuple[list[int], list[int]]], vocab: int) -> list[int]:
    """The longest prefix of `candidates` whose kept logits fit the memory bound (at least one)."""
    keep = 0
    for n, idx in enumerate(candidates, start=1):
        keep = max(keep, len(examples[idx][1]) + 1)
        if n > 1 and n * keep * vocab > _MAX_LOGIT_ELEMENTS:
            return candidates[: n - 1]
    return candidates


def _score_batch(model: Any, batch: list[tuple[list[int], list[int]]], device: torch.device) -> list[tuple[float, int]]:
    seqs = [p + c for p, c in batch]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, width - len(s) :] = torch.tensor(s)
        attn[r, width - len(s) :] = 1
    ids, attn = ids.to(device), attn.to(device)
    positions = (attn.cumsum(-1) - 1).clamp_min(0)
    longest = max(len(c) for _, c in batch)
    # logits at position t predict token t+1, so scoring the last `longest` tokens needs the
    # logits of the `longest` positions before the last one.
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": attn, "position_ids": positions}
    if accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = longest + 1
    logits = model(**kwargs).logits[:, -(longest + 1) :, :]
    logprobs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
    targets = ids[:, width - longest :]
    token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    results = []
    for r, (_, comp) in enumerate(batch):
        n = len(comp)
        results.append((float(-token_lp[r, longest - n :].sum()), n))
    return results


def perplexity(inputs: MetricInputs) -> Score:
    if inputs.model is None or inputs.tokenizer is None or inputs.prompts is None:
        raise TunelabError("perplexity needs the model, its tokenizer and the prompts")
    examples = [
        completion_ids(inputs.tokenizer, p, r, inputs.chat_template)
        for p, r in zip(inputs.prompts, inputs.references, strict=True)
    ]
    empty = [i for i, (_, comp) in enumerate(examples) if not comp]
    if empty:
        raise TunelabError(f"perplexity: example(s) {empty[:5]} have an empty reference; give every example one")
    scored = completion_nll(inputs.model, examples, inputs.batch_size)
    nll = np.array([s for s, _ in scored], dtype=np.float64)
    count = np.array([n for _, n in scored], dtype=np.float64)

    def statistic(idx: np.ndarray) -> float:
        return math.exp(nll[idx].sum() / count[idx].sum())

    value = math.exp(nll.sum() / count.sum())
    return Score(
        value=value,
        per_example=[math.exp(s / n) for s, n in zip(nll, count, strict=True)],
        ci=bootstrap_ci(inputs.n, statistic, inputs.bootstrap_samples, inputs.seed),
        details={"convention": CONVENTION, "tokens": int(count.sum()), "mean_nll": float(nll.sum() / count.sum())},
        row_fields={"completion_nll": nll.tolist(), "completion_tokens": count.astype(int).tolist()},
    )
