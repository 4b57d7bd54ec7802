"""`--dry-run`: what a training run would do, before doing it.

Trainable parameters, tokens per epoch, steps, a memory estimate per method (and which fit in this
machine's memory), the expected time measured by a short micro-benchmark on this machine, and suggested
learning rate / LoRA rank / epochs derived from the data size and model size, each with its reasoning.

The suggestions are rules of thumb from published practice, stated as such:
The rules per method live in each method's registry entry (methods.py):
- LoRA-family lr 2e-4 up to ~13B parameters, 1e-4 above (QLoRA paper: 2e-4 for 7B/13B, 1e-4 for
  33B/65B); IA3 3e-3 (IA3 paper); soft prompts 3e-2 and prefixes 1e-2 (PEFT's examples); full
  fine-tuning 2e-5 below 1B, 1e-5 to 7B, 5e-6 above (the usual SFT recipes).
- Rank grows with the supervised tokens: a small set is fitted by a small rank and overfits a large one.
- Epochs shrink as data grows: small sets need repeats, large ones one pass (auto.py's epochs rule, the
  one that chooses train.epochs when it is auto).

The settings left at auto are listed with the value chosen and its reason (auto.py).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from .auto import epochs_rule, format_choices
from .loop import LoopSetup
from .methods import METHODS, get_method


def _total_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def suggest(method: str, n_params: int, n_examples: int, loss_tokens: int, step_size: int = 8) -> dict[str, Any]:
    """Suggested lr, rank and epochs (at step_size examples per optimizer step) with the reasoning behind each."""
    entry = get_method(method)
    lr, lr_why = entry.suggest_lr(n_params)
    rank = 8 if loss_tokens < 50_000 else 16 if loss_tokens < 500_000 else 32 if loss_tokens < 5_000_000 else 64
    rank_why = f"{loss_tokens:,} supervised tokens: rank {rank} (8 under 50k, 16 under 500k, 32 under 5M, " \
               "64 above); a small set is fitted by a small rank and overfits a large one"
    epochs, epochs_why = epochs_rule(n_examples, step_size)
    epochs_why = f"{n_examples:,} examples: {epochs_why}"
    out = {"lr": lr, "lr_reason": lr_why, "epochs": epochs, "epochs_reason": epochs_why}
    if entry.lora_family:
        out |= {"r": rank, "alpha": 2 * rank, "r_reason": rank_why + "; alpha = 2 x r keeps the LoRA scale at 2"}
    return out


def memory_estimates(model_config: dict[str, Any], n_params: int, seq_len: int, batch: int, r: int,
                     dtype: str) -> dict[str, Any]:
    """Estimated peak training memory per method that has a memory model (tunelab.models.memory) and
    whether it fits here."""
    try:
        from ..models.memory import estimate_all_methods
        models = {name: m.memory for name, m in METHODS.items() if m.memory is not None}
        estimates = estimate_all_methods(n_params, model_config, seq_len=seq_len, batch=batch, lora_r=r,
                                         dtype=dtype, models=models)
    except Exception as exc:  # an architecture the estimator does not know: say so, do not fail the plan
        return {"error": f"no memory estimate: {exc}"}
    available = _total_memory_bytes()
    out: dict[str, Any] = {"machine_memory_gib": round(available / 2**30, 1) if available else None}
    for method, est in estimates.items():
        total = est["bytes"]["total"]
        out[method] = {"total_gib": est["total_gib"], "fits": available is None or total < 0.9 * available}
    return out


def measure_throughput(setup: LoopSetup, steps: int = 2) -> float:
    """Training tokens/s on this machine: one warm-up micro-batch, then `steps` timed micro-batches
    (forward + backward; the weights are not updated)."""
    from .batching import micro_batches

    lengths = [len(e) for e in setup.train]
    # The longest examples first: a pessimistic (not flattering) estimate.
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])[: setup.cfg.batch_size * (steps + 1)]
    groups = micro_batches(order, setup.cfg.batch_size, lengths, bucket=True)
    setup.model.train()
    tokens = 0
    seconds = 0.0
    for n, group in enumerate(groups[: steps + 1]):
        started = time.perf_counter()
        if setup.preference is not None:  # dpo/orpo: pairs (preference.py)
            n_tokens = setup.preference.backward(setup, group)[1]
        else:
            batch = setup.layout.collate([setup.train[i] for i in group]).to(setup.device)
            started = time.perf_counter()
            with setup.autocast():
                loss = setup.head.nll_sum(batch) / max(1, batch.n_loss_tokens)
            loss.backward()
            n_tokens = batch.n_tokens
        if n:  # the first is a warm-up (allocations, kernel selection)
            seconds += time.perf_counter() - started
            tokens += n_tokens
    setup.optimizer.zero_grad(set_to_none=True)
    return tokens / seconds if seconds > 0 else 0.0


def build_plan(setup: LoopSetup, *, method: str, n_params: int, trainable: int, model_config: dict[str, Any],
               dtype: str, train_stats: dict[str, Any], val_stats: dict[str, Any] | None, r: int,
               precision: str, threads: int, benchmark: bool = True) -> dict[str, Any]:
    cfg = setup.cfg
    tokens_epoch = train_stats["tokens"]
    epochs_run = setup.total_steps / setup.steps_per_epoch
    tokens_total = int(tokens_epoch * epochs_run)
    plan: dict[str, Any] = {
        "method": method,
        "objective": cfg.objective,
        "trainable_params": trainable,
        "total_params": n_params,
        "trainable_percent": round(100 * trainable / max(1, n_params), 4),
        "examples": train_stats["examples"],
        "tokens_per_epoch": tokens_epoch,
        "loss_tokens_per_epoch": train_stats["loss_tokens"],
        "validation_examples": (val_stats or {}).get("examples", 0),
        "steps_per_epoch": setup.steps_per_epoch,
        "total_steps": setup.total_steps,
        "epochs": round(epochs_run, 3),
        "examples_per_step": setup.step_size,
        "layout": "packed" if setup.layout.packing else "length-bucketed",
        "precision": precision,
        "threads": threads,
        "memory": memory_estimates(model_config, n_params, min(train_stats["max_example_tokens"] or 1,
                                   setup.layout.capacity), cfg.batch_size, r, dtype),
        "suggested": suggest(method, n_params, train_stats["examples"], train_stats["loss_tokens"], setup.step_size),
    }
    if benchmark and setup.train:
        tps = measure_throughput(setup)
        val_tokens = (val_stats or {}).get("tokens", 0)
        evals = math.ceil(setup.total_steps / cfg.eval_every) if cfg.eval_every else math.ceil(epochs_run)
        # Evaluation is a forward pass only: about a third of a training step's work per token.
        seconds = tokens_total / tps + evals * val_tokens / (3 * tps) if tps else None
        plan["measured_tokens_per_s"] = round(tps, 1)
        plan["expected_seconds"] = float(f"{seconds:.3g}") if seconds is not None else None  # tiny runs: not 0
        plan["time_basis"] = "2 timed micro-batches of the longest examples on this machine (forward + backward)"
    return plan


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as readable lines (the CLI prints this for --dry-run)."""
    lines = [
        f"method {plan['method']} ({plan['objective']}): {plan['trainable_params']:,} trainable of "
        f"{plan['total_params']:,} parameters ({plan['trainable_percent']}%)",
        f"data: {plan['examples']:,} examples, {plan['tokens_per_epoch']:,} tokens/epoch "
        f"({plan['loss_tokens_per_epoch']:,} in the loss), {plan['validation_examples']:,} validation examples",
        f"steps: {plan['total_steps']:,} ({plan['steps_per_epoch']:,}/epoch, {plan['examples_per_step']} "
        f"examples/step, {plan['layout']}), precision {plan['precision']}, {plan['threads']} threads",
    ]
    if "expected_seconds" in plan and plan["expected_seconds"] is not None:
        lines.append(f"expected time: {plan['expected_seconds'] / 60:.1f} min at {plan['measured_tokens_per_s']:,} "
                     f"tokens/s ({plan['time_basis']})")
    memory = plan.get("memory", {})
    if "error" in memory:
        lines.append(memory["error"])
    else:
        fits = ", ".join(
            f"{m} {v['total_gib']} GiB{'' if v['fits'] else ' (does not fit)'}"
            for m, v in memory.items() if isinstance(v, dict)
        )
        lines.append(f"memory estimate: {fits} (machine: {memory.get('machine_memory_gib')} GiB)")
    lines += format_choices(plan.get("auto") or {})
    for key in ("lr", "r", "epochs"):
        if key in plan["suggested"] and f"train.{key}" not in (plan.get("auto") or {}):  # else printed above
            lines.append(f"suggested {key} = {plan['suggested'][key]:g}: {plan['suggested'][key + '_reason']}")
    return "\n".join(lines)
