"""ARC Easy and Challenge (AI2 Reasoning Challenge): acc and acc_norm, 0-shot, test split as lm-eval.

Context "Question: {question}\nAnswer:", each option's text scored as " " + text; gold is the option
whose label equals answerKey. Two row formats are read:
- AI2's JSONL: {"id", "question": {"stem", "choices": [{"text", "label"}, ...]}, "answerKey"};
- Hugging Face allenai/ai2_arc: {"id", "question", "choices": {"text": [...], "label": [...]}, "answerKey"}.
"""

from __future__ import annotations

from typing import Any

from .base import Benchmark, Item, RowError, require, score_acc, string_list

DATA_FORMAT = (
    "JSON Lines, one question per line: `question` (text), `choices` {`text`: list, `label`: list} and "
    "`answerKey` (Hugging Face's rows), or AI2's `question` {`stem`, `choices`: list of {`text`, `label`}} "
    "and `answerKey`"
)


def _ai2_choices(question: dict[str, Any]) -> tuple[str, list[str], list[Any]]:
    stem = require(question, "stem", str, where="question")
    options = require(question, "choices", list, where="question")
    if len(options) < 2:
        raise RowError("question.choices", "must list at least 2 options")
    texts, labels = [], []
    for i, option in enumerate(options):
        if not isinstance(option, dict):
            raise RowError(f"question.choices[{i}]", "must be an object with 'text' and 'label'")
        texts.append(require(option, "text", str, where=f"question.choices[{i}]"))
        labels.append(require(option, "label", (str, int), where=f"question.choices[{i}]"))
    return stem, texts, labels


def _hf_choices(row: dict[str, Any]) -> tuple[str, list[str], list[Any]]:
    stem = require(row, "question", str)
    choices = require(row, "choices", dict)
    texts = choices.get("text")
    labels = choices.get("label")
    if not isinstance(texts, list):
        raise RowError("choices.text", "missing (a list of option texts)")
    if not isinstance(labels, list) or len(labels) != len(texts):
        raise RowError("choices.label", f"must be a list of {len(texts)} labels, one per option")
    return stem, texts, labels


def parse(row: dict[str, Any], index: int) -> Item:
    question = row.get("question")
    stem, texts, labels = _ai2_choices(question) if isinstance(question, dict) else _hf_choices(row)
    choices = string_list(texts, "choices.text", min_len=2)
    key = require(row, "answerKey", (str, int))
    keys = [str(label) for label in labels]
    if str(key) not in keys:
        raise RowError("answerKey", f"{key!r} is not one of the option labels {keys}")
    return Item(row.get("id", index), f"Question: {stem}\nAnswer:", choices, keys.index(str(key)), None, stem)


BENCHMARKS = tuple(
    Benchmark(
        name=name,
        description=f"ARC-{config.split('-')[1]} test split: grade-school science questions (acc, acc_norm)",
        filenames=(f"{name}.jsonl", f"{config}-Test.jsonl", f"{config.lower()}-test.jsonl"),
        parse=parse,
        score=score_acc,
        metrics=("acc", "acc_norm"),
        hf_source=("allenai/ai2_arc", config, "test"),
        data_format=DATA_FORMAT,
    )
    for name, config in (("arc_easy", "ARC-Easy"), ("arc_challenge", "ARC-Challenge"))
)
