"""Checkpoints and resume: an interrupted run (crash after a checkpoint, SIGKILL mid-run, Ctrl-C, an
interrupt inside a step) continues to the same final weights as an uninterrupted run; a checkpoint from
another config or dataset is refused, saying what differs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.train import loss as loss_module
from tunelab.train.checkpoint import list_checkpoints
from tunelab.train.run import run

# 8 examples, 2 per step: 4 steps per epoch, 9 steps = 2.25 epochs (a resume inside the third epoch).
TRAIN = {"max_steps": 9, "batch_size": 2, "lr": 5e-3, "save_every": 3, "scheduler": "cosine",
         "warmup_ratio": 0.2, "seed": 7}
METHOD = {"name": "lora", "dropout": 0.2}  # dropout draws random numbers: RNG state must be restored too


def _trainable(result) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6), name


@pytest.fixture
def reference(make_config):
    result = run(make_config("straight", method=METHOD, train=TRAIN), progress=False)
    assert result.status == "completed" and result.summary["steps"] == 9
    return _trainable(result)


def test_resume_after_a_crash_gives_the_same_weights(make_config, reference):
    config = make_config("crashed", method=METHOD, train=TRAIN)

    def crash(event):
        if event["event"] == "checkpoint" and event["step"] == 6:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(config, callback=crash, progress=False)
    assert [p.name for p in list_checkpoints(config.run_dir)] == ["step-0000003", "step-0000006"]
    with pytest.raises(TunelabError, match="--resume"):
        run(config, progress=False)  # never silently start over on top of checkpoints
    resumed = run(config, resume=True, progress=False)
    assert resumed.status == "completed" and resumed.summary["steps"] == 9
    _assert_same(_trainable(resumed), reference)
    log = [json.loads(line) for line in (config.run_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 10))  # no step lost or repeated


def test_ctrl_c_checkpoints_and_resumes(make_config, reference):
    config = make_config("ctrl-c", method=METHOD, train=TRAIN)

    def press_ctrl_c(event):
        if event["event"] == "step" and event["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = run(config, callback=press_ctrl_c, progress=False)
    assert interrupted.status == "interrupted" and interrupted.summary["steps"] == 5
    assert list_checkpoints(config.run_dir)[-1].name == "step-0000005"
    resumed = run(config, resume=True, progress=False)
    _assert_same(_trainable(resumed), reference)


def test_interrupt_inside_a_step_saves_the_last_whole_step(make_config, reference, monkeypatch):
    config = make_config("mid-step", method=METHOD, train=TRAIN)
    original = loss_module.LossHead.nll_sum
    calls = {"n": 0}

    def interrupting(self, batch):
        calls["n"] += 1
        out = original(self, batch)  # a real forward with dropout draws, then the interrupt
        if calls["n"] == 7 and self.model.training:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(loss_module.LossHead, "nll_sum", interrupting)
    interrupted = run(config, progress=False)
    assert interrupted.status == "interrupted" and interrupted.summary["steps"] == 6
    monkeypatch.setattr(loss_module.LossHead, "nll_sum", original)
    resumed = run(config, resume=True, progress=False)
    _assert_same(_trainable(resumed), reference)


_KILLED_RUN = """
import json, os, signal, sys
from tunelab.config import ExperimentConfig
from tunelab.train.run import run
config = ExperimentConfig.model_validate(json.loads(sys.argv[1]))
def kill(event):
    if event["event"] == "step" and event["step"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
run(config, callback=kill, progress=False)
"""


def test_resume_after_sigkill_gives_the_same_weights(make_config, reference):
    config = make_config("killed", method=METHOD, train=TRAIN)
    env = {**os.environ, "TUNELAB_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, config.model_dump_json()], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list_checkpoints(config.run_dir)[-1].name == "step-0000003"
    assert not (config.run_dir / "summary.json").exists()
    resumed = run(config, resume=True, progress=False)
    _assert_same(_trainable(resumed), reference)


def test_checkpoint_from_another_config_or_data_is_refused(make_config, tmp_path, chat_writer):
    config = make_config("mismatch", method=METHOD, train={**TRAIN, "max_steps": 3})
    run(config, progress=False)
    changed = make_config("mismatch", method=METHOD, train={**TRAIN, "max_steps": 3, "lr": 1e-3},
                          data_file=Path(config.data.train[0]))
    with pytest.raises(TunelabError, match=r"train\.lr: checkpoint 0\.005, now 0\.001"):
        run(changed, resume=True, progress=False)
    other_data = chat_writer(tmp_path / "other.jsonl", repeat=2)
    moved = make_config("mismatch", method=METHOD, train={**TRAIN, "max_steps": 3}, data_file=other_data)
    with pytest.raises(TunelabError, match="dataset hash"):
        run(moved, resume=True, progress=False)


def test_nothing_to_resume_is_an_error(make_config):
    with pytest.raises(TunelabError, match="nothing to resume"):
        run(make_config("fresh"), resume=True, progress=False)


def test_keep_last_and_atomic_checkpoints(make_config):
    config = make_config("keep", train={"max_steps": 5, "batch_size": 4, "save_every": 1, "keep_last": 2})
    run(config, progress=False)
    kept = list_checkpoints(config.run_dir)
    assert [p.name for p in kept] == ["step-0000004", "step-0000005"]
    for path in kept:
        assert {f.name for f in path.iterdir()} == {"trainable.safetensors", "state.pt", "state.json",
                                                    ".tunelab-output.json"}  # the marker: a checkpoint
    leftovers = [p for p in (config.run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers


def test_same_seed_same_run(make_config):
    a = run(make_config("seed-a", method=METHOD, train={**TRAIN, "max_steps": 4}), progress=False)
    b = run(make_config("seed-b", method=METHOD, train={**TRAIN, "max_steps": 4}), progress=False)
    c = run(make_config("seed-c", method=METHOD, train={**TRAIN, "max_steps": 4, "seed": 8}), progress=False)
    wa, wb, wc = _trainable(a), _trainable(b), _trainable(c)
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
    assert any(not torch.equal(wa[n], wc[n]) for n in wa)
