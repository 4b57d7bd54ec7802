"""compare.tune in `tunelab run`: a search per model before its tuned variant trains, the tuned variant
trained with the best settings, the report saying how it was chosen, a rerun reusing the study and the
training, and an evaluation set that never reaches the search's objective."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml
from chat_pairs import PAIRS, write_pairs
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.config import load_config
from tunelab.errors import TunelabError

SENTINELS = [(f"SENTINEL question {i}?", f"SENTINEL answer {i}.") for i in range(3)]


@pytest.fixture
def tune_experiment(tmp_path, train_model_dir, monkeypatch, request):
    """write(**sections) -> an experiment file on the tiny model: 12 training pairs, 3 held-out SENTINEL
    questions, no retrieval, fp32 pinned, 3 steps a run, compare.tune with 2 trials. The config's own
    learning rate (5e-3) is outside the searched choices, so a tuned run shows which one it got."""
    import torch

    monkeypatch.setenv("TUNELAB_THREADS", "1")
    request.addfinalizer(lambda threads=torch.get_num_threads(): torch.set_num_threads(threads))

    def write(**sections) -> Path:
        base = {
            "name": "tune-exp", "workdir": str(tmp_path / "runs"),
            "model": {"name": str(train_model_dir)},
            "data": {"train": [str(write_pairs(tmp_path / "train.jsonl", PAIRS))],
                     "eval": str(write_pairs(tmp_path / "eval.jsonl", SENTINELS)),
                     "split": {"train": 0.75, "validation": 0.25}, "dedup": "none", "pii": "off", "max_length": 64},
            "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 5e-3, "warmup_ratio": 0.0, "scheduler": "constant",
                      "precision": "fp32", "eval_every": 1, "save_every": 100},
            "eval": {"metrics": ["rougeL"], "max_new_tokens": 6, "batch_size": 4},
            "compare": {"rag": "off", "tune": {"trials": 2}},
            "sweep": {"space": {"train.lr": [1e-2, 1e-6], "method.r": [4, 8]}, "objective": {"metric": "val_loss"},
                      "dev_share": 0.25, "startup_trials": 1, "pruner": "none"},
        }
        for key, value in sections.items():
            base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) \
                else value
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump(base), encoding="utf-8")
        return path

    return write


def _run(path: Path, *overrides: str) -> dict:
    result = CliRunner().invoke(app, ["run", str(path), *overrides, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _steps(out: dict) -> dict[str, dict]:
    return {s["step"].split(" ")[0]: s for s in out["steps"]}


def _mlflow_stages(workdir: Path) -> list[str]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tune-exp").experiment_id])
    return sorted(r.data.tags.get("tunelab.stage") for r in runs)


def test_run_searches_then_trains_the_best_settings_and_a_rerun_reuses_both(tune_experiment, tmp_path):
    path = tune_experiment()
    out = _run(path)
    steps = _steps(out)
    assert steps["tune"]["status"] == "ran" and steps["train"]["status"] == "ran"
    record = steps["tune"]["tune"]
    assert record["trials"] == 2 and record["complete"] == 2 and record["metric"] == "val_loss"
    assert record["direction"] == "minimize" and record["dev"]["dev_records"] == 3
    assert set(record["best_params"]) == {"train.lr", "method.r"}

    # the best trial of the study is what the record says, and the tuned variant trained with it
    import optuna

    from tunelab.sweep.study import open_storage

    study = optuna.load_study(study_name=record["study"], storage=open_storage(record["storage"]))
    assert study.best_trial.value == pytest.approx(record["best_value"])
    assert study.best_trial.params["train.lr"] == record["best_params"]["train.lr"]
    tuned = load_config(Path(steps["train"]["run_dir"]) / "config.resolved.yaml")
    assert tuned.train.lr == record["best_params"]["train.lr"] != 5e-3
    assert tuned.method.r == record["best_params"]["method.r"]
    assert json.loads((Path(steps["train"]["run_dir"]) / "tune.json").read_text()) == record

    # the search lives under <run_dir>/tune/<model>/sweep, apart from the tuned run it chose settings for
    run_dir = Path(out["run_dir"])
    assert Path(record["report"]).is_file() and Path(record["report"]).is_relative_to(run_dir / "tune")
    assert load_config(record["best_config"]).compare.tune is None  # best.yaml: a plain experiment

    # the report, the table, the JSON files and MLflow say how the tuned variant was chosen
    compare_dir = run_dir / "compare"
    sentence = next(s for s in out["compare"]["comparison"]["reading"] if s.startswith("How "))
    assert "2 trials" in sentence and "val_loss" in sentence and "never on the eval set" in sentence
    assert f"train.lr={record['best_params']['train.lr']:.4g}" in sentence
    assert sentence in (compare_dir / "table.md").read_text()
    report = (compare_dir / "report.html").read_text()
    assert "How the tuned variants were chosen" in report and "chosen settings" in report
    tuned_row = next(r for r in json.loads((compare_dir / "comparison.json").read_text())["rows"]
                     if r["kind"] == "tuned")
    assert tuned_row["tune"] == record
    assert json.loads((run_dir / "pipeline.json").read_text())["tune"] == out["tune"] != {}
    stages = _mlflow_stages(run_dir.parent)
    assert stages.count("sweep") == 1 and stages.count("trial") == 2 and stages.count("train") == 1

    # a rerun with the same settings: the finished study and the trained run are reused
    again = _run(path)
    steps2 = _steps(again)
    assert steps2["tune"]["status"] == "cached" and steps2["train"]["status"] == "cached"
    assert steps2["tune"]["tune"] == record
    assert _mlflow_stages(run_dir.parent) == sorted([*stages, "compare"])  # only the compare step again

    # a larger budget continues the same study with the missing trial only
    more = _steps(_run(path, "compare.tune.trials=3"))
    assert more["tune"]["status"] == "resumed" and more["tune"]["study"] == record["study"]
    assert more["tune"]["tune"]["trials"] == 3
    assert _mlflow_stages(run_dir.parent).count("trial") == 3


def test_the_evaluation_set_never_reaches_the_search_objective(tune_experiment, monkeypatch):
    import tunelab.sweep.objective as objective
    from tunelab.train.setup import load_tokenizer_for

    train_module = importlib.import_module("tunelab.train.run")  # the module (tunelab.train.run is also a function)
    scored: list[str] = []
    real_score = objective.dev_score

    def spy_score(model, tokenizer, config, records, metric):
        scored.extend(json.dumps(r.messages) for r in records)
        return real_score(model, tokenizer, config, records, metric)

    trained_on: list[str] = []
    real_train = train_module.run

    def spy_train(config, **kwargs):  # a trial: trains on the sweep's data, scores on its development split
        tokenizer = load_tokenizer_for(config)
        trained_on.extend(tokenizer.decode(e.input_ids) for e in [*kwargs["data"].train, *kwargs["data"].val])
        return real_train(config, **kwargs)

    monkeypatch.setattr(objective, "dev_score", spy_score)
    monkeypatch.setattr(train_module, "run", spy_train)
    out = _run(tune_experiment(sweep={"objective": {"metric": "rougeL"}}, train={"eval_generate_every": 3},
                               tracking={"enabled": False}))

    record = _steps(out)["tune"]["tune"]
    assert record["metric"] == "rougeL" and record["complete"] == 2
    assert len(scored) == 2 * record["dev"]["dev_records"] and trained_on  # both trials scored, on dev only
    assert not [t for t in scored + trained_on if "SENTINEL" in t], "the search touched the evaluation set"
    assert record["dev"]["heldout_records"] == len(SENTINELS)
    # while the comparison itself is measured on the held-out questions
    assert out["compare"]["comparison"]["n"] == len(SENTINELS)


@pytest.mark.parametrize(("sections", "message"), [
    ({"data": {"eval": None, "split": {"train": 0.6, "validation": 0.2, "test": 0.2}}},
     "apart from data.train"),
    ({"compare": {"train": False, "tune": {"trials": 2}}}, "needs train: true"),
    ({"compare": {"tune": {"trials": None}}}, "needs a budget"),
])
def test_a_search_that_could_see_the_eval_set_or_has_nothing_to_do_is_a_config_error(tune_experiment, sections,
                                                                                       message):
    with pytest.raises(TunelabError, match=r"exp\.yaml") as err:
        load_config(tune_experiment(**sections))
    assert message in str(err.value)
