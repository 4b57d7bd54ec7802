"""A sweep end to end on the tiny model: pruning, child runs, reuse, the best config, the report, and a
development split that never touches the evaluation set."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from tunelab.config import load_config
from tunelab.sweep import run

GOOD = {"train.lr": 1e-2, "method.r": 4}
BAD = {"train.lr": 1e-6, "method.r": 4}  # barely moves in one step: worse than the median at step 1


def test_three_trials_prune_track_reuse_the_base_and_the_best_config_trains_the_same(sweep_file, tmp_path,
                                                                                      monkeypatch):
    from mlflow import MlflowClient

    import tunelab.models.loading as loading
    from tunelab.train import run as train

    loads = []
    real_load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    config = load_config(sweep_file(tracking={"enabled": True}))
    # trial 1 repeats trial 0 on the reused base model; trial 2 is bad and must be pruned at its first value
    result = run(config, progress=False, enqueue=[GOOD, GOOD, BAD])

    assert [t["state"] for t in result.trials] == ["complete", "complete", "pruned"]
    first, second, pruned = result.trials
    assert len(loads) == 1, "trials 1 and 2 reuse the base model trial 0 loaded"
    assert second["value"] == pytest.approx(first["value"], rel=1e-6), "a reused base gives a fresh base's result"
    assert result.ran[2]["pruned_at_step"] == 1  # stopped within one evaluation interval (eval_every 1)
    pruned_dir = Path(pruned["run_dir"])
    steps = [json.loads(line) for line in (pruned_dir / "train_log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps if "loss" in r) == 1
    assert json.loads((pruned_dir / "summary.json").read_text())["status"] == "pruned"
    assert not (pruned_dir / "checkpoints").exists()  # not left as a half run that looks resumable

    # every trial is a child run of the sweep run, with its params, values and state
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sw")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("tunelab.stage") == "sweep")
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["tunelab.sweep.trial"]))
    assert [c.data.tags["tunelab.trial_state"] for c in children] == ["complete", "complete", "pruned"]
    assert children[2].data.params["train.lr"] == "1e-06"
    assert children[0].data.metrics["objective"] == pytest.approx(first["value"])
    assert "objective" not in children[2].data.metrics
    assert client.get_metric_history(children[2].info.run_id, "objective_intermediate")

    # the report: a page and pictures
    assert "objective.png" in Path(result.report_path).read_text()
    assert Path(result.files["objective_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the best config is a plain experiment file: training it gives the trial's result
    assert result.best_trial in (0, 1)
    best = load_config(result.best_config_path)
    assert best.train.lr == GOOD["train.lr"] and best.name == "sw"
    again = train(best, progress=False)
    assert again.summary["final_val_loss"] == pytest.approx(result.best_value, rel=1e-5)


def test_the_objective_never_sees_the_evaluation_set(sweep_file, tmp_path, monkeypatch, pairs_writer):
    from tunelab.models.generate import Generator
    from tunelab.train.setup import load_tokenizer_for

    train_module = importlib.import_module("tunelab.train.run")  # the module (tunelab.train.run is also a function)
    write_pairs, _ = pairs_writer
    sentinels = [(f"SENTINEL question {i}?", f"SENTINEL answer {i}.") for i in range(4)]
    heldout = write_pairs(tmp_path / "heldout.jsonl", sentinels)
    config = load_config(sweep_file(data={"eval": str(heldout)}, sweep={
        "space": {"train.lr": [1e-2, 1e-3]}, "objective": {"metric": "rougeL"}, "trials": 2, "pruner": "none",
        "dev_share": 0.25}))
    prompts: list[str] = []
    real_generate = Generator.generate

    def spy_generate(self, batch, *args, **kwargs):
        prompts.extend(json.dumps(p) for p in batch)
        return real_generate(self, batch, *args, **kwargs)

    trained_on: list[str] = []
    real_train = train_module.run

    def spy_train(config, **kwargs):
        tokenizer = load_tokenizer_for(config)
        data = kwargs["data"]
        trained_on.extend(tokenizer.decode(e.input_ids) for e in [*data.train, *data.val])
        return real_train(config, **kwargs)

    monkeypatch.setattr(Generator, "generate", spy_generate)
    monkeypatch.setattr(train_module, "run", spy_train)
    result = run(config, progress=False)

    assert [t["state"] for t in result.trials] == ["complete", "complete"]
    assert prompts and trained_on
    assert not [p for p in prompts + trained_on if "SENTINEL" in p], "the objective touched the evaluation set"
    dev_questions = {json.dumps(r.messages[:-1]) for r in load_split_records(result.out_dir)}
    assert set(prompts) <= dev_questions  # every generation answered a development question
    assert result.dev["heldout_records"] == len(sentinels) and result.dev["dev_records"] == 3
    assert all(0 <= t["value"] <= 1 for t in result.trials)  # ROUGE-L, maximised
    assert result.direction == "maximize"


def load_split_records(out_dir: Path):
    from tunelab.data.prepare import load_split

    return load_split(Path(out_dir) / "data", "validation")


def test_evaluation_questions_are_leak_checked_against_the_dev_split(sweep_file, tmp_path, pairs_writer):
    from tunelab.sweep import devsplit
    from tunelab.train.setup import load_tokenizer_for

    write_pairs, pairs = pairs_writer
    config = load_config(sweep_file())
    tokenizer = load_tokenizer_for(config)
    first = devsplit.build(config, tokenizer, tmp_path / "a")
    leaked = first.dev_records[0]
    question = leaked.messages[0]["content"]
    pair = next(p for p in pairs if p[0] == question)
    heldout = write_pairs(tmp_path / "heldout.jsonl", [pair, ("SENTINEL?", "SENTINEL.")])
    config = load_config(sweep_file(data={"eval": str(heldout)}))
    second = devsplit.build(config, tokenizer, tmp_path / "b")
    assert question not in {r.messages[0]["content"] for r in second.dev_records}
    assert len(second.dev_records) == len(first.dev_records) - 1
    record = json.loads((tmp_path / "b" / "dev.json").read_text())
    assert len(record["dev_removed_as_heldout_leaks"]) == 1 and record["heldout_records"] == 2
    assert record["dev_ids"] == [devsplit.record_id(r) for r in second.dev_records]
    assert len(record["dev_sha256"]) == 64
