"""The precision decision and the bf16 training path.

`train.precision: auto` picks bf16 where it pays (avx512_bf16/AMX CPUs, bf16 GPUs) and fp32 elsewhere;
$TUNELAB_BF16=1/0 forces the CPU decision either way, so both paths run on either kind of machine (on an
AVX2-only CPU bf16 is emulated: slow, but numerically the same kind of rounding).

Tolerances for bf16, argued: bf16 keeps 8 significant bits, so one rounding moves a value by at most
2^-9 (~0.2%) of itself. Autocast rounds the inputs of every matmul to bf16 and accumulates in fp32, so a
loss computed from bf16 activations differs from the fp32 loss by a few such roundings that partly cancel
(measured here: under 0.3% on the first step); we allow 2% for the first step against fp32, before any
difference in the weights compounds. Two processes in bf16 against one process in bf16 round the same
activations the same way and differ only in the order fp32 gradient sums are added (all-reduce of two
halves), so they agree far more tightly: we allow 0.1% on every step's loss.
"""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.models.hardware import bf16_pays
from tunelab.train import run
from tunelab.train.run import precision_for


def _losses(result) -> list[float]:
    return [r["loss"] for r in read_jsonl(result.run_dir / "train_log.jsonl") if "loss" in r]


@pytest.mark.parametrize(("value", "expected", "precision"), [("1", True, "bf16"), ("0", False, "fp32")])
def test_environment_switch_forces_the_cpu_decision(monkeypatch, value, expected, precision):
    monkeypatch.setenv("TUNELAB_BF16", value)
    pays, why = bf16_pays("cpu")
    assert pays is expected and "TUNELAB_BF16" in why
    assert precision_for("auto", torch.device("cpu"))[0] == precision


def test_environment_switch_rejects_a_value_it_does_not_know(monkeypatch):
    monkeypatch.setenv("TUNELAB_BF16", "maybe")
    with pytest.raises(TunelabError, match="TUNELAB_BF16='maybe'"):
        bf16_pays("cpu")


def test_auto_follows_the_hardware_without_the_switch(monkeypatch):
    monkeypatch.delenv("TUNELAB_BF16", raising=False)
    assert precision_for("auto", torch.device("cpu"))[0] == ("bf16" if bf16_pays("cpu")[0] else "fp32")


def test_bf16_training_runs_in_bf16_and_stays_near_fp32(make_config, monkeypatch):
    monkeypatch.setenv("TUNELAB_BF16", "1")  # auto resolves to bf16 on any CPU
    settings = {"max_steps": 3, "batch_size": 8, "precision": "auto"}
    bf16 = run(make_config("bf16", train=settings), progress=False)
    fp32 = run(make_config("fp32", train={**settings, "precision": "fp32"}), progress=False)
    assert bf16.summary["precision"] == "bf16" and fp32.summary["precision"] == "fp32"
    a, b = _losses(bf16), _losses(fp32)
    assert a[0] == pytest.approx(b[0], rel=2e-2)
    assert a[0] != b[0]  # the bf16 path really rounded: identical losses would mean it ran in fp32
    assert a[-1] < a[0]  # and it learns
