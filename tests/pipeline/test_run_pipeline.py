"""`tunelab run` end to end on a tiny model and a few records: every stage runs, every artifact and MLflow
run exists, and a second run reuses every cached step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from content_edits import nudge_weights
from typer.testing import CliRunner

from tunelab.cli.app import app

QA = [
    ("How many days of annual leave do staff get?", "Staff get 25 days of annual leave.", "leave.md", "leave"),
    ("When must expense claims be filed?", "Expense claims are filed within 30 days.", "expenses.md", "money"),
    ("Who resets a forgotten password?", "The IT helpdesk resets passwords.", "it.md", "it"),
    ("What is the helpdesk phone extension?", "The helpdesk extension is 4455.", "it.md", "it"),
    ("Where is the head office?", "The head office is in Leeds.", "company.md", "company"),
    ("When was the company founded?", "The company was founded in 2011.", "company.md", "company"),
]
DOCS = {
    "leave.md": "# Leave\n\n## Annual leave\n\nStaff get 25 days of annual leave each year, plus bank holidays.\n",
    "expenses.md": "# Expenses\n\nExpense claims are filed within 30 days of the purchase, with receipts.\n",
    "it.md": "# IT\n\n## Passwords\n\nThe IT helpdesk resets forgotten passwords. Call extension 4455.\n",
    "company.md": "# Company\n\nThe company was founded in 2011. The head office is in Leeds.\n",
}


def _rows(pairs, with_meta: bool) -> str:
    out = []
    for q, a, src, cat in pairs:
        row = {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        if with_meta:
            row |= {"source": src, "category": cat}
        out.append(json.dumps(row))
    return "\n".join(out) + "\n"


@pytest.fixture
def experiment(tmp_path, train_model_dir, monkeypatch) -> Path:
    monkeypatch.setenv("TUNELAB_THREADS", "1")
    model = tmp_path / "model"
    shutil.copytree(train_model_dir, model)  # a copy of its own: a test changes its weights
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    train = [(f"{q} Please answer briefly.", a, s, c) for q, a, s, c in QA] + [
        (f"Quick question: {q.lower()}", a, s, c) for q, a, s, c in QA]
    (tmp_path / "train.jsonl").write_text(_rows(train, False))
    (tmp_path / "eval.jsonl").write_text(_rows(QA[:4], True))
    config = {
        "name": "tiny-exp", "workdir": "runs",
        "model": {"name": str(model)},
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "split": {"train": 0.8, "validation": 0.2},
                 "dedup": "exact", "max_length": 96},
        "method": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0},
        "eval": {"metrics": ["rougeL", "token_f1", "bleu"], "max_new_tokens": 8, "batch_size": 4},
        "rag": {"docs": "docs", "top_k": 2, "chunk_tokens": 64, "chunk_overlap": 8},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _mlflow_runs(workdir: Path) -> list:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tiny-exp")
    return client.search_runs([exp.experiment_id])


def _without_cached(comparison: dict) -> dict:
    return comparison | {"rows": [{k: v for k, v in row.items() if k != "cached"} for row in comparison["rows"]]}


def test_run_end_to_end_then_cached(experiment):
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(experiment), "--json"])
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)  # all of stdout: one object
    run_dir = Path(out["run_dir"])
    steps = {s["step"]: s for s in out["steps"]}
    assert steps["prepare"]["status"] == "ran"
    train_step = next(s for name, s in steps.items() if name.startswith("train "))
    assert train_step["status"] == "ran"
    variants = [r["id"] for r in out["compare"]["comparison"]["rows"]]
    assert len(variants) == 4 and sum(v.endswith("--rag") for v in variants) == 2

    tuned_dir = Path(train_step["run_dir"])
    for name in ("adapter_config.json", "adapter_model.safetensors", "summary.json", "train_log.jsonl"):
        assert (tuned_dir / name).is_file(), name
    card = (tuned_dir / "README.md").read_text()  # tunelab's model card, with this comparison's table
    assert "library_name: peft" in card and "| model tuned + RAG |" in card and "fine-tuning" in card
    for v in variants:
        for name in ("predictions.jsonl", "summary.json", "key.json"):
            assert (run_dir / "eval" / v / name).is_file()
    rag_rows = [json.loads(line) for line in (run_dir / "eval" / variants[1] / "predictions.jsonl").read_text().splitlines()]
    assert all(row["retrieved"] for row in rag_rows)
    assert "Context" in json.dumps(rag_rows[0]["prompt"]) or "context" in json.dumps(rag_rows[0]["prompt"])
    compare_dir = run_dir / "compare"
    for name in ("table.md", "table.csv", "comparison.json", "report.html"):
        assert (compare_dir / name).is_file(), name
    comparison = json.loads((compare_dir / "comparison.json").read_text())
    assert "recall@1" in comparison["retrieval"] and comparison["reading"]
    assert (run_dir / "config.resolved.yaml").is_file()

    stages = sorted(r.data.tags.get("tunelab.stage") for r in _mlflow_runs(run_dir.parent))
    assert stages == ["compare", "eval", "eval", "eval", "eval", "prepare", "train"]

    second = runner.invoke(app, ["run", str(experiment), "--json"])
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    steps2 = {s["step"]: s for s in again["steps"]}
    assert steps2["prepare"]["status"] == "cached"
    assert next(s for n, s in steps2.items() if n.startswith("train "))["status"] == "cached"
    assert sorted(again["compare"]["cached_variants"]) == sorted(variants)
    # the same comparison, read from the cache: rows differ only in saying so
    assert [r["cached"] for r in out["compare"]["comparison"]["rows"]] == [False] * len(variants)
    assert [r["cached"] for r in again["compare"]["comparison"]["rows"]] == [True] * len(variants)
    assert _without_cached(again["compare"]["comparison"]) == _without_cached(out["compare"]["comparison"])
    # only the compare step is logged again: no new prepare/train/eval runs
    assert len(_mlflow_runs(run_dir.parent)) == len(stages) + 1

    # the base model's weights change in place (same path, old mtime): training and every variant rerun
    nudge_weights(experiment.parent / "model")
    third = runner.invoke(app, ["run", str(experiment), "--json"])
    assert third.exit_code == 0, third.output
    steps3 = {s["step"]: s for s in json.loads(third.stdout)["steps"]}
    assert steps3["prepare"]["status"] == "cached"
    assert next(s for n, s in steps3.items() if n.startswith("train "))["status"] == "ran"
    assert json.loads(third.stdout)["compare"]["cached_variants"] == []


def test_changed_training_config_retrains_and_keeps_the_old_run(experiment):
    runner = CliRunner()
    assert runner.invoke(app, ["run", str(experiment), "compare.rag=off", "--json"]).exit_code == 0
    result = runner.invoke(app, ["run", str(experiment), "compare.rag=off", "train.lr=0.005", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    train_step = next(s for s in out["steps"] if s["step"].startswith("train "))
    assert train_step["status"] == "ran"
    replaced = list(Path(train_step["run_dir"]).parent.glob("*.replaced-*"))
    assert len(replaced) == 1 and (replaced[0] / "adapter_model.safetensors").is_file()


def test_forgetting_check_joins_the_comparison(experiment):
    slice_file = Path(__file__).parents[1] / "evaluate" / "benchmark_slices" / "truthfulqa_mc.jsonl"
    args = ["run", str(experiment), "compare.rag=off", "eval.baseline=true", "eval.benchmarks=[truthfulqa_mc1]",
            f"eval.benchmark_paths.truthfulqa_mc1={slice_file}", "eval.limit=6", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.stdout)["compare"]["comparison"]
    (rows,) = comparison["forgetting"].values()  # one tuned adapter
    assert [(r["benchmark"], r["metric"], r["n"]) for r in rows] == [("truthfulqa_mc1", "acc", 6)]
    assert any(s.startswith("Forgetting check:") and "95% interval" in s for s in comparison["reading"])
    assert rows[0]["level"] == 0.95 and rows[0]["interval"] == "paired"
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    assert "<h2>General ability</h2>" in (run_dir / "compare" / "report.html").read_text()
    assert "truthfulqa_mc1" in (run_dir / "compare" / "report.html").read_text()
    assert "95% interval (paired)" in (run_dir / "compare" / "report.html").read_text()


def test_rag_aware_variants_train_join_the_matrix_and_are_reused(experiment):
    runner = CliRunner()
    args = ["run", str(experiment), "compare.rag_aware=on", "data.rag_context.top_k=2", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout)
    steps = {s["step"]: s for s in out["steps"]}
    aware = next(s for name, s in steps.items() if name.startswith("train rag-aware "))
    assert aware["status"] == "ran" and Path(aware["run_dir"]).parent.name == "train-rag-aware"
    rows = out["compare"]["comparison"]["rows"]
    assert [(r["kind"], r["rag"]) for r in rows] == [
        ("base", False), ("base", True), ("tuned", False), ("tuned", True),
        ("rag-aware tuned", False), ("rag-aware tuned", True)]
    # the manifest: the shares drawn (defaults 0.6/0.2/0.2 of the 10 training records) and the gold
    manifest = json.loads((Path(aware["run_dir"]) / "data" / "rag-context.json").read_text())
    assert manifest["train"]["counts"] == {"gold_with_distractors": 6, "distractors_only": 2, "no_context": 2}
    assert manifest["train"]["gold_known"] == 0  # these records name no source: retrieval decided
    summary = json.loads((Path(aware["run_dir"]) / "summary.json").read_text())
    assert summary["rag_context"]["train"]["counts"] == manifest["train"]["counts"]
    trained = [json.loads(line) for line in (Path(aware["run_dir"]) / "data" / "rag-train.jsonl").read_text().splitlines()]
    assert sum("Context:" in r["messages"][0]["content"] for r in trained) == 8
    comparison = out["compare"]["comparison"]
    assert any(s.startswith("How model rag-aware tuned was trained: 10 examples") for s in comparison["reading"])
    assert any(c["question"].startswith("RAG-aware tuning vs plain tuning") for c in comparison["contrasts"])
    report = (Path(out["run_dir"]) / "compare" / "report.html").read_text()
    assert "model rag-aware tuned + RAG" in report and "model rag-aware tuned + RAG" in \
        (Path(out["run_dir"]) / "compare" / "table.md").read_text()

    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    again = json.loads(second.stdout)
    assert {s["step"]: s for s in again["steps"]}[f"train rag-aware {experiment.parent / 'model'}"]["status"] == "cached"
    assert sorted(again["compare"]["cached_variants"]) == sorted(r["id"] for r in rows)
