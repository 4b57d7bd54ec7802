"""The Tracker against a real MLflow SQLite store: runs per stage, params, tags, metrics, artifacts,
step metrics from training events, failures, and store errors."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.track import Tracker, git_state, lineage_tags, step_callback
from tunelab.track.lineage import STAGES
from tunelab.track.tracker import MAX_PARAM_VALUE, clean_key, flatten, ui_command


def _client(tracker: Tracker):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracker.uri)


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for item in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def _git_repo(path: Path) -> Path:
    path.mkdir()
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x", "PATH": "/usr/bin:/bin:/usr/local/bin"}
    (path / "f.txt").write_text("a\n")
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=path, env=env, check=True, capture_output=True)
    return path


def test_flatten_and_clean_key():
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}, "f": None}) == {"a.b.c": 1, "a.d": [], "e": {}, "f": None}
    assert clean_key("bad key!") == "bad key_"
    assert clean_key("/../a//b/./c") == "_/a/b/c"
    long = clean_key("k" * 400)
    assert len(long) == 250 and long != clean_key("k" * 401)


def test_git_state(tmp_path):
    assert git_state(tmp_path) == {}
    repo = _git_repo(tmp_path / "repo")
    state = git_state(repo)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert state["tunelab.git.commit"] == commit == state["mlflow.source.git.commit"]
    assert state["tunelab.git.dirty"] == "false"
    (repo / "f.txt").write_text("changed\n")
    (repo / "untracked.txt").write_text("x\n")
    assert git_state(repo)["tunelab.git.dirty"] == "true"


def test_ui_command():
    assert ui_command("sqlite:////w/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////w/mlflow.db"
    assert "secret-pw" not in ui_command("https://me:secret-pw@mlflow.example.com")


def test_a_run_per_stage_lands_in_the_store(make_config, workdir, tmp_path):
    repo = _git_repo(tmp_path / "repo")
    tracker = Tracker.from_config(make_config(), cwd=repo)
    assert tracker.uri == f"sqlite:///{workdir / 'mlflow.db'}"
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text('{"prediction": "Paris"}\n')
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = bytes(range(256)) * 40
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / ".adapter_model.safetensors.tmp").write_text("partial")

    ids = {}
    for i, stage in enumerate(STAGES):
        with tracker.run(stage, tags=lineage_tags(dataset_hash="d" * 16)) as run:
            run.log_metrics({"score": i / 10})
            if stage == "train":
                run.log_artifacts(adapter, artifact_path="adapter")
            if stage == "eval":
                run.log_artifact(predictions)
        ids[stage] = run.id

    client = _client(tracker)
    experiment = client.get_experiment_by_name("demo")
    assert experiment.artifact_location == (workdir / "mlartifacts").as_uri()
    commit = git_state(repo)["tunelab.git.commit"]
    for i, stage in enumerate(STAGES):
        got = client.get_run(ids[stage])
        assert got.info.status == "FINISHED" and got.info.run_name == stage
        assert got.info.experiment_id == experiment.experiment_id
        tags = got.data.tags
        assert tags["tunelab.stage"] == stage and tags["tunelab.version"] == __version__
        assert tags["tunelab.git.commit"] == commit and tags["tunelab.git.dirty"] == "false"
        assert tags["tunelab.dataset_hash"] == "d" * 16 and tags["tunelab.config_name"] == "demo"
        assert tags["tunelab.base_model"] == "smollm2-135m-instruct" and tags["tunelab.method"] == "lora"
        params = got.data.params
        # the config as written: settings left at auto are logged as "auto" (a train run logs auto.* choices)
        assert params["train.lr"] == "auto" and params["method.name"] == "lora"
        assert params["data.split.validation"] == "auto" and params["tracking.enabled"] == "True"
        assert got.data.metrics == {"score": i / 10}
        assert "config.resolved.yaml" in _artifact_paths(client, ids[stage])
    assert _artifact_paths(client, ids["train"]) == {
        "config.resolved.yaml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert _artifact_paths(client, ids["eval"]) == {"config.resolved.yaml", "predictions.jsonl"}
    stored = workdir / "mlartifacts" / ids["train"] / "artifacts" / "adapter" / "adapter_model.safetensors"
    assert stored.read_bytes() == weights
    config_text = (workdir / "mlartifacts" / ids["eval"] / "artifacts" / "config.resolved.yaml").read_text()
    assert "name: demo" in config_text and "lr: auto" in config_text


def test_params_are_flattened_stringified_and_truncated(make_config):
    tracker = Tracker.from_config(make_config())
    with tracker.run("synth", params={"teacher": {"model": "m", "limits": {"n": 3}}, "files": ["a", "b"],
                                       "long": "x" * 7000, "bad name!": 1, "none": None, "path": Path("/x/y")},
                     log_config=False) as run:
        pass
    params = _client(tracker).get_run(run.id).data.params
    assert params["teacher.model"] == "m" and params["teacher.limits.n"] == "3"
    assert params["files"] == '["a","b"]' and params["bad name_"] == "1"
    assert params["none"] == "None" and params["path"] == "/x/y"
    assert len(params["long"]) == MAX_PARAM_VALUE and params["long"].endswith("[truncated]")
    assert "train.lr" not in params  # log_config=False


def test_metrics_skip_missing_values_and_take_numpy(make_config):
    tracker = Tracker.from_config(make_config())
    with tracker.run("eval", log_config=False) as run:
        run.log_metrics({"none": None, "nan": float("nan"), "np": np.float32(0.5), "nested": {"f1": 1},
                         "text": "n/a", "flag": True, "arr": np.array([1.0, 2.0])}, step=3)
    client = _client(tracker)
    assert client.get_run(run.id).data.metrics == {"np": 0.5, "nested.f1": 1.0, "flag": 1.0}
    assert [m.step for m in client.get_metric_history(run.id, "np")] == [3]


def _training_events(steps: int = 10, eval_every: int = 5):
    yield {"event": "start", "step": 0, "total_steps": steps, "steps_per_epoch": steps}
    for s in range(1, steps + 1):
        yield {"event": "step", "step": s, "epoch": s / steps, "loss": 2.0 / s, "lr": 1e-4, "grad_norm": None,
               "tokens": 512, "tokens_per_s": 100.0 + s, "elapsed_s": s * 0.1, "total_steps": steps, "eta_s": 1.0}
        if s % eval_every == 0:
            yield {"event": "eval", "step": s, "epoch": s / steps, "val_loss": 1.0 / s, "val_ppl": 2.0,
                   "val_loss_tokens": 100, "eval_seconds": 0.2, "val_loss/qa": 0.5}
            yield {"event": "eval_generate", "step": s, "rougeL": 0.25, "n": 16, "seconds": 3.0}
            yield {"event": "checkpoint", "step": s, "path": "/tmp/ckpt"}
    yield {"event": "end", "status": "completed", "step": steps}


def test_step_callback_batches_training_events(make_config, monkeypatch):
    tracker = Tracker.from_config(make_config())
    with tracker.run("train", log_config=False) as run:
        batches = []
        original = run._log_metric_rows
        monkeypatch.setattr(run, "_log_metric_rows", lambda rows: batches.append(len(rows)) or original(rows))
        callback = step_callback(run, every=4, seconds=1e9)
        for event in _training_events():
            callback(event)
    # 14 measuring events (10 steps, 2 evals, 2 generation evals) in batches of 4 events; "end" flushes the rest
    assert len(batches) == 4
    assert callback.logged == 10 * 5 + 2 * 5 + 2 * 2  # grad_norm None is skipped
    client = _client(tracker)
    loss = client.get_metric_history(run.id, "train_loss")
    assert [(m.step, m.value) for m in sorted(loss, key=lambda m: m.step)] == [(s, 2.0 / s) for s in range(1, 11)]
    val = client.get_metric_history(run.id, "val_loss")
    assert sorted((m.step, m.value) for m in val) == [(5, 0.2), (10, 0.1)]
    assert set(client.get_run(run.id).data.metrics) == {
        "train_loss", "lr", "tokens", "tokens_per_s", "epoch", "val_loss", "val_ppl", "val_loss_tokens",
        "eval_seconds", "val_loss/qa", "gen_rougeL", "gen_seconds"}


def test_step_callback_is_flushed_when_the_run_ends(make_config):
    tracker = Tracker.from_config(make_config())
    with tracker.run("train", log_config=False) as run:
        callback = step_callback(run, every=1000, seconds=1e9)
        for event in list(_training_events(steps=3, eval_every=10))[:-1]:  # no "end" event
            callback(event)
    assert len(_client(tracker).get_metric_history(run.id, "train_loss")) == 3


def test_step_callback_survives_a_failing_store(make_config, monkeypatch, caplog):
    tracker = Tracker.from_config(make_config())
    with tracker.run("train", log_config=False) as run:
        def broken(rows):
            raise TunelabError("tracking store sqlite:///x: logging metrics failed: database is locked")

        monkeypatch.setattr(run, "_log_metric_rows", broken)
        callback = step_callback(run, every=2)
        with caplog.at_level(logging.WARNING, logger="tunelab.track"):
            for event in _training_events(steps=4):
                callback(event)  # training goes on
    assert callback.failures >= 1 and callback.logged == 0
    assert "database is locked" in caplog.text


def test_failed_and_interrupted_runs(make_config):
    tracker = Tracker.from_config(make_config())
    with pytest.raises(ValueError, match="boom"), tracker.run("train", log_config=False) as failed:
        raise ValueError("boom")
    with pytest.raises(KeyboardInterrupt), tracker.run("train", log_config=False) as killed:
        raise KeyboardInterrupt
    with tracker.run("train", log_config=False) as marked:
        marked.status = "KILLED"
    client = _client(tracker)
    got = client.get_run(failed.id)
    assert got.info.status == "FAILED" and got.data.tags["tunelab.error"] == "ValueError: boom"
    assert got.info.end_time is not None
    assert client.get_run(killed.id).info.status == "KILLED"
    assert client.get_run(marked.id).info.status == "KILLED"


def test_parent_and_upstream_runs(make_config):
    tracker = Tracker.from_config(make_config(tracking={"experiment": "nested"}))
    with tracker.run("pipeline", name="full run") as parent:
        with tracker.run("train", parent=parent.id) as train:
            pass
        with tracker.run("eval", parent=parent.id, tags=lineage_tags(upstream={"train": train.id})) as ev:
            pass
    client = _client(tracker)
    assert client.get_experiment_by_name("nested") is not None
    assert client.get_run(parent.id).info.run_name == "full run"
    assert client.get_run(train.id).data.tags["mlflow.parentRunId"] == parent.id
    assert client.get_run(ev.id).data.tags["tunelab.upstream.train"] == train.id


def test_short_lineage_names_are_stored_under_tunelab_names(make_config):
    tracker = Tracker.from_config(make_config())
    with tracker.run("train", tags={"base_model": "gemma3-270m", "dataset_hash": "h1", "tunelab.stage": "x"},
                     log_config=False) as run:
        run.set_tags({"method": "full", "objective": "sft"})
    tags = _client(tracker).get_run(run.id).data.tags
    assert tags["tunelab.base_model"] == "gemma3-270m" and tags["tunelab.dataset_hash"] == "h1"
    assert tags["tunelab.method"] == "full" and tags["objective"] == "sft" and tags["tunelab.stage"] == "train"
    assert not {"base_model", "dataset_hash", "method"} & set(tags)


def test_artifacts_off_records_paths_instead_of_copies(make_config, tmp_path):
    tracker = Tracker.from_config(make_config(tracking={"artifacts": False}))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.html").write_text("<p>report</p>")
    with tracker.run("compare") as run:
        run.log_artifacts(out, artifact_path="report")
        run.log_artifact(out / "report.html")
    client = _client(tracker)
    tags = client.get_run(run.id).data.tags
    assert tags["tunelab.artifact.report"] == str(out.resolve())
    assert tags["tunelab.artifact.report.html"] == str((out / "report.html").resolve())
    assert _artifact_paths(client, run.id) == {"config.resolved.yaml"}


def test_missing_artifact_is_a_clear_error(make_config, tmp_path):
    tracker = Tracker.from_config(make_config())
    with pytest.raises(TunelabError, match="not a file"), tracker.run("eval", log_config=False) as run:
        run.log_artifact(tmp_path / "missing.jsonl")
    assert _client(tracker).get_run(run.id).info.status == "FAILED"


def test_store_that_is_not_a_database(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mlflow.db").write_bytes(b"this is not a database\n" * 200)
    tracker = Tracker(f"sqlite:///{bad / 'mlflow.db'}", "demo")
    with pytest.raises(TunelabError) as err, tracker.run("train"):
        pass
    message = str(err.value)
    assert f"sqlite:///{bad / 'mlflow.db'}" in message and "tracking.enabled: false" in message
    assert "Traceback" not in message


def test_unsupported_and_unreachable_stores_fail_fast_without_leaking_passwords():
    with pytest.raises(TunelabError, match="foo://bar"), Tracker("foo://bar", "demo").run("train"):
        pass
    started = time.monotonic()
    with pytest.raises(TunelabError) as err, Tracker("http://me:pw-hidden-9@127.0.0.1:9", "demo").run("train"):
        pass
    assert time.monotonic() - started < 30  # MLflow's own retries would take minutes
    assert "127.0.0.1:9" in str(err.value) and "pw-hidden-9" not in str(err.value)
