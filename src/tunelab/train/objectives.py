"""Training objectives, picked by name: what the loss covers and how records become examples.

- sft: instruction tuning. Chat records are rendered with the model's chat template and only the
  assistant turns (and the end-of-turn token closing each) are in the loss; text records, if any, are
  all in the loss. Examples longer than max_length are truncated; an example whose answer was truncated
  away is dropped (and counted), never trained on with an empty loss.
- grpo: reinforcement from rewards; the examples are prompts, answered by the model while it trains
  (grpo.py says how).
- causal: continued pre-training. Every token is in the loss (chat records too, template included), and
  long documents are cut into max_length windows instead of truncated, so no text is thrown away.
- dpo, orpo: preference tuning on prompt/chosen/rejected records; each becomes a pair of rendered
  sequences with the loss mask on the replies only (preference.py: the pairs, the losses, the reference).

Both return already-rendered `Example`s; the training loop never sees records, so stages and mixtures
can feed it examples from anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..data.records import Record
from ..errors import TunelabError
from .batching import Example, example_from_rendered, split_long
from .preference import build_pairs


@dataclass(frozen=True)
class Objective:
    name: str
    summary: str
    build: Callable[[Sequence[Record], Any, int], tuple[list[Example], dict[str, Any]]]


def _stats(examples: list[Example], render_stats: dict[str, Any], dropped: int) -> dict[str, Any]:
    return {
        "examples": len(examples),
        "tokens": sum(len(e) for e in examples),
        "loss_tokens": sum(e.n_loss_tokens for e in examples),
        "max_example_tokens": max((len(e) for e in examples), default=0),
        "truncated": render_stats.get("truncated", 0),
        "dropped_no_loss_tokens": dropped,
        "warnings": list(render_stats.get("warnings", [])),
    }


def _task(record: Record) -> str | None:
    task = (record.meta or {}).get("task")
    return str(task) if task is not None else None


def _check_kinds(records: Sequence[Record], objective: str) -> None:
    bad = sorted({r.kind for r in records if r.kind == "preference"})
    if bad:
        raise TunelabError(
            f"the {objective} objective cannot train on preference records (chosen/rejected pairs); "
            "set train.objective to dpo or orpo to train on them (an sft stage can come first: stages:)"
        )


def build_sft(records: Sequence[Record], tokenizer, max_length: int) -> tuple[list[Example], dict[str, Any]]:
    from ..data.render import render_records

    _check_kinds(records, "sft")
    rendered, stats = render_records(records, tokenizer, max_length, train_on="assistant")
    examples: list[Example] = []
    dropped = 0
    for record, r in zip(records, rendered, strict=True):
        example = example_from_rendered(r.input_ids, r.labels, _task(record))
        if example.n_loss_tokens == 0:
            dropped += 1
            continue
        examples.append(example)
    return examples, _stats(examples, stats, dropped)


def build_causal(records: Sequence[Record], tokenizer, max_length: int) -> tuple[list[Example], dict[str, Any]]:
    from ..data.render import render_records

    _check_kinds(records, "causal")
    rendered, stats = render_records(records, tokenizer, None, train_on="all")  # type: ignore[arg-type]
    examples: list[Example] = []
    dropped = 0
    for record, r in zip(records, rendered, strict=True):
        windows = split_long(example_from_rendered(r.input_ids, r.labels, _task(record)), max_length)
        dropped += not windows
        examples += windows
    return examples, _stats(examples, stats, dropped)


def build_grpo(records: Sequence[Record], tokenizer, max_length: int) -> tuple[list[Example], dict[str, Any]]:
    from .grpo import build_grpo as build

    return build(records, tokenizer, max_length)


OBJECTIVES: dict[str, Objective] = {
    "sft": Objective("sft", "loss on assistant replies only", build_sft),
    "causal": Objective("causal", "loss on every token; long texts cut into max_length windows", build_causal),
    "grpo": Objective("grpo", "sampled answers scored by rewards (grpo.py)", build_grpo),
    "dpo": Objective("dpo", "preference pairs: chosen over rejected against the starting model",
                     build_pairs),  # type: ignore[arg-type]
    "orpo": Objective("orpo", "preference pairs: NLL of chosen plus an odds-ratio term, no reference",
                      build_pairs),  # type: ignore[arg-type]
}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise TunelabError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
