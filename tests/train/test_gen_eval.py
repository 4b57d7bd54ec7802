"""Generation evaluation during training: ROUGE-L of greedy answers for the first validation examples,
logged every train.eval_generate_every steps; off by default."""

from __future__ import annotations

import json

import pytest

from tunelab.data.prepare import load_split
from tunelab.errors import TunelabError
from tunelab.evaluate.metrics import MetricInputs, compute
from tunelab.io import read_jsonl
from tunelab.train import run
from tunelab.train.gen_eval import make_generate_eval, pick_examples


def test_rougeL_is_logged_every_n_steps(make_config, chat_writer, tmp_path):
    data = chat_writer(tmp_path / "facts.jsonl", repeat=3)
    config = make_config("gen-eval", data_file=data, data={"split": {"train": 0.75, "validation": 0.25}},
                         train={"max_steps": 4, "eval_generate_every": 2, "eval_generate_n": 3,
                                "eval_generate_max_new_tokens": 6})
    events: list[dict] = []
    result = run(config, callback=events.append, progress=False)
    rows = [r for r in read_jsonl(config.run_dir / "train_log.jsonl") if r.get("event") == "eval_generate"]
    assert [r["step"] for r in rows] == [2, 4]
    assert all(r["n"] == 3 and 0.0 <= r["rougeL"] <= 1.0 and r["seconds"] > 0 for r in rows)
    assert [e["step"] for e in events if e["event"] == "eval_generate"] == [2, 4]
    summary = json.loads((config.run_dir / "summary.json").read_text())
    assert summary["final_generate_rougeL"] == rows[-1]["rougeL"]
    assert summary["steps"] == 4 and summary["final_train_loss"] is not None  # step rows are still found

    # the logged value is ROUGE-L of what the final model answers (greedy, so reproducible)
    from tunelab.train.run import load_tokenizer_for

    records = load_split(config.run_dir / "data", "validation")
    again = make_generate_eval(result.model, load_tokenizer_for(config), records, 3, 6, threads=1)()
    assert again["rougeL"] == pytest.approx(rows[-1]["rougeL"])
    prompts, refs = pick_examples(records, 3)
    assert len(prompts) == len(refs) == 3
    assert compute(["rougeL"], MetricInputs(list(refs), list(refs)))["rougeL"].value == pytest.approx(1.0)


def test_off_by_default_and_needs_validation_answers(make_config, tmp_path):
    config = make_config("no-gen", train={"max_steps": 1})
    assert config.train.eval_generate_every is None
    run(config, progress=False)
    assert not any(r.get("event") == "eval_generate" for r in read_jsonl(config.run_dir / "train_log.jsonl"))
    with pytest.raises(TunelabError, match="needs validation examples"):
        make_generate_eval(None, None, [], 4, 8, threads=1)
