"""HellaSwag: pick the ending of an activity description; acc and acc_norm, 0-shot.

lm-eval builds the context as activity_label + ": " + ctx_a + " " + ctx_b.capitalize() and cleans
context and endings of WikiHow markup (see `preprocess`). Two row formats are read:
- the Hugging Face one (activity_label, ctx_a, ctx_b, endings, label), joined exactly as lm-eval does;
- the bundled local file's (ctx already joined as activity label + ": " + context, endings, label).
  Its ctx was joined without lm-eval's capitalisation of ctx_b, so on that file the context can
  differ from lm-eval's by the case of one letter; lm-eval pointed at the same file agrees exactly.
"""

from __future__ import annotations

import re
from typing import Any

from .base import Benchmark, Item, index_label, require, score_acc, string_list

FILENAMES = ("hellaswag_val.jsonl", "hellaswag.jsonl")
HF_SOURCE = ("Rowan/hellaswag", None, "validation")
DATA_FORMAT = (
    "JSON Lines, one item per line with `activity_label`, `ctx_a`, `ctx_b` (or `ctx`, already joined), "
    "`endings` (the 4 candidate endings) and `label` (the index of the right ending)"
)
_BRACKETED = re.compile(r"\[.*?\]")


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleaning: strip, " [title]" -> ". ", drop [bracketed] tags, one pass of "  " -> " "."""
    text = text.strip().replace(" [title]", ". ")
    text = _BRACKETED.sub("", text)
    return text.replace("  ", " ")


def _raw_context(row: dict[str, Any]) -> str:
    if all(k in row for k in ("activity_label", "ctx_a", "ctx_b")):
        label = require(row, "activity_label", str)
        ctx_a = require(row, "ctx_a", str)
        ctx_b = require(row, "ctx_b", str)
        return label + ": " + ctx_a + " " + ctx_b.capitalize()
    return require(row, "ctx", str)


def parse(row: dict[str, Any], index: int) -> Item:
    context = preprocess(_raw_context(row))
    endings = string_list(require(row, "endings", list), "endings", min_len=2)
    gold = index_label(require(row, "label", (int, str)), "label", len(endings))
    item_id = row.get("ind", row.get("id", index))
    return Item(item_id, context, tuple(preprocess(e) for e in endings), gold, None, context)


BENCHMARKS = (
    Benchmark(
        name="hellaswag",
        description="HellaSwag validation: commonsense sentence completion (acc, acc_norm)",
        filenames=FILENAMES,
        parse=parse,
        score=score_acc,
        metrics=("acc", "acc_norm"),
        hf_source=HF_SOURCE,
        data_format=DATA_FORMAT,
    ),
)
