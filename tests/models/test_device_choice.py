"""`model.device: auto` means the same device for training, the comparison, `tunelab eval`, the judge and
local teachers: every one of them turns the setting into a device through models.loading.resolve_device."""

from __future__ import annotations

import pytest

from tunelab.config import ExperimentConfig
from tunelab.models import loading


@pytest.fixture
def spy(monkeypatch):
    calls: list[str] = []

    def resolve(device: str = "auto") -> str:
        calls.append(device)
        return "cpu"

    monkeypatch.setattr(loading, "resolve_device", resolve)
    return calls


def _config(tiny_model_dir) -> ExperimentConfig:
    return ExperimentConfig.model_validate({"name": "dev", "model": {"name": str(tiny_model_dir)}})


def test_training_and_comparison_resolve_auto_the_same_way(spy, tiny_model_dir):
    from tunelab.compare.evaluate import _device as compare_device
    from tunelab.train.setup import device_for as train_device

    config = _config(tiny_model_dir)
    assert config.model.device == "auto"
    assert str(train_device(config)) == "cpu" and compare_device(config) == "cpu"
    assert spy == ["auto", "auto"]


def test_eval_judge_and_teachers_load_on_auto_by_default(spy, tiny_model_dir):
    from tunelab.llm.local import LocalBackend

    loading.load_model(str(tiny_model_dir))  # what `tunelab eval` and adapter checks call
    backend = LocalBackend(str(tiny_model_dir))  # the local judge and the local teacher
    backend._load()
    assert spy == ["auto", "auto"]
