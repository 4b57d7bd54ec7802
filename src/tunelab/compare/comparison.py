"""The records of a comparison (its rows and the contrasts between variants) and how a number is printed.

They sit below the modules that use them: table.py builds and writes a Comparison, reading.py puts it
into words (and table.py calls it while building), report.py draws it as HTML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Contrast:
    metric: str
    better: str  # variant label
    worse: str
    delta: float  # better - worse, in the metric's direction
    low: float | None
    high: float | None
    beyond_uncertainty: bool
    method: str
    question: str  # what the contrast answers, e.g. "fine-tuning"


@dataclass
class Comparison:
    metrics: list[str]
    rows: list[dict[str, Any]]  # one per variant: label, id, metric values/uncertainty, cost
    contrasts: list[Contrast]
    categories: dict[str, dict[str, float]]  # variant label -> category -> primary metric mean
    retrieval: dict[str, Any] | None
    reading: list[str]
    n: int
    primary: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n, "primary_metric": self.primary, "metrics": self.metrics, "rows": self.rows,
            "contrasts": [c.__dict__ for c in self.contrasts], "categories": self.categories,
            "retrieval": self.retrieval, "reading": self.reading, **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Comparison:
        """The inverse of to_dict: a comparison read back from comparison.json."""
        known = {"n", "primary_metric", "metrics", "rows", "contrasts", "categories", "retrieval", "reading"}
        return cls(metrics=list(data.get("metrics") or []), rows=list(data.get("rows") or []),
                   contrasts=[Contrast(**c) for c in data.get("contrasts") or []],
                   categories=dict(data.get("categories") or {}), retrieval=data.get("retrieval"),
                   reading=list(data.get("reading") or []), n=int(data.get("n") or 0),
                   primary=str(data.get("primary_metric") or ""),
                   extra={k: v for k, v in data.items() if k not in known})


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{min(digits, 2)}f}" if abs(value) >= 10 else f"{value:.{digits}f}"
    return str(value)
