"""The metric record, the inputs every metric reads, and the uncertainty helpers they share.

A metric is one record (as in lm-evaluation-harness): its name, the function that scores, whether
higher is better, how it aggregates ("mean" of per-example scores, or "corpus": one score from
pooled statistics) and a one-line description that names the exact definition. Uncertainty:
a mean carries its standard error (sample standard deviation / sqrt(n)); a corpus score carries a
95% percentile bootstrap interval (1000 resamples of the examples, fixed seed). An interval of a mean
(such as the mean of paired per-question differences) is mean +- t * stderr with Student's t quantile
for n-1 degrees of freedom: at n = 10 that is 2.26, not the normal 1.96, which would be too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import TunelabError

AGGREGATIONS = ("mean", "corpus")
LEVEL = 0.95  # the confidence level of every interval tunelab reports
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass
class MetricInputs:
    """Everything a metric may read. Text metrics need predictions and references only; perplexity
    needs the model, tokenizer and prompts; classification may be given its label set."""

    predictions: list[str]
    references: list[str]
    prompts: list[Any] | None = None  # message lists or raw strings, as given to the generator
    model: Any = None
    tokenizer: Any = None
    chat_template: bool = True
    batch_size: int = 16
    label_set: list[str] | None = None
    rouge_stemmer: bool = True
    rouge_tokenizer: str = "auto"  # "default" (rouge-score's [a-z0-9]), "unicode" or "auto"
    bootstrap_samples: int = BOOTSTRAP_SAMPLES
    seed: int = BOOTSTRAP_SEED
    cache: dict[str, Any] = field(default_factory=dict)  # shared work (one ROUGE pass for four types)

    def __post_init__(self) -> None:
        if len(self.predictions) != len(self.references):
            raise ValueError(
                f"{len(self.predictions)} predictions but {len(self.references)} references; they must pair up"
            )
        if self.prompts is not None and len(self.prompts) != len(self.references):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.references)} references")

    @property
    def n(self) -> int:
        return len(self.references)


@dataclass
class Score:
    """What a metric function returns. Mean metrics fill `per_example` and leave `value` None (the
    record averages); corpus metrics fill `value` and `ci`, and `per_example` when a per-example
    figure helps reading the predictions (it is not what `value` averages)."""

    value: float | None = None
    per_example: list[float] | None = None
    ci: tuple[float, float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    row_fields: dict[str, list[Any]] = field(default_factory=dict)  # extra per-example columns


@dataclass
class MetricValue:
    """A computed metric: the number, its uncertainty and how to read it."""

    name: str
    value: float
    n: int
    aggregation: str
    higher_is_better: bool
    stderr: float | None = None
    ci: tuple[float, float] | None = None
    per_example: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    row_fields: dict[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "aggregation": self.aggregation,
            "higher_is_better": self.higher_is_better,
            "n": self.n,
        }
        if self.stderr is not None:
            out["stderr"] = self.stderr
        if self.ci is not None:
            out["ci95"] = list(self.ci)
            out["ci_method"] = f"percentile bootstrap, {BOOTSTRAP_SAMPLES} resamples of examples, seed {BOOTSTRAP_SEED}"
        out.update(self.details)
        return out


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[[MetricInputs], Score]
    higher_is_better: bool
    aggregation: str
    description: str
    needs_model: bool = False

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"metric {self.name}: aggregation must be one of {AGGREGATIONS}")

    def compute(self, inputs: MetricInputs) -> MetricValue:
        if inputs.n == 0:
            raise TunelabError(f"metric {self.name}: no examples to score")
        score = self.fn(inputs)
        stderr = None
        if self.aggregation == "mean":
            if score.per_example is None:
                raise RuntimeError(f"metric {self.name} is a mean but returned no per-example scores")
            value, stderr = mean_stderr(score.per_example)
        else:
            if score.value is None:
                raise RuntimeError(f"metric {self.name} is corpus-level but returned no value")
            value = score.value
        return MetricValue(
            name=self.name,
            value=float(value),
            n=inputs.n,
            aggregation=self.aggregation,
            higher_is_better=self.higher_is_better,
            stderr=stderr,
            ci=score.ci,
            per_example=score.per_example,
            details={"description": self.description, **score.details},
            row_fields=score.row_fields,
        )


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample std with n-1 / sqrt(n)); no error for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    return mean, float(arr.std(ddof=1) / math.sqrt(arr.size))


def t_quantile(df: int, level: float = LEVEL) -> float:
    """The two-sided `level` quantile of Student's t with `df` degrees of freedom (2.262 for df 9 at 95%)."""
    from scipy.stats import t

    if df < 1:
        raise ValueError(f"a t quantile needs at least 1 degree of freedom, got {df}")
    return float(t.ppf(0.5 + level / 2, df))


def t_interval(mean: float, stderr: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """mean +- t(level, n-1) * stderr: the `level` interval of a mean of n values."""
    half = t_quantile(n - 1, level) * stderr
    return mean - half, mean + half


def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """95% percentile interval of `statistic(indices)` over resamples of the n examples.

    `statistic` receives an index array (with repeats) and recomputes the corpus score from the
    chosen examples' statistics; None when there are too few examples to resample.
    """
    if n < 2 or samples < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    scores = np.array([statistic(row) for row in idx], dtype=np.float64)
    low, high = np.percentile(scores, [2.5, 97.5])
    return float(low), float(high)
