"""Tiny training runs for the export tests: a real `tunelab.train.run` on the tiny Llama fixture, a few steps,
so the run directory is exactly what `tunelab train` writes (adapter or whole model, tokenizer, chat
template, config.resolved.yaml)."""

from __future__ import annotations

import json
from pathlib import Path

CHAT = [("What is the capital of France?", "Paris."), ("Say hello.", "Hello world."),
        ("What does the fox jump over?", "The lazy dog."), ("Who resets passwords?", "The IT helpdesk.")]


def train_tiny_run(model_dir: Path, workdir: Path, method: str = "lora", steps: int = 3,
                   chat_template: Path | None = None, **method_opts) -> Path:
    """A run directory trained for `steps` steps with `method` on the model in `model_dir` (fp32), with the
    chat template file `chat_template` instead of the model's when given."""
    from tunelab.config import ExperimentConfig
    from tunelab.train import run

    data = workdir / f"{method}-chat.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in CHAT * 2), encoding="utf-8")
    opts = {"r": 4, "alpha": 8, "dropout": 0.0} if method in ("lora", "dora", "qlora") else {}
    config = ExperimentConfig.model_validate({
        "name": f"{method}-run", "workdir": str(workdir), "model": {"name": str(model_dir),
                                                          "chat_template": str(chat_template) if chat_template else None},
        "data": {"train": [str(data)], "split": {"train": 1.0, "validation": 0.0}, "dedup": "none", "pii": "off",
                 "max_length": 64},
        "method": {"name": method, **opts, **method_opts},
        # a high lr so a few steps move the weights visibly; fp32 so the merge comparison is exact
        "train": {"max_steps": steps, "batch_size": 4, "lr": 5e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                  "precision": "fp32"},
    })
    return run(config, progress=False).run_dir
