"""The eval runner on the tiny model: files written, per-example rows, summary, errors, rendering."""

from __future__ import annotations

import json

import pytest
import torch
from rich.console import Console

from tunelab.data.records import Record
from tunelab.errors import InputError, TunelabError
from tunelab.evaluate.runner import load_eval_records, render_eval, run_eval
from tunelab.models.generate import GenerationConfig


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def chat(q: str, a: str, line: int, **meta) -> Record:
    return Record(
        kind="chat",
        messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        meta={"file": "eval.jsonl", "line": line, **meta},
    )


RECORDS = [
    chat(
        "What is the capital of France?",
        "Paris is the capital of France.",
        1,
        source="geo.md",
        category="facts",
    ),
    chat("How many days of paid leave?", "25 days of paid leave per year.", 2, source="leave.md"),
    chat("Expense reports are due when?", "Within 30 days of purchase.", 3),
]
CFG = GenerationConfig(max_new_tokens=6, batch_size=2)


def quiet_run(model, tok, records, metrics, out_dir, **kw):
    # one thread: a hidden-size-32 model gains nothing from more, and loses a lot on a busy machine
    return run_eval(model, tok, records, metrics, out_dir, CFG, threads=1, **kw)


def test_run_eval_writes_predictions_and_summary(model, tiny_tokenizer, tmp_path):
    metrics = ["rougeL", "bleu", "exact_match", "token_f1", "perplexity"]
    result = quiet_run(
        model, tiny_tokenizer, RECORDS, metrics, tmp_path / "out", model_name="tiny", data="eval.jsonl"
    )

    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    first = rows[0]
    assert first["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert first["reference"] == "Paris is the capital of France."
    assert first["source"] == "geo.md" and first["category"] == "facts"
    assert first["meta"]["line"] == 1
    for name in ("rougeL", "exact_match", "token_f1", "perplexity"):
        assert name in first
    assert "bleu" not in first  # corpus-level: no per-example value
    assert first["prediction"] == result.rows[0]["prediction"]
    assert first["new_tokens"] <= 6 and first["finish_reason"] in ("stop", "length")

    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["model"] == "tiny" and summary["n"] == 3 and summary["data"] == "eval.jsonl"
    assert set(summary["metrics"]) == set(metrics)
    rouge = summary["metrics"]["rougeL"]
    assert rouge["aggregation"] == "mean" and "stderr" in rouge and rouge["higher_is_better"] is True
    assert rouge["use_stemmer"] is True
    bleu = summary["metrics"]["bleu"]
    assert bleu["aggregation"] == "corpus" and len(bleu["ci95"]) == 2 and "signature" in bleu
    ppl = summary["metrics"]["perplexity"]
    assert (
        ppl["higher_is_better"] is False
        and ppl["convention"] == "token-level, completion tokens, teacher-forced"
    )
    assert summary["generation"]["max_new_tokens"] == 6 and summary["generation"]["decoding"] == "greedy"
    for key in ("latency_p50_s", "latency_p95_s", "tokens_per_answer", "tokens_per_s", "generation_s"):
        assert key in summary["timings"]
    # written atomically: no temporary files left behind
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.jsonl", "summary.json"]


def test_classification_eval_on_label_records(model, tiny_tokenizer, tmp_path):
    records = [
        Record(kind="label", text="My laptop will not boot", label="it", meta={"file": "t.jsonl", "line": 1}),
        Record(kind="label", text="Payslip question", label="hr", meta={"file": "t.jsonl", "line": 2}),
    ]
    result = quiet_run(
        model, tiny_tokenizer, records, ["accuracy", "f1"], None, label_set=["it", "hr", "facilities"]
    )
    assert result.out_dir is None
    assert result.rows[0]["prompt"] == [{"role": "user", "content": "My laptop will not boot"}]
    assert "predicted_label" in result.rows[0] and "accuracy" in result.rows[0]
    f1 = result.metrics["f1"]
    assert f1.details["confusion_matrix"]["labels"] == ["it", "hr", "facilities", "<unparsed>"]
    console = Console(record=True, width=140)
    render_eval(result, console)
    text = console.export_text()
    assert "confusion matrix" in text and "per class" in text and "accuracy" in text


def test_missing_reference_names_file_and_line(model, tiny_tokenizer):
    bad = Record(
        kind="chat",
        messages=[{"role": "user", "content": "a question with no answer"}],
        meta={"file": "data/eval.jsonl", "line": 7},
    )
    blank = chat("q", "   ", 9)
    blank.meta["file"] = "data/eval.jsonl"
    with pytest.raises(InputError) as err:
        quiet_run(model, tiny_tokenizer, [RECORDS[0], bad, blank], ["rougeL"], None)
    assert "data/eval.jsonl:7" in str(err.value) and "data/eval.jsonl:9" in str(err.value)
    assert "reference" in str(err.value)


def test_unknown_metric_fails_before_generating(model, tiny_tokenizer):
    with pytest.raises(TunelabError, match="unknown metric"):
        quiet_run(model, tiny_tokenizer, RECORDS, ["rougeL", "meteor"], None)


def test_render_eval_table(model, tiny_tokenizer):
    result = quiet_run(model, tiny_tokenizer, RECORDS, ["rouge1", "chrf"], None, model_name="tiny")
    console = Console(record=True, width=160)
    render_eval(result, console)
    text = console.export_text()
    assert "rouge1" in text and "chrf" in text and "(se)" in text and "95% CI" in text
    assert "sacrebleu nrefs:1" in text and "use_stemmer=True" in text and "tokens/s" in text


def test_load_eval_records_prepared_and_raw(tmp_path):
    prepared = tmp_path / "prepared.jsonl"
    prepared.write_text("\n".join(json.dumps(r.to_dict()) for r in RECORDS[:2]) + "\n")
    recs = load_eval_records(prepared)
    assert [r.reference() for r in recs] == [r.reference() for r in RECORDS[:2]]
    raw = tmp_path / "raw.jsonl"
    raw.write_text(
        json.dumps(
            {
                "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                "source": "doc.md",
            }
        )
        + "\n"
    )
    recs = load_eval_records(raw)
    assert recs[0].reference() == "hello" and recs[0].meta["source"] == "doc.md" and recs[0].meta["line"] == 1
