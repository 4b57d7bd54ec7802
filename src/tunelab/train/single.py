"""One training run (one stage): build it from the setup, train or plan it, write its run directory.

`train_one(config)` builds the session (setup.py's data, tokenizer and model; the optimizer, schedule,
checkpointing and loop setup), then either measures and plans it (a dry run) or restores the latest
checkpoint if resuming, runs the loop (loop.py), and writes the artifact, summary.json and the chat
template into `<run_dir>`; run.py says what each file is.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import ExperimentConfig, save_resolved
from ..errors import TunelabError
from ..io import write_json, write_jsonl, write_text
from . import auto, distributed, fast_lora, preference
from .artifacts import save_artifacts, weights_digest
from .batching import Layout
from .checkpoint import FINGERPRINT_SECTIONS, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import Dist
from .loop import LoopSetup, count_steps, run_loop
from .loss import base_causal_lm, loss_head
from .methods import build_optimizer, count_parameters, get_method, trainable_parameters, virtual_tokens
from .progress import RichProgress, fan_out
from .schedule import build_scheduler
from .setup import (
    TrainData,
    build_model,
    compile_layers,
    device_for,
    load_data,
    load_tokenizer_for,
    precision_for,
    set_threads,
)

Callback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # completed | early_stopped | interrupted | planned
    summary: dict[str, Any] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    model: Any = field(default=None, repr=False)  # the trained model in memory (a next stage starts from it)

    @property
    def final_train_loss(self) -> float | None:
        return self.summary.get("final_train_loss")

    @property
    def final_val_loss(self) -> float | None:
        return self.summary.get("final_val_loss")



# -- run directory ------------------------------------------------------------------------------------


def _identity(config: ExperimentConfig, dataset_hash: str, dist: Dist | None = None) -> dict[str, Any]:
    from .rewards import reward_code_digest

    resolved = config.resolved()
    reward_code = reward_code_digest(config.train.rewards)
    # a checkpoint trained on other reward code is not resumed as if it were this run
    return ({"reward_code": reward_code} if reward_code is not None else {}) | {
        "sections": {s: resolved[s] for s in FINGERPRINT_SECTIONS},
        "fingerprint": config.fingerprint(*FINGERPRINT_SECTIONS),
        "dataset_hash": dataset_hash,
        "world_size": dist.world if dist is not None else 1,  # the global batch depends on it
        "fsdp": bool(dist is not None and dist.fsdp),  # the optimizer state is then keyed by name
    }


def _check_fsdp(config: ExperimentConfig) -> None:
    if get_method(config.method.name).quantized:
        raise TunelabError(f"method {config.method.name} cannot be sharded with FSDP (its 4-bit weights are not "
                           "shardable tensors); launch with configs/accelerate/ddp.yaml, or use lora")
    if config.train.compile:
        raise TunelabError("train.compile is not supported with FSDP here; set train.compile: false")
    if config.train.eval_generate_every:
        raise TunelabError("train.eval_generate_every is not supported with FSDP (generation would have to run "
                           "on every process); leave it unset, and evaluate after training with tunelab eval")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@contextlib.contextmanager
def graceful_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step, checkpoint and stop. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = threading.Event()

    def handler(_sig, _frame) -> None:
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _mean_tail(rows: list[dict[str, Any]], key: str, fraction: float = 0.1) -> float | None:
    values = [r[key] for r in rows if key in r and r.get("event") is None]
    if not values:
        return None
    tail = values[-max(1, int(len(values) * fraction)) :]
    return sum(tail) / len(tail)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class _Session:
    """What building a run produced, shared by training and the dry run."""

    setup: LoopSetup
    model: Any
    tokenizer: Any
    data: TrainData
    precision: str
    threads: int
    warnings: list[str]
    targets: list[str] | None
    config: ExperimentConfig  # with the auto settings resolved
    auto: dict[str, dict[str, Any]]  # what auto chose and why, by dotted field name
    start_digest: str | None = None
    dist: Dist | None = None

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main


def _build(config: ExperimentConfig, emit: Callback, stop_requested: Callable[[], bool], dist: Dist | None = None,
           start_adapter: Path | None = None, data: TrainData | None = None, base_model: Any = None) -> _Session:
    cfg = config.train
    run_dir = Path(config.run_dir)
    method = get_method(config.method.name)
    device = device_for(config, dist)
    threads = set_threads(dist)
    precision, autocast, scaler, warnings = precision_for(cfg.precision, device)
    pair_loss = preference.make_loss(config)  # dpo/orpo: train on preference pairs (preference.py)
    if pair_loss is not None:
        preference.check_supported(config, dist)

    tokenizer = load_tokenizer_for(config)
    data = data if data is not None else load_data(config, tokenizer, dist)
    manifest = data.manifest
    max_length = config.data.max_length
    warnings += data.train_stats["warnings"]
    manifests = manifest.get("tasks", {"": manifest}).values() if config.mixture else [manifest]
    for m in manifests:
        for skipped in (m.get("documents") or {}).get("skipped", []):
            warnings.append(f"document {skipped['path']} skipped: {skipped['reason']}")

    model, targets = build_model(config, device, start_adapter, base_model)
    params = trainable_parameters(model)
    fsdp = dist is not None and dist.fsdp
    if dist is not None:
        dist.broadcast_params(params.values())  # every process starts from rank 0's weights
    if fsdp:
        _check_fsdp(config)
        if dist.note:
            warnings.append(dist.note)
        distributed.shard_model(model, dist)
        params = trainable_parameters(model)  # the same names, now sharded
    if device.type == "cpu" and not fsdp:
        fast_lora.install(model)  # PEFT's LoRA forward, fused: same function, fewer passes (fast_lora.py)
    start_digest = weights_digest(params) if method.adapter else None
    if cfg.compile:
        compile_layers(model)
    if method.quantized:
        from ..noise import bnb_kernel_note

        note = bnb_kernel_note()  # bitsandbytes' own message is dropped (noise.py); say what it means once
        if note:
            warnings.append(note)
    if cfg.packing and not method.packing:
        warnings.append(f"method {method.name}: PEFT drops position ids for it, so examples are length-bucketed "
                        "instead of packed")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    packing = cfg.packing and method.packing and pair_loss is None  # pairs are scored per sequence: padded
    layout = Layout(packing=packing, capacity=max_length, pad_id=int(pad_id), with_mask=not method.packing)
    world = dist.world if dist is not None else 1
    # the settings left at auto, from the rendered data's size and the method (auto.py); from here on the
    # run (its checkpoints' identity, its config.resolved.yaml, its summary) sees the chosen values
    config, choices = auto.resolve_train(config, n_examples=len(data.train), loss_tokens=data.train_stats["loss_tokens"],
                                         n_params=count_parameters(model)[1], world=world, has_validation=bool(data.val))
    split = _split_choices(config, manifest)
    if auto.SPLIT_FIELD in split:  # the share prepare chose (a mixture's differ per task: in the choices only)
        config = config.model_copy(update={"data": auto.with_share(config.data, split[auto.SPLIT_FIELD]["value"])})
    choices = split | choices
    cfg = config.train
    steps_per_epoch, total_steps = count_steps(len(data.train), cfg, world)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, config.method.embedding_lr)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps, cfg.warmup_ratio)
    identity = _identity(config, data.dataset_hash, dist)
    is_main = dist is None or dist.is_main

    def save(state: TrainState, best: dict[str, torch.Tensor] | None) -> Path | None:
        # under FSDP every process takes part in gathering the whole weights and optimizer state
        weights = distributed.gather(params) if fsdp else None
        opt_state = distributed.full_optimizer_state(model, optimizer) if fsdp else None
        if not is_main:
            return None
        return save_checkpoint(run_dir, params=params, optimizer=optimizer, scheduler=scheduler, state=state,
                               identity=identity, keep_last=cfg.keep_last, best=best, scaler=scaler,
                               weights=weights, optimizer_state=opt_state)

    def flush_log(rows: list[dict[str, Any]]) -> None:
        if is_main:
            write_jsonl(run_dir / "train_log.jsonl", rows)

    generate_eval = None
    if cfg.eval_generate_every and is_main:
        from .gen_eval import make_generate_eval

        generate_eval = make_generate_eval(model, tokenizer, data.val_records, cfg.eval_generate_n,
                                           cfg.eval_generate_max_new_tokens, threads)
    setup = LoopSetup(
        model=model, head=None, optimizer=optimizer, scheduler=scheduler, params=params, train=data.train, val=data.val,  # type: ignore[arg-type]
        layout=layout, cfg=cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch, device=device,
        autocast=autocast, emit=emit if is_main else (lambda _e: None), save=save, flush_log=flush_log,
        stop_requested=stop_requested, scaler=scaler, dist=dist, generate_eval=generate_eval, preference=pair_loss,
    )
    if data.plan is not None:
        plan = data.plan
        setup.epoch_plan = lambda epoch: plan(epoch, setup.step_size, setup.bucket)
    return _Session(setup, model, tokenizer, data, precision, threads, warnings, targets, config, choices,
                    start_digest, dist)


def _split_choices(config: ExperimentConfig, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The validation shares prepare chose (a mixture's per task, as mixture.<task>.data.split.validation)."""
    if not config.mixture:
        return dict(manifest.get("auto") or {})
    return {f"mixture.{task}.{name}": choice for task, m in manifest.get("tasks", {}).items()
            for name, choice in (m.get("auto") or {}).items()}


def _restore(config: ExperimentConfig, session: _Session) -> TrainState:
    run_dir = Path(config.run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise TunelabError(f"nothing to resume: {run_dir / 'checkpoints'} has no checkpoint; run without --resume")
    setup = session.setup
    fsdp = setup.dist is not None and setup.dist.fsdp
    restored = load_checkpoint(
        path, params=setup.params, optimizer=setup.optimizer, scheduler=setup.scheduler,
        identity=_identity(config, session.data.dataset_hash, setup.dist), scaler=setup.scaler,
        load_params=distributed.load_whole if fsdp else None,
        load_optimizer=(lambda state: distributed.load_optimizer_state(session.model, setup.optimizer, state))
        if fsdp else None,
    )
    setup.best = restored.best
    return restored.state


def _summary(config: ExperimentConfig, session: _Session, state: TrainState, status: str,
             last_eval: dict[str, float] | None, wall: float, artifact: dict[str, Any] | None) -> dict[str, Any]:
    from ..models.templates import template_info

    trainable, total = count_parameters(session.model)
    steps = [r for r in state.log if "loss" in r and r.get("event") is None]
    generated = [r for r in state.log if r.get("event") == "eval_generate"]
    per_task = {k: v for k, v in (last_eval or {}).items() if k.startswith(("val_loss/", "val_ppl/"))}
    summary = {
        "status": status,
        "name": config.name,
        "method": config.method.name,
        "objective": config.train.objective,
        "model": config.model.name,
        "target_modules": session.targets,
        "steps": state.step,
        "total_steps": session.setup.total_steps,
        "epochs_completed": state.epoch + state.step_in_epoch / max(1, session.setup.steps_per_epoch),
        "final_train_loss": steps[-1]["loss"] if steps else None,
        "final_train_loss_smoothed": _mean_tail(steps, "loss"),
        "final_val_loss": last_eval["val_loss"] if last_eval else None,
        "final_val_perplexity": last_eval.get("val_ppl") if last_eval else None,
        "perplexity_convention": "token-level: exp(mean NLL over the validation split's loss tokens)",
        "best_val_loss": state.best_val,
        "best_val_step": state.best_step,
        "tokens_trained": state.tokens,
        "loss_tokens_trained": state.loss_tokens,
        "train_seconds": round(state.train_seconds, 3),
        "train_cpu_seconds": round(state.train_cpu_seconds, 3),
        "wall_seconds": round(wall, 3),
        "tokens_per_s": round(state.tokens / state.train_seconds, 2) if state.train_seconds else None,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "trainable_params": trainable,
        "total_params": total,
        "dataset_hash": session.data.dataset_hash,
        "data": {"train": session.data.train_stats, "validation": session.data.val_stats},
        "template": template_info(session.tokenizer),
        "precision": session.precision,
        "threads": session.threads,
        "device": str(session.setup.device),
        "layout": "packed" if session.setup.layout.packing else "length-bucketed",
        "compile": config.train.compile,
        "artifact": artifact,
        "warnings": session.warnings,
        "world_size": session.setup.world,
        "global_batch": session.setup.step_size,
        "start_weights_sha256": session.start_digest,
        "auto": session.auto,  # the settings chosen from the data's size, each with its reason (auto.py)
    }
    if per_task:
        summary["final_val_loss_per_task"] = {k.split("/", 1)[1]: v for k, v in per_task.items()
                                              if k.startswith("val_loss/")}
    if session.data.mixture is not None:
        summary["mixture"] = session.data.mixture
    if session.data.manifest.get("rag_context"):  # data rendered with retrieved passages (compare.ragaware)
        summary["rag_context"] = session.data.manifest["rag_context"]
    if generated:
        summary["final_generate_rougeL"] = generated[-1]["rougeL"]
    if session.setup.preference is not None:  # the rewards of the last step and the last validation
        last = steps[-1] if steps else {}
        summary["preference"] = {k: v for k, v in {**last, **(last_eval or {})}.items()
                                 if k.removeprefix("val_") in preference.METRICS}
        summary["preference"]["reference_seconds"] = round(session.setup.preference.reference_seconds, 3)
    return summary


def train_one(config: ExperimentConfig, *, resume: bool = False, dry_run: bool = False,
              callback: Callback | None = None, progress: bool = True, dist: Dist | None = None,
              start_adapter: Path | None = None, data: TrainData | None = None, base_model: Any = None,
              stop: Callable[[], bool] | None = None) -> TrainResult:
    """One stage (config.stages is ignored): start_adapter continues a previous stage's adapter.

    For callers that train many runs of one data set (a sweep's trials): `data` is the rendered data to
    train on instead of preparing config.data, `base_model` the base model to adapt instead of loading
    it (build_model), and `stop` is asked after every step, like Ctrl-C: True checkpoints and stops the
    run (status "interrupted"), so a pruned trial ends cleanly within one evaluation interval."""
    from .plan import build_plan

    started = time.perf_counter()
    run_dir = Path(config.run_dir)
    if not resume and not dry_run and latest_checkpoint(run_dir) is not None:
        raise TunelabError(
            f"{run_dir} already holds checkpoints of an earlier run: pass --resume to continue it, or pick "
            "another experiment name (or remove the directory) to start over"
        )
    is_main = dist is None or dist.is_main
    bar = RichProgress(config.name) if progress and not dry_run and is_main else None
    emit = fan_out(bar, callback) if is_main else (lambda _event: None)
    session = _build(config, emit, lambda: False, dist, start_adapter, data, base_model)
    config = session.config  # the auto settings resolved (auto.py)
    setup = session.setup
    with loss_head(session.model, virtual_tokens(session.model)) as head:
        setup.head = head
        grpo = config.train.objective == "grpo"
        if grpo:
            from .grpo import attach

            attach(setup, session.tokenizer, session.threads)
        if setup.preference is not None:
            setup.preference.head = head
        if dry_run:
            if setup.preference is not None:  # the plan times forward+backward: any reference values will do
                setup.preference.reference = {"train": torch.zeros((len(setup.train), 2))}
            trainable, total = count_parameters(session.model)
            plan = build_plan(
                setup, method=config.method.name, n_params=total, trainable=trainable,
                model_config=base_causal_lm(session.model).config.to_dict(),
                dtype="float32" if session.precision == "fp32" else "bfloat16",
                train_stats=session.data.train_stats, val_stats=session.data.val_stats, r=config.method.r,
                precision=session.precision, threads=session.threads,
                benchmark=not grpo,  # a grpo step is mostly generation: a forward/backward rate says little
            )
            plan["warnings"] = session.warnings
            plan["auto"] = session.auto
            return TrainResult(run_dir, "planned", plan=plan)
        if is_main:
            save_resolved(config, run_dir, notes=auto.format_choices(session.auto))
        if setup.preference is not None:  # from the starting weights, so before a checkpoint is loaded
            setup.preference.prepare_reference(setup, run_dir, _identity(config, session.data.dataset_hash), resume,
                                               is_main)
        state = _restore(config, session) if resume else TrainState()
        # Only the loop turns Ctrl-C into "checkpoint and stop"; while loading, Ctrl-C aborts at once.
        with graceful_interrupt() as stop_requested:
            setup.stop_requested = stop_requested if stop is None else (lambda: stop_requested() or stop())
            try:
                outcome = run_loop(setup, state)
            finally:
                if bar is not None:
                    bar.close()
    adapter = get_method(config.method.name).adapter
    artifact = None
    if outcome.status != "interrupted":
        whole = distributed.full_state_dict(session.model) if dist is not None and dist.fsdp else None
        if is_main:
            artifact = save_artifacts(run_dir, session.model, session.tokenizer, adapter, whole,
                                      base=config.model.name)
    summary = _summary(config, session, outcome.state, outcome.status, outcome.last_eval,
                       time.perf_counter() - started, artifact)
    summary["end_weights_sha256"] = weights_digest(setup.params) if adapter else None
    if is_main:
        write_json(run_dir / "summary.json", summary)
        if session.tokenizer.chat_template and artifact is None:
            write_text(run_dir / "chat_template.jinja", session.tokenizer.chat_template)
    emit({"event": "end", "status": outcome.status, "step": outcome.state.step})
    if dist is not None:
        dist.barrier()  # the others may read what rank 0 just wrote (a next stage starts from it)
    return TrainResult(run_dir, outcome.status, summary, model=session.model)
