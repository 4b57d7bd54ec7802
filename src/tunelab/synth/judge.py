"""The optional LLM grounding check of generated records (filter `judge`, after the lexical filters).

    kept, dropped, calls = judge_filter(candidates, backend, templates, labels=(), retries=2,
                                        on_progress=lambda done, total: ...)

Per candidate, one verdict per reply that must be grounded (prompt judge_grounding: is every claim
of the ANSWER stated in, or implied by, the SOURCE?), one for a preference's rejected reply (which
must NOT be supported), and for labelled examples one label verdict (prompt judge_label). A record is
kept only when every verdict is the one it needs. A verdict the judge could not give (invalid JSON
after retries, a timeout ...) drops the record as `judge_failed`, counted by reason: an unchecked
record never passes as a checked one. `on_progress(done, total)` counts the verdicts as each becomes
final, from 0 of total.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel

from ..llm.spec import Backend
from ..llm.structured import complete_structured, done_counter
from .filters import Dropped
from .generate import Candidate
from .templates import PromptTemplate

TEMPLATES = ("judge_grounding", "judge_label")


class Verdict(BaseModel):
    reason: str = ""
    supported: bool


class LabelVerdict(BaseModel):
    reason: str = ""
    correct: bool


def judge_filter(
    cands: Sequence[Candidate],
    backend: Backend,
    templates: dict[str, PromptTemplate],
    *,
    labels: Sequence[str] = (),
    retries: int = 2,
    max_tokens: int = 256,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Candidate], list[Dropped], dict[str, Any]]:
    grounding, label_tpl = templates["judge_grounding"], templates["judge_label"]
    # (candidate index, what the verdict must be, conversation)
    asks: list[tuple[int, bool, list[dict[str, str]]]] = []
    label_asks: list[tuple[int, list[dict[str, str]]]] = []
    for i, c in enumerate(cands):
        values = {"source": c.chunk.source, "text": c.source_text()}
        for k, answer in enumerate(c.answers):
            question = c.questions[min(k, len(c.questions) - 1)]
            asks.append((i, True, grounding.render(**values, question=question, answer=answer)))
        if c.rejected is not None:
            asks.append((i, False, grounding.render(**values, question=c.questions[0], answer=c.rejected)))
        if c.record.kind == "label":
            label_asks.append((i, label_tpl.render(labels=", ".join(labels), label=c.record.label,
                                                   example=c.record.text)))
    problems: dict[int, tuple[str, str]] = {}
    failures: Counter[str] = Counter()
    attempts = cached = 0
    tick = done_counter(on_progress, len(asks) + len(label_asks))  # one task: verdicts, then label verdicts
    results = complete_structured(backend, [a[2] for a in asks], Verdict, retries=retries, temperature=0.0,
                                  max_tokens=max_tokens, on_done=tick) if asks else []
    for (i, wanted, _), res in zip(asks, results, strict=True):
        attempts += res.attempts
        cached += res.attempts if res.cached else 0
        if i in problems:
            continue
        if not res.ok:
            failures[res.error_kind or "unknown"] += 1
            problems[i] = ("judge_failed", f"{res.error_kind}: {res.error}")
        elif res.value.supported != wanted:
            reason = "not_supported" if wanted else "rejected_supported"
            problems[i] = (reason, res.value.reason[:300])
    label_results = complete_structured(backend, [a[1] for a in label_asks], LabelVerdict, retries=retries,
                                        temperature=0.0, max_tokens=max_tokens, on_done=tick) if label_asks else []
    for (i, _), res in zip(label_asks, label_results, strict=True):
        attempts += res.attempts
        cached += res.attempts if res.cached else 0
        if i in problems:
            continue
        if not res.ok:
            failures[res.error_kind or "unknown"] += 1
            problems[i] = ("judge_failed", f"{res.error_kind}: {res.error}")
        elif not res.value.correct:
            problems[i] = ("wrong_label", res.value.reason[:300])

    kept, dropped = [], []
    for i, c in enumerate(cands):
        if i in problems:
            dropped.append(Dropped(c, "judge", *problems[i]))
        else:
            c.checks["judge"] = "confirmed"
            kept.append(c)
    calls = {"judge": backend.name, "requests": len(asks) + len(label_asks), "attempts": attempts,
             "cached_attempts": cached, "failures": dict(failures),
             "structured_output": getattr(backend, "structured_output", None)}
    return kept, dropped, calls
