"""`tunelab runs list | show` in-process against one store with a small pipeline's runs in it."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.track import Tracker, lineage_tags, step_callback

runner = CliRunner()


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, store_template):
    """A config file and its store holding a pipeline: parent, train (with step metrics), eval, a failure."""
    root = tmp_path_factory.mktemp("runs-cli")
    work = root / "work"
    work.mkdir()
    shutil.copy(store_template, work / "mlflow.db")
    config_file = root / "exp.yaml"
    config_file.write_text("name: cli-demo\nworkdir: work\n")
    from tunelab.config import load_config

    tracker = Tracker.from_config(load_config(config_file))
    (root / "predictions.jsonl").write_text('{"prediction": "x"}\n')
    with tracker.run("pipeline") as parent:
        with tracker.run("train", parent=parent.id, tags=lineage_tags(dataset_hash="abc123")) as train:
            callback = step_callback(train)
            for step in range(1, 6):
                callback({"event": "step", "step": step, "loss": 1.0 / step, "lr": 1e-4, "tokens": 64})
            callback({"event": "eval", "step": 5, "val_loss": 0.4, "val_ppl": 1.49})
            callback({"event": "end"})
        with tracker.run("eval", parent=parent.id, tags=lineage_tags(upstream={"train": train.id})) as ev:
            ev.log_metrics({"rougeL": 0.31, "bleu": 12.5})
            ev.log_artifact(root / "predictions.jsonl")
    with pytest.raises(ValueError), tracker.run("eval") as failed:
        raise ValueError("boom")
    return {"config": config_file, "uri": tracker.uri, "parent": parent.id, "train": train.id, "eval": ev.id,
            "failed": failed.id}


def _json(args):
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_from_config_and_from_uri(tracked):
    data = _json(["runs", "list", str(tracked["config"])])
    assert data["experiments"] == ["cli-demo"]
    assert [r["id"] for r in data["runs"]] == [tracked[k] for k in ("failed", "eval", "train", "parent")]
    by_id = {r["id"]: r for r in data["runs"]}
    assert by_id[tracked["failed"]]["status"] == "FAILED"
    train = by_id[tracked["train"]]
    assert train["stage"] == "train" and train["status"] == "FINISHED" and train["parent"] == tracked["parent"]
    assert train["key_metrics"] == {"val_loss": 0.4, "train_loss": 0.2, "val_ppl": 1.49}
    assert train["duration_s"] >= 0 and train["start_time"].endswith("+00:00")
    assert data["ui_command"] == f"mlflow ui --backend-store-uri {tracked['uri']}"

    by_uri = _json(["runs", "list", "--uri", tracked["uri"], "--stage", "eval"])
    assert {r["id"] for r in by_uri["runs"]} == {tracked["eval"], tracked["failed"]}


def test_list_table(tracked):
    result = runner.invoke(app, ["runs", "list", str(tracked["config"])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert tracked["train"][:8] in result.output and "FAILED" in result.output
    assert "rougeL=0.31" in result.output
    assert f"mlflow ui --backend-store-uri {tracked['uri']}\n" in result.output


def test_show_by_prefix(tracked):
    data = _json(["runs", "show", tracked["train"][:10], "--uri", tracked["uri"]])
    assert data["id"] == tracked["train"] and data["experiment"] == "cli-demo"
    assert data["params"]["train.batch_size"] == "8" and data["tags"]["tunelab.dataset_hash"] == "abc123"
    loss = data["metrics"]["train_loss"]
    assert loss == {"last": 0.2, "step": 5, "points": 5, "first": 1.0, "min": 0.2, "max": 1.0, "steps": [1, 5]}
    assert data["metrics"]["val_loss"] == {"last": 0.4, "step": 5, "points": 1}
    assert [a["path"] for a in data["artifacts"]] == ["config.resolved.yaml"]

    ev = _json(["runs", "show", tracked["eval"], str(tracked["config"])])
    assert ev["upstream"] == {"train": tracked["train"]}
    assert {a["path"] for a in ev["artifacts"]} == {"config.resolved.yaml", "predictions.jsonl"}
    parent = _json(["runs", "show", tracked["parent"], "--uri", tracked["uri"]])
    assert {c["id"] for c in parent["children"]} == {tracked["train"], tracked["eval"]}

    table = runner.invoke(app, ["runs", "show", tracked["eval"], "--uri", tracked["uri"]])
    assert table.exit_code == 0 and "predictions.jsonl" in table.output and "rougeL" in table.output


@pytest.mark.parametrize("args,message", [
    (["runs", "show", "ffffffff"], "no run with an id starting ffffffff"),
    (["runs", "show", "not-an-id"], "is not a run id"),
    (["runs", "show", "f" * 32], "no run ffffffff"),
    (["runs", "list", "--experiment", "nope"], "no experiment 'nope'"),
])
def test_user_errors(tracked, args, message):
    result = runner.invoke(app, [*args, "--uri", tracked["uri"]])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_missing_store_is_not_created(tmp_path):
    db = tmp_path / "nothing" / "mlflow.db"
    result = runner.invoke(app, ["runs", "list", "--uri", f"sqlite:///{db}"])
    assert result.exit_code == 2 and "no MLflow store" in result.output
    assert not db.exists() and not db.parent.exists()
    both = runner.invoke(app, ["runs", "list", str(tmp_path / "x.yaml"), "--uri", f"sqlite:///{db}"])
    assert both.exit_code == 2 and "not both" in both.output
