"""The pieces a training run is set up from: its data, tokenizer, model, device, threads and seed.

`load_data` prepares `config.data` (or each task of a mixture) into `<run_dir>/data`, reused while its
options and inputs are unchanged, and renders the splits with the objective; `build_model` seeds, loads
the base model the method asks for (through tunelab.models.loading, 4-bit for qlora) and adapts it;
`precision_for` decides bf16/fp16/fp32 for the device. single.py builds one run from these.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig, ExperimentConfig
from ..errors import TunelabError
from . import auto
from .batching import Example
from .distributed import Dist
from .loss import base_causal_lm
from .methods import Method, get_method, resolve_targets
from .objectives import get_objective

# -- data ---------------------------------------------------------------------------------------------


def prepare_dataset(config: ExperimentConfig, out_dir: Path) -> dict[str, Any]:
    """Prepare config.data into out_dir unless a dataset made with the same options from inputs of the
    same content is already there; returns its manifest."""
    return preparer(config)(config.data, out_dir)


def preparer(config: ExperimentConfig) -> Callable[[DataConfig, Path], dict[str, Any]]:
    """prepare_data as this config's training needs it (a validation split when early stopping or an
    evaluation interval asks for one); every caller preparing for the config goes through this, so the
    same config always chooses the same auto share (and reuses the same prepared data)."""
    return functools.partial(prepare_data, needs_validation=auto.needs_validation(config.train))


def prepare_data(data: DataConfig, out_dir: Path, needs_validation: bool = False) -> dict[str, Any]:
    """prepare_dataset for one data section (a mixture prepares each task's this way). Document files or
    directories among the inputs become text records first (documents.py). An auto validation share is
    chosen from the count of input records (auto.py; the manifest's options hold the chosen share, so a
    dataset is reused only for the same share); the returned manifest's "auto" says what and why."""
    from ..data.prepare import MANIFEST, input_digest, load_manifest, read_inputs
    from ..data.prepare import run as prepare
    from .documents import documents_to_records

    data, documents = documents_to_records(data, out_dir)
    extra: dict[str, Any] = {"documents": documents} if documents else {}
    if data.split.validation == auto.AUTO and data.train:
        data, choices = auto.resolve_split(data, len(read_inputs(data)[2].records), needs_validation)
        extra["auto"] = choices
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


@dataclass
class TrainData:
    """A run's rendered data and what describes it."""

    train: list[Example]
    val: list[Example]
    train_stats: dict[str, Any]
    val_stats: dict[str, Any] | None
    manifest: dict[str, Any]
    dataset_hash: str
    val_records: list  # the validation records before rendering (generation during training answers them)
    plan: Callable[[int, int, bool], list[list[int]]] | None = None  # a mixture's steps (epoch, step size, bucket)
    mixture: dict[str, Any] | None = None  # a mixture's summary


def load_data(config: ExperimentConfig, tokenizer, dist: Dist | None) -> TrainData:
    """Prepare and render the run's data (a mixture's tasks sampled by weight, mixture.py)."""
    run_dir = Path(config.run_dir)
    objective = get_objective(config.train.objective)
    first = dist.main_first() if dist is not None else contextlib.nullcontext()
    if config.mixture:
        from .mixture import build_mixture

        with first:  # rank 0 prepares, the others then find the prepared data unchanged
            mix, train_stats, val_stats = build_mixture(config.mixture, config.data, run_dir / "data", objective,
                                                        tokenizer, config.train.seed, preparer(config))
        val_records = [r for t in config.mixture for r in _load_split_if_any(run_dir / "data" / t.task, "validation")]
        manifest = {"dataset_hash": mix.dataset_hash, "tasks": mix.manifests}

        def plan(epoch: int, step_size: int, bucket: bool) -> list[list[int]]:
            return mix.epoch_steps(epoch, step_size, bucket)

        return TrainData(mix.train, mix.val, train_stats, val_stats, manifest, mix.dataset_hash, val_records,
                         plan, mix.summary())
    with first:
        manifest = prepare_dataset(config, run_dir / "data")
    max_length = config.data.max_length
    train, train_stats = objective.build(_load_split_if_any(run_dir / "data", "train"), tokenizer, max_length)
    val_records = _load_split_if_any(run_dir / "data", "validation")
    val, val_stats = objective.build(val_records, tokenizer, max_length) if val_records else ([], None)
    if not train:
        raise TunelabError("no training example has a token in the loss after rendering; check data.max_length "
                           "and that chat records end with an assistant reply")
    return TrainData(train, val, train_stats, val_stats, manifest, manifest["dataset_hash"], val_records)


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


def load_base_model(config: ExperimentConfig, method: Method, device: str):
    """The base model as the method needs it: 4-bit for a quantized method, else model.dtype (the
    method's own dtype where that is auto)."""
    from ..models.loading import load_model

    if method.quantized:
        return load_model(config.model.name, device=device, quantization="nf4")
    dtype = config.model.dtype
    if dtype == "auto" and method.auto_dtype is not None:
        dtype = method.auto_dtype
    return load_model(config.model.name, dtype=dtype, device=device)


def build_model(config: ExperimentConfig, device: torch.device | None = None,
                start_adapter: Path | None = None, base_model: Any = None) -> tuple[Any, list[str] | None]:
    """Seed, load the base model for the method and adapt it: the exact starting point of a run.
    start_adapter: a saved adapter of the same method and shape to continue from (a previous stage's).
    base_model: the base model already loaded as load_base_model would load it, without an adapter (a
    sweep's trials share one: tunelab.sweep unloads each trial's adapter); it is adapted in place.
    Returns (model, resolved LoRA target modules or None)."""
    method = get_method(config.method.name)
    device = device or device_for(config)
    seed_everything(config.train.seed)
    model = base_model if base_model is not None else load_base_model(config, method, str(device))
    # Seeded again: the adapter's initial weights then depend on the seed alone, not on whether loading
    # the base drew random numbers, so a trial on a reused base starts where a fresh process would.
    seed_everything(config.train.seed)
    targets = resolve_targets(model, config.method) if method.lora_family else None
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


def device_for(config: ExperimentConfig, dist: Dist | None = None) -> torch.device:
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


def set_threads(dist: Dist | None = None) -> int:
    from ..models.hardware import physical_cores

    share = physical_cores() // (dist.local_world if dist is not None else 1)
    cores = int(os.environ.get("TUNELAB_THREADS", 0)) or max(1, share)
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def compile_layers(model) -> None:
    """Regional compilation: each decoder layer is compiled once (layers share code, so the compile
    is paid once) instead of the whole model; sequence lengths vary, so shapes are dynamic."""
    decoder = base_causal_lm(model).get_decoder()
    for layer in getattr(decoder, "layers", []):
        layer.compile(dynamic=True)

