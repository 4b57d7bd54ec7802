"""The sweep: section's validation (errors that name the key and line) and the space's sampling."""

from __future__ import annotations

import optuna
import pytest
import yaml

from tunelab.config import SweepConfig, load_config
from tunelab.errors import ConfigError
from tunelab.sweep import space


def _config_error(tmp_path, sweep: dict) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "sweep": sweep}, sort_keys=False))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return str(exc.value)


@pytest.mark.parametrize(("entry", "expected"), [
    ({"train.lrr": {"type": "float", "low": 1e-5, "high": 1e-3}}, "did you mean 'train.lr'"),
    ({"data.max_length": [64, 128]}, "dotted field path in method or train"),
    ({"train.objective": ["sft", "causal"]}, "cannot be searched"),
    ({"method.r": {"type": "float", "low": 4, "high": 8}}, "use type int"),
    ({"train.scheduler": ["cosine", "bogus"]}, "'bogus' is not a valid train.scheduler"),
    ({"train.lr": {"type": "float", "low": 0, "high": 1e-3, "log": True}}, "log range needs low > 0"),
    ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-3}}, "must not be above high"),
    ({"train.lr": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
    ({"train.warmup_ratio": {"type": "float", "low": 0.0, "high": 1.5}}, "1.5 is not a valid train.warmup_ratio"),
])
def test_a_bad_space_is_an_error_naming_its_line(tmp_path, entry, expected):
    message = _config_error(tmp_path, {"trials": 3, "space": entry})
    assert message.count("sweep.space") == 1 and "(line " in message, message
    assert expected in message, message


def test_bad_budget_and_storage_are_errors(tmp_path):
    assert "sweep.trials (line 3): must be > 0" in _config_error(tmp_path, {"trials": 0})
    assert "journal:PATH" in _config_error(tmp_path, {"storage": "study.db"})


def test_the_default_space_is_valid_and_sampled_values_become_overrides(tmp_path):
    sweep = SweepConfig()
    assert set(sweep.space) == {"train.lr", "train.scheduler", "train.epochs", "method.r"}
    choices = {"method.target_modules": {"type": "categorical", "choices": ["all-linear", ["q_proj", "v_proj"]]},
               "train.batch_size": {"type": "int", "low": 2, "high": 8, "step": 2}}
    sweep = SweepConfig.model_validate({"space": choices})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = []
    for _ in range(12):
        values = space.sample(study.ask(), sweep.space)
        seen.append(values["method.target_modules"])
        assert values["train.batch_size"] in (2, 4, 6, 8)
    assert ["q_proj", "v_proj"] in seen and "all-linear" in seen  # a list choice comes back as the list
    config = load_config(_write(tmp_path))
    applied = space.apply(config, {"method.target_modules": ["q_proj", "v_proj"], "train.lr": 3e-4})
    assert applied.method.target_modules == ["q_proj", "v_proj"] and applied.train.lr == 3e-4
    assert config.train.lr == "auto"  # the original is untouched (auto: chosen when training starts)


def _write(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "sweep": {}}))
    return path
