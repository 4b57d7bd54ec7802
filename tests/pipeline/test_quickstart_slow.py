"""The real quickstart on the bundled SmolLM2-135M, shortened (fewer steps and questions) so CI can run it:
every stage executes on the real model and the table, the report and the MLflow store are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tunelab.cli.app import app

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quickstart_on_the_bundled_model(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    overrides = [f"workdir={tmp_path}", "train.max_steps=4", "eval.limit=8", "eval.max_new_tokens=24"]
    args = ["quickstart", "--json"] + [x for o in overrides for x in ("--set", o)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)  # all of stdout: one object
    assert [s["step"] for s in out["steps"]][:3] == ["pull smollm2-135m-instruct", "prepare", "train smollm2-135m-instruct"]
    rows = out["compare"]["comparison"]["rows"]
    assert [r["variant"] for r in rows] == ["smollm2-135m-instruct base", "smollm2-135m-instruct base + RAG",
                                            "smollm2-135m-instruct tuned", "smollm2-135m-instruct tuned + RAG"]
    for row in rows:
        assert 0.0 <= row["metrics"]["rougeL"]["value"] <= 1.0 and row["metrics"]["rougeL"]["stderr"] is not None
    run_dir = tmp_path / "handbook-quickstart"
    report = (run_dir / "compare" / "report.html").read_text()
    assert "Training loss" in report and "<svg" in report
    retrieval = out["compare"]["comparison"]["retrieval"]
    assert retrieval["recall@3"]["value"] > 0.5  # the handbook questions name their source document
    assert (tmp_path / "mlflow.db").is_file()
