"""Studies across runs and processes: --resume continues the trial count, an existing study is not reused
by accident, and two processes on one SQLite study complete distinct trials between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
