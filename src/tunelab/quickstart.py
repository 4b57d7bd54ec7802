"""The main job on the bundled example: what `make quickstart` runs.

Today it runs the stages that exist, in pipeline order, on examples/handbook with the bundled
SmolLM2-135M-Instruct: pull the model into the cache (first time only), prepare the handbook data
(validate, clean, dedup, PII, split, leak check against the held-out eval set) with token statistics
from the model's chat template, and answer a few held-out questions with the base model as a smoke
check of the model path. Training, evaluation and the base-vs-tuned-vs-RAG comparison join here as
their stages land.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, load_config, save_resolved
from .errors import TunelabError


@dataclass
class QuickstartResult:
    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "steps": self.steps, "samples": self.samples}


def find_example(example_dir: str | Path | None = None) -> Path:
    path = Path(example_dir or "examples/handbook")
    config = path / "quickstart.yaml"
    if not config.is_file():
        raise TunelabError(
            f"{config} not found: run quickstart from the tunelab repository root, or pass --example DIR"
        )
    return config


def run(config: ExperimentConfig, *, n_samples: int = 3, on_stage: Callable[[str], None] | None = None) -> QuickstartResult:
    from .data import prepare
    from .models import load_model, load_tokenizer, pull

    stage = on_stage or (lambda _s: None)
    result = QuickstartResult(run_dir=config.run_dir)
    config.run_dir.mkdir(parents=True, exist_ok=True)
    save_resolved(config, config.run_dir)

    t = time.perf_counter()
    stage(f"model: pulling {config.model.name} (first time converts the GGUF, about a minute)")
    model_dir = pull(config.model.name)
    result.steps.append({"step": "model pull", "path": str(model_dir), "seconds": round(time.perf_counter() - t, 1)})

    t = time.perf_counter()
    stage("data: preparing the handbook dataset")
    prepared = prepare.run(config.data, config.run_dir / "data", model=config.model.name, on_stage=stage)
    result.steps.append(
        {"step": "data prepare", **prepared.to_dict(), "seconds": round(time.perf_counter() - t, 1)}
    )

    if n_samples:
        t = time.perf_counter()
        stage("base model: answering held-out questions")
        tokenizer = load_tokenizer(config.model.name)
        model = load_model(config.model.name)
        result.samples = _answer(model, tokenizer, prepare.load_split(config.run_dir / "data", _eval_split(prepared)), n_samples)
        result.steps.append({"step": "base model answers", "n": len(result.samples), "seconds": round(time.perf_counter() - t, 1)})
    return result


def _eval_split(prepared) -> str:
    for name in ("eval", "test", "validation"):
        if prepared.splits.get(name):
            return name
    return "train"


def _answer(model, tokenizer, records, n: int) -> list[dict[str, str]]:
    """Greedy answers from the base model: a smoke check that the model and template work end to end."""
    import torch

    out = []
    for rec in records[:n]:
        prompt = tokenizer.apply_chat_template(rec.prompt_messages(), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(**ids, max_new_tokens=60, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answer = tokenizer.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        out.append({"question": rec.prompt_messages()[-1]["content"], "reference": rec.reference() or "", "base_model": answer})
    return out


def load(example_dir: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(find_example(example_dir), overrides)
