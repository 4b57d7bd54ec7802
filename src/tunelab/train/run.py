"""`run(config)`: a training run from an experiment config to a run directory.

A config with `stages:` is handed to stages.run_stages (sequential fine-tuning, one run per stage);
a config with `mixture:` trains on several task datasets sampled by weight (mixture.py). Under a
multi-process launcher the run is data-parallel (distributed.py). What follows is one stage.

Order: prepare `config.data` into `<run_dir>/data` (reused while its options and inputs are unchanged)
-> load the tokenizer (the chat template override applied) -> render the train and validation splits
with the objective -> load the model for the method (4-bit for qlora) and adapt it -> train (or, for a
dry run, measure and plan) -> write the run directory:

    adapter_config.json + adapter_model.safetensors   (PEFT methods; PeftModel.from_pretrained(base, run_dir))
    config.json + model.safetensors                   (full; AutoModelForCausalLM.from_pretrained(run_dir))
    tokenizer files + chat_template.jinja             (the exact template training rendered with)
    config.resolved.yaml, train_log.jsonl, summary.json, checkpoints/, data/

Every file is written atomically. The CPU path: threads set to the physical cores, bf16 autocast only
where bf16 pays (avx512_bf16/AMX or a bf16 GPU), no DataLoader workers (they steal the cores), optional
regional torch.compile of the decoder layers. TUNELAB_THREADS overrides the thread count (on a machine
shared with other jobs, fewer threads than cores avoids OpenMP threads spinning against each other);
processes launched together on one machine share its cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ExperimentConfig, save_resolved
from ..errors import TunelabError
from ..io import write_json, write_jsonl, write_text
from . import distributed, fast_lora
from .artifacts import save_artifacts, weights_digest
from .batching import Layout
from .checkpoint import FINGERPRINT_SECTIONS, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import Dist
from .distributed import setup as setup_distributed
from .loop import LoopSetup, count_steps, run_loop
from .loss import base_causal_lm, loss_head
from .methods import (
    build_optimizer,
    count_parameters,
    get_method,
    load_quantized,
    resolve_targets,
    trainable_parameters,
    virtual_tokens,
)
from .objectives import get_objective
from .progress import RichProgress, fan_out
from .schedule import build_scheduler

__all__ = ["TrainResult", "build_model", "load_tokenizer_for", "prepare_data", "prepare_dataset", "run",
           "save_artifacts", "train_one", "weights_digest"]

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


# -- data ---------------------------------------------------------------------------------------------


def prepare_dataset(config: ExperimentConfig, out_dir: Path) -> dict[str, Any]:
    """Prepare config.data into out_dir unless a dataset made with the same options from inputs of the
    same content is already there; returns its manifest."""
    return prepare_data(config.data, out_dir)


def prepare_data(data: DataConfig, out_dir: Path) -> dict[str, Any]:
    """prepare_dataset for one data section (a mixture prepares each task's this way). Document files or
    directories among the inputs become text records first (documents.py)."""
    from ..data.prepare import MANIFEST, input_digest, load_manifest
    from ..data.prepare import run as prepare
    from .documents import documents_to_records

    data, documents = documents_to_records(data, out_dir)
    extra = {"documents": documents} if documents else {}
    options = json.loads(data.model_dump_json())
    manifest_file = out_dir / MANIFEST
    if manifest_file.is_file():
        manifest = load_manifest(out_dir)
        # by content, not modification time: a file edited within the same second, or copied in with an
        # old mtime, is prepared again
        if manifest.get("options") == options and manifest.get("input_digest") == input_digest(data):
            return {**manifest, **extra}
    return {**prepare(data, out_dir).manifest, **extra}


def _load_split_if_any(dataset_dir: Path, split: str) -> list:
    from ..data.prepare import load_split

    return load_split(dataset_dir, split) if (dataset_dir / f"{split}.jsonl").is_file() else []


# -- model --------------------------------------------------------------------------------------------


def load_tokenizer_for(config: ExperimentConfig):
    from ..models.loading import load_tokenizer

    tokenizer = load_tokenizer(config.model.name)
    if config.model.chat_template:
        path = Path(config.model.chat_template)
        if not path.is_file():
            raise TunelabError(f"model.chat_template: {path} not found (a Jinja chat template file)")
        tokenizer.chat_template = path.read_text(encoding="utf-8")
    return tokenizer


def load_base_model(config: ExperimentConfig, quantized: bool, device: str):
    from ..models.loading import load_model
    from ..models.registry import model_path

    if quantized:
        return load_quantized(str(model_path(config.model.name)), device)
    dtype = config.model.dtype
    if dtype == "auto" and config.method.name == "full":
        dtype = "float32"  # full fine-tuning keeps fp32 master weights; autocast does the fast math
    return load_model(config.model.name, dtype=dtype, device=device)


def build_model(config: ExperimentConfig, device: torch.device | None = None,
                start_adapter: Path | None = None) -> tuple[Any, list[str] | None]:
    """Seed, load the base model for the method and adapt it: the exact starting point of a run.
    start_adapter: a saved adapter of the same method and shape to continue from (a previous stage's).
    Returns (model, resolved LoRA target modules or None)."""
    method = get_method(config.method.name)
    device = device or _device(config)
    _seed_everything(config.train.seed)
    model = load_base_model(config, method.quantized, str(device))
    targets = resolve_targets(model, config.method) if method.name in ("lora", "dora", "qlora") else None
    model = method.apply(model, config.method)
    if start_adapter is not None:
        load_adapter_weights(model, start_adapter)
    return model, targets


def load_adapter_weights(model, adapter_dir: Path) -> None:
    """Put a saved adapter's weights into a freshly adapted model; every adapter weight must match."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(adapter_dir), device=str(next(model.parameters()).device))
    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        odd = sorted(set(weights) ^ expected)[:5]
        raise TunelabError(f"the adapter in {adapter_dir} does not fit this stage's method (differing weights: "
                           f"{', '.join(odd)}); stages that continue an adapter need the same method settings")
    set_peft_model_state_dict(model, weights)


def _device(config: ExperimentConfig, dist: Dist | None = None) -> torch.device:
    from ..models.loading import resolve_device

    if dist is not None:
        return dist.device  # one GPU per process (cuda:<local rank>) or the CPU
    return torch.device(resolve_device(config.model.device))


def precision_for(choice: str, device: torch.device) -> tuple[str, Callable[[], contextlib.AbstractContextManager],
                                                                Any, list[str]]:
    """(precision name, autocast factory, grad scaler or None, warnings)."""
    from ..models.hardware import bf16_pays

    warnings: list[str] = []
    pays, why = bf16_pays(device.type)
    if choice == "auto":
        choice = "bf16" if pays else "fp32"
        if device.type == "cuda" and not pays:
            choice = "fp16"
    if choice == "fp16" and device.type != "cuda":
        raise TunelabError("train.precision fp16 needs a CUDA GPU; use bf16 (where the CPU supports it) or fp32")
    if choice == "bf16" and not pays:
        warnings.append(f"train.precision bf16 on this hardware will be slow: {why}")
    if choice == "fp32":
        return "fp32", contextlib.nullcontext, None, warnings
    dtype = torch.bfloat16 if choice == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if choice == "fp16" else None
    return choice, lambda: torch.autocast(device.type, dtype=dtype), scaler, warnings


def _threads(dist: Dist | None = None) -> int:
    from ..models.hardware import physical_cores

    share = physical_cores() // (dist.local_world if dist is not None else 1)
    cores = int(os.environ.get("TUNELAB_THREADS", 0)) or max(1, share)
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _compile_layers(model) -> None:
    """Regional compilation: each decoder layer is compiled once (layers share code, so the compile
    is paid once) instead of the whole model; sequence lengths vary, so shapes are dynamic."""
    decoder = base_causal_lm(model).get_decoder()
    for layer in getattr(decoder, "layers", []):
        layer.compile(dynamic=True)


# -- run directory ------------------------------------------------------------------------------------


def _identity(config: ExperimentConfig, dataset_hash: str, dist: Dist | None = None) -> dict[str, Any]:
    resolved = config.resolved()
    return {
        "sections": {s: resolved[s] for s in FINGERPRINT_SECTIONS},
        "fingerprint": config.fingerprint(*FINGERPRINT_SECTIONS),
        "dataset_hash": dataset_hash,
        "world_size": dist.world if dist is not None else 1,  # the global batch depends on it
        "fsdp": bool(dist is not None and dist.fsdp),  # the optimizer state is then keyed by name
    }


def _check_fsdp(config: ExperimentConfig) -> None:
    if config.method.name == "qlora":
        raise TunelabError("method qlora cannot be sharded with FSDP (its 4-bit weights are not shardable "
                           "tensors); launch with configs/accelerate/ddp.yaml, or use lora")
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
    manifest: dict[str, Any]
    train_stats: dict[str, Any]
    val_stats: dict[str, Any] | None
    precision: str
    threads: int
    warnings: list[str]
    targets: list[str] | None
    dataset_hash: str = ""
    mixture: dict[str, Any] | None = None
    start_digest: str | None = None
    dist: Dist | None = None

    @property
    def is_main(self) -> bool:
        return self.dist is None or self.dist.is_main


def _data(config: ExperimentConfig, tokenizer, dist: Dist | None):
    """(train, val, train stats, val stats, manifest, dataset hash, epoch plan, mixture summary, val records)."""
    run_dir = Path(config.run_dir)
    objective = get_objective(config.train.objective)
    first = dist.main_first() if dist is not None else contextlib.nullcontext()
    if config.mixture:
        from .mixture import build_mixture

        with first:  # rank 0 prepares, the others then find the prepared data unchanged
            mix, train_stats, val_stats = build_mixture(config.mixture, config.data, run_dir / "data", objective,
                                                        tokenizer, config.train.seed, prepare_data)
        val_records = [r for t in config.mixture for r in _load_split_if_any(run_dir / "data" / t.task, "validation")]
        manifest = {"dataset_hash": mix.dataset_hash, "tasks": mix.manifests}

        def plan(epoch: int, step_size: int, bucket: bool) -> list[list[int]]:
            return mix.epoch_steps(epoch, step_size, bucket)

        return (mix.train, mix.val, train_stats, val_stats, manifest, mix.dataset_hash, plan, mix.summary(),
                val_records)
    with first:
        manifest = prepare_dataset(config, run_dir / "data")
    max_length = config.data.max_length
    train, train_stats = objective.build(_load_split_if_any(run_dir / "data", "train"), tokenizer, max_length)
    val_records = _load_split_if_any(run_dir / "data", "validation")
    val, val_stats = objective.build(val_records, tokenizer, max_length) if val_records else ([], None)
    if not train:
        raise TunelabError("no training example has a token in the loss after rendering; check data.max_length "
                           "and that chat records end with an assistant reply")
    return train, val, train_stats, val_stats, manifest, manifest["dataset_hash"], None, None, val_records


def _build(config: ExperimentConfig, emit: Callback, stop_requested: Callable[[], bool], dist: Dist | None = None,
           start_adapter: Path | None = None) -> _Session:
    cfg = config.train
    run_dir = Path(config.run_dir)
    method = get_method(config.method.name)
    device = _device(config, dist)
    threads = _threads(dist)
    precision, autocast, scaler, warnings = precision_for(cfg.precision, device)

    tokenizer = load_tokenizer_for(config)
    train, val, train_stats, val_stats, manifest, dataset_hash, plan, mixture, val_records = _data(
        config, tokenizer, dist)
    max_length = config.data.max_length
    warnings += train_stats["warnings"]
    manifests = manifest.get("tasks", {"": manifest}).values() if config.mixture else [manifest]
    for m in manifests:
        for skipped in (m.get("documents") or {}).get("skipped", []):
            warnings.append(f"document {skipped['path']} skipped: {skipped['reason']}")

    model, targets = build_model(config, device, start_adapter)
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
        _compile_layers(model)
    if cfg.packing and not method.packing:
        warnings.append(f"method {method.name}: PEFT drops position ids for it, so examples are length-bucketed "
                        "instead of packed")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    layout = Layout(packing=cfg.packing and method.packing, capacity=max_length, pad_id=int(pad_id),
                    with_mask=not method.packing)
    world = dist.world if dist is not None else 1
    steps_per_epoch, total_steps = count_steps(len(train), cfg, world)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, config.method.embedding_lr)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps, cfg.warmup_ratio)
    identity = _identity(config, dataset_hash, dist)
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

        generate_eval = make_generate_eval(model, tokenizer, val_records, cfg.eval_generate_n,
                                           cfg.eval_generate_max_new_tokens, threads)
    setup = LoopSetup(
        model=model, head=None, optimizer=optimizer, scheduler=scheduler, params=params, train=train, val=val,  # type: ignore[arg-type]
        layout=layout, cfg=cfg, total_steps=total_steps, steps_per_epoch=steps_per_epoch, device=device,
        autocast=autocast, emit=emit if is_main else (lambda _e: None), save=save, flush_log=flush_log,
        stop_requested=stop_requested, scaler=scaler, dist=dist, generate_eval=generate_eval,
    )
    if plan is not None:
        setup.epoch_plan = lambda epoch: plan(epoch, setup.step_size, setup.bucket)
    return _Session(setup, model, tokenizer, manifest, train_stats, val_stats, precision, threads, warnings,
                    targets, dataset_hash, mixture, start_digest, dist)


def _restore(config: ExperimentConfig, session: _Session) -> TrainState:
    run_dir = Path(config.run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise TunelabError(f"nothing to resume: {run_dir / 'checkpoints'} has no checkpoint; run without --resume")
    setup = session.setup
    fsdp = setup.dist is not None and setup.dist.fsdp
    restored = load_checkpoint(
        path, params=setup.params, optimizer=setup.optimizer, scheduler=setup.scheduler,
        identity=_identity(config, session.dataset_hash, setup.dist), scaler=setup.scaler,
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
        "final_val_perplexity": last_eval["val_ppl"] if last_eval else None,
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
        "dataset_hash": session.dataset_hash,
        "data": {"train": session.train_stats, "validation": session.val_stats},
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
    }
    if per_task:
        summary["final_val_loss_per_task"] = {k.split("/", 1)[1]: v for k, v in per_task.items()
                                              if k.startswith("val_loss/")}
    if session.mixture is not None:
        summary["mixture"] = session.mixture
    if generated:
        summary["final_generate_rougeL"] = generated[-1]["rougeL"]
    return summary


def run(config: ExperimentConfig, *, resume: bool = False, dry_run: bool = False,
        callback: Callback | None = None, progress: bool = True) -> TrainResult:
    """Train as the config says; see the module docstring for what is written where.

    resume: continue from the latest checkpoint (same config and data, else TunelabError); with stages,
    completed stages are skipped.
    dry_run: build everything, measure a couple of micro-batches, return the plan; nothing is trained.
    callback: receives every loop event (start, step, eval, eval_generate, checkpoint, end; with stages also
    stage) as a dict.
    """
    dist = setup_distributed(config.model.device)
    if config.stages:
        from .stages import run_stages

        return run_stages(config, resume=resume, dry_run=dry_run, callback=callback, progress=progress, dist=dist)
    return train_one(config, resume=resume, dry_run=dry_run, callback=callback, progress=progress, dist=dist)


def train_one(config: ExperimentConfig, *, resume: bool = False, dry_run: bool = False,
              callback: Callback | None = None, progress: bool = True, dist: Dist | None = None,
              start_adapter: Path | None = None) -> TrainResult:
    """One stage (config.stages is ignored): start_adapter continues a previous stage's adapter."""
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
    session = _build(config, emit, lambda: False, dist, start_adapter)
    setup = session.setup
    with loss_head(session.model, virtual_tokens(session.model)) as head:
        setup.head = head
        if dry_run:
            trainable, total = count_parameters(session.model)
            plan = build_plan(
                setup, method=config.method.name, n_params=total, trainable=trainable,
                model_config=base_causal_lm(session.model).config.to_dict(),
                dtype="float32" if session.precision == "fp32" else "bfloat16",
                train_stats=session.train_stats, val_stats=session.val_stats, r=config.method.r,
                precision=session.precision, threads=session.threads,
            )
            plan["warnings"] = session.warnings
            return TrainResult(run_dir, "planned", plan=plan)
        if is_main:
            save_resolved(config, run_dir)
        state = _restore(config, session) if resume else TrainState()
        # Only the loop turns Ctrl-C into "checkpoint and stop"; while loading, Ctrl-C aborts at once.
        with graceful_interrupt() as stop_requested:
            setup.stop_requested = stop_requested
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
            artifact = save_artifacts(run_dir, session.model, session.tokenizer, adapter, whole)
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
