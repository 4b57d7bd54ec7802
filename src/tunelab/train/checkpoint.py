"""Checkpoints: everything needed to continue a run to the same result as if it had never stopped.

A checkpoint directory `<run_dir>/checkpoints/step-NNNNNNN/` holds the trainable weights (safetensors),
the optimizer and scheduler states and the torch RNG state (state.pt, loaded with weights_only=True),
and state.json: the step, the data-order position (epoch, step within it: the epoch's order is a pure
function of the seed and epoch), the numpy and Python RNG states, early-stopping state, the training log
so far, and the fingerprints of the config sections and dataset the run was started with. It is built
in a temporary directory and renamed into place, so a checkpoint that exists is complete; the newest
`keep_last` are kept.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import TunelabError
from ..io import atomic_dir, write_json

CHECKPOINTS = "checkpoints"
PREFIX = "step-"
# Sections whose change makes a checkpoint belong to another experiment.
FINGERPRINT_SECTIONS = ("model", "method", "train")


@dataclass
class TrainState:
    """Progress of a run: what a checkpoint restores besides weights and optimizer."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    best_val: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


# -- RNG ------------------------------------------------------------------------------------------------


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able numpy/python states, tensor states for torch)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    plain = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(tensors["cuda"]))


# -- fingerprints ---------------------------------------------------------------------------------------


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def describe_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """'train.lr: checkpoint 0.0002, now 0.0001' for every differing leaf."""
    a, b = _flatten(saved), _flatten(current)
    return [
        f"{key}: checkpoint {a.get(key, '(unset)')!r}, now {b.get(key, '(unset)')!r}"
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def check_compatible(saved: dict[str, Any], identity: dict[str, Any], where: Path) -> None:
    """Raise saying exactly what differs when a checkpoint belongs to another config or dataset."""
    problems = describe_differences(saved.get("sections", {}), identity["sections"])
    if saved.get("world_size", 1) != identity.get("world_size", 1):
        problems.append(f"processes: checkpoint {saved.get('world_size', 1)}, now {identity.get('world_size', 1)} "
                        "(the global batch, and so every step, depends on the number of processes)")
    if bool(saved.get("fsdp")) != bool(identity.get("fsdp")):
        problems.append(f"FSDP: checkpoint {bool(saved.get('fsdp'))}, now {bool(identity.get('fsdp'))} (launch "
                        "with the accelerate config the run started with)")
    if saved.get("dataset_hash") != identity["dataset_hash"]:
        problems.append(
            f"dataset hash: checkpoint {saved.get('dataset_hash')}, now {identity['dataset_hash']} "
            "(the training data changed)"
        )
    if problems:
        shown = "\n  ".join(problems[:20])
        raise TunelabError(
            f"the checkpoint {where} was made with a different config or dataset, so resuming would not "
            f"give the run it started:\n  {shown}\nRestore the original config, or start over without "
            "--resume (after moving the run directory away)."
        )


# -- save / load ----------------------------------------------------------------------------------------


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"{PREFIX}{step:07d}"


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _tensors(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").contiguous() for name, p in params.items()}


def save_checkpoint(
    run_dir: Path,
    *,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    identity: dict[str, Any],
    keep_last: int,
    best: dict[str, torch.Tensor] | None = None,
    scaler: Any = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
) -> Path:
    """Write a checkpoint atomically, then drop the oldest beyond keep_last. `weights` and
    `optimizer_state` replace params' tensors and optimizer.state_dict() (whole ones gathered from FSDP
    shards, the optimizer state then keyed by parameter name)."""
    target = checkpoint_dir(run_dir, state.step)
    plain_rng, tensor_rng = rng_state()
    with atomic_dir(target, kind="checkpoint") as tmp:
        save_file({n: t.contiguous() for n, t in weights.items()} if weights is not None else _tensors(params),
                  str(tmp / "trainable.safetensors"))
        if best is not None:
            save_file(best, str(tmp / "best.safetensors"))
        torch.save(
            {
                "optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": tensor_rng,
                "scaler": scaler.state_dict() if scaler is not None else None,
            },
            tmp / "state.pt",
        )
        write_json(tmp / "state.json", {"state": state.to_dict(), "rng": plain_rng, **identity})
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass
class Restored:
    state: TrainState
    best: dict[str, torch.Tensor] | None


def load_checkpoint(
    path: Path,
    *,
    params: dict[str, nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    identity: dict[str, Any],
    scaler: Any = None,
    load_params: Callable[[dict[str, nn.Parameter], dict[str, torch.Tensor]], None] | None = None,
    load_optimizer: Callable[[dict], None] | None = None,
) -> Restored:
    """Check the checkpoint belongs to this run, then restore weights, optimizer, scheduler and RNG.
    load_params / load_optimizer replace the plain copies (FSDP: each process keeps its shards)."""
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    check_compatible(meta, identity, path)
    weights = load_file(str(path / "trainable.safetensors"))
    missing = sorted(set(params) - set(weights))
    if missing:
        raise TunelabError(f"checkpoint {path} lacks trainable weights {missing[:5]}; it is not from this run")
    if load_params is not None:
        load_params(params, weights)
    else:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name].to(p.device, p.dtype))
    blob = torch.load(path / "state.pt", weights_only=True, map_location="cpu")
    (load_optimizer or optimizer.load_state_dict)(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob.get("scaler"):
        scaler.load_state_dict(blob["scaler"])
    set_rng_state(meta["rng"], blob["rng"])
    best_path = path / "best.safetensors"
    best = load_file(str(best_path)) if best_path.is_file() else None
    return Restored(TrainState.from_dict(meta["state"]), best)
