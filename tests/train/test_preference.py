"""Preference objectives (dpo, orpo) on the tiny model: DPO raises the chosen-over-rejected margin on its
training pairs against a reference equal to the base model with the adapter off, its loss equals a hand
computation, ORPO lowers its loss, preference data under sft is refused, and an sft -> dpo pipeline
resumes exactly after a kill."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tunelab.errors import TunelabError
from tunelab.train.batching import IGNORE_INDEX, Layout
from tunelab.train.run import run

from .conftest import FACTS

# each fact's answer preferred over another fact's answer
PAIRS = [(q, a, FACTS[(i + 3) % len(FACTS)][1]) for i, (q, a) in enumerate(FACTS)]
PREF = {"objective": "dpo", "max_steps": 8, "batch_size": 4, "grad_accum": 2, "lr": 1e-2,
        "preference": {"beta": 0.5}}


def write_pairs(path: Path) -> Path:
    rows = [{"prompt": q, "chosen": c, "rejected": r} for q, c, r in PAIRS]
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    return path


def _pairs_of(config, tokenizer):
    from tunelab.train.preference import build_pairs
    from tunelab.train.setup import _load_split_if_any

    return build_pairs(_load_split_if_any(config.run_dir / "data", "train"), tokenizer, config.data.max_length)[0]


def _hand_logps(model, example) -> float:
    """Summed log-probability of an example's loss tokens from the model's full logits."""
    ids = torch.tensor([example.input_ids])
    logits = model(input_ids=ids).logits[0].float()
    targets = torch.tensor(example.targets)
    keep = targets != IGNORE_INDEX
    return float(F.log_softmax(logits[keep], -1).gather(1, targets[keep][:, None]).sum())


def _steps(result) -> list[dict]:
    rows = [json.loads(line) for line in (result.run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r for r in rows if "loss" in r and r.get("event") is None]


def test_dpo_raises_the_margin_against_the_base_model_with_the_adapter_off(make_config, tmp_path, tiny_tokenizer):
    config = make_config("dpo", data_file=write_pairs(tmp_path / "pairs.jsonl"), train=PREF)
    result = run(config, progress=False)
    assert result.status == "completed" and result.summary["objective"] == "dpo"
    steps = _steps(result)
    # every step holds all 8 pairs: the first step's policy is the reference (margin 0, loss log 2)
    assert abs(steps[0]["reward_margin"]) < 1e-4 and abs(steps[0]["loss"] - 0.6931) < 1e-3
    assert steps[-1]["reward_margin"] > 0.5 and steps[-1]["reward_accuracy"] == 1.0
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.2
    assert result.summary["preference"]["reward_margin"] == steps[-1]["reward_margin"]
    # the stored reference is the base model: the trained weights with the adapter switched off
    stored = json.loads((result.run_dir / "reference_logps.json").read_text())
    pairs = _pairs_of(config, tiny_tokenizer)
    model = result.model.eval()
    with torch.no_grad(), model.disable_adapter():
        base = [[_hand_logps(model, p.chosen), _hand_logps(model, p.rejected)] for p in pairs]
    assert torch.allclose(torch.tensor(stored["train"]), torch.tensor(base), atol=1e-4)
    with torch.no_grad():  # and the trained model now prefers the chosen replies more than the reference
        tuned = [[_hand_logps(model, p.chosen), _hand_logps(model, p.rejected)] for p in pairs]
    margin = [(c - r) - (bc - br) for (c, r), (bc, br) in zip(tuned, base, strict=True)]
    assert min(margin) > 0


def test_dpo_and_orpo_losses_equal_a_hand_computation_on_one_batch(train_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunelab.data.records import Record
    from tunelab.train.loss import loss_head
    from tunelab.train.preference import PreferenceLoss, build_pairs

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(train_model_dir, dtype=torch.float32)
    records = [Record(kind="preference", messages=[{"role": "user", "content": q}], chosen=c, rejected=r)
               for q, c, r in PAIRS[:3]]
    pairs, stats = build_pairs(records, tiny_tokenizer, 64)
    assert stats["examples"] == 3 and stats["dropped_too_long"] == 0
    ref = torch.tensor([[-30.0, -31.5], [-12.25, -9.0], [-20.0, -20.5]])
    setup = SimpleNamespace(train=pairs, model=model, cfg=SimpleNamespace(batch_size=2), bucket=True, scaler=None,
                            layout=Layout(packing=False, capacity=64, pad_id=0), device=torch.device("cpu"),
                            autocast=contextlib.nullcontext)
    with torch.no_grad():
        logps = torch.tensor([[_hand_logps(model, p.chosen), _hand_logps(model, p.rejected)] for p in pairs])
    counts = torch.tensor([[p.chosen.n_loss_tokens, p.rejected.n_loss_tokens] for p in pairs], dtype=torch.float32)
    beta, lam = 0.3, 0.2
    dpo_hand = -F.logsigmoid(beta * ((logps[:, 0] - ref[:, 0]) - (logps[:, 1] - ref[:, 1]))).mean()
    mean = logps / counts
    odds = (mean[:, 0] - mean[:, 1]) - (torch.log(1 - mean[:, 0].exp()) - torch.log(1 - mean[:, 1].exp()))
    orpo_hand = (-mean[:, 0] - lam * F.logsigmoid(odds)).mean()
    with loss_head(model) as head:
        for objective, hand in (("dpo", dpo_hand), ("orpo", orpo_hand)):
            loss = PreferenceLoss(objective, beta, lam, head, {"train": ref})
            value, tokens, loss_tokens, rewards = loss.backward(setup, [0, 1, 2])  # two micro-batches
            assert value == pytest.approx(float(hand), rel=1e-5)
            assert tokens == sum(len(p) for p in pairs) and loss_tokens == sum(p.n_loss_tokens for p in pairs)
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
            model.zero_grad(set_to_none=True)
        chosen = beta * (logps[:, 0] - ref[:, 0])
        rejected = beta * (logps[:, 1] - ref[:, 1])
        loss = PreferenceLoss("dpo", beta, lam, head, {"train": ref})
        rewards = loss.backward(setup, [0, 1, 2])[3]
    assert rewards["reward_margin"] == pytest.approx(float((chosen - rejected).mean()), rel=1e-4)
    assert rewards["reward_accuracy"] == pytest.approx(float((chosen > rejected).float().mean()))


def test_orpo_lowers_its_loss_and_a_dry_run_plans_dpo(make_config, tmp_path):
    data = write_pairs(tmp_path / "pairs.jsonl")
    config = make_config("orpo", data_file=data, train={**PREF, "objective": "orpo"})
    result = run(config, progress=False)
    steps = _steps(result)
    assert result.status == "completed" and steps[-1]["loss"] < steps[0]["loss"] - 0.5
    assert not (result.run_dir / "reference_logps.json").exists()  # reference-free
    plan = run(make_config("planned", data_file=data, train=PREF), dry_run=True, progress=False)
    assert plan.status == "planned" and plan.plan["examples"] == len(PAIRS) and plan.plan["measured_tokens_per_s"] > 0


def test_preference_records_under_sft_and_chat_records_under_dpo_are_refused(make_config, tmp_path, chat_file):
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    with pytest.raises(TunelabError, match="sft objective cannot train on preference records.*dpo or orpo"):
        run(make_config("sft-on-pairs", data_file=pairs), progress=False)
    with pytest.raises(TunelabError, match="record 1 .*a chat record cannot train a preference objective"):
        run(make_config("dpo-on-chat", data_file=chat_file, train=PREF), progress=False)


_KILLED_RUN = """
import json, os, signal, sys
from tunelab.config import ExperimentConfig
from tunelab.train.run import run
config = ExperimentConfig.model_validate(json.loads(sys.argv[1]))
def kill(event):
    if event["event"] == "step" and event.get("stage") == "dpo" and event["step"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
run(config, callback=kill, progress=False)
"""


def _staged(make_config, tmp_path, chat_file, name):
    stages = [{"name": "sft", "train": {"objective": "sft", "max_steps": 3}},
              {"name": "dpo", "data": {"train": [str(write_pairs(tmp_path / "pairs.jsonl"))]},
               "train": {**PREF, "max_steps": 6, "save_every": 2}}]
    return make_config(name, data_file=chat_file, method={"dropout": 0.1}, stages=stages)


def test_sft_then_dpo_stages_resume_exactly_after_a_kill(make_config, tmp_path, chat_file, tiny_tokenizer):
    straight = run(_staged(make_config, tmp_path, chat_file, "straight"), progress=False)
    assert straight.status == "completed"
    lineage = json.loads((straight.run_dir / "lineage.json").read_text())
    assert [s["name"] for s in lineage["stages"]] == ["sft", "dpo"]
    assert lineage["stages"][1]["start"]["kind"] == "continue"  # the dpo stage continues the sft adapter
    # the dpo stage's reference is the model after sft, not the base model
    dpo_dir = straight.run_dir / "stages" / "1-dpo"
    stored = torch.tensor(json.loads((dpo_dir / "reference_logps.json").read_text())["train"])
    model = straight.model.eval()
    pairs = _pairs_of(SimpleNamespace(run_dir=dpo_dir, data=SimpleNamespace(max_length=64)), tiny_tokenizer)
    with torch.no_grad(), model.disable_adapter():
        base = torch.tensor([[_hand_logps(model, p.chosen), _hand_logps(model, p.rejected)] for p in pairs])
    assert (stored - base).abs().max() > 1e-2

    config = _staged(make_config, tmp_path, chat_file, "killed")
    env = {**os.environ, "TUNELAB_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = subprocess.run([sys.executable, "-c", _KILLED_RUN, config.model_dump_json()], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (config.run_dir / "stages" / "1-dpo" / "checkpoints" / "step-0000004").is_dir()
    resumed = run(config, resume=True, progress=False)
    assert resumed.status == "completed"
    a = {n: p for n, p in straight.model.named_parameters() if p.requires_grad}
    b = {n: p for n, p in resumed.model.named_parameters() if p.requires_grad}
    assert a.keys() == b.keys() and all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert _steps(resumed)[-1]["loss"] == pytest.approx(_steps(straight)[-1]["loss"], abs=1e-6)


def test_preference_settings_have_documented_defaults_and_bounds(make_config):
    from tunelab.errors import ConfigError

    settings = make_config("defaults", train={"objective": "orpo"}).train.preference
    assert (settings.beta, settings.orpo_lambda) == (0.1, 0.1)
    with pytest.raises((ConfigError, ValueError), match="beta"):
        make_config("bad", train={"objective": "dpo", "preference": {"beta": 0}})
    with pytest.raises((ConfigError, ValueError), match="objective"):
        make_config("bad", train={"objective": "kto"})
