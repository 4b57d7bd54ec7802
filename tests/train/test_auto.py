"""Defaults that fit (train/auto.py): the rules on synthetic sizes, explicit values winning over auto, the
choices in the dry run, summary.json and config.resolved.yaml, and the reuse key following the choices."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.config import SplitConfig, TrainConfig, validate_data
from tunelab.train import auto, format_plan, run
from tunelab.train.setup import prepare_data

LORA = {"method": "lora", "n_params": 135_000_000, "loss_tokens": 10_000}


def rules(n_examples: int, step_size: int = 8, has_validation: bool = False, **train) -> dict:
    return auto.train_rules(TrainConfig(**train), n_examples=n_examples, step_size=step_size,
                            has_validation=has_validation, **LORA)


def values(choices: dict) -> dict:
    return {name: choice["value"] for name, choice in choices.items()}


def test_small_set_trains_every_pair_at_a_constant_lr_long_enough():
    picked = values(rules(396))  # the handbook's size: 50 steps an epoch
    assert picked["scheduler"] == "constant" and picked["warmup_ratio"] == 0.0
    assert picked["epochs"] == auto.SMALL_MIN_EPOCHS and picked["lr"] == pytest.approx(2e-4)
    assert picked["early_stopping_patience"] is None
    assert auto.validation_share(396, needs=False)[0] == 0.0
    # a tiny set repeats until it has made enough optimizer steps, within the bound
    assert values(rules(136))["epochs"] * 17 >= auto.SMALL_MIN_STEPS  # 17 steps an epoch
    assert values(rules(8))["epochs"] == auto.SMALL_MAX_EPOCHS
    # a small set holds a tiny share out only when something reads the validation split
    assert auto.validation_share(396, needs=True)[0] == auto.SMALL_VALIDATION
    assert auto.needs_validation(TrainConfig(early_stopping_patience=2))
    assert not auto.needs_validation(TrainConfig()) and not auto.needs_validation(TrainConfig(early_stopping_patience=None))


def test_large_set_decays_after_a_warmup_and_keeps_a_validation_share():
    picked = values(rules(5_000, has_validation=True))
    assert picked["scheduler"] == "cosine" and picked["warmup_ratio"] == auto.LARGE_WARMUP
    assert picked["epochs"] == 2 and values(rules(50_000))["epochs"] == 1
    assert auto.validation_share(5_000, needs=False)[0] == auto.LARGE_VALIDATION
    assert auto.validation_share(100_000, needs=False)[0] * 100_000 == pytest.approx(auto.LARGE_VALIDATION_MAX)
    # early stopping only with a validation split evaluated often enough to see a trend
    assert picked["early_stopping_patience"] is None  # 2 evaluations (one an epoch)
    assert values(rules(5_000, has_validation=True, eval_every=50))["early_stopping_patience"] == auto.PATIENCE
    assert values(rules(5_000, has_validation=False, eval_every=50))["early_stopping_patience"] is None
    # max_steps decides the length; epochs only reports it
    assert values(rules(5_000, max_steps=625))["epochs"] == 1.0
    # every choice carries its reason
    assert all(choice["reason"] for choice in rules(5_000).values())


def test_the_method_decides_the_lr():
    assert values(auto.train_rules(TrainConfig(), method="ia3", n_examples=100, loss_tokens=1, n_params=10**8,
                                   step_size=8, has_validation=False))["lr"] == pytest.approx(3e-3)
    assert values(auto.train_rules(TrainConfig(), method="full", n_examples=100, loss_tokens=1, n_params=10**8,
                                   step_size=8, has_validation=False))["lr"] == pytest.approx(2e-5)


def test_an_explicit_value_always_wins(tmp_path):
    config = validate_data({"name": "x", "train": {"lr": 1e-3, "scheduler": "cosine", "early_stopping_patience": None},
                            "data": {"split": {"train": 0.9}}})
    resolved, choices = auto.resolve_train(config, n_examples=100, loss_tokens=1000, n_params=10**8,
                                           has_validation=False)
    assert set(choices) == {"train.warmup_ratio", "train.epochs"}
    assert (resolved.train.lr, resolved.train.scheduler, resolved.train.early_stopping_patience) == (1e-3, "cosine", None)
    assert resolved.train.warmup_ratio == 0.0 and resolved.train.epochs == 8.0  # 13 steps an epoch, 100 steps
    # giving train alone fixes validation (the rest): it is the user's, not auto's
    assert config.data.split.validation == pytest.approx(0.1)
    assert auto.resolve_split(config.data, 100, needs=False) == (config.data, {})
    assert SplitConfig(validation=0.2).ratios() == pytest.approx({"train": 0.8, "validation": 0.2, "test": 0.0})
    with pytest.raises(Exception, match="auto"):
        SplitConfig().ratios()  # data prepare is never given an unresolved share
    assert auto.auto_fields(config) == ["train.warmup_ratio", "train.epochs"]


def test_dry_run_summary_and_resolved_config_show_the_choices(make_config):
    unset = {"epochs": "auto", "lr": "auto", "scheduler": "auto", "warmup_ratio": "auto"}
    config = make_config("auto", data={"split": {"validation": "auto"}}, train=unset)
    plan = run(config, dry_run=True, progress=False).plan
    assert set(plan["auto"]) == {"data.split.validation", "train.epochs", "train.lr", "train.scheduler",
                                 "train.warmup_ratio", "train.early_stopping_patience"}
    text = format_plan(plan)
    for name, choice in plan["auto"].items():
        assert f"auto {name} = " in text and choice["reason"] in text
    # 8 pairs, 2 steps an epoch: every pair trains, constant lr, repeated up to the bound
    assert plan["validation_examples"] == 0 and plan["total_steps"] == 2 * auto.SMALL_MAX_EPOCHS

    result = run(config, progress=False)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["auto"] == plan["auto"] and summary["steps"] == plan["total_steps"]
    text = (result.run_dir / "config.resolved.yaml").read_text()
    resolved = yaml.safe_load(text)
    assert resolved["train"]["scheduler"] == "constant" and resolved["train"]["epochs"] == auto.SMALL_MAX_EPOCHS
    assert resolved["data"]["split"]["validation"] == 0.0
    assert "# auto train.scheduler = constant: " in text  # the reasons stay with the values
    # the resolved file trains the same way again (explicit values, nothing left to choose)
    again = validate_data(resolved)
    assert auto.auto_fields(again) == [] and again.train == result_train(result)


def result_train(result) -> TrainConfig:
    return TrainConfig(**yaml.safe_load((result.run_dir / "config.resolved.yaml").read_text())["train"])


def _qa(path, n: int):
    path.write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) + "\n"
                            for i in range(n)))
    return path


def test_more_data_flips_the_split_rule_and_the_key_follows(tmp_path, monkeypatch):
    from tunelab.pipeline import train_key

    def prepared(n: int) -> tuple:
        config = validate_data({"name": "k", "workdir": str(tmp_path / "runs"), "model": {"device": "cpu"},
                                "data": {"train": [str(_qa(tmp_path / "qa.jsonl", n))], "dedup": "none", "pii": "off"}})
        manifest = prepare_data(config.data, tmp_path / f"data-{n}")
        return config, manifest

    monkeypatch.setattr("tunelab.compare.variants.model_identity", lambda *a, **k: {"model": "fixed"})
    small, small_manifest = prepared(auto.SMALL_SET - 1)
    large, large_manifest = prepared(auto.SMALL_SET)
    assert small_manifest["auto"]["data.split.validation"]["value"] == 0.0
    assert small_manifest["splits"]["validation"] == 0
    assert large_manifest["auto"]["data.split.validation"]["value"] == auto.LARGE_VALIDATION
    assert large_manifest["splits"]["validation"] == auto.SMALL_SET * auto.LARGE_VALIDATION
    assert large_manifest["options"]["split"]["validation"] == auto.LARGE_VALIDATION  # reused only for this share

    key = train_key(large, large_manifest["dataset_hash"])
    assert train_key(large, large_manifest["dataset_hash"]) == key
    # other rules choose other values: a run trained under them is not reused
    monkeypatch.setattr(auto, "rules_digest", lambda: "other rules")
    assert train_key(large, large_manifest["dataset_hash"]) != key
    # a config with nothing left to auto does not depend on the rules
    explicit = large.model_copy(deep=True)
    explicit.data.split = SplitConfig(train=0.9, validation=0.1)
    explicit.train = TrainConfig(epochs=1, lr=1e-4, scheduler="cosine", warmup_ratio=0.0, early_stopping_patience=None)
    before = train_key(explicit, "h")
    monkeypatch.setattr(auto, "rules_digest", lambda: "yet other rules")
    assert train_key(explicit, "h") == before


def test_a_small_set_on_lora_gets_an_update_sized_lr_scaled_by_alpha_over_r():
    small = dict(method="lora", n_examples=396, loss_tokens=10_000, step_size=8, has_validation=False)

    def at(scale, **kw):
        return auto.train_rules(TrainConfig(), lora_scale=scale, **{**small, "n_params": 135_000_000, **kw})["lr"]

    # lr x alpha/r = SMALL_LORA_UPDATE: the default r16/alpha32 (scale 2) trains at 2.7e-3, scale 4 at half
    assert at(2.0)["value"] == pytest.approx(2.7e-3) and at(4.0)["value"] == pytest.approx(1.35e-3)
    assert "alpha/r = 2" in at(2.0)["reason"]
    # outside what was measured the method's own suggestion stands: large sets, large models, non-LoRA methods
    assert at(2.0, n_examples=5_000)["value"] == pytest.approx(2e-4)
    assert at(2.0, n_params=7_000_000_000)["value"] == pytest.approx(2e-4)
    assert at(2.0, method="ia3")["value"] == pytest.approx(3e-3)
    assert at(None)["value"] == pytest.approx(2e-4)


def test_resolve_train_passes_the_configs_lora_scale():
    from tunelab.config import ExperimentConfig

    config = ExperimentConfig.model_validate({"name": "x", "method": {"name": "lora", "r": 8, "alpha": 32}})
    resolved, choices = auto.resolve_train(config, n_examples=396, loss_tokens=10_000, n_params=135_000_000,
                                           has_validation=False)
    assert resolved.train.lr == pytest.approx(1.35e-3) and choices["train.lr"]["value"] == resolved.train.lr


def test_preference_and_reward_objectives_get_their_own_lr_and_passes():
    """dpo/orpo refine at a quarter of the method's rate (no small-set boost for learning facts), for 3
    passes over a small set of pairs; grpo at a tenth of it, one pass over its prompts; sft keeps its rules."""
    small = dict(method="lora", n_examples=101, loss_tokens=3_000, step_size=4, has_validation=False,
                 n_params=135_000_000, lora_scale=2.0)

    def cfg(objective, **kw):
        return TrainConfig(objective=objective, rewards=[{"name": "label"}] if objective == "grpo" else [], **kw)

    def at(objective, **kw):
        return values(auto.train_rules(cfg(objective, **kw), objective=objective, **small))

    sft, dpo, orpo, grpo = at("sft"), at("dpo"), at("orpo"), at("grpo")
    assert sft["lr"] == pytest.approx(2.7e-3) and sft["epochs"] >= auto.SMALL_MIN_EPOCHS
    assert dpo["lr"] == orpo["lr"] == pytest.approx(5e-5) and dpo["epochs"] == orpo["epochs"] == 3
    assert grpo["lr"] == pytest.approx(2e-5) and grpo["epochs"] == 1
    assert at("grpo", max_steps=20)["epochs"] == pytest.approx(20 / 26, abs=1e-3)  # max_steps decides
    reasons = auto.train_rules(cfg("grpo"), objective="grpo", **small)
    assert "grpo" in reasons["lr"]["reason"] and "group_size" in reasons["epochs"]["reason"]


def test_resolve_train_reads_the_objective():
    from tunelab.config import ExperimentConfig

    config = ExperimentConfig.model_validate({"name": "x", "train": {"objective": "dpo"}})
    resolved, _ = auto.resolve_train(config, n_examples=101, loss_tokens=3_000, n_params=135_000_000,
                                     has_validation=False)
    assert resolved.train.lr == pytest.approx(5e-5) and resolved.train.epochs == 3
