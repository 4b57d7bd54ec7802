"""`data inspect`'s engine on a tiny prepared dataset written here: numbers checked against renders made
directly, and the drawing checked for its highlight, bars and truncation lines."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from tunelab.data.inspect import example_text, inspect_dataset, length_histogram, render_inspection
from tunelab.data.records import Record
from tunelab.data.render import render_preference, render_record
from tunelab.errors import InputError, TunelabError
from tunelab.io import write_jsonl

BIG = 10_000


def chat(question: str, answer: str) -> Record:
    return Record(
        kind="chat",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        meta={"source": "handbook"},
    )


RECORDS = [
    chat("hello", "answer1"),
    chat("What is the capital of France?", "Paris is the capital of France."),
    chat("Expense reports?", "Expense reports are due within 30 days of purchase."),
    chat("Contact the IT helpdesk at extension 4455 for password resets. " * 4, "4455"),
    Record(kind="text", text="Employees get 25 days of paid leave per year."),
    Record(kind="label", text="The quick brown fox", label="animal"),
]


@pytest.fixture
def dataset_dir(tmp_path):
    out = tmp_path / "ds"
    write_jsonl(out / "train.jsonl", [r.to_dict() for r in RECORDS])
    write_jsonl(out / "validation.jsonl", [RECORDS[0].to_dict()])
    return out


def direct(tok, max_length):
    return [render_record(r, tok, max_length) for r in RECORDS]


def test_numbers_match_direct_rendering(dataset_dir, tiny_tokenizer):
    full = direct(tiny_tokenizer, BIG)
    lengths = sorted(r.full_length for r in full)
    long_prompt = full[3]
    # Cut the long record inside its prompt (answer lost) and the next-longest inside its answer.
    max_length = sorted(lengths)[-2] - 2
    assert max_length < long_prompt.full_length - long_prompt.n_loss_tokens

    result = inspect_dataset(dataset_dir, tiny_tokenizer, max_length)
    assert result["records"] == result["rendered"] == len(RECORDS)
    assert result["kinds"] == {"chat": 4, "label": 1, "text": 1}
    assert result["lengths"]["min"] == lengths[0] and result["lengths"]["max"] == lengths[-1]
    assert result["lengths"]["median"] == float(np.median(lengths))
    assert result["lengths"]["p95"] == pytest.approx(float(np.percentile(lengths, 95)))
    assert sum(result["histogram"]["counts"]) == len(RECORDS)

    cut = direct(tiny_tokenizer, max_length)
    assert result["truncation"]["truncated"] == sum(r.truncated for r in cut) == 2
    assert result["truncation"]["answer_truncated_away"] == 1
    assert result["truncation"]["tokens_cut"] == sum(r.full_length - max_length for r in cut if r.truncated)
    losses = [r.n_loss_tokens for r in cut]
    assert result["loss_tokens"]["total"] == sum(losses)
    assert result["loss_tokens"]["zero"] == 1 and result["loss_tokens"]["min"] == 0
    assert result["loss_tokens"]["max"] == max(losses)
    assert result["errors"]["count"] == 0
    assert result["end_of_turn"] == "<|im_end|>" and result["warnings"] == []
    json.dumps(result)  # --json prints it as is


def test_example_is_a_loss_mask_preview(dataset_dir, tiny_tokenizer):
    result = inspect_dataset(dataset_dir, tiny_tokenizer, BIG, n_examples=2)
    assert [e["line"] for e in result["examples"]] == [1, 2]
    first = result["examples"][0]
    assert "".join(t for t, inside in first["tokens"] if inside) == "answer1<|im_end|>"
    assert "".join(t for t, _ in first["tokens"]) == (
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nanswer1<|im_end|>\n"
    )
    assert first["n_loss_tokens"] == render_record(RECORDS[0], tiny_tokenizer, BIG).n_loss_tokens
    text = example_text(first)
    highlighted = "".join(text.plain[s.start : s.end] for s in text.spans if s.style == "black on green")
    dimmed = "".join(text.plain[s.start : s.end] for s in text.spans if s.style == "dim")
    assert highlighted == "answer1<|im_end|>"
    assert dimmed + highlighted != text.plain and len(dimmed) + len(highlighted) == len(text.plain)


def test_truncated_example_shows_only_what_training_sees(dataset_dir, tiny_tokenizer):
    result = inspect_dataset(dataset_dir, tiny_tokenizer, 6)
    example = result["examples"][0]
    assert example["truncated"] and len(example["tokens"]) == 6 and example["n_loss_tokens"] == 0
    assert "cut here" in example_text(example).plain


def test_other_split_and_missing_split(dataset_dir, tiny_tokenizer):
    assert inspect_dataset(dataset_dir, tiny_tokenizer, BIG, split="validation")["records"] == 1
    with pytest.raises(TunelabError, match="test.jsonl not found.*train, validation"):
        inspect_dataset(dataset_dir, tiny_tokenizer, BIG, split="test")


def test_unrenderable_records_are_listed_not_skipped(tmp_path, tiny_tokenizer):
    no_answer = Record(kind="chat", messages=[{"role": "user", "content": "hello"}])
    write_jsonl(tmp_path / "train.jsonl", [RECORDS[0].to_dict(), no_answer.to_dict()])
    result = inspect_dataset(tmp_path, tiny_tokenizer, BIG)
    assert result["records"] == 2 and result["rendered"] == 1
    assert result["errors"]["count"] == 1
    assert result["errors"]["first"][0]["line"] == 2
    assert "zero loss tokens" in result["errors"]["first"][0]["message"]


def test_preference_records_count_their_longer_reply(tmp_path, tiny_tokenizer):
    pref = Record(
        kind="preference",
        messages=[{"role": "user", "content": "hello"}],
        chosen="Paris",
        rejected="Paris is the capital of France.",
    )
    write_jsonl(tmp_path / "train.jsonl", [pref.to_dict()])
    result = inspect_dataset(tmp_path, tiny_tokenizer, BIG)
    _, rejected = render_preference(pref, tiny_tokenizer, BIG)
    assert result["lengths"]["max"] == rejected.full_length
    assert "".join(t for t, inside in result["examples"][0]["tokens"] if inside) == "Paris<|im_end|>"


def test_bad_lines_and_missing_template(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    (tmp_path / "train.jsonl").write_text('{"kind": "chat", "messages": []}\nnot json\n{"kind": "poem"}\n')
    with pytest.raises(InputError) as err:
        inspect_dataset(tmp_path, tok, BIG)
    assert [p.line for p in err.value.problems] == [2, 3]

    write_jsonl(tmp_path / "train.jsonl", [RECORDS[0].to_dict(), RECORDS[4].to_dict()])
    tok.chat_template = None
    with pytest.raises(TunelabError, match="no chat template"):
        inspect_dataset(tmp_path, tok, BIG)


def test_length_histogram_bins():
    hist = length_histogram([5, 5, 6, 20, 104])
    edges, counts = hist["edges"], hist["counts"]
    assert edges[0] == 5 and edges[-1] > 104 and len(counts) == len(edges) - 1 <= 10
    assert counts[0] == 3 and counts[-1] == 1 and sum(counts) == 5
    assert length_histogram([7, 7]) == {"edges": [7, 8], "counts": [2]}


def test_render_inspection_draws_everything(dataset_dir, tiny_tokenizer):
    result = inspect_dataset(dataset_dir, tiny_tokenizer, 40)
    console = Console(record=True, width=120, force_terminal=True, color_system="truecolor")
    render_inspection(result, console)
    out = console.export_text()
    assert "answer1<|im_end|>" in out
    assert out.count("█") >= len([c for c in result["histogram"]["counts"] if c])
    assert f"{result['truncation']['truncated']} of 6 records" in out
    assert "would lose their whole answer" in out
    assert "Loss tokens per record" in out and "End of turn: <|im_end|>" in out


def test_a_preference_pair_shows_both_sequences_with_only_the_replies_in_the_loss(tmp_path, tiny_tokenizer):
    pref = Record(kind="preference", messages=[{"role": "user", "content": "capital?"}], chosen="Paris",
                  rejected="Lyon, I think")
    write_jsonl(tmp_path / "train.jsonl", [pref.to_dict()])
    result = inspect_dataset(tmp_path, tiny_tokenizer, BIG)
    example = result["examples"][0]
    prompt = "<|im_start|>user\ncapital?<|im_end|>\n<|im_start|>assistant\n"
    for shown, reply in ((example, "Paris"), (example["rejected"], "Lyon, I think")):
        assert "".join(t for t, _ in shown["tokens"]).startswith(prompt + reply)
        assert "".join(t for t, inside in shown["tokens"] if inside) == reply + "<|im_end|>"
    console = Console(record=True, width=100)
    render_inspection(result, console)
    drawn = console.export_text()
    assert "(preference, chosen)" in drawn and "(preference, rejected)" in drawn and "Lyon, I think" in drawn
