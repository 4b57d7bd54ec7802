"""LLM-as-judge: score predictions with a judge model, count every failure, never a silent zero.

    from tunelab.llm import backend_from_spec
    from tunelab.evaluate.judge import judge_predictions

    backend = backend_from_spec("openai:llama3.1@http://localhost:11434/v1", cache=True)
    result = judge_predictions(rows, backend, with_context=False)
    result.metrics["judge_accuracy"]   # {"value", "stderr", "n_scored", "n_failed", "failures", ...}
    result.apply(rows)                 # per-row scores, reasons and failure reasons added to the rows

Rows are eval predictions rows (tunelab eval's predictions.jsonl): `prediction`, `reference`, and the
question as `question` or as the last user message of `prompt`. With `with_context=True` each row also
needs its retrieved context as `contexts` (list of strings, or of {"text": ...}) or `context` (string),
at the top level or in `meta`.

Metrics (registered in JUDGE_METRICS; each records its judge model and prompt version):
- judge_accuracy: 1-5 rubric against the reference (tunelab's convention; the prompt is in
  judge_prompts/accuracy.txt). Not RAGAS answer_correctness, which blends statement F1 and
  embedding similarity.
- judge_relevance: 1-5 rubric, does the answer address the question, no reference shown (tunelab's
  convention; not RAGAS answer_relevancy, which compares generated questions by embedding cosine).
- judge_faithfulness (with context): RAGAS faithfulness. The answer is split into atomic
  statements; each is marked inferable from the context or not; score = supported / total, 0-1.
  An answer with no statements has no score (RAGAS: undefined) and is counted as `no_statements`.

Aggregates are the mean and its standard error over the rows the judge scored; the rows it could not
score are reported next to them by reason (invalid_json, schema_mismatch, http_error, timeout, ...).
"""

from __future__ import annotations

import json
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..errors import InputError, Problem, TunelabError
from ..llm.schema import reply_schema
from ..llm.spec import Backend, Conversation
from ..llm.structured import StructuredResult, complete_structured, done_counter
from .metrics.base import MetricValue, mean_stderr

PROMPT_DIR = Path(__file__).parent / "judge_prompts"
NO_STATEMENTS = "no_statements"


# -- prompt templates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt file: `version:` and `about:` header lines, then [system] and [user] sections
    with $placeholders (string.Template syntax; $$ is a literal dollar)."""

    name: str
    version: str
    about: str
    system: str
    user: str

    def render(self, **values: Any) -> Conversation:
        try:
            user = string.Template(self.user).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise TunelabError(f"judge prompt {self.name}: no value for placeholder {exc}") from None
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_template(name: str, directory: str | None = None) -> PromptTemplate:
    path = Path(directory or PROMPT_DIR) / f"{name}.txt"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TunelabError(f"judge prompt {path}: cannot read it ({exc})") from None
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped in ("[system]", "[user]"):
            current = sections.setdefault(stripped[1:-1], [])
        elif current is not None:
            current.append(line)
        elif stripped:
            key, sep, value = stripped.partition(":")
            if not sep:
                raise TunelabError(f"{path}:{line_no}: expected 'key: value' before the [system] section")
            header[key.strip()] = value.strip()
    missing = [s for s in ("system", "user") if s not in sections] + (["version"] if "version" not in header else [])
    if missing:
        raise TunelabError(f"judge prompt {path}: missing {', '.join(missing)}")
    return PromptTemplate(name, header["version"], header.get("about", ""),
                          "\n".join(sections["system"]).strip(), "\n".join(sections["user"]).strip())


# -- reply schemas -------------------------------------------------------------------------------------


class Rating(BaseModel):
    reason: str
    score: int = Field(ge=1, le=5)


class Statements(BaseModel):
    statements: list[str]


class Verdict(BaseModel):
    statement: str = ""
    reason: str = ""
    supported: bool


class Verdicts(BaseModel):
    verdicts: list[Verdict]


# -- the registry --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeMetric:
    name: str
    prompts: tuple[str, ...]  # template names, in call order
    scale: str
    needs_context: bool
    needs_reference: bool
    description: str


JUDGE_METRICS: dict[str, JudgeMetric] = {
    m.name: m
    for m in (
        JudgeMetric("judge_accuracy", ("accuracy",), "1-5", False, True,
                    "LLM judge, accuracy against the reference on a 1-5 rubric (tunelab convention), "
                    "mean over scored rows"),
        JudgeMetric("judge_relevance", ("relevance",), "1-5", False, False,
                    "LLM judge, relevance to the question on a 1-5 rubric (tunelab convention), "
                    "mean over scored rows"),
        JudgeMetric("judge_faithfulness", ("faithfulness_statements", "faithfulness_verdicts"), "0-1", True,
                    False, "RAGAS faithfulness: supported statements / all statements of the answer, judged "
                    "against the retrieved context, mean over scored rows"),
    )
}


def default_metrics(with_context: bool) -> list[str]:
    return [n for n, m in JUDGE_METRICS.items() if with_context or not m.needs_context]


# -- results -------------------------------------------------------------------------------------------


@dataclass
class _Score:
    value: float | None = None
    reason: str | None = None
    error_kind: str | None = None
    error: str | None = None
    detail: Any = None


@dataclass
class JudgeResult:
    judge: str
    prompt_versions: dict[str, str]
    metrics: dict[str, dict[str, Any]]
    scores: dict[str, list[_Score]] = field(repr=False)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "prompt_versions": self.prompt_versions, "metrics": self.metrics,
                "stats": self.stats}

    def row_fields(self, i: int) -> dict[str, Any]:
        """The judge's fields for row i: score (None when it failed), reason, failure reason."""
        out: dict[str, Any] = {"judge_model": self.judge, "judge_prompt_versions": self.prompt_versions}
        for name, scores in self.scores.items():
            s = scores[i]
            out[name] = s.value
            out[f"{name}_reason"] = s.reason
            out[f"{name}_error"] = f"{s.error_kind}: {s.error}" if s.error_kind else None
            if s.detail is not None:
                out[f"{name}_statements"] = s.detail
        return out

    def apply(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Add every row's judge fields to `rows` in place (and return them)."""
        for i, row in enumerate(rows):
            row.update(self.row_fields(i))
        return rows

    def metric_values(self) -> dict[str, MetricValue]:
        """Metric records for an eval summary; a metric no row could be scored on has none (see
        `metrics[name]["n_scored"]`)."""
        out = {}
        for name, m in self.metrics.items():
            if m["n_scored"] == 0:
                continue
            details = {k: v for k, v in m.items() if k not in ("value", "stderr")}
            out[name] = MetricValue(name=name, value=m["value"], n=m["n_scored"], aggregation="mean",
                                    higher_is_better=True, stderr=m["stderr"], details=details)
        return out


# -- the run -------------------------------------------------------------------------------------------


def judge_predictions(
    rows: Sequence[dict[str, Any]],
    backend: Backend,
    *,
    with_context: bool = False,
    metrics: Sequence[str] | None = None,
    retries: int = 2,
    prompt_dir: str | Path | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
    task: str = "judging",
) -> JudgeResult:
    """Judge every row on `metrics` (default: accuracy and relevance, plus faithfulness with context).

    `on_progress(task, done, total)` counts the judgements (one per row and metric, faithfulness's two
    steps as one) as each becomes final, answers from a batch or the cache included, from 0 of total."""
    names = list(dict.fromkeys(metrics or default_metrics(with_context)))
    unknown = [n for n in names if n not in JUDGE_METRICS]
    if unknown:
        raise TunelabError(f"unknown judge metric(s) {', '.join(unknown)}; available: {', '.join(JUDGE_METRICS)}")
    chosen = [JUDGE_METRICS[n] for n in names]
    if any(m.needs_context for m in chosen) and not with_context:
        raise TunelabError("judge_faithfulness needs the retrieved context: call with with_context=True")
    if not rows:
        raise TunelabError("no predictions to judge")
    items = _inputs(rows, chosen)
    pdir = str(prompt_dir) if prompt_dir else None
    templates = {p: load_template(p, pdir) for m in chosen for p in m.prompts}
    start = time.perf_counter()
    calls = {"calls": 0, "cached": 0}
    scores: dict[str, list[_Score]] = {}
    tick = done_counter(None if on_progress is None else (lambda done, total: on_progress(task, done, total)),
                        len(items) * len(chosen))

    ratings = [m for m in chosen if m.prompts[0] in ("accuracy", "relevance")]
    if ratings:
        convs = [templates[m.prompts[0]].render(**_values(m.prompts[0], it)) for m in ratings for it in items]
        results = _structured(backend, convs, Rating, retries, calls, on_done=tick)
        for k, m in enumerate(ratings):
            part = results[k * len(items) : (k + 1) * len(items)]
            scores[m.name] = [_rating_score(r) for r in part]
    if "judge_faithfulness" in names:
        scores["judge_faithfulness"] = _faithfulness(backend, items, templates, retries, calls, tick)

    prompt_versions = {p: t.version for p, t in templates.items()}
    aggregates = {m.name: _aggregate(m, scores[m.name], backend.name, templates) for m in chosen}
    stats = {**calls, "wall_s": round(time.perf_counter() - start, 3),
             # how the judge was held to the reply schema: grammar (local), json_schema / json_object / prompt
             "structured_output": getattr(backend, "structured_output", None)}
    cache = getattr(backend, "cache", None)
    if cache is not None and hasattr(cache, "stats"):
        stats["cache"] = cache.stats()
    return JudgeResult(backend.name, prompt_versions, aggregates, {m.name: scores[m.name] for m in chosen}, stats)


def _structured(backend, convs, schema, retries, calls, check=None, json_schema=None,
                on_done=None) -> list[StructuredResult]:
    results = complete_structured(backend, convs, schema, retries=retries, temperature=0.0,
                                  max_tokens=768 if schema is not Rating else 256, check=check,
                                  json_schema=json_schema, on_done=on_done)
    calls["calls"] += sum(r.attempts for r in results)
    calls["cached"] += sum(r.attempts for r in results if r.cached)
    return results


def _verdicts_schema(count: int) -> dict[str, Any]:
    """Verdicts narrowed to exactly one per statement, so a constrained judge cannot miscount."""
    schema = reply_schema(Verdicts)
    schema["properties"]["verdicts"]["minItems"] = schema["properties"]["verdicts"]["maxItems"] = count
    return schema


def _rating_score(r: StructuredResult) -> _Score:
    if not r.ok:
        return _Score(error_kind=r.error_kind, error=r.error)
    value: Rating = r.value  # type: ignore[assignment]
    return _Score(value=float(value.score), reason=value.reason)


def _faithfulness(backend, items, templates, retries, calls, tick) -> list[_Score]:
    """RAGAS faithfulness in its two steps: statements from the answer, then one verdict each. `tick()`
    is called once per row when its score is final: after its verdicts, or when the first step ends it."""

    def first_step_done(_i: int, r: StructuredResult) -> None:
        if not r.ok or not any(s.strip() for s in r.value.statements):  # type: ignore[union-attr]
            tick()  # no verdicts step follows for this row

    convs = [templates["faithfulness_statements"].render(**_values("faithfulness_statements", it)) for it in items]
    found = _structured(backend, convs, Statements, retries, calls, on_done=first_step_done)
    out: list[_Score] = [_Score() for _ in items]
    todo: list[tuple[int, list[str]]] = []
    for i, r in enumerate(found):
        if not r.ok:
            out[i] = _Score(error_kind=r.error_kind, error=f"statements step: {r.error}")
            continue
        statements = [s.strip() for s in r.value.statements if s.strip()]  # type: ignore[union-attr]
        if not statements:
            out[i] = _Score(error_kind=NO_STATEMENTS, error="the answer makes no statement; faithfulness is undefined")
        else:
            todo.append((i, statements))
    if not todo:
        return out
    tmpl = templates["faithfulness_verdicts"]
    convs = [tmpl.render(context=items[i]["context"], count=len(st),
                         statements="\n".join(f"{k + 1}. {s}" for k, s in enumerate(st))) for i, st in todo]

    def check(j: int, value: BaseModel) -> str | None:
        want, got = len(todo[j][1]), len(value.verdicts)  # type: ignore[attr-defined]
        return None if want == got else f"expected {want} verdicts, one per statement, got {got}"

    verdicts = _structured(backend, convs, Verdicts, retries, calls, check=check,
                           json_schema=[_verdicts_schema(len(st)) for _, st in todo], on_done=tick)
    for (i, statements), r in zip(todo, verdicts, strict=True):
        if not r.ok:
            out[i] = _Score(error_kind=r.error_kind, error=f"verdicts step: {r.error}")
            continue
        marks = r.value.verdicts  # type: ignore[union-attr]
        supported = sum(v.supported for v in marks)
        detail = [{"statement": s, "supported": v.supported, "reason": v.reason}
                  for s, v in zip(statements, marks, strict=True)]
        out[i] = _Score(value=supported / len(statements), reason=f"{supported} of {len(statements)} statements "
                        "supported by the context", detail=detail)
    return out


def _aggregate(metric: JudgeMetric, scores: list[_Score], judge: str, templates) -> dict[str, Any]:
    values = [s.value for s in scores if s.value is not None]
    failures = Counter(s.error_kind for s in scores if s.value is None)
    mean, stderr = mean_stderr(values) if values else (None, None)
    first_error = next((f"{s.error_kind}: {s.error}" for s in scores if s.value is None), None)
    return {
        "value": mean,
        "stderr": stderr,
        "n_scored": len(values),
        "n_failed": sum(failures.values()),
        "failures": dict(sorted(failures.items())),
        "first_failure": first_error,
        "scale": metric.scale,
        "judge": judge,
        "prompt_version": ", ".join(templates[p].version for p in metric.prompts),
        "description": metric.description,
    }


# -- inputs --------------------------------------------------------------------------------------------


def _inputs(rows: Sequence[dict[str, Any]], chosen: list[JudgeMetric]) -> list[dict[str, str]]:
    need_ref = any(m.needs_reference for m in chosen)
    need_ctx = any(m.needs_context for m in chosen)
    items, problems = [], []
    for i, row in enumerate(rows):
        where = row.get("index", i)
        question = _question(row)
        prediction = row.get("prediction")
        item = {"question": question or "", "answer": "" if prediction is None else str(prediction),
                "reference": str(row.get("reference") or ""), "context": ""}
        if question is None:
            problems.append(Problem("predictions", where, "question", "no question: give `question` or a `prompt`"))
        if prediction is None:
            problems.append(Problem("predictions", where, "prediction", "no prediction to judge"))
        if need_ref and not item["reference"].strip():
            problems.append(Problem("predictions", where, "reference", "judge_accuracy needs a reference answer"))
        if need_ctx:
            context = _context(row)
            if context is None:
                problems.append(Problem("predictions", where, "contexts",
                                        "judge_faithfulness needs the retrieved context (`contexts` or `context`)"))
            else:
                item["context"] = context
        items.append(item)
    if problems:
        raise InputError(problems[:20], total=len(problems),
                         header=f"{len(problems)} problem(s) in the rows to judge; nothing was judged:")
    return items


def _question(row: dict[str, Any]) -> str | None:
    if row.get("question"):
        return str(row["question"])
    prompt = row.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return str(users[-1])
    return None


def _context(row: dict[str, Any]) -> str | None:
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    for source in (row, meta):
        for key in ("contexts", "context"):
            value = source.get(key)
            if value is None:
                continue
            if isinstance(value, str):
                return value
            if isinstance(value, list):
                parts = [v.get("text", "") if isinstance(v, dict) else str(v) for v in value]
                return "\n\n".join(f"[{k + 1}] {p}" for k, p in enumerate(parts))
            return json.dumps(value, ensure_ascii=False)
    return None


def _values(template: str, item: dict[str, str]) -> dict[str, str]:
    keys = {"accuracy": ("question", "reference", "answer"), "relevance": ("question", "answer"),
            "faithfulness_statements": ("question", "answer")}[template]
    return {k: item[k] for k in keys}


def describe_failures(metric: dict[str, Any]) -> str:
    """'98 scored, 2 failed (invalid_json 2)' for a terminal note."""
    text = f"{metric['n_scored']} scored, {metric['n_failed']} failed"
    if metric["failures"]:
        text += " (" + ", ".join(f"{k} {v}" for k, v in metric["failures"].items()) + ")"
    return text


def judge_backend(cfg: Any) -> Backend:
    """The backend a JudgeConfig (config.py, eval.judge) describes, behind the call cache when it is on."""
    from ..llm import backend_from_spec, parse_spec

    options: dict[str, Any] = {}
    if parse_spec(cfg.spec).kind == "openai":
        options = {"api_key_env": cfg.api_key_env, "concurrency": cfg.concurrency, "timeout_s": cfg.timeout_s,
                   "max_retries": cfg.max_retries}
    cache = (cfg.cache_dir or True) if cfg.cache else None
    return backend_from_spec(cfg.spec, cache=cache, **options)


def has_context(row: dict[str, Any]) -> bool:
    """Whether a predictions row carries retrieved context (so faithfulness can be judged)."""
    return _context(row) is not None
