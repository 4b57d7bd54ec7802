"""Studies across runs and processes: --resume continues the trial count, an existing study is not reused
by accident, and two processes on one SQLite study complete distinct trials between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
from typer.testing import CliRunner

from tunelab.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
FREE = ["sweep.space={train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}", "sweep.pruner=none"]


def _numbers(storage: str, name: str) -> list[tuple[int, str]]:
    study = optuna.load_study(study_name=name, storage=storage)
    return sorted((t.number, t.state.name) for t in study.get_trials())


def test_resume_continues_the_study_and_an_existing_study_needs_it(sweep_file, tmp_path):
    runner = CliRunner()
    config = str(sweep_file())
    first = runner.invoke(app, ["sweep", config, *FREE, "--trials", "2", "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    assert [t["number"] for t in out["trials"]] == [0, 1]
    assert Path(out["files"]["importance_png"]).is_file()  # two complete trials with different settings

    again = runner.invoke(app, ["sweep", config, *FREE, "--trials", "1"])
    assert again.exit_code != 0 and "--resume" in again.output

    resumed = runner.invoke(app, ["sweep", config, *FREE, "--trials", "1", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout)
    assert [t["number"] for t in out["trials"]] == [0, 1, 2] and [t["number"] for t in out["ran"]] == [2]
    storage = f"sqlite:///{tmp_path / 'runs' / 'sw' / 'sweep' / 'optuna.db'}"
    assert _numbers(storage, "sw") == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]


def test_two_processes_share_one_sqlite_study(sweep_file, tmp_path):
    config = str(sweep_file())
    storage = f"sqlite:///{tmp_path / 'common' / 'study.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TUNELAB_THREADS": "1"}
    # both join the same study (--resume creates it if it is not there yet), two trials each
    command = [sys.executable, "-c", "from tunelab.cli import main; main()", "sweep", config, *FREE,
               "--storage", storage, "--study", "team", "--trials", "2", "--resume", "--json"]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (_stdout, stderr) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, stderr[-3000:]
    ran = [[t["number"] for t in json.loads(stdout)["ran"]] for stdout, _ in outs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3], ran  # none repeated, none lost
    assert _numbers(storage, "team") == [(n, "COMPLETE") for n in range(4)]
    trial_dirs = sorted(p.name for p in (tmp_path / "runs" / "sw" / "sweep" / "trials" / "team").iterdir())
    assert trial_dirs == [f"trial-{n:04d}" for n in range(4)]


def _params(storage: str, name: str) -> list[tuple[int, str, dict]]:
    study = optuna.load_study(study_name=name, storage=storage)
    return sorted((t.number, t.state.name, t.params) for t in study.get_trials())


def test_a_dead_workers_trial_is_failed_and_its_settings_measured_by_the_next(sweep_file, tmp_path, monkeypatch):
    from tunelab.config import load_config
    from tunelab.sweep import study as study_mod
    from tunelab.sweep.space import encode_params, sample

    monkeypatch.setattr(study_mod, "HEARTBEAT_S", 1)
    monkeypatch.setattr(study_mod, "GRACE_S", 1)
    path = sweep_file()
    config = load_config(path, [*FREE])
    storage = f"sqlite:///{tmp_path / 'common' / 'study.db'}"
    # a worker took trial 0 and died: RUNNING, its heartbeat stamped once and never again
    study = study_mod.open_study(config.sweep, storage=storage, name="team", direction="minimize", resume=True)
    study.enqueue_trial(encode_params(config.sweep.space, {"train.lr": 3.0e-3}))
    dead = study.ask()
    sample(dead, config.sweep.space)  # a worker suggests its settings first thing
    study._storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)

    out = CliRunner().invoke(app, ["sweep", str(path), *FREE, "--storage", storage, "--study", "team",
                                   "--trials", "1", "--resume", "--json"])
    assert out.exit_code == 0, out.output
    rows = _params(storage, "team")
    assert [(n, s) for n, s, _ in rows] == [(0, "FAIL"), (1, "COMPLETE")]
    assert rows[1][2] == rows[0][2]  # the dead trial's settings were measured, not lost


def test_an_interrupted_trial_is_measured_first_on_resume(sweep_file, tmp_path, monkeypatch):
    import importlib

    train_run_mod = importlib.import_module("tunelab.train.run")  # the module; tunelab.train.run is the function
    real = train_run_mod.run
    monkeypatch.setattr(train_run_mod, "run", lambda *a, **k: real(*a, **{**k, "stop": lambda: True}))
    config = str(sweep_file())
    runner = CliRunner()
    stopped = runner.invoke(app, ["sweep", config, *FREE, "--trials", "2"])
    assert stopped.exit_code != 0 and "--resume" in stopped.output
    monkeypatch.setattr(train_run_mod, "run", real)
    resumed = runner.invoke(app, ["sweep", config, *FREE, "--trials", "1", "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    storage = f"sqlite:///{tmp_path / 'runs' / 'sw' / 'sweep' / 'optuna.db'}"
    rows = _params(storage, "sw")
    assert [(n, s) for n, s, _ in rows] == [(0, "FAIL"), (1, "COMPLETE")]
    assert rows[1][2] == rows[0][2]
    # queued again, not sampled again (a seeded sampler could repeat a point by chance)
    retry = optuna.load_study(study_name="sw", storage=storage).get_trials()[1]
    assert retry.system_attrs.get("fixed_params") == rows[0][2]
