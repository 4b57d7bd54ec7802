"""The training loop: straight-line code over already-rendered examples.

One optimizer step = the examples the epoch order assigns to it, split into micro-batches. Each
micro-batch's summed token NLL is divided by the loss-token count of the *whole step* before backward,
so the accumulated gradient is that of the token-mean loss over the step, however the step is split
(8 x 1 or 2 x 4) and whether examples are packed or padded.

Evaluation, checkpoints, early stopping and Ctrl-C are handled between steps, never inside one, so a
checkpoint always holds a consistent state (weights, optimizer, scheduler, RNG and data position after
a whole step).

Validation loss is the token mean over the validation split; when examples carry task names (mixtures,
or records with a `task` field) it is also reported per task as `val_loss/<task>`. Under several
processes (distributed.py) each step's examples are shared out and the gradients summed; see there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig
from .batching import Example, Layout, epoch_steps, eval_batches, micro_batches
from .checkpoint import TrainState, rng_state, set_rng_state
from .distributed import Dist, full, gather, is_sharded, load_whole, reshard, shard
from .loss import LossHead

Event = dict[str, Any]


@dataclass
class LoopSetup:
    """Everything the loop needs, built by run.py (or by stages/mixtures later)."""

    model: nn.Module
    head: LossHead
    optimizer: torch.optim.Optimizer
    scheduler: Any
    params: dict[str, nn.Parameter]
    train: list[Example]
    val: list[Example]
    layout: Layout
    cfg: TrainConfig
    total_steps: int
    steps_per_epoch: int
    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    emit: Callable[[Event], None]
    save: Callable[[TrainState, dict[str, torch.Tensor] | None], Any]
    flush_log: Callable[[list[dict[str, Any]]], None]
    stop_requested: Callable[[], bool]
    scaler: Any = None
    best: dict[str, torch.Tensor] | None = None
    updating: bool = False  # inside optimizer/scheduler updates: an interrupt here is not resumable
    epoch_plan: Callable[[int], list[list[int]]] | None = None  # a mixture's steps of an epoch
    dist: Dist | None = None  # several processes: this one's rank and the collectives
    generate_eval: Callable[[], dict[str, Any]] | None = None  # ROUGE-L of generated answers
    # an objective's own step (grpo.py) in place of train_step, taking the same (setup, indices)
    step: Callable[[LoopSetup, list[int]], StepResult] | None = None
    # dpo/orpo (preference.py): train and val hold preference pairs, and this computes their loss
    preference: Any = None

    @property
    def world(self) -> int:
        return self.dist.world if self.dist is not None else 1

    @property
    def step_size(self) -> int:
        """Examples per optimizer step over all processes (the global batch)."""
        return self.cfg.batch_size * self.cfg.grad_accum * self.world

    @property
    def bucket(self) -> bool:
        return not self.layout.packing


@dataclass
class LoopOutcome:
    state: TrainState
    status: str  # completed | early_stopped | interrupted
    last_eval: dict[str, float] | None


@dataclass
class StepResult:
    loss: float
    lr: float
    grad_norm: float
    tokens: int
    loss_tokens: int
    metrics: dict[str, float] = field(default_factory=dict)  # an objective's own, logged with the step


def count_steps(n_examples: int, cfg: TrainConfig, world: int = 1) -> tuple[int, int]:
    """(steps per epoch, total steps): max_steps wins over epochs; fractional epochs round up."""
    per_epoch = max(1, math.ceil(n_examples / (cfg.batch_size * cfg.grad_accum * world)))
    total = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * per_epoch))
    return per_epoch, total


def train_step(setup: LoopSetup, indices: list[int]) -> StepResult:
    if setup.preference is not None:
        loss, tokens, loss_tokens, rewards = setup.preference.backward(setup, indices)
        lr, grad_norm = apply_update(setup)
        return StepResult(loss, lr, grad_norm, tokens, loss_tokens, rewards)
    examples = setup.train
    lengths = [len(e) for e in examples]
    # Every process knows the whole step's examples, so each divides by the global loss-token count.
    step_loss_tokens = sum(examples[i].n_loss_tokens for i in indices)
    denominator = max(1, step_loss_tokens)
    setup.model.train()
    total_nll = 0.0
    tokens = 0
    dist = setup.dist
    groups = micro_batches(shard(indices, dist), setup.cfg.batch_size, lengths, bucket=setup.bucket)
    weights = [1.0] * len(groups)
    if dist is not None and dist.fsdp:
        # every forward is a collective under FSDP: a process with fewer micro-batches runs extra ones
        # whose loss counts zero times, so all run the same number
        most = max(len(micro_batches(indices[r :: dist.world], setup.cfg.batch_size, lengths, bucket=setup.bucket))
                   for r in range(dist.world))
        filler = groups[0] if groups else [indices[0]]
        groups, weights = groups + [filler] * (most - len(groups)), weights + [0.0] * (most - len(groups))
    for group, weight in zip(groups, weights, strict=True):
        batch = setup.layout.collate([examples[i] for i in group]).to(setup.device)
        with setup.autocast():
            nll = setup.head.nll_sum(batch) * weight
        loss = nll / denominator
        (setup.scaler.scale(loss) if setup.scaler is not None else loss).backward()
        total_nll += float(nll.detach())
        tokens += batch.n_tokens if weight else 0
    if dist is not None:
        # FSDP reduce-scatters sharded gradients itself; anything else is summed here
        dist.all_reduce_grads(p for p in setup.params.values() if not (dist.fsdp and is_sharded(p)))
        total_nll, tokens_sum = dist.sum([total_nll, tokens])
        tokens = int(tokens_sum)
    lr, grad_norm = apply_update(setup)
    return StepResult(total_nll / denominator, lr, grad_norm, tokens, step_loss_tokens)


def apply_update(setup: LoopSetup, schedule: bool = True) -> tuple[float, float]:
    """Clip, step the optimizer (and with `schedule` the lr schedule: an objective that updates several
    times per step, grpo's iterations, schedules once) on the accumulated gradients: (lr used, grad norm)."""
    lr = float(setup.optimizer.param_groups[0]["lr"])
    setup.updating = True
    if setup.scaler is not None:
        setup.scaler.unscale_(setup.optimizer)
    params = [p for p in setup.params.values() if p.grad is not None]
    max_norm = setup.cfg.max_grad_norm if setup.cfg.max_grad_norm is not None else math.inf
    grad_norm = float(full(torch.nn.utils.clip_grad_norm_(params, max_norm))) if params else 0.0
    if setup.scaler is not None:
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
    else:
        setup.optimizer.step()
    if schedule:
        setup.scheduler.step()
    setup.optimizer.zero_grad(set_to_none=True)
    setup.updating = False
    return lr, grad_norm


@torch.no_grad()
def evaluate(model: nn.Module, head: LossHead, examples: list[Example], layout: Layout, device: torch.device,
             autocast: Callable[[], AbstractContextManager], tokens_per_batch: int,
             dist: Dist | None = None) -> dict[str, float]:
    """Token-level validation loss over the loss tokens and its perplexity exp(mean token NLL); per task
    too (val_loss/<task>, val_ppl/<task>) when the examples carry task names."""
    model.eval()
    tasks = sorted({e.task for e in examples if e.task is not None})
    groups = {t: [e for e in examples if e.task == t] for t in tasks} if tasks else {None: list(examples)}
    untagged = [e for e in examples if e.task is None]
    if tasks and untagged:
        groups[None] = untagged
    sums: list[float] = []
    for group in groups.values():
        batches = eval_batches(group, layout, tokens_per_batch)
        padding = 0
        if dist is not None:
            mine = batches[dist.rank :: dist.world]
            if dist.fsdp and batches:  # the same number of forwards on every process (each is a collective)
                padding = -(-len(batches) // dist.world) - len(mine)
                mine += [batches[0]] * padding
            batches = mine
        nll = 0.0
        count = 0
        for i, batch in enumerate(batches):
            batch = batch.to(device)
            with autocast():
                value = float(head.nll_sum(batch))
            if i < len(batches) - padding:
                nll += value
                count += batch.n_loss_tokens
        sums += [nll, count]
    if dist is not None:
        if dist.fsdp:
            reshard(model)
        sums = dist.sum(sums)
    total_nll, total_count = sum(sums[0::2]), int(sum(sums[1::2]))
    loss = total_nll / max(1, total_count)
    out: dict[str, float] = {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_loss_tokens": total_count}
    if tasks:
        for i, task in enumerate(groups):
            if task is None:
                continue
            task_loss = sums[2 * i] / max(1, sums[2 * i + 1])
            out[f"val_loss/{task}"] = task_loss
            out[f"val_ppl/{task}"] = math.exp(min(task_loss, 50.0))
    return out


def _snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return gather(params)  # whole tensors, also of FSDP shards


def _restore(params: dict[str, nn.Parameter], weights: dict[str, torch.Tensor]) -> None:
    load_whole(params, weights)


def _due(every: int | None, step: int, epoch_end: bool) -> bool:
    return (step % every == 0) if every else epoch_end


class _Clock:
    """Smoothed seconds per step, for tokens/s and the ETA."""

    def __init__(self) -> None:
        self.per_step: float | None = None

    def update(self, seconds: float) -> float:
        self.per_step = seconds if self.per_step is None else 0.8 * self.per_step + 0.2 * seconds
        return self.per_step


def _eval_row(setup: LoopSetup, state: TrainState) -> dict[str, Any]:
    tokens_per_batch = setup.layout.capacity * max(setup.cfg.batch_size, 8)
    started = time.perf_counter()
    if setup.preference is not None:
        result = setup.preference.evaluate(setup)
    else:
        result = evaluate(setup.model, setup.head, setup.val, setup.layout, setup.device, setup.autocast,
                          tokens_per_batch, setup.dist)
    row = {"step": state.step, "epoch": state.epoch, **result, "eval_seconds": time.perf_counter() - started}
    return row


def _early_stop_update(setup: LoopSetup, state: TrainState, val_loss: float) -> bool:
    """Track the best validation loss; True when patience has run out."""
    if state.best_val is None or val_loss < state.best_val:
        state.best_val, state.best_step = val_loss, state.step
        state.evals_without_improvement = 0
        if setup.cfg.early_stopping_patience is not None:
            setup.best = _snapshot(setup.params)
        return False
    state.evals_without_improvement += 1
    patience = setup.cfg.early_stopping_patience
    return patience is not None and state.evals_without_improvement >= patience


def _interrupted_mid_step(setup: LoopSetup, state: TrainState, last_eval: dict[str, float] | None) -> LoopOutcome:
    """A KeyboardInterrupt inside a step: the partial gradients are dropped and the state of the last
    whole step is saved; inside the optimizer update the state may be half-written, so nothing is saved."""
    if setup.updating:
        raise KeyboardInterrupt
    setup.optimizer.zero_grad(set_to_none=True)
    if state.step > 0:
        path = setup.save(state, setup.best)
        setup.emit({"event": "checkpoint", "step": state.step, "path": str(path)})
    setup.flush_log(state.log)
    return LoopOutcome(state, "interrupted", last_eval)


def run_loop(setup: LoopSetup, state: TrainState) -> LoopOutcome:
    """Train from `state` (fresh or restored) to the last step, an early stop, or a Ctrl-C."""
    cfg = setup.cfg
    lengths = [len(e) for e in setup.train]
    clock = _Clock()
    last_eval: dict[str, float] | None = None
    last_flush = time.monotonic()
    setup.emit({"event": "start", "step": state.step, "total_steps": setup.total_steps,
                "steps_per_epoch": setup.steps_per_epoch})
    if setup.dist is not None:
        setup.dist.check_same(setup.total_steps, "the number of steps")
        setup.dist.check_same(state.step, "the step to start from")
    while state.step < setup.total_steps:
        if setup.epoch_plan is not None:
            steps = setup.epoch_plan(state.epoch)
        else:
            steps = epoch_steps(lengths, setup.step_size, seed=cfg.seed, epoch=state.epoch, bucket=setup.bucket)
        while state.step_in_epoch < len(steps) and state.step < setup.total_steps:
            started, cpu_started = time.perf_counter(), time.process_time()
            rng_before = rng_state()  # a step interrupted halfway must not leave its dropout draws behind
            try:
                result = (setup.step or train_step)(setup, steps[state.step_in_epoch])
            except KeyboardInterrupt:
                set_rng_state(*rng_before)
                return _interrupted_mid_step(setup, state, last_eval)
            seconds = time.perf_counter() - started
            state.train_cpu_seconds += time.process_time() - cpu_started
            state.step += 1
            state.step_in_epoch += 1
            state.tokens += result.tokens
            state.loss_tokens += result.loss_tokens
            state.train_seconds += seconds
            per_step = clock.update(seconds)
            epoch_end = state.step_in_epoch == len(steps)
            if epoch_end:
                state.epoch += 1
                state.step_in_epoch = 0
            row = {
                "step": state.step,
                "epoch": round(state.epoch + state.step_in_epoch / len(steps), 4),
                "loss": result.loss,
                "lr": result.lr,
                "grad_norm": result.grad_norm,
                "tokens": result.tokens,
                "tokens_per_s": result.tokens / seconds if seconds > 0 else 0.0,
                "elapsed_s": state.train_seconds,
                **result.metrics,
            }
            state.log.append(row)
            setup.emit({"event": "step", **row, "total_steps": setup.total_steps,
                        "eta_s": per_step * (setup.total_steps - state.step)})
            final = state.step >= setup.total_steps
            stop = False
            if setup.val and (_due(cfg.eval_every, state.step, epoch_end) or final):
                last_eval = _eval_row(setup, state)
                state.log.append({"event": "eval", **last_eval})
                setup.emit({"event": "eval", **last_eval})
                stop = _early_stop_update(setup, state, last_eval["val_loss"])
            if setup.generate_eval is not None and _due(cfg.eval_generate_every, state.step, False):
                generated = {"event": "eval_generate", "step": state.step, **setup.generate_eval()}
                state.log.append(generated)
                setup.emit(generated)
            interrupted = setup.stop_requested()
            if setup.dist is not None:
                interrupted = setup.dist.any(interrupted)  # all processes stop after the same step
            if _due(cfg.save_every, state.step, epoch_end) or final or stop or interrupted:
                path = setup.save(state, setup.best)
                setup.emit({"event": "checkpoint", "step": state.step, "path": str(path)})
            if time.monotonic() - last_flush > 15 or final or stop or interrupted:
                setup.flush_log(state.log)
                last_flush = time.monotonic()
            if interrupted:
                return LoopOutcome(state, "interrupted", last_eval)
            if stop:
                if setup.best is not None:
                    _restore(setup.params, setup.best)
                return LoopOutcome(state, "early_stopped", last_eval)
            if epoch_end:
                break  # the next epoch has its own order
    if setup.best is not None and cfg.early_stopping_patience is not None:
        _restore(setup.params, setup.best)  # early stopping keeps the best evaluated weights
    setup.flush_log(state.log)
    return LoopOutcome(state, "completed", last_eval)
