"""Fixtures for sweep tests: a small question-answer set and a sweep config file on the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from chat_pairs import PAIRS, write_pairs


@pytest.fixture
def sweep_file(tmp_path, train_model_dir, monkeypatch, request):
    """write(**sections) -> a config file: the tiny model, 12 pairs (a quarter held out as the development
    split, as data.split also holds out a quarter, so best.yaml trains on the trials' training records),
    fp32 pinned (results are compared for equality), a few steps a trial. One thread: tiny models gain
    nothing from more, and a busy machine's OpenMP spinning slows them down (restored after the test)."""
    import torch

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))

    def write(name: str = "sw", **sections) -> Path:
        data = write_pairs(tmp_path / "pairs.jsonl", PAIRS)
        base = {
            "name": name,
            "workdir": str(tmp_path / "runs"),
            "model": {"name": str(train_model_dir)},
            "data": {"train": [str(data)], "split": {"train": 0.75, "validation": 0.25}, "dedup": "none",
                     "pii": "off", "max_length": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                      "precision": "fp32", "eval_every": 1, "save_every": 100},
            "tracking": {"enabled": False},
            "sweep": {"space": {"train.lr": [1e-2, 1e-6], "method.r": [4, 8]},
                      "objective": {"metric": "val_loss"}, "trials": 3, "dev_share": 0.25, "startup_trials": 1},
        }
        for key, value in sections.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) \
                else value
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(base), encoding="utf-8")
        return path

    return write


@pytest.fixture
def pairs_writer():
    """write_pairs(path, pairs) and the default PAIRS, for tests that write their own files."""
    return write_pairs, PAIRS
