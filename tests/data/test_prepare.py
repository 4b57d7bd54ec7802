"""`data prepare` end to end on small files: counts, removals by reason, leaks, PII, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.config import DataConfig, SplitConfig
from tunelab.data.prepare import load_manifest, load_split, run
from tunelab.errors import InputError, TunelabError


def chat(q: str, a: str, **extra) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra})


def make_inputs(tmp_path: Path) -> tuple[Path, Path]:
    facts = [
        ("How many days of annual leave do we get?", "Employees get 27 days of paid annual leave per year."),
        ("Who approves travel over 2000 euros?", "Travel over 2000 euros needs approval from the finance director."),
        ("Where do I submit expenses?", "Submit expenses in Ledgerly within 30 days of purchase."),
        ("What is the IT helpdesk extension?", "Call the IT helpdesk on extension 4455."),
        ("When is payday?", "Salaries are paid on the 25th of every month."),
        ("How long is the probation period?", "The probation period lasts six months for all new hires."),
        ("Which room hosts the all-hands?", "The monthly all-hands meeting is held in the Atlas room."),
        ("What is the remote work allowance?", "Remote staff receive a home office allowance of 450 euros per year."),
        ("Who do I tell about a lost badge?", "Report a lost badge to security at security@example.com right away."),
        ("How much notice for parental leave?", "Give eight weeks notice before starting parental leave."),
    ]
    lines = [chat(q, a, source=f"doc{i % 3}.md") for i, (q, a) in enumerate(facts)]
    lines.append(lines[0])  # exact duplicate
    lines.append(chat(facts[1][0], facts[1][1].replace("director", "director.")))  # near duplicate after normalisation
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    evals = [
        chat("How many days of annual leave do we get?", "Employees get 27 days of paid annual leave per year."),  # leak
        chat("What day of the month are salaries paid?", "Pay day is the 25th of each month."),
    ]
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_text("\n".join(evals) + "\n", encoding="utf-8")
    return train, eval_path


def test_prepare_writes_splits_manifest_and_reports_removals(tmp_path):
    train, eval_path = make_inputs(tmp_path)
    # everything in train, so the eval record that copies a training record must be caught as a leak
    cfg = DataConfig(train=[train], eval=eval_path, split=SplitConfig(train=1.0, validation=0.0))
    result = run(cfg, tmp_path / "out")
    m = load_manifest(tmp_path / "out")
    assert m["rows_in"] == 14
    assert m["removed"]["exact_duplicate"] >= 2  # the repeated line and its normalised twin
    assert m["removed"]["leak_eval"] == 1
    assert result.splits["eval"] == 1
    assert result.splits["train"] == 10 and result.splits["validation"] == 0
    assert m["pii"].get("EMAIL") == 1
    texts = " ".join(" ".join(r.iter_texts()) for r in load_split(tmp_path / "out", "train") + load_split(tmp_path / "out", "validation"))
    assert "security@example.com" not in texts
    leaks = [json.loads(line) for line in (tmp_path / "out" / "leaks.jsonl").read_text().splitlines()]
    assert leaks[0]["split"] == "eval"
    assert len(m["dataset_hash"]) == 64
    # same inputs, same options -> same version
    again = run(cfg, tmp_path / "out2")
    assert again.manifest["dataset_hash"] == m["dataset_hash"]


def test_invalid_input_writes_nothing_and_keeps_previous_output(tmp_path):
    train, _ = make_inputs(tmp_path)
    out = tmp_path / "out"
    run(DataConfig(train=[train]), out)
    before = sorted(p.name for p in out.iterdir())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(train.read_text() + '{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n')
    with pytest.raises(InputError) as info:
        run(DataConfig(train=[bad]), out)
    assert f"{bad}:13" in str(info.value) and f"{bad}:14" in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == before
    skipped = run(DataConfig(train=[bad], skip_invalid=True), tmp_path / "skipped")
    assert sum(skipped.manifest["skipped_invalid"].values()) == 2


def test_no_training_records_left_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(chat("q", "a") + "\n")
    with pytest.raises(TunelabError, match="no training records left"):
        run(DataConfig(train=[path], clean={"min_chars": 100}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_labelled_data_is_stratified(tmp_path):
    rows = [json.dumps({"text": f"request number {i} about topic {i % 2}", "label": ["it", "hr"][i % 2]}) for i in range(40)]
    path = tmp_path / "tickets.jsonl"
    path.write_text("\n".join(rows) + "\n")
    result = run(DataConfig(train=[path], dedup="exact", split=SplitConfig(train=0.5, validation=0.5)), tmp_path / "o")
    val = load_split(tmp_path / "o", "validation")
    assert result.manifest["kinds"] == {"label": 40}
    assert sum(r.label == "it" for r in val) == 10


def test_token_stats_with_a_model(tmp_path, tiny_model_dir):
    train, _ = make_inputs(tmp_path)
    result = run(DataConfig(train=[train], max_length=32), tmp_path / "out", model=str(tiny_model_dir))
    tokens = result.manifest["tokens"]
    assert tokens["model"] == str(tiny_model_dir)
    assert tokens["train"]["count"] == result.splits["train"]


def test_an_auto_validation_share_is_chosen_from_the_record_count(tmp_path):
    """data.split.validation left at auto (the default): a small set keeps every pair for training, a large
    one holds 5% out; the choice and its reason are in the manifest (data/auto_split.py)."""
    train, _ = make_inputs(tmp_path)
    small = run(DataConfig(train=[train]), tmp_path / "small")
    assert small.manifest["splits"].get("validation", 0) == 0 and small.manifest["splits"]["train"] > 0
    choice = small.manifest["auto"]["data.split.validation"]
    assert choice["value"] == 0.0 and "every pair trains" in choice["reason"]
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(chat(f"question number {i} about policy {i}?", f"answer {i} is policy {i * 7}.")
                             for i in range(1200)) + "\n")
    large = run(DataConfig(train=[big], dedup="exact"), tmp_path / "large")
    assert large.manifest["auto"]["data.split.validation"]["value"] == 0.05
    assert large.manifest["splits"]["validation"] == 60
