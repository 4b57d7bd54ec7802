"""Classification metrics for labelled tasks, with labels parsed from generated text.

Parsing a generation into a label, in order (matching is case-insensitive, ignores punctuation):
1. the whole answer is a label ("Positive." -> positive);
2. the answer opens with a label followed by punctuation ("Negative: the tone is..." -> negative);
3. exactly one label occurs as a whole word (or phrase) anywhere in the answer; where labels
   overlap, the longer one counts ("an it issue" names "it issue", not also "it").
Anything else is "unparsed": it counts as wrong for accuracy, as a miss (false negative) for its gold
class, and is reported as a count and as its own column of the confusion matrix.

accuracy is the mean of per-example correctness (with a standard error); precision, recall and F1
are scikit-learn's with an explicit average="macro" over the label set (zero_division=0), plus
per-class figures and the confusion matrix; their intervals are bootstrap percentiles.
"""

from __future__ import annotations

import re
import string
from typing import Any

import numpy as np

from ...errors import TunelabError
from .base import MetricInputs, Score

UNPARSED = "<unparsed>"
_PUNCT_TABLE = str.maketrans({c: " " for c in string.punctuation})


def _norm(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT_TABLE).split())


def parse_label(text: str, labels: list[str]) -> str | None:
    """The label a generation names, or None when it names none or is ambiguous."""
    normed = {_norm(label): label for label in labels if _norm(label)}
    answer = _norm(text)
    if answer in normed:
        return normed[answer]
    lead = _leading_label(text, normed)
    if lead is not None:
        return lead
    found = _labels_in(answer, normed)
    return found[0] if len(found) == 1 else None


def _words_pattern(normed_label: str) -> str:
    return r"[\W_]+".join(re.escape(w) for w in normed_label.split())


def _leading_label(text: str, normed: dict[str, str]) -> str | None:
    """A verdict, then punctuation, opening the answer: "Negative: the tone is...", "IT. Because"."""
    raw = text.lower()
    for n in sorted(normed, key=len, reverse=True):
        if re.match(rf"[\W_]*{_words_pattern(n)}\s*(?:[^\w\s]|$)", raw):
            return normed[n]
    return None


def _labels_in(answer: str, normed: dict[str, str]) -> list[str]:
    """Distinct labels occurring as whole words; a label inside a longer one's match does not count."""
    taken = [False] * len(answer)
    found: list[str] = []
    for n in sorted(normed, key=len, reverse=True):
        for m in re.finditer(rf"(?<!\w){re.escape(n)}(?!\w)", answer):
            if not any(taken[m.start() : m.end()]):
                taken[m.start() : m.end()] = [True] * (m.end() - m.start())
                if normed[n] not in found:
                    found.append(normed[n])
    return found


def resolve_label_set(inputs: MetricInputs) -> list[str]:
    """The given label set (every reference must be in it), or the sorted distinct references."""
    if inputs.label_set is None:
        return sorted(set(inputs.references))
    labels = list(dict.fromkeys(inputs.label_set))
    unknown = sorted(set(inputs.references) - set(labels))
    if unknown:
        raise TunelabError(
            f"reference label(s) {unknown} are not in the label set {labels}; add them to the label set "
            "or fix the references"
        )
    return labels


def _parsed(inputs: MetricInputs) -> dict[str, Any]:
    if "classification" in inputs.cache:
        return inputs.cache["classification"]
    labels = resolve_label_set(inputs)
    preds = [parse_label(p, labels) for p in inputs.predictions]
    y_pred = [p if p is not None else UNPARSED for p in preds]
    result = {
        "labels": labels,
        "y_true": list(inputs.references),
        "y_pred": y_pred,
        "unparsed": sum(p is None for p in preds),
    }
    inputs.cache["classification"] = result
    return result


def _confusion(y_true: list[str], y_pred: list[str], labels: list[str]) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=[*labels, UNPARSED])


def _macro_from_counts(true_idx: np.ndarray, pred_idx: np.ndarray, k: int) -> tuple[float, float, float]:
    """Macro precision/recall/F1 over the first k classes (index k is "unparsed"), zero_division=0,
    the same arithmetic as scikit-learn's precision_recall_fscore_support(average="macro")."""
    cm = np.zeros((k + 1, k + 1), dtype=np.int64)
    np.add.at(cm, (true_idx, pred_idx), 1)
    tp = np.diag(cm)[:k].astype(np.float64)
    pred_count = cm[:, :k].sum(axis=0).astype(np.float64)
    true_count = cm[:k, :].sum(axis=1).astype(np.float64)
    precision = np.divide(tp, pred_count, out=np.zeros(k), where=pred_count > 0)
    recall = np.divide(tp, true_count, out=np.zeros(k), where=true_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return float(precision.mean()), float(recall.mean()), float(f1.mean())


def _prf(inputs: MetricInputs) -> dict[str, Any]:
    if "prf" in inputs.cache:
        return inputs.cache["prf"]
    from sklearn.metrics import precision_recall_fscore_support

    parsed = _parsed(inputs)
    labels, y_true, y_pred = parsed["labels"], parsed["y_true"], parsed["y_pred"]
    macro = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    per_class = {
        label: {"precision": float(per[0][i]), "recall": float(per[1][i]), "f1": float(per[2][i]),
                "support": int(per[3][i])}
        for i, label in enumerate(labels)
    }
    index = {label: i for i, label in enumerate([*labels, UNPARSED])}
    true_idx = np.array([index[y] for y in y_true])
    pred_idx = np.array([index[y] for y in y_pred])
    k = len(labels)
    samples = [
        _macro_from_counts(true_idx[idx], pred_idx[idx], k)
        for idx in _bootstrap_indices(len(y_true), inputs.bootstrap_samples, inputs.seed)
    ]
    result = {
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
        "samples": np.array(samples) if samples else None,
        "details": {
            "average": "macro",
            "labels": labels,
            "per_class": per_class,
            "confusion_matrix": {
                "labels": [*labels, UNPARSED],
                "rows": "gold",
                "columns": "predicted",
                "matrix": _confusion(y_true, y_pred, labels).tolist(),
            },
            "unparsed": parsed["unparsed"],
        },
    }
    inputs.cache["prf"] = result
    return result


def _bootstrap_indices(n: int, samples: int, seed: int) -> list[np.ndarray]:
    if n < 2 or samples < 2:
        return []
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, n, size=(samples, n)))


def accuracy(inputs: MetricInputs) -> Score:
    parsed = _parsed(inputs)
    correct = [float(t == p) for t, p in zip(parsed["y_true"], parsed["y_pred"], strict=True)]
    return Score(
        per_example=correct,
        details={"labels": parsed["labels"], "unparsed": parsed["unparsed"]},
        row_fields={"predicted_label": [None if p == UNPARSED else p for p in parsed["y_pred"]]},
    )


def _macro_metric(which: str, column: int):
    def fn(inputs: MetricInputs) -> Score:
        result = _prf(inputs)
        ci = None
        if result["samples"] is not None:
            low, high = np.percentile(result["samples"][:, column], [2.5, 97.5])
            ci = (float(low), float(high))
        return Score(value=result["macro"][which], ci=ci, details=result["details"])

    fn.__name__ = which
    return fn


precision = _macro_metric("precision", 0)
recall = _macro_metric("recall", 1)
f1 = _macro_metric("f1", 2)
