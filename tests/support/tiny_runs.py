"""Tiny trained runs for the export tests: a base model directory that tunelab converted from the bundled
SmolLM2 (so it has a public id) with an experiment config that trains a LoRA adapter on it in a second, and
`train_tiny_run`, a real `tunelab.train.run` on the tiny Llama fixture, a few steps, so the run directory is
exactly what `tunelab train` writes (adapter or whole model, tokenizer, chat template, config.resolved.yaml)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml
from chat_pairs import PAIRS, write_pairs

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def converted_base(model_dir: Path, out: Path) -> Path:
    """A copy of a tiny model directory with the provenance note tunelab writes when it converts the
    bundled SmolLM2 into its cache (models.registry._provenance): the same shape of directory a bundled
    model trains from, small enough for a test."""
    shutil.copytree(model_dir, out)
    (out / "tunelab-model.json").write_text(json.dumps({
        "format": 1, "name": "smollm2-135m-instruct", "licence": "apache-2.0",
        "source": {"kind": "bundled", "upstream": SMOLLM2_ID, "quantization": "Q4_1"}}))
    return out


def experiment_config(tmp: Path, model: Path, name: str = "faq", pairs=PAIRS[:8], **sections: Any) -> dict[str, Any]:
    data = write_pairs(tmp / f"{name}.jsonl", pairs)
    config: dict[str, Any] = {
        "name": name, "workdir": str(tmp / "runs"), "model": {"name": str(model)},
        "data": {"train": [str(data)], "split": {"train": 1.0, "validation": 0.0}, "dedup": "none", "pii": "off",
                 "max_length": 64},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                  "precision": "fp32"},
        "tracking": {"enabled": False},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def write_config(tmp: Path, model: Path, name: str = "faq", **sections: Any) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment_config(tmp, model, name, **sections)))
    return path

CHAT = [("What is the capital of France?", "Paris."), ("Say hello.", "Hello world."),
        ("What does the fox jump over?", "The lazy dog."), ("Who resets passwords?", "The IT helpdesk.")]


def train_tiny_run(model_dir: Path, workdir: Path, method: str = "lora", steps: int = 3,
                   chat_template: Path | None = None, **method_opts) -> Path:
    """A run directory trained for `steps` steps with `method` on the model in `model_dir` (fp32), with the
    chat template file `chat_template` instead of the model's when given."""
    from tunelab.config import ExperimentConfig
    from tunelab.train import run

    workdir.mkdir(parents=True, exist_ok=True)
    name = f"{method}-run"
    config = experiment_config(workdir, model_dir, name, pairs=CHAT * 2)
    config["workdir"] = str(workdir)
    config["model"]["chat_template"] = str(chat_template) if chat_template else None
    lora = {"r": 4, "alpha": 8, "dropout": 0.0} if method in ("lora", "dora", "qlora") else {}
    config["method"] = {"name": method, **lora, **method_opts}
    # a high lr so a few steps move the weights visibly; fp32 so the merge comparison is exact
    config["train"].update(max_steps=steps, lr=5e-2)
    config.pop("tracking")  # as before: the default tracking section
    return run(ExperimentConfig.model_validate(config), progress=False).run_dir
