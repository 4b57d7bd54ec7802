"""Slow training checks: the bundled SmolLM2 learns a slice of the handbook, and torch.compile trains
to the same losses as eager mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import ExperimentConfig
from tunelab.io import read_jsonl
from tunelab.train import run

HANDBOOK = Path(__file__).parents[2] / "examples" / "handbook" / "train.jsonl"


@pytest.mark.slow
def test_smollm2_lora_learns_the_handbook(tmp_path):
    rows = [json.loads(line) for line in HANDBOOK.read_text().splitlines()[:24]]
    data = tmp_path / "slice.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = ExperimentConfig.model_validate({
        "name": "smol", "workdir": str(tmp_path / "runs"), "model": {"name": "smollm2-135m-instruct"},
        "data": {"train": [str(data)], "split": {"train": 1.0, "validation": 0.0}, "dedup": "none",
                 "max_length": 256},
        "method": {"name": "lora", "r": 8, "alpha": 16},
        "train": {"epochs": 4, "batch_size": 8, "lr": 5e-4, "warmup_ratio": 0.0, "save_every": 1000},
    })
    result = run(config, progress=False)
    losses = [r["loss"] for r in read_jsonl(result.run_dir / "train_log.jsonl") if "loss" in r]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses


@pytest.mark.slow
def test_compiled_layers_train_like_eager(make_config):
    eager = run(make_config("eager", train={"max_steps": 3, "batch_size": 8}), progress=False)
    compiled = run(make_config("compiled", train={"max_steps": 3, "batch_size": 8, "compile": True}), progress=False)
    a = [r["loss"] for r in read_jsonl(eager.run_dir / "train_log.jsonl") if "loss" in r]
    b = [r["loss"] for r in read_jsonl(compiled.run_dir / "train_log.jsonl") if "loss" in r]
    assert b == pytest.approx(a, rel=1e-4)
    assert compiled.summary["compile"] is True
