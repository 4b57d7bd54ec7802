"""Defaults that fit the data: the rules that choose a training setting the user left at "auto".

Hosted fine-tuning services choose epochs, batch size and learning rate from the dataset's size when the
user does not (OpenAI's fine-tuning API defaults n_epochs, batch_size and learning_rate_multiplier to
`auto`). tunelab does the same locally, by the explicit rules below, and says why: every choice is a
(value, reason) pair, printed by `tunelab train --dry-run`, recorded in summary.json under "auto" and as
comments at the top of the run's config.resolved.yaml (whose values are the resolved ones, so the file
re-runs the same training even if these rules change). An explicit value in the config always wins.

The fields: data.split.validation (decided before the data is prepared, from the count of input records,
since it changes the dataset), and train.scheduler, train.warmup_ratio, train.epochs, train.lr and
train.early_stopping_patience (decided once the data is rendered: from the training examples, their
supervised tokens, the optimizer step size and the method's registry entry in methods.py).

Why these rules. Measured by the team on an unseen corpus (3 documents, 136 training Q&A pairs, 34
held-out questions, SmolLM2-135M-Instruct, LoRA r16, 5 epochs, lr 2e-4; ROUGE-L F1 +- standard error):
the old defaults (cosine decay with warmup, 10% of the pairs held out) reached 0.359 +- 0.040; a constant
lr with every pair in training 0.578 +- 0.058 (a plain PyTorch + PEFT loop: 0.586). A decaying schedule
and a held-out share that suit large sets under-train a small one: each fact is in few pairs, a pair held
out is a fact never learned, and a decayed lr stops the last epochs from learning. The measurements on
examples/handbook behind each threshold are written next to the rule they set.

The training key (pipeline.train_key) holds the digest of this file and methods.py whenever a config
leaves a field at auto, so a run trained under other rules is never reused as if it were this one.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, TrainConfig
from ..config.preference import PREFERENCE_OBJECTIVES
from ..config.training import AUTO
from ..data.auto_split import (  # noqa: F401  (the split rule lives with the data; re-exported for callers)
    LARGE_VALIDATION,
    LARGE_VALIDATION_MAX,
    SMALL_SET,
    SMALL_VALIDATION,
    SPLIT_FIELD,
    resolve_split,
    validation_share,
    with_share,
)
from ..digest import text_digest
from .methods import get_method

Choices = dict[str, dict[str, Any]]  # "train.lr" -> {"value": 0.0002, "reason": "..."}

# Small sets: every example is seen at least this many times (the team's measurement: 5 epochs learned a
# 136-pair set to 0.578 ROUGE-L). Repeats are what the schedule and the held-out share act on: on the
# handbook (396 pairs, 32 held-out questions, max_new_tokens 40, bf16) a 24-step run (half an epoch, lr
# 5e-4) scored 0.1757 +- 0.0157 with cosine + warmup 0.1 + 10% held out and 0.1761 +- 0.0143 with these
# rules (paired difference +0.0003 +- 0.0134, n=32; base model 0.124 +- 0.0145): no difference before a
# pair is seen twice. At full length on the handbook (all 89 held-out questions, max_new_tokens 64, bf16,
# one run each): these rules (250 steps) 0.174 +- 0.013, the old defaults (135 steps, cosine, 10% held
# out) 0.154 +- 0.010, base 0.090 +- 0.008; rules minus old +0.020 (95% t interval -0.008 to +0.047):
# better, within the uncertainty. A handbook sweep (`tunelab sweep`, lr 1e-4..2e-3 log, epochs 2..6,
# constant/cosine, r 8/16/32; objective ROUGE-L on a development split of 10% of the pairs; 3 trials
# completed) chose lr 1.34e-3, r 8 (alpha 32), 5 epochs, constant (dev 0.274; the others 0.223, 0.200).
# Trained on every pair and scored on the 89 held-out questions (paired against the suggest_lr rules, lr
# 2e-4 at r 16 = 0.174 +- 0.013): the sweep's choice 0.228 +- 0.018 (+0.054, 95% t -> +0.019 to +0.089);
# the same lr and scale at r 16 (alpha 64) 0.230 +- 0.020 (+0.056, +0.019 to +0.092); r 8 at lr 2e-4
# 0.170 (-0.004); lr 1e-3 at r 16, alpha 32 0.170 (-0.004). What matters is the size of the update, lr x
# the LoRA scale alpha / r (5.4e-3 learned the facts; 2e-3 and 8e-4 did not), not the rank. So a small set
# on a LoRA-family adapter gets lr = SMALL_LORA_UPDATE / (alpha / r). With it the all-defaults config (r 16,
# alpha 32: lr 2.7e-3) scored 0.208 +- 0.017 (vs the suggest_lr rules +0.034, -0.005 to +0.074; vs the
# sweep's best -0.019 +- 0.022, -0.063 to +0.024: within the noise, just over one standard error below it).
# Measured on a 135M model only, so models above SMALL_LORA_MAX_PARAMS keep the method's suggest_lr ...
SMALL_LORA_UPDATE = 5.4e-3
SMALL_LORA_MAX_PARAMS = 1_000_000_000
SMALL_MIN_EPOCHS = 5
# ... and the run makes at least this many optimizer steps, so a tiny set (a few dozen pairs, a handful of
# steps per epoch) is not left under-trained: at 2e-4 AdamW moves a LoRA adapter little per step.
SMALL_MIN_STEPS = 100
SMALL_MAX_EPOCHS = 20  # the bound on repeats a tiny set gets to reach SMALL_MIN_STEPS
# Large sets: one or two passes (each pair is seen often enough; more overfits), a cosine decay after a
# short warmup (the usual SFT recipe), and a validation share of 5%, at most 2,000 records (enough for a
# stable mean loss; a larger one costs evaluation time and training data for nothing).
LARGE_EPOCHS_BELOW_10K = 2
LARGE_WARMUP = 0.03
# Preference and reward objectives (dpo, orpo, grpo) refine a model that already answers; the rules above
# are for learning facts from demonstrations and overshoot them. Measured on the handbook (SmolLM2-135M,
# LoRA r16, one run each, 32 held-out questions): after an sft stage, 30 dpo steps of 4 pairs at the
# method's SFT rate (2e-4) drove the held-out pairs' margin up (+29.6 nats) but broke the answers
# (ROUGE-L 0.175 -> 0.126, paired -0.049, 95% -0.090 to -0.009); at a quarter of it (5e-5) the margin
# still rose (+8.7 nats [4.4, 13.3], reward accuracy 0.80 [0.60, 0.95]) and the answers held (0.189,
# paired +0.014, -0.021 to +0.050) (bench/dpo_heldout.py, compare.extra). grpo at a tenth of the rate
# (2e-5), 20 steps, moved the held-out tickets' label accuracy from 0.457 to 0.630 (paired +0.174 +-
# 0.057), where the SFT rules' 2.7e-3 would be a hundred times larger. TRL's DPO and GRPO trainers default
# to 1e-6 for full fine-tuning, below its SFT default (2e-5), for the same reason. Their passes: the HF
# Trainer's 3 over a small preference set (each pair is a comparison, not a fact to memorise: more
# overfits the margin), one over a grpo set's prompts (each is answered group_size times a pass).
REWARD_OBJECTIVES = ("grpo",)
PREFERENCE_SMALL_EPOCHS = 3
DPO_LR_FRACTION = 0.25
GRPO_LR_FRACTION = 0.1
# objective -> (its share of the method's lr, (why in words, the measurement))
_DPO_WHY = ("refines a model that already answers", "on the handbook dpo at 2e-4 raised the preference margin but "
            "broke the answers (ROUGE-L 0.175 -> 0.126), at 5e-5 it raised the margin and kept them (0.189)")
REFINE_LR: dict[str, tuple[float, tuple[str, str]]] = {
    **{name: (DPO_LR_FRACTION, _DPO_WHY) for name in PREFERENCE_OBJECTIVES},
    "grpo": (GRPO_LR_FRACTION, ("learns from its own sampled answers, whose advantages are noisy", "grpo at 2e-5 "
             "on LoRA raised the handbook tickets' held-out label accuracy from 0.457 to 0.630")),
}
# Early stopping acts only when the run evaluates often enough to see a trend: at least this many
# evaluations, and stops after PATIENCE evaluations without improvement.
PATIENCE = 3
MIN_EVALS_FOR_PATIENCE = 6

TRAIN_FIELDS = ("scheduler", "warmup_ratio", "epochs", "lr", "early_stopping_patience")


def needs_validation(train: TrainConfig) -> bool:
    """Whether the user asked for something that reads the validation split."""
    patience = train.early_stopping_patience
    return (patience not in (None, AUTO)) or bool(train.eval_every) or bool(train.eval_generate_every)


def epochs_rule(n_examples: int, step_size: int, objective: str = "sft") -> tuple[float, str]:
    """Passes over a training set of n_examples at step_size examples per optimizer step, and why."""
    per_epoch = max(1, math.ceil(n_examples / step_size))
    if objective in REWARD_OBJECTIVES:
        return 1.0, (f"1 pass ({per_epoch:,} steps): the {objective} objective answers every prompt "
                     "group_size times a pass and learns from its own answers, not by repeating examples")
    if objective in PREFERENCE_OBJECTIVES:
        epochs = PREFERENCE_SMALL_EPOCHS if n_examples < SMALL_SET else 1
        return float(epochs), (f"{epochs} pass(es) ({epochs * per_epoch:,} steps) over the pairs: a preference "
                               "pair is a comparison, not a fact to memorise; more passes overfit the margin")
    if n_examples < SMALL_SET:
        epochs = min(SMALL_MAX_EPOCHS, max(SMALL_MIN_EPOCHS, math.ceil(SMALL_MIN_STEPS / per_epoch)))
        return float(epochs), (f"{epochs} epochs = {epochs * per_epoch:,} steps of {step_size} examples (a small "
                               f"set is learned by repeats: at least {SMALL_MIN_EPOCHS} passes and "
                               f"{SMALL_MIN_STEPS} steps, at most {SMALL_MAX_EPOCHS} passes)")
    epochs = LARGE_EPOCHS_BELOW_10K if n_examples < 10_000 else 1
    return float(epochs), (f"{epochs} pass(es) ({epochs * per_epoch:,} steps); a large set needs few repeats "
                           "and overfits with more")


def train_rules(cfg: TrainConfig, *, method: str, n_examples: int, loss_tokens: int, n_params: int,
                step_size: int, has_validation: bool, lora_scale: float | None = None,
                objective: str = "sft") -> Choices:
    """What the rules pick for every auto-able training field (whether or not the user set it)."""
    size = f"{n_examples:,} training examples ({loss_tokens:,} supervised tokens)"
    small = n_examples < SMALL_SET
    per_epoch = max(1, math.ceil(n_examples / step_size))
    out: Choices = {}
    if small:
        out["scheduler"] = {"value": "constant", "reason": f"{size}, under {SMALL_SET:,}: a constant lr (a decay "
                            "stops the last epochs from learning; constant lr with every pair in training "
                            "lifted held-out ROUGE-L from 0.359 to 0.578 on a 136-pair set)"}
        out["warmup_ratio"] = {"value": 0.0, "reason": "a small set trains at a constant lr from the first step "
                               "(LoRA starts as the identity, so early steps are safe)"}
    else:
        out["scheduler"] = {"value": "cosine", "reason": f"{size}: cosine decay (enough steps per epoch for the "
                            "decay to settle the weights, the usual SFT recipe)"}
        out["warmup_ratio"] = {"value": LARGE_WARMUP, "reason": f"{LARGE_WARMUP:g} of the steps warm up, so the "
                               "first large updates do not disturb what the model knows"}
    epochs, reason = epochs_rule(n_examples, step_size, objective)
    out["epochs"] = {"value": epochs, "reason": f"{size}: {reason}"}
    if cfg.max_steps is not None:
        epochs = round(cfg.max_steps / per_epoch, 3)
        out["epochs"] = {"value": epochs, "reason": f"train.max_steps = {cfg.max_steps} decides the run's length "
                         f"({epochs:g} epochs of {per_epoch} steps)"}
    lr, lr_reason = get_method(method).suggest_lr(n_params)
    if small and lora_scale and get_method(method).lora_family and n_params <= SMALL_LORA_MAX_PARAMS:
        lr = float(f"{SMALL_LORA_UPDATE / lora_scale:.3g}")
        lr_reason = (f"{size}, under {SMALL_SET:,}, on a LoRA-family adapter of scale alpha/r = {lora_scale:g}: "
                     f"lr x scale = {SMALL_LORA_UPDATE:g} (a small set is learned by large updates: on the "
                     "handbook the default r16/alpha32 went from held-out ROUGE-L 0.174 at lr 2e-4 to 0.208 at 2.7e-3; the "
                     "sweep's best scored 0.228)")
    if objective in REFINE_LR:
        fraction, evidence = REFINE_LR[objective]
        base, why = get_method(method).suggest_lr(n_params)
        lr = float(f"{base * fraction:.3g}")
        lr_reason = f"the {objective} objective {evidence[0]}: {fraction:g} x the method's rate {base:g} ({why}); {evidence[1]}"
    out["lr"] = {"value": lr, "reason": lr_reason}
    epochs_run = out["epochs"]["value"] if cfg.epochs == AUTO else cfg.epochs
    total = cfg.max_steps or max(1, math.ceil(epochs_run * per_epoch))
    evals = math.ceil(total / cfg.eval_every) if cfg.eval_every else math.ceil(total / per_epoch)
    if not has_validation:
        out["early_stopping_patience"] = {"value": None, "reason": "no validation split: nothing to stop on"}
    elif evals < MIN_EVALS_FOR_PATIENCE:
        out["early_stopping_patience"] = {"value": None, "reason": f"{evals} validation evaluation(s): too few "
                                          f"for a trend (early stopping needs {MIN_EVALS_FOR_PATIENCE}; set "
                                          "train.eval_every to evaluate more often)"}
    else:
        out["early_stopping_patience"] = {"value": PATIENCE, "reason": f"{evals} evaluations of the validation "
                                          f"loss: stop after {PATIENCE} without improvement, keep the best"}
    return out


def resolve_train(config: ExperimentConfig, *, n_examples: int, loss_tokens: int, n_params: int, world: int = 1,
                  has_validation: bool) -> tuple[ExperimentConfig, Choices]:
    """config with every auto training field replaced by the rules' choice; the choices made, by dotted name."""
    cfg = config.train
    wanted = [f for f in TRAIN_FIELDS if getattr(cfg, f) == AUTO]
    if not wanted:
        return config, {}
    rules = train_rules(cfg, method=config.method.name, n_examples=n_examples, loss_tokens=loss_tokens,
                        n_params=n_params, step_size=cfg.batch_size * cfg.grad_accum * world,
                        has_validation=has_validation, lora_scale=config.method.alpha / config.method.r,
                        objective=cfg.objective)
    choices = {f"train.{f}": rules[f] for f in wanted}
    out = config.model_copy(deep=True)
    out.train = cfg.model_copy(update={f: rules[f]["value"] for f in wanted})
    return out, choices


def auto_fields(config: ExperimentConfig) -> list[str]:
    """The dotted names of the fields this config leaves at auto (stages included)."""
    sections = [("", config.data, config.train)]
    sections += [(f"stages[{i}].", s.data, s.train) for i, s in enumerate(config.stages)]
    out = []
    for prefix, data, train in sections:
        if data.split.validation == AUTO:
            out.append(prefix + SPLIT_FIELD)
        out += [f"{prefix}train.{f}" for f in TRAIN_FIELDS if getattr(train, f) == AUTO]
    return out


def rules_digest() -> str:
    """The digest of the rules' code: this file and the method facts it reads (suggest_lr)."""
    here = Path(__file__).parent
    return text_digest("".join((here / name).read_text(encoding="utf-8") for name in ("auto.py", "methods.py")))


def format_choices(choices: Choices) -> list[str]:
    """One line per choice: `auto train.lr = 0.0002: reason`."""
    lines = []
    for name, choice in choices.items():
        value = choice["value"]
        shown = "off" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        lines.append(f"auto {name} = {shown}: {choice['reason']}")
    return lines
