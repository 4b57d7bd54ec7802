"""Preference objectives (train.objective dpo or orpo): chosen/rejected pairs and their losses.

A preference record (`messages` = the prompt conversation ending with a user turn, `chosen` and
`rejected` the two replies) becomes a `PreferencePair`: prompt + chosen and prompt + rejected, each
rendered with the chat template exactly like an SFT example, the loss mask covering only the reply and
the end-of-turn token closing it. A pair whose longer sequence exceeds data.max_length is dropped and
counted (stats `dropped_too_long`, with a warning) rather than truncated: the log-probability of a
truncated reply is not the reply's, and the two sides would be cut by different amounts, biasing the
comparison.

Every sequence is scored by its *summed* reply log-probability log pi(y|x) (loss.py's chunked output
layer, per row, so no full logits either). With beta and lambda from train.preference:

- dpo: loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), the DPO paper's sigmoid loss. The
  reference is the model *as the run (stage) starts*: its log-probabilities are computed once, before
  the first step, in eval mode, and stored in `<run_dir>/reference_logps.json`. So there is never a
  second model in memory, whatever the method: for a fresh LoRA-family adapter (LoRA, DoRA, QLoRA, IA3,
  all an identity at initialisation) this is exactly the base weights with the adapter switched off
  (tests/train/test_preference.py checks it against `disable_adapter()`); for full fine-tuning it is the
  starting weights; in a `stages:` pipeline it is the previous stage's result (an SFT stage's model),
  which is what DPO is meant to stay close to. Precomputing costs one no-grad forward per pair per
  stage (TRL's adapter-off reference costs one per pair per *epoch*), and resume reads the stored values
  back, so an interrupted run continues with the very same reference (exact resume).
- orpo: loss = NLL(chosen) - lambda * log sigmoid(log odds(chosen) - log odds(rejected)), with
  odds(y) = p / (1 - p) of the length-normalised (per-token mean) log-probability, as in the ORPO paper
  and TRL; reference-free.

Rewards logged per step and per validation: chosen_reward = beta (pi_c - ref_c) and rejected_reward
likewise (orpo: lambda times the mean token log-probability), reward_margin = their difference and
reward_accuracy = the share of pairs with chosen_reward > rejected_reward. The step loss is the mean
over the step's pairs, so gradient accumulation splits a step without changing it. Micro-batches hold
train.batch_size pairs (2 x batch_size sequences), padded, never packed (each sequence's own sum is
needed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..config.preference import PREFERENCE_OBJECTIVES
from ..data.records import Record
from ..errors import TunelabError
from .batching import IGNORE_INDEX, Example, collate_padded, example_from_rendered, micro_batches
from .loss import LossHead, head_nll_sum

REFERENCE_FILE = "reference_logps.json"
METRICS = ("reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward")


@dataclass(slots=True)
class PreferencePair:
    """One training unit of a preference objective: the two rendered sequences of one record."""

    chosen: Example
    rejected: Example
    task: str | None = None

    def __len__(self) -> int:
        return len(self.chosen) + len(self.rejected)

    @property
    def n_loss_tokens(self) -> int:
        return self.chosen.n_loss_tokens + self.rejected.n_loss_tokens


def build_pairs(records: Sequence[Record], tokenizer, max_length: int) -> tuple[list[PreferencePair], dict[str, Any]]:
    """Render preference records into pairs; any other kind of record is an error naming it."""
    from ..data.render import _where, eos_warnings, render_preference

    pairs: list[PreferencePair] = []
    too_long = no_loss = 0
    for index, record in enumerate(records):
        if record.kind != "preference":
            raise TunelabError(f"{_where(record, index)}: a {record.kind} record cannot train a preference objective "
                               "(dpo/orpo need prompt/chosen/rejected records); train it in an sft stage before")
        try:
            chosen, rejected = render_preference(record, tokenizer, None)  # type: ignore[arg-type]
        except TunelabError as exc:
            raise TunelabError(f"{_where(record, index)}: {exc}") from exc
        if max(len(chosen.input_ids), len(rejected.input_ids)) > max_length:
            too_long += 1
            continue
        if not chosen.n_loss_tokens or not rejected.n_loss_tokens:
            no_loss += 1
            continue
        task = (record.meta or {}).get("task")
        pairs.append(PreferencePair(example_from_rendered(chosen.input_ids, chosen.labels),
                                    example_from_rendered(rejected.input_ids, rejected.labels),
                                    str(task) if task is not None else None))
    from ..data.render import end_of_turn_token

    warnings = eos_warnings(tokenizer, end_of_turn_token(tokenizer)) if records else []
    if too_long:
        warnings.append(f"{too_long} preference pair(s) longer than data.max_length={max_length} tokens were dropped "
                        "(a truncated reply's log-probability is not the reply's); raise data.max_length to keep them")
    stats = {
        "examples": len(pairs),
        "tokens": sum(len(p) for p in pairs),
        "loss_tokens": sum(p.n_loss_tokens for p in pairs),
        "max_example_tokens": max((max(len(p.chosen), len(p.rejected)) for p in pairs), default=0),
        "truncated": 0,
        "dropped_too_long": too_long,
        "dropped_no_loss_tokens": no_loss,
        "warnings": warnings,
    }
    return pairs, stats


def check_supported(config, dist) -> None:
    """Refuse the combinations a preference objective does not handle, before anything loads."""
    objective = config.train.objective
    if dist is not None:
        raise TunelabError(f"train.objective {objective} runs in one process; launch it without accelerate/torchrun")
    if config.mixture:
        raise TunelabError(f"train.objective {objective} cannot train a mixture; give the pairs in data.train")
    if objective == "dpo" and config.method.name in ("prompt", "prefix"):
        raise TunelabError(f"method {config.method.name} is not supported with dpo (its fresh virtual tokens are "
                           "no identity, so the starting model is not a reference); use lora, or orpo")


def sequence_logps(head: LossHead, examples: Sequence[Example], layout, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed reply log-probability, reply token count) of each example, as (n,) tensors; differentiable
    when gradients are enabled. One padded row per example."""
    batch = collate_padded(examples, layout.pad_id, with_mask=layout.with_mask, multiple=layout.multiple).to(device)
    hidden = head.hidden_states(batch)
    sums = []
    for row in range(len(examples)):
        keep = batch.targets[row] != IGNORE_INDEX
        sums.append(-head_nll_sum(hidden[row][keep], batch.targets[row][keep], head.head, cap=head.cap,
                                  scale=head.scale))
    counts = torch.tensor([e.n_loss_tokens for e in examples], dtype=torch.float32, device=device)
    return torch.stack(sums), counts


def _log1m_exp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0 (the log of 1 - p); x is kept below 0 so a certain reply stays finite."""
    return torch.log1p(-torch.exp(torch.clamp(x, max=-1e-6)))


@dataclass
class PreferenceLoss:
    """The dpo or orpo loss of a run, with its reference log-probabilities (dpo)."""

    objective: str
    beta: float
    orpo_lambda: float
    head: LossHead | None = None  # set once the loss head exists (single.train_one)
    reference: dict[str, torch.Tensor] = field(default_factory=dict)  # split -> (n, 2) chosen, rejected
    reference_seconds: float = 0.0  # spent computing the reference (not in the steps' train_seconds)

    def pair_losses(self, pc: torch.Tensor, pr: torch.Tensor, nc: torch.Tensor, nr: torch.Tensor,
                    ref: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss per pair, chosen reward, rejected reward) from summed log-probs pc/pr, counts nc/nr."""
        if self.objective == "dpo":
            if ref is None:
                raise RuntimeError("dpo needs the reference log-probabilities (prepare_reference)")
            chosen = pc - ref[:, 0].to(pc)
            rejected = pr - ref[:, 1].to(pr)
            losses = -F.logsigmoid(self.beta * (chosen - rejected))
            return losses, (self.beta * chosen).detach(), (self.beta * rejected).detach()
        mean_c, mean_r = pc / nc, pr / nr
        log_odds = (mean_c - mean_r) - (_log1m_exp(mean_c) - _log1m_exp(mean_r))
        losses = -mean_c - self.orpo_lambda * F.logsigmoid(log_odds)
        return losses, (self.orpo_lambda * mean_c).detach(), (self.orpo_lambda * mean_r).detach()

    def _logps(self, setup, pairs: Sequence[PreferencePair]) -> tuple[torch.Tensor, ...]:
        assert self.head is not None
        with setup.autocast():
            logps, counts = sequence_logps(self.head, [p.chosen for p in pairs] + [p.rejected for p in pairs],
                                           setup.layout, setup.device)
        k = len(pairs)
        return logps[:k].float(), logps[k:].float(), counts[:k], counts[k:]

    def backward(self, setup, indices: list[int]) -> tuple[float, int, int, dict[str, float]]:
        """Forward and backward of one optimizer step's pairs: (mean loss, tokens, loss tokens, rewards)."""
        pairs = setup.train
        lengths = [len(p) for p in pairs]
        setup.model.train()
        total, tokens, rewards = 0.0, 0, []
        for group in micro_batches(indices, setup.cfg.batch_size, lengths, bucket=setup.bucket):
            pc, pr, nc, nr = self._logps(setup, [pairs[i] for i in group])
            ref = self.reference["train"][group] if self.objective == "dpo" else None
            losses, chosen, rejected = self.pair_losses(pc, pr, nc, nr, ref)
            loss = losses.sum() / len(indices)
            (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()
            total += float(losses.detach().sum())
            tokens += sum(len(pairs[i]) for i in group)
            rewards.append(torch.stack([chosen, rejected], 1))
        return (total / len(indices), tokens, sum(pairs[i].n_loss_tokens for i in indices),
                _reward_metrics(torch.cat(rewards)))

    @torch.no_grad()
    def evaluate(self, setup) -> dict[str, float]:
        """Validation: the mean loss over the held-out pairs (as val_loss, so early stopping works) and
        the reward metrics, prefixed val_."""
        setup.model.eval()
        pairs = setup.val
        losses, rewards = [], []
        size = max(setup.cfg.batch_size, 8)
        for start in range(0, len(pairs), size):
            group = list(range(start, min(start + size, len(pairs))))
            pc, pr, nc, nr = self._logps(setup, [pairs[i] for i in group])
            ref = self.reference["val"][group] if self.objective == "dpo" else None
            loss, chosen, rejected = self.pair_losses(pc, pr, nc, nr, ref)
            losses.append(loss)
            rewards.append(torch.stack([chosen, rejected], 1))
        out = {"val_loss": float(torch.cat(losses).mean()), "val_pairs": len(pairs)}
        return out | {f"val_{k}": v for k, v in _reward_metrics(torch.cat(rewards)).items()}

    @torch.no_grad()
    def reference_logps(self, setup, pairs: Sequence[PreferencePair]) -> torch.Tensor:
        """(n, 2) summed reply log-probabilities of chosen and rejected under the model as it is now."""
        setup.model.eval()
        rows = []
        size = max(setup.cfg.batch_size, 8)
        for start in range(0, len(pairs), size):
            pc, pr, _, _ = self._logps(setup, pairs[start : start + size])
            rows.append(torch.stack([pc, pr], 1).cpu())
        return torch.cat(rows) if rows else torch.zeros((0, 2))

    def prepare_reference(self, setup, run_dir: Path, identity: dict[str, Any], resume: bool, write: bool) -> None:
        """dpo: compute the reference log-probabilities now (before the first step, from the starting
        weights) or, resuming, read the ones the interrupted run stored."""
        if self.objective != "dpo":
            return
        import json

        from ..io import write_json

        path = Path(run_dir) / REFERENCE_FILE
        if resume and path.is_file():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("identity") == identity and len(stored["train"]) == len(setup.train):
                self.reference = {s: torch.tensor(stored[s], dtype=torch.float32).reshape(-1, 2)
                                  for s in ("train", "val")}
                return
        import time

        started = time.perf_counter()
        self.reference = {"train": self.reference_logps(setup, setup.train),
                          "val": self.reference_logps(setup, setup.val)}
        self.reference_seconds = time.perf_counter() - started
        if write:
            write_json(path, {"identity": identity, **{s: t.tolist() for s, t in self.reference.items()}})


def _reward_metrics(rewards: torch.Tensor) -> dict[str, float]:
    """Means over pairs of an (n, 2) chosen/rejected reward tensor."""
    chosen, rejected = rewards[:, 0].float(), rewards[:, 1].float()
    return {"reward_margin": float((chosen - rejected).mean()),
            "reward_accuracy": float((chosen > rejected).float().mean()),
            "chosen_reward": float(chosen.mean()), "rejected_reward": float(rejected.mean())}


def make_loss(config) -> PreferenceLoss | None:
    """The run's preference loss, or None for the token-level objectives (sft, causal)."""
    if config.train.objective not in PREFERENCE_OBJECTIVES:
        return None
    settings = config.train.preference
    return PreferenceLoss(config.train.objective, settings.beta, settings.orpo_lambda)
