"""A saved adapter names its base by the public id, and still loads offline onto the local weights; the run's
model card (tunelab.export.card) says what was trained, the comparison with its uncertainty when the run
has one, how to load it, and no local cache path or secret."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny_runs import SMOLLM2_ID, converted_base, experiment_config, write_config
from typer.testing import CliRunner

from tunelab.cli.app import app
from tunelab.config import ExperimentConfig
from tunelab.errors import TunelabError
from tunelab.export.card import CARD_MARKER, build_card, write_run_card
from tunelab.models.public import public_base
from tunelab.paths import models_cache
from tunelab.train.run import run as train_run


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, one_torch_thread):
    monkeypatch.setenv("TUNELAB_THREADS", "1")


@pytest.fixture
def base_dir(tmp_path, train_model_dir) -> Path:
    return converted_base(train_model_dir, tmp_path / "smollm2-converted")


def test_public_base_of_each_kind_of_model(tmp_path, tiny_model_dir):
    bundled = public_base("smollm2-135m-instruct")  # no package or cache needed to name it
    assert (bundled.id, bundled.on_hub, bundled.licence, bundled.quantized_from) == (SMOLLM2_ID, True, "apache-2.0", "Q4_1")
    assert public_base("gemma3-270m").id == "google/gemma-3-270m"
    assert (public_base("org/some-model").id, public_base("org/some-model").on_hub) == ("org/some-model", True)
    snapshot = tmp_path / "hub" / "models--acme--tiny-llm" / "snapshots" / "0123abc"
    shutil.copytree(tiny_model_dir, snapshot)  # huggingface_hub's cache layout (a real folder of file links)
    assert public_base(snapshot).id == "acme/tiny-llm"
    local = public_base(tiny_model_dir)  # a plain local directory has no public id: its path, said so
    assert (local.id, local.on_hub) == (str(Path(tiny_model_dir).resolve()), False)
    converted = public_base(converted_base(tiny_model_dir, tmp_path / "conv"))
    assert (converted.id, converted.on_hub, converted.licence) == (SMOLLM2_ID, True, "apache-2.0")


def test_adapter_names_the_public_base_and_still_loads_and_resumes_offline(tmp_path, base_dir):
    from tunelab.models.adapters import load_with_adapter

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # nothing below may reach the Hub
    config = ExperimentConfig.model_validate(experiment_config(tmp_path, base_dir, train={"max_steps": 4,
                                                                                         "save_every": 2}))

    def crash(event):
        if event["event"] == "checkpoint" and event["step"] == 2:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(config, callback=crash, progress=False)
    result = train_run(config, resume=True, progress=False)
    assert result.status == "completed" and result.summary["steps"] == 4
    adapter_config = json.loads((result.run_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == SMOLLM2_ID
    assert not (result.run_dir / "README.md").exists()  # PEFT's empty template is not kept
    # the base comes from the config, never from the adapter's recorded name: the local weights load
    model, _tok, report = load_with_adapter(str(base_dir), result.run_dir, device="cpu")
    assert report.trained_on == SMOLLM2_ID and report.changes_outputs


def _train_cli(tmp_path: Path, base_dir: Path, **sections) -> Path:
    config = write_config(tmp_path, base_dir, **sections)
    out = CliRunner().invoke(app, ["train", str(config), "--json"])
    assert out.exit_code == 0, out.output
    return Path(json.loads(out.stdout)["run_dir"])


def test_tunelab_train_writes_the_card(tmp_path, base_dir):
    run_dir = _train_cli(tmp_path, base_dir)
    card = (run_dir / "README.md").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    front = card.split("---")[1]
    assert f"base_model: {SMOLLM2_ID}" in front and "library_name: peft" in front
    assert "license: apache-2.0" in front and f"base_model:adapter:{SMOLLM2_ID}" in front
    assert CARD_MARKER in card and "[More Information Needed]" not in card
    assert "lora (r 4, alpha 8" in card and "| learning rate | 0.01, constant schedule" in card
    assert summary["dataset_hash"] in card and "| epochs / steps |" in card and "fp32 on cpu" in card
    assert 'PeftModel.from_pretrained(base, "PATH_OR_REPO_ID")' in card
    assert f'AutoModelForCausalLM.from_pretrained("{SMOLLM2_ID}")' in card
    assert "tunelab eval --model smollm2-135m-instruct --adapter RUN" in card  # the bundled name loads offline
    assert "trained on 8 examples" in card and "Q4_1 GGUF" in card and "No held-out evaluation" in card
    assert str(models_cache()) not in card and str(base_dir) not in card and "/tmp" not in card
    # the repo it is uploaded to goes into the snippet; a merged card is a transformers model
    merged = build_card(run_dir, kind="merged", repo="me/faq")
    assert "library_name: transformers" in merged and "base_model_relation: finetune" in merged
    assert 'AutoModelForCausalLM.from_pretrained("me/faq")' in merged and "PeftModel" not in merged
    printed = CliRunner().invoke(app, ["export", "card", str(run_dir), "--merged", "--repo", "me/faq"])
    assert printed.exit_code == 0 and printed.stdout == merged
    with pytest.raises(TunelabError, match="choose one of adapter, merged"):
        build_card(run_dir, kind="gguf")


def _comparison(summary: dict) -> dict:
    """A comparison of the run's base and tuned variants, built by tunelab.compare from per-question scores."""
    from tunelab.compare.evaluate import VariantResult
    from tunelab.compare.table import build_comparison
    from tunelab.compare.variants import Variant

    results = []
    for kind, scores in (("base", [0.1, 0.2, 0.15, 0.1, 0.2, 0.1]), ("tuned", [0.6, 0.7, 0.65, 0.5, 0.8, 0.7])):
        se = float(np.std(scores, ddof=1) / math.sqrt(len(scores)))
        summ = {"n": len(scores), "metrics": {"rougeL": {"value": float(np.mean(scores)), "stderr": se,
                                                         "aggregation": "mean", "higher_is_better": True}}}
        res = VariantResult(Variant(summary["model"], kind, False, None), summ,
                            [{"rougeL": s} for s in scores], Path("."), cached=False)
        res.train = summary if kind == "tuned" else None
        results.append(res)
    return build_comparison(results, ["rougeL"]).to_dict()


def test_card_carries_the_comparison_of_these_weights(tmp_path, base_dir):
    # the layout `tunelab run` writes: <experiment>/train/<model> and <experiment>/compare/comparison.json
    exp = tmp_path / "runs" / "exp"
    run_dir = _train_cli(tmp_path, base_dir, workdir=str(exp / "train"))
    summary = json.loads((run_dir / "summary.json").read_text())
    (exp / "compare").mkdir()
    (exp / "compare" / "comparison.json").write_text(json.dumps(_comparison(summary)))
    card = build_card(run_dir)
    assert "on 6 held-out questions" in card
    assert "| smollm2-converted base | 0.1417 ± 0.0201 |" in card and "| smollm2-converted tuned | 0.6583 ± 0.0417 |" in card
    assert "fine-tuning:" in card and "95% interval [" in card and "beyond the uncertainty" in card
    assert "6 held-out questions; with so few" in card
    # a comparison made with other weights is not shown as this run's
    summary["steps"] += 1
    (exp / "compare" / "comparison.json").write_text(json.dumps(_comparison(summary)))
    stale = build_card(run_dir)
    assert "held-out questions, base model" not in stale and "made with other weights" in stale


def test_card_holds_no_secret_and_replaces_only_its_own_readme(tmp_path, base_dir, monkeypatch):
    secret = "hf_" + "q" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    run_dir = _train_cli(tmp_path, base_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["name"] = f"faq {secret}"  # as if a config had carried the token into a field the card shows
    summary["warnings"] = [f"Authorization: Bearer {secret}"]
    (run_dir / "summary.json").write_text(json.dumps(summary))
    card = build_card(run_dir)
    assert secret not in card and "***" in card

    readme = run_dir / "README.md"
    readme.write_text("---\nlibrary_name: peft\n---\n# Model Card\n- **Developed by:** [More Information Needed]\n")
    assert write_run_card(run_dir) == readme and CARD_MARKER in readme.read_text()  # PEFT's template: replaced
    assert write_run_card(run_dir) == readme  # its own card: rewritten
    readme.write_text("# my notes\n")
    assert write_run_card(run_dir) is None and readme.read_text() == "# my notes\n"  # a user's file: kept


def test_card_of_an_unfinished_run_is_an_error(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(TunelabError, match="no readable summary.json"):
        build_card(run_dir)
    (run_dir / "summary.json").write_text(json.dumps({"status": "interrupted", "artifact": None}))
    with pytest.raises(TunelabError, match="has not finished"):
        build_card(run_dir)
