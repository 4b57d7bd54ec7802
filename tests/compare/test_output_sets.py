"""Outputs written together appear as a set: a failure part way through writing the comparison (table.md,
table.csv, comparison.json, report.html) or a variant's cache entry (predictions.jsonl, summary.json,
key.json) leaves the previous set whole, never new files beside old ones, and never an old key beside
new predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tunelab.config import load_config
from tunelab.pipeline import run


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def experiment(tmp_path, tiny_model_dir) -> Path:
    def rows(numbers) -> str:
        return "".join(json.dumps({"messages": [{"role": "user", "content": f"What is code {i}?"},
                                                {"role": "assistant", "content": f"Code {i} is {i * 7}."}]}) + "\n"
                       for i in numbers)

    (tmp_path / "train.jsonl").write_text(rows(range(8)))
    (tmp_path / "eval.jsonl").write_text(rows(range(100, 103)))
    config = {"name": "sets", "workdir": str(tmp_path / "runs"), "model": {"name": str(tiny_model_dir)},
              "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_length": 64},
              "compare": {"train": False, "rag": "off"}, "tracking": {"enabled": False},
              "eval": {"metrics": ["token_f1"], "max_new_tokens": 4, "batch_size": 4}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _compare(path: Path, *overrides: str):
    return run(load_config(path, list(overrides)), train=False, progress=False)


def test_a_failed_report_keeps_the_previous_comparison_whole(experiment, monkeypatch):
    first = _compare(experiment)
    before = _tree(first.compare.out_dir)
    assert {"table.md", "table.csv", "comparison.json", "report.html"} <= set(before)

    def broken_report(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("tunelab.compare.report.write_report", broken_report)
    # another metric: every file of the set would change; the report, written last, fails
    with pytest.raises(OSError, match="disk full"):
        _compare(experiment, "eval.metrics=[token_f1,rougeL]")
    assert _tree(first.compare.out_dir) == before
    assert not [p for p in first.compare.out_dir.parent.iterdir() if p.name.startswith(".compare")]

    monkeypatch.undo()
    again = _compare(experiment, "eval.metrics=[token_f1,rougeL]")
    assert "rougeL" in (again.compare.out_dir / "table.md").read_text()
    assert "rougeL" in json.loads((again.compare.out_dir / "comparison.json").read_text())["metrics"]


def test_a_failed_variant_write_keeps_its_previous_predictions_summary_and_key(experiment, monkeypatch):
    import tunelab.compare.evaluate as evaluate

    first = _compare(experiment)
    (variant,) = first.compare.results
    before = _tree(variant.out_dir)
    assert {"predictions.jsonl", "summary.json", "key.json"} <= set(before)
    real = evaluate.write_json

    def summary_fails(path, obj):
        if Path(path).name == "summary.json":  # after the new predictions, before the key
            raise OSError("disk full")
        return real(path, obj)

    monkeypatch.setattr(evaluate, "write_json", summary_fails)
    with pytest.raises(OSError, match="disk full"):
        _compare(experiment, "eval.max_new_tokens=2")
    assert _tree(variant.out_dir) == before  # the old set, whole: no new predictions beside the old key
    assert not [p for p in variant.out_dir.parent.iterdir() if p.name.startswith(".")]

    monkeypatch.undo()
    cached = _compare(experiment)  # the untouched old set is still a valid cache entry for the old config
    assert cached.compare.cached == [variant.variant.id]
    fresh = _compare(experiment, "eval.max_new_tokens=2")
    assert fresh.compare.cached == []
    assert json.loads((variant.out_dir / "key.json").read_text())["hash"] != json.loads(before["key.json"])["hash"]
