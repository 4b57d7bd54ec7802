"""What every multiple-choice benchmark is made of: items, the benchmark record, and lm-eval's scoring.

A benchmark turns each row of its data file into an `Item` (a context and its choices), asks for one
log-likelihood per choice (context, " " + choice), and scores the item from those numbers. The
scoring functions here are lm-evaluation-harness's definitions, so a value computed here is the value
lm-eval reports for the same log-likelihoods:

- acc      = argmax_i ll_i == gold (numpy's argmax: the first of equal maxima wins);
- acc_norm = argmax_i ll_i / len(choice_i) == gold, length in characters, without the delimiter;
- MC2      = the probability mass on the true answers, with p_i = exp(ll_i) normalised over all choices;
- standard error of a mean = sample standard deviation / sqrt(n).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TARGET_DELIMITER = " "  # lm-eval's multiple-choice default: continuation = " " + choice


class RowError(ValueError):
    """A row that does not have what its benchmark needs; `field` names the offending field."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Item:
    """One benchmark question, ready to be scored."""

    id: Any
    context: str
    choices: tuple[str, ...]
    gold: int  # index of the right choice
    labels: tuple[int, ...] | None = None  # MC2: 1 for every true choice, 0 for the false ones
    query: str = ""  # the question as a person reads it (no primer), for the per-item output

    def requests(self) -> list[tuple[str, str]]:
        return [(self.context, TARGET_DELIMITER + choice) for choice in self.choices]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark as a user picks it by its lm-eval task name."""

    name: str
    description: str
    filenames: tuple[str, ...]  # file names searched for in the benchmark directories
    parse: Callable[[dict[str, Any], int], Item]  # (row, 0-based index) -> Item; raises RowError
    score: Callable[[Item, Sequence[float]], dict[str, float]]
    metrics: tuple[str, ...]  # what lm-eval reports for this task, in its order
    hf_source: tuple[str, str | None, str] | None = None  # (dataset, config, split) lm-eval loads
    data_format: str = "JSONL"  # the file's rows as a user must write them, for "file not found" errors
    notes: tuple[str, ...] = field(default=())


# ---------------------------------------------------------------------------------------------- rows


def require(row: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str | None = None) -> Any:
    """row[name], which must exist and be of `kind`; `where` prefixes the field name in errors."""
    label = f"{where}.{name}" if where else name
    if name not in row or row[name] is None:
        raise RowError(label, "missing")
    value = row[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise RowError(label, f"must be {expected}, got {type(value).__name__}")
    return value


def string_list(value: Any, label: str, min_len: int = 1) -> tuple[str, ...]:
    """A list of non-empty strings (an empty choice has no length to normalise by)."""
    if not isinstance(value, list) or len(value) < min_len:
        raise RowError(label, f"must be a list of at least {min_len} strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise RowError(f"{label}[{i}]", "must be a non-empty string")
    return tuple(value)


def index_label(value: Any, label: str, n_choices: int) -> int:
    """A gold index given as an int or a numeric string, checked against the number of choices."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RowError(label, f"must be an integer index, got {value!r}")
    if not 0 <= value < n_choices:
        raise RowError(label, f"index {value} is out of range for {n_choices} choices")
    return value


# ---------------------------------------------------------------------------------------------- scoring


def choice_argmax(lls: Sequence[float]) -> int:
    return int(np.argmax(np.asarray(lls, dtype=np.float64)))


def norm_argmax(lls: Sequence[float], choices: Sequence[str]) -> int:
    lengths = np.array([float(len(c)) for c in choices])
    return int(np.argmax(np.asarray(lls, dtype=np.float64) / lengths))


def score_acc(item: Item, lls: Sequence[float]) -> dict[str, float]:
    """acc and acc_norm (HellaSwag, ARC)."""
    return {
        "acc": float(choice_argmax(lls) == item.gold),
        "acc_norm": float(norm_argmax(lls, item.choices) == item.gold),
    }


def score_acc_only(item: Item, lls: Sequence[float]) -> dict[str, float]:
    """acc alone (TruthfulQA MC1, where lm-eval reports no length-normalised variant)."""
    return {"acc": float(choice_argmax(lls) == item.gold)}


def mc2_value(lls: Sequence[float], labels: Sequence[int]) -> float:
    """Probability mass on the true answers, p_i = exp(ll_i) normalised over all choices.

    Shifting by the maximum before exponentiating changes nothing mathematically and keeps very
    negative log-likelihoods (< -745) from underflowing to 0/0, where lm-eval's plain exp gives NaN.
    """
    values = np.asarray(lls, dtype=np.float64)
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    return float(probs[np.asarray(labels) == 1].sum())


def score_mc2(item: Item, lls: Sequence[float]) -> dict[str, float]:
    assert item.labels is not None
    return {"acc": mc2_value(lls, item.labels)}


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean, and the standard error of the mean (sample stddev / sqrt(n)); None when n < 2."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance) / math.sqrt(n)
