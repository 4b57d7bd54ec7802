"""Fixtures for training tests: a memorisable chat set, a text corpus and configs on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import ExperimentConfig

FACTS = [
    ("How many days of leave?", "25 days per year."),
    ("When are expense reports due?", "Within 30 days."),
    ("What is the capital of France?", "Paris."),
    ("Who resets passwords?", "The IT helpdesk."),
    ("What is the helpdesk extension?", "Extension 4455."),
    ("What does the fox jump over?", "The lazy dog."),
    ("Say hello.", "Hello world."),
    ("What colour is the fox?", "Brown."),
]


def write_chat(path: Path, pairs=FACTS, repeat: int = 1) -> Path:
    rows = []
    for r in range(repeat):
        for q, a in pairs:
            suffix = f" (variant {r})" if r else ""
            rows.append({"messages": [{"role": "user", "content": q + suffix}, {"role": "assistant", "content": a}]})
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def write_text_corpus(path: Path, n: int = 12) -> Path:
    words = "the quick brown fox jumps over the lazy dog employees get paid leave every year".split()
    rows = [{"text": " ".join(words[(i + j) % len(words)] for j in range(20 + 7 * i))} for i in range(n)]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Tiny models gain nothing from threads, and on a busy CI machine OpenMP spinning makes them 10x slower."""
    import torch

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def chat_writer():
    """write_chat(path, pairs=FACTS, repeat=1) for tests that need a second data file."""
    return write_chat


@pytest.fixture
def chat_file(tmp_path) -> Path:
    return write_chat(tmp_path / "facts.jsonl")


@pytest.fixture
def make_config(tmp_path, train_model_dir):
    """ExperimentConfig on the tiny model; sections given as dicts are merged over fast test defaults."""

    def make(name: str = "exp", data_file: Path | None = None, **sections) -> ExperimentConfig:
        data_file = data_file or write_chat(tmp_path / f"{name}-data.jsonl")
        base = {
            "name": name,
            "workdir": str(tmp_path / "runs"),
            "model": {"name": str(train_model_dir)},
            "data": {"train": [str(data_file)], "split": {"train": 1.0, "validation": 0.0},
                     "dedup": "none", "pii": "off", "max_length": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            # fp32 pinned: these tests compare runs for equality (resume, two processes, compile), which bf16
            # rounding breaks; "auto" would pick bf16 on CPUs with avx512_bf16/AMX. bf16 has its own tests
            # (test_precision.py) with tolerances argued there.
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "scheduler": "constant",
                      "precision": "fp32"},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return ExperimentConfig.model_validate(base)

    return make
