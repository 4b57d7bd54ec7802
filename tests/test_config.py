"""The experiment schema: defaults, every error with its path and line, did-you-mean, overrides, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunelab.config import ExperimentConfig, apply_overrides, load_config, save_resolved
from tunelab.errors import ConfigError, TunelabError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_file_gets_documented_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "name: demo\n"))
    assert cfg.model.name == "smollm2-135m-instruct"
    assert cfg.method.name == "lora" and cfg.method.r == 16
    assert cfg.train.objective == "sft"
    # the settings that decide whether a small set is learned are chosen from the data (train/auto.py)
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.scheduler) == ("auto", "auto", "auto")
    assert cfg.data.split.validation == "auto"
    assert cfg.workdir == (tmp_path / "runs").resolve()
    # every field carries a default or is the required name
    assert set(ExperimentConfig.model_fields) >= {"model", "data", "method", "train", "eval", "rag", "tracking", "serve"}


def test_every_error_is_reported_with_path_and_line(tmp_path):
    path = write(
        tmp_path,
        "name: demo\ntrain:\n  lr: -1\n  epocs: 3\ndata:\n  dedup: fuzzy\n  split: {train: 0.5, validation: 0.1}\n"
        "method:\n  rank: 8\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    errors = info.value.errors
    assert errors == [
        "train.lr (line 3): must be > 0, got -1",
        "train.epocs (line 4): unknown key; did you mean 'epochs'?",
        "data.dedup (line 6): must be one of 'none', 'exact' or 'near', got 'fuzzy'",
        "data.split (line 7): split ratios must sum to 1, got 0.6",
        "method.rank (line 9): unknown key; did you mean 'r'?",
    ]
    assert str(path) in str(info.value)


def test_unknown_section_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "name: demo\ntrian:\n  lr: 1\n"))
    assert info.value.errors == ["trian (line 2): unknown key; did you mean 'train'?"]


def test_missing_name_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "model:\n  name: x\n"))
    assert info.value.errors == ["name: required, but missing"]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "name: [unclosed\n"))
    assert "not valid YAML (line" in info.value.errors[0]
    with pytest.raises(TunelabError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "name: demo\n")
    cfg = load_config(path, ["train.lr=1e-4", "method.name=dora", "data.train=[a.jsonl, b.jsonl]"])
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.method.name == "dora"
    assert cfg.data.train == [(tmp_path / "a.jsonl").resolve(), (tmp_path / "b.jsonl").resolve()]
    with pytest.raises(ConfigError, match=r"train.batch_size: must be > 0, got 0"):
        load_config(path, ["train.batch_size=0"])
    with pytest.raises(TunelabError, match="must look like"):
        apply_overrides({}, ["train.lr"])


def test_paths_resolve_relative_to_the_config_file(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    cfg = load_config(write(sub, "name: demo\nmodel: {name: ./ckpt}\ndata: {train: d.jsonl, eval: e.jsonl}\n"))
    assert cfg.data.train == [(sub / "d.jsonl").resolve()]
    assert cfg.data.eval == (sub / "e.jsonl").resolve()
    assert cfg.model.name == str((sub / "ckpt").resolve())


def test_resolved_config_round_trips_and_fingerprint_is_stable(tmp_path):
    cfg = load_config(write(tmp_path, "name: demo\ntrain: {lr: 0.001}\n"))
    out = save_resolved(cfg, tmp_path / "out")
    again = load_config(out)
    assert again.resolved() == cfg.resolved()
    assert again.fingerprint() == cfg.fingerprint()
    assert cfg.fingerprint("train") != load_config(out, ["train.lr=0.002"]).fingerprint("train")


def test_name_must_be_a_directory_name(tmp_path):
    with pytest.raises(ConfigError, match="must be usable as a directory name"):
        load_config(write(tmp_path, "name: a/b\n"))


def test_benchmark_paths_resolve_relative_to_the_config_file_and_name_known_benchmarks(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    cfg = load_config(write(sub, "name: demo\neval: {baseline: true, benchmark_paths: {hellaswag: data/h.jsonl}}\n"))
    assert cfg.eval.benchmark_paths == {"hellaswag": (sub / "data" / "h.jsonl").resolve()}
    from tunelab.errors import TunelabError
    from tunelab.pipeline import check_benchmark_paths

    bad = load_config(write(sub, "name: demo\neval: {benchmark_paths: {mmlu: m.jsonl}}\n"))
    with pytest.raises(TunelabError, match=r"eval\.benchmark_paths: unknown benchmark mmlu; choose from truthfulqa_mc1"):
        check_benchmark_paths(bad)  # the main job's first step, before any data or model is touched


def test_the_top_level_seed_seeds_the_data_and_the_training():
    """`seed: 7` reruns the experiment with another seed: the split and data order (data.seed) and the
    adapter's initialisation and example order (train.seed), stages included; an explicit one wins."""
    from tunelab.config import ExperimentConfig

    config = ExperimentConfig.model_validate({"name": "x", "seed": 7, "data": {"train": ["t.jsonl"]},
                                              "stages": [{"train": {"objective": "sft"}}]})
    assert (config.data.seed, config.train.seed, config.stages[0].train.seed) == (7, 7, 7)
    explicit = ExperimentConfig.model_validate({"name": "x", "seed": 7, "train": {"seed": 3}})
    assert (explicit.data.seed, explicit.train.seed) == (7, 3)
    default = ExperimentConfig.model_validate({"name": "x"})
    assert (default.seed, default.data.seed, default.train.seed) == (42, 42, 42)
