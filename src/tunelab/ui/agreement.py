"""The agreement panel: the people's blind ratings of an experiment against its LLM judge's scores.

The judge scored each answer on its own (judge_accuracy in the predictions rows, when compare ran with
eval.judge); for a rated pair its choice is the higher score (evaluate.agreement.judge_choice). A rating
whose answers no longer match the predictions (the comparison was re-run since) gets no judge choice,
so a judge is never credited with scores of answers nobody rated.
"""

from __future__ import annotations

from typing import Any

from ..evaluate.agreement import agreement_report, judge_choice, pair_name
from ..review.store import Rating
from .workdir import Experiment

METRIC = "judge_accuracy"


def _score(exp: Experiment, variant: str, qid: str, answer: str) -> float | None:
    row = exp.answers.get(variant, {}).get(qid)
    if row is None or str(row.get("prediction") or "") != answer:
        return None
    value = row.get(METRIC)
    return float(value) if isinstance(value, int | float) else None


def has_judge_scores(exp: Experiment) -> bool:
    return any(isinstance(row.get(METRIC), int | float) for per in exp.answers.values() for row in per.values())


def agreement_panel(exp: Experiment, ratings: list[Rating]) -> dict[str, Any] | None:
    """agreement_report over this experiment's ratings, or None when there are no ratings or no judge
    scores to compare them with."""
    if not ratings or not has_judge_scores(exp):
        return None
    human, judge, pairs = [], [], []
    for r in ratings:
        human.append(r.choice)
        judge.append(judge_choice(_score(exp, r.variant_a, r.question_id, r.answer_a),
                                  _score(exp, r.variant_b, r.question_id, r.answer_b)))
        pairs.append(pair_name(r.variant_a, r.variant_b))
    return agreement_report(human, judge, pairs)
