"""run(): the run directory, validation and early stopping, the causal objective, the dry-run plan,
schedules, precision choices and the progress events."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml

from tunelab.errors import TunelabError
from tunelab.io import read_jsonl
from tunelab.train import format_plan, run
from tunelab.train.run import precision_for
from tunelab.train.schedule import lr_factor, warmup_steps


def test_run_directory_holds_everything(make_config, chat_writer, tmp_path):
    data = chat_writer(tmp_path / "many.jsonl", repeat=3)  # 24 records: 20% go to validation
    config = make_config("full-run", data_file=data, data={"split": {"train": 0.8, "validation": 0.2}},
                         train={"epochs": 2, "batch_size": 4, "eval_every": 2})
    events = []
    result = run(config, callback=events.append, progress=False)
    run_dir = result.run_dir
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "config.resolved.yaml", "train_log.jsonl", "summary.json", "data/manifest.json"):
        assert (run_dir / name).is_file(), name
    from transformers import AutoTokenizer

    used = AutoTokenizer.from_pretrained(config.model.name).chat_template
    assert (run_dir / "chat_template.jinja").read_text() == used == AutoTokenizer.from_pretrained(run_dir).chat_template
    resolved = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert resolved["train"]["eval_every"] == 2

    summary = json.loads((run_dir / "summary.json").read_text())
    steps = summary["total_steps"]
    per_epoch = math.ceil(summary["data"]["train"]["examples"] / 4)
    assert summary["status"] == "completed" and summary["steps"] == steps == 2 * per_epoch
    for key in ("final_train_loss", "final_val_loss", "final_val_perplexity", "tokens_trained", "wall_seconds",
                "tokens_per_s", "peak_rss_mb", "trainable_params", "dataset_hash", "template", "method"):
        assert summary[key] not in (None, ""), key
    assert summary["final_val_perplexity"] == pytest.approx(math.exp(summary["final_val_loss"]))
    assert summary["template"]["stop_tokens"] == ["<|im_end|>"]
    assert summary["dataset_hash"] == json.loads((run_dir / "data/manifest.json").read_text())["dataset_hash"]

    log = read_jsonl(run_dir / "train_log.jsonl")
    step_rows = [r for r in log if "loss" in r]
    eval_rows = [r for r in log if r.get("event") == "eval"]
    assert [r["step"] for r in step_rows] == list(range(1, steps + 1))
    assert {"lr", "grad_norm", "tokens_per_s", "elapsed_s", "epoch"} <= step_rows[0].keys()
    assert [r["step"] for r in eval_rows] == list(range(2, steps + 1, 2)) + ([] if steps % 2 == 0 else [steps])
    assert all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in eval_rows)
    trained = sum(r["tokens"] for r in step_rows)
    assert trained == summary["tokens_trained"] == 2 * summary["data"]["train"]["tokens"]

    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == steps
    assert "eta_s" in next(e for e in events if e["event"] == "step")


def test_data_is_prepared_once(make_config):
    config = make_config("reuse", train={"max_steps": 1})
    run(config, progress=False)
    manifest = config.run_dir / "data" / "manifest.json"
    stamp = manifest.stat().st_mtime_ns
    shutil.rmtree(config.run_dir / "checkpoints")
    run(config, progress=False)
    assert manifest.stat().st_mtime_ns == stamp


def test_early_stopping_keeps_the_best_weights(make_config, chat_writer, tmp_path):
    data = chat_writer(tmp_path / "es.jsonl", repeat=3)
    config = make_config("early", data_file=data, data={"split": {"train": 0.7, "validation": 0.3}},
                         train={"epochs": 40, "batch_size": 8, "lr": 0.3, "eval_every": 1,
                                "early_stopping_patience": 2, "save_every": 1000})
    result = run(config, progress=False)
    assert result.status == "early_stopped"
    summary = result.summary
    assert summary["steps"] < summary["total_steps"]
    evals = [r for r in read_jsonl(result.run_dir / "train_log.jsonl") if r.get("event") == "eval"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert summary["best_val_step"] == best["step"] and summary["best_val_loss"] == best["val_loss"]
    assert [r["step"] for r in evals][-1] == best["step"] + 2  # stopped after 2 evals without improvement


def test_causal_objective_trains_on_every_token_of_text(make_config, tmp_path):
    words = "the quick brown fox jumps over the lazy dog".split()
    rows = [{"text": " ".join(words[(i + j) % len(words)] for j in range(30 + 10 * i))} for i in range(6)]
    data = tmp_path / "docs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = make_config("causal", data_file=data, data={"max_length": 32},
                         train={"objective": "causal", "max_steps": 4, "batch_size": 4})
    result = run(config, progress=False)
    stats = result.summary["data"]["train"]
    assert stats["max_example_tokens"] <= 32  # long documents are cut into windows, not truncated
    assert stats["examples"] > 6 and stats["truncated"] == 0
    # Every token predicts the next, across window cuts too; only each document's last token has no target.
    assert stats["loss_tokens"] == stats["tokens"] - len(rows)
    assert result.summary["layout"] == "packed"


def test_dry_run_plans_without_training(make_config):
    config = make_config("plan", train={"epochs": 3, "batch_size": 2})
    result = run(config, dry_run=True, progress=False)
    assert result.status == "planned"
    plan = result.plan
    assert plan["total_steps"] == 12 and plan["steps_per_epoch"] == 4
    assert plan["tokens_per_epoch"] > plan["loss_tokens_per_epoch"] > 0
    assert 0 < plan["trainable_params"] < plan["total_params"]
    assert plan["measured_tokens_per_s"] > 0 and plan["expected_seconds"] > 0
    assert {"lr", "r", "epochs", "lr_reason", "r_reason", "epochs_reason"} <= plan["suggested"].keys()
    assert {"full", "lora", "qlora"} <= plan["memory"].keys() and plan["memory"]["lora"]["fits"] is True
    text = format_plan(plan)
    assert "suggested lr" in text and "expected time" in text
    assert not (config.run_dir / "summary.json").exists() and not (config.run_dir / "checkpoints").exists()


def test_prompt_and_prefix_fall_back_to_bucketing(make_config):
    config = make_config("prompt-layout", method={"name": "prompt", "num_virtual_tokens": 4}, train={"max_steps": 1})
    result = run(config, progress=False)
    assert result.summary["layout"] == "length-bucketed"
    assert any("length-bucketed" in w for w in result.summary["warnings"])


def test_schedules():
    cosine = lr_factor("cosine", 10, 2)
    assert [round(cosine(s), 4) for s in (0, 1)] == [round(1 / 3, 4), round(2 / 3, 4)]
    assert cosine(2) == 1.0 and 0 < cosine(9) < 0.05
    linear = lr_factor("linear", 10, 0)
    assert linear(0) == 1.0 and linear(5) == pytest.approx(0.5)
    assert lr_factor("constant", 10, 0)(9) == 1.0
    assert warmup_steps(100, 0.03) == 3 and warmup_steps(100, 0.0) == 0


def test_precision_choices():
    name, autocast, scaler, _ = precision_for("fp32", torch.device("cpu"))
    assert name == "fp32" and scaler is None
    with pytest.raises(TunelabError, match="fp16 needs a CUDA GPU"):
        precision_for("fp16", torch.device("cpu"))
    name, autocast, _, _ = precision_for("bf16", torch.device("cpu"))
    with autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    from tunelab.models.hardware import bf16_pays

    auto, _, _, _ = precision_for("auto", torch.device("cpu"))
    assert auto == ("bf16" if bf16_pays("cpu")[0] else "fp32")


def test_unknown_model_is_a_clear_error(make_config, tmp_path):
    config = make_config("nomodel", model={"name": str(tmp_path / "missing-model")})
    with pytest.raises(TunelabError, match="missing-model"):
        run(config, progress=False)


def test_progress_bar_follows_events(capsys):
    from tunelab.train.progress import RichProgress, fan_out

    seen = []
    emit = fan_out(RichProgress("demo"), seen.append, None)
    emit({"event": "start", "step": 0, "total_steps": 2, "steps_per_epoch": 2})
    emit({"event": "step", "step": 1, "loss": 2.5, "tokens_per_s": 120.0, "total_steps": 2, "eta_s": 1.0})
    emit({"event": "eval", "step": 1, "val_loss": 2.25, "val_ppl": 9.5})
    emit({"event": "step", "step": 2, "loss": 2.0, "tokens_per_s": 130.0, "total_steps": 2, "eta_s": 0.0})
    emit({"event": "end", "status": "completed", "step": 2})
    assert [e["event"] for e in seen] == ["start", "step", "eval", "step", "end"]
    err = capsys.readouterr().err
    assert "demo" in err and "2.0000" in err and "2.2500" in err
