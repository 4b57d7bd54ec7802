"""The grpo objective: group relative policy optimisation with tunelab's generation engine and rewards.

Data: every chat record is a prompt (all turns but a final assistant turn, which is the reference; a
conversation ending with a user turn is a prompt without reference), and every label record one too,
prompted exactly as evaluation prompts it (tunelab.evaluate.runner.example_of: the text as the user turn,
the label as the reference). Text and preference records have no prompt to sample from and are refused.

One optimizer step (the training loop, loop.py, calls `GrpoStep` in place of its SFT step, so
checkpoints, exact resume, events, MLflow and stages are the loop's own):
1. the step's prompts (batch_size x grad_accum) are each answered `group_size` times by the policy as it
   is now (the adapter on), through models.generate.Generator, sampling seeded by train.seed and the
   optimizer step, so a resumed run draws the same completions;
2. each completion is scored by every reward (rewards.py); its total is the weighted sum, and its
   advantage A = (r - mean of its group) / (std of its group + 1e-4), the std unbiased as in TRL, so a
   group whose completions all score the same teaches nothing;
3. loss = sum over all completion tokens of the step of
       -min(ratio * A, clip(ratio, 1 - epsilon, 1 + epsilon) * A) + beta * KL
   divided by the step's completion-token count (token-level, as the SFT loop divides by its loss
   tokens), with ratio = p(token) / p_old(token) under the policy that sampled it and
   KL = exp(ref - logp) - (ref - logp) - 1 per token (the k3 estimator DeepSeekMath uses). A
   completion's tokens end with the chat template's end-of-turn token when the model stopped there, so
   stopping is learned too. Log-probabilities are the model's own (temperature 1): the sampling
   temperature shapes exploration only.
4. `iterations` updates are made on the same samples (the learning-rate schedule advances once per
   step); with 1, the ratio is 1 and only the KL and the advantages act.

The reference (beta > 0) is the policy as the stage starts: after an SFT stage, the SFT result, as in
TRL and DeepSeekMath, so the KL keeps the policy near what SFT taught rather than pulling it back to the
base model. Only the trainable weights are kept aside and swapped in for the reference pass: for adapter
methods (LoRA, DoRA, QLoRA, IA3, prompt/prefix tuning) a copy of the adapter (a fresh adapter: exactly the
base model), for full fine-tuning a copy of the model's weights (twice the model's size).

Logged per step (train_log.jsonl, the progress events, MLflow): reward_mean and reward_std over all
completions, reward/<name>_mean and _std per reward, kl (mean per completion token), completion_tokens
(mean), clip_fraction, generate_s and prompts_per_s (generation included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..data.records import Record
from ..errors import TunelabError
from .batching import IGNORE_INDEX, Batch, Example
from .loop import LoopSetup, StepResult, apply_update
from .rewards import BoundReward, Sample, build_rewards, score


@dataclass(slots=True)
class PromptExample(Example):
    """A grpo prompt: input_ids are the rendered prompt (no token is in a loss until sampled), with the
    prompt messages and the reference the rewards compare with."""

    messages: list[dict[str, str]] | None = None
    reference: str | None = None


def prompt_of(record: Record, where: str) -> tuple[list[dict[str, str]], str | None]:
    """(prompt messages, reference or None) of one record, as described in the module docstring."""
    from ..evaluate.runner import example_of

    if record.kind == "chat" and record.messages and record.messages[-1].get("role") != "assistant":
        return list(record.messages), None
    if record.kind in ("text", "preference"):
        raise TunelabError(f"{where}: the grpo objective samples answers to prompts; a {record.kind} record has "
                           "no prompt of that kind (use chat or label records)")
    prompt, reference, problem = example_of(record)
    if problem is not None:
        raise TunelabError(f"{where}: {problem}")
    return list(prompt), reference  # type: ignore[arg-type]


def build_grpo(records: Sequence[Record], tokenizer, max_length: int) -> tuple[list[Example], dict[str, Any]]:
    """The prompts of the records; a prompt of max_length tokens or more leaves no room to answer and is
    dropped (counted in the stats as truncated)."""
    from ..data.render import render_prompt

    examples: list[Example] = []
    too_long = 0
    for i, record in enumerate(records):
        where = f"{record.meta.get('file', '<records>')}:{record.meta.get('line', i + 1)}"
        messages, reference = prompt_of(record, where)
        ids = render_prompt(messages, tokenizer)
        if len(ids) >= max_length:
            too_long += 1
            continue
        task = (record.meta or {}).get("task")
        examples.append(PromptExample(ids, [IGNORE_INDEX] * len(ids), 0, str(task) if task is not None else None,
                                      messages, reference))
    warnings = [f"{too_long} prompt(s) of data.max_length tokens or more dropped"] if too_long else []
    stats = {"examples": len(examples), "tokens": sum(len(e) for e in examples), "loss_tokens": 0,
             "max_example_tokens": max((len(e) for e in examples), default=0), "truncated": too_long,
             "dropped_no_loss_tokens": 0, "warnings": warnings, "prompts": len(examples),
             "with_reference": sum(e.reference is not None for e in examples)}  # type: ignore[attr-defined]
    return examples, stats


# -- the arithmetic ---------------------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4) for rewards laid out group after group."""
    groups = rewards.view(-1, group_size)
    mean, std = groups.mean(dim=1, keepdim=True), groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + 1e-4)).view(-1)


def token_loss(logp: torch.Tensor, old: torch.Tensor, ref: torch.Tensor | None, advantages: torch.Tensor,
               epsilon: float, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token GRPO loss, KL and whether the ratio was clipped, for per-token log-probabilities under
    the policy, the sampling policy and the reference, each token carrying its completion's advantage."""
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    loss = -torch.min(ratio * advantages, clipped * advantages)
    kl = torch.zeros_like(logp) if ref is None else torch.exp(ref - logp) - (ref - logp) - 1
    if beta:
        loss = loss + beta * kl
    return loss, kl.detach(), (ratio != clipped).detach()


def _batch(rows: list[list[int]], targets: list[list[int]], pad_id: int, device: torch.device) -> Batch:
    """Right-padded rows: causal attention never looks right, so the padding needs no mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    tgt = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, targets, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        tgt[i, : len(t)] = torch.tensor(t)
    n = int((tgt != IGNORE_INDEX).sum())
    return Batch(ids.to(device), tgt.to(device), None, None, n, sum(map(len, rows)), len(rows))


def token_logprobs(head, batch: Batch) -> torch.Tensor:
    """log p(target) at every position of the batch whose target is not ignored, row after row."""
    from .loss import _softcap

    hidden = head.hidden_states(batch)
    keep = batch.targets != IGNORE_INDEX
    logits = _softcap(head.head(hidden[keep]).float() * head.scale, head.cap)
    return -F.cross_entropy(logits, batch.targets[keep], reduction="none")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


# -- the step ---------------------------------------------------------------------------------------------


class GrpoStep:
    """The loop's step function for the grpo objective (see the module docstring)."""

    def __init__(self, setup: LoopSetup, tokenizer, threads: int | None = None,
                 rewards: list[BoundReward] | None = None) -> None:
        from ..models.generate import Generator

        if setup.dist is not None:
            raise TunelabError("the grpo objective runs in one process; launch it without accelerate/torchrun")
        self.cfg = setup.cfg.grpo
        self.rewards = rewards if rewards is not None else build_rewards(setup.cfg.rewards)
        self.generator = Generator(setup.model, tokenizer, threads=threads)
        # The reference is the policy as the stage starts (built before a checkpoint is restored, so a
        # resumed run keeps the same one): its trainable weights are kept aside and swapped in for the
        # reference pass. For an adapter that is a copy of the adapter only (an SFT stage's result when
        # the adapter continues from one; the base model when the adapter is fresh).
        self._start: dict[str, torch.Tensor] | None = None
        if self.cfg.beta:
            self._start = {name: p.detach().clone() for name, p in setup.params.items()}

    def sample(self, setup: LoopSetup, prompts: list[PromptExample]) -> tuple[list[list[int]], list[Sample]]:
        from ..models.generate import GenerationConfig

        g = self.cfg.group_size
        gen = GenerationConfig(max_new_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                               top_p=self.cfg.top_p, batch_size=max(1, setup.cfg.batch_size * g),
                               # the optimizer step (restored with the scheduler on resume) varies the draws
                               seed=setup.cfg.seed * 1_000_003 + int(setup.scheduler.last_epoch))
        outs = self.generator.generate([p.messages for p in prompts for _ in range(g)], gen)  # type: ignore[misc]
        completions, samples = [], []
        for k, out in enumerate(outs):
            # the stop token the model sampled is part of its answer: stopping is learned too
            ids = list(out.token_ids) + ([out.stop_token_id] if out.stop_token_id is not None else [])
            p = prompts[k // g]
            completions.append(ids)
            samples.append(Sample(p.messages, out.text, p.reference, len(ids)))  # type: ignore[arg-type]
        return completions, samples

    def _reference(self, setup: LoopSetup, batch: Batch) -> torch.Tensor | None:
        if not self.cfg.beta:
            return None
        assert self._start is not None
        params = setup.params
        current = {name: p.data for name, p in params.items()}
        try:
            for name, p in params.items():  # pointer swaps, no copies
                p.data = self._start[name]
            with torch.no_grad(), setup.autocast():
                return token_logprobs(setup.head, batch)
        finally:
            for name, p in params.items():
                p.data = current[name]

    def __call__(self, setup: LoopSetup, indices: list[int]) -> StepResult:
        started = time.perf_counter()
        prompts: list[PromptExample] = [setup.train[i] for i in indices]  # type: ignore[misc]
        completions, samples = self.sample(setup, prompts)
        generate_s = time.perf_counter() - started
        totals, per = score(self.rewards, samples)
        g = self.cfg.group_size
        advantages = group_advantages(torch.tensor(totals, dtype=torch.float32), g)
        # one micro-batch per prompt: its group of completions after the prompt's ids
        batches, token_adv = [], []
        for j, p in enumerate(prompts):
            rows, targets, adv = [], [], []
            # the prompt exactly as the generator fed it, so every log-probability is of what was sampled
            prompt_ids = self.generator.encode(p.messages)  # type: ignore[arg-type]
            for k in range(j * g, (j + 1) * g):
                ids = prompt_ids + completions[k]
                rows.append(ids)
                # targets[t] is the token at t + 1: the completion's tokens are predicted from t = len(prompt) - 1
                targets.append([IGNORE_INDEX] * (len(prompt_ids) - 1) + completions[k] + [IGNORE_INDEX])
                adv += [float(advantages[k])] * len(completions[k])
            batch = _batch(rows, targets, self.generator.pad_id, setup.device)
            batches.append(batch)
            token_adv.append(torch.tensor(adv, device=setup.device))
        n_tokens = sum(b.n_loss_tokens for b in batches)
        # the reference and the sampling policy are scored as they are, without dropout (the policy's
        # own pass below trains with it)
        setup.model.eval()
        refs = [self._reference(setup, b) for b in batches]
        olds: list[torch.Tensor | None] = [None] * len(batches)
        if self.cfg.iterations > 1:  # the sampling policy's log-probabilities, fixed for every iteration
            with torch.no_grad(), setup.autocast():
                olds = [token_logprobs(setup.head, b) for b in batches]
        setup.model.train()
        lr = float(setup.optimizer.param_groups[0]["lr"])
        for iteration in range(self.cfg.iterations):
            loss_sum, kl_sum, clipped = 0.0, 0.0, 0
            for b, adv, ref, old in zip(batches, token_adv, refs, olds, strict=True):
                with setup.autocast():
                    logp = token_logprobs(setup.head, b)
                per_token, kl, was_clipped = token_loss(logp, logp.detach() if old is None else old, ref, adv,
                                                        self.cfg.epsilon, self.cfg.beta)
                loss = per_token.sum() / max(1, n_tokens)
                (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()
                loss_sum += float(loss.detach())
                kl_sum += float(kl.sum())
                clipped += int(was_clipped.sum())
            _, grad_norm = apply_update(setup, schedule=iteration == self.cfg.iterations - 1)
        seconds = time.perf_counter() - started
        metrics = self._metrics(totals, per, samples, kl_sum, clipped, n_tokens, generate_s, seconds, len(prompts))
        return StepResult(loss_sum, lr, grad_norm, sum(b.n_tokens for b in batches), n_tokens, metrics)

    def _metrics(self, totals: list[float], per: dict[str, list[float]], samples: list[Sample], kl_sum: float,
                 clipped: int, n_tokens: int, generate_s: float, seconds: float, n_prompts: int) -> dict[str, float]:
        mean, std = _mean_std(totals)
        out = {"reward_mean": mean, "reward_std": std}
        for label, values in per.items():
            out[f"reward/{label}_mean"], out[f"reward/{label}_std"] = _mean_std(values)
        out.update({
            "kl": kl_sum / max(1, n_tokens),
            "completion_tokens": sum(s.n_tokens for s in samples) / len(samples),
            "clip_fraction": clipped / max(1, n_tokens),
            "generate_s": generate_s,
            "prompts_per_s": n_prompts / seconds if seconds > 0 else 0.0,
        })
        return out


def attach(setup: LoopSetup, tokenizer, threads: int | None = None) -> None:
    """Make the loop train the grpo objective: its step, and no validation loss (grpo examples have no
    tokens to score until sampled)."""
    setup.step = GrpoStep(setup, tokenizer, threads)
    setup.val = []
