"""Evaluate a model on a data file: generate an answer per example, score it, write the results.

    result = run_eval(model, tokenizer, records, ["rougeL", "bleu"], out_dir, GenerationConfig())
    render_eval(result, console)

Outputs (each file written atomically):
- predictions.jsonl: one row per example, in input order: prompt, prediction, reference, finish
  reason, token counts, latency, every per-example metric value, and the record's meta (source
  file and line, and extra fields such as `source` or `category`).
- summary.json: per metric its value, uncertainty (stderr for means, 95% bootstrap interval for
  corpus scores), aggregation, direction and n; the generation settings; the model; timings.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..data.records import KINDS, Record
from ..errors import InputError, Problem, TunelabError
from ..io import write_json, write_jsonl
from ..models.generate import GenerationConfig, GenerationOutput, Generator, Prompt
from .metrics import CLASSIFICATION_METRICS, MetricInputs, MetricValue, resolve

PREDICTIONS_FILE = "predictions.jsonl"
SUMMARY_FILE = "summary.json"
OUTPUT_KIND = "eval"  # the marker kind of a `tunelab eval --out` directory (tunelab.io.claim_output_dir)


@dataclass
class EvalResult:
    model: str
    n: int
    metrics: dict[str, MetricValue]
    rows: list[dict[str, Any]]
    generation: dict[str, Any]
    timings: dict[str, float]
    data: str | None = None
    out_dir: Path | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "n": self.n,
            "created": self.created,
            "metrics": {name: mv.to_dict() for name, mv in self.metrics.items()},
            "generation": self.generation,
            "timings": self.timings,
            "files": {"predictions": PREDICTIONS_FILE, "summary": SUMMARY_FILE} if self.out_dir else None,
        }


# -- inputs ---------------------------------------------------------------------------------------


def load_eval_records(path: str | Path) -> list[Record]:
    """Records of an eval file: a prepared JSONL of tunelab records, or any user data file."""
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson") and _is_prepared(path):
        records = []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if line.strip():
                    rec = Record.from_dict(json.loads(line))
                    rec.meta.setdefault("file", str(path))
                    rec.meta.setdefault("line", line_no)
                    records.append(rec)
        return records
    from ..data.formats import read_records

    return read_records([path]).records


def _is_prepared(path: Path) -> bool:
    """A tunelab-written record file: its first row is an object with a known `kind`."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    return isinstance(row, dict) and row.get("kind") in KINDS
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


def example_of(record: Record) -> tuple[Prompt | None, str | None, str | None]:
    """(prompt, reference, problem): what the model is asked and the answer it is scored against."""
    if record.kind == "label":
        if not record.text:
            return None, None, "a label record needs the input text"
        prompt: Prompt | None = [{"role": "user", "content": record.text}]
        reference = record.label
    elif record.kind == "chat":
        msgs = record.messages or []
        if not msgs or msgs[-1].get("role") != "assistant":
            return None, None, "has no reference: the conversation must end with the expected assistant answer"
        prompt, reference = msgs[:-1], msgs[-1].get("content")
    elif record.kind == "preference":
        prompt, reference = record.messages, record.chosen
    else:
        return None, None, f"a {record.kind} record has no reference answer; eval data needs prompt and answer"
    if reference is None or not str(reference).strip():
        return None, None, "has no reference: the expected answer is missing or empty"
    if not prompt:
        return None, None, "has no prompt to answer"
    return prompt, str(reference), None


def _examples(records: list[Record]) -> tuple[list[Prompt], list[str]]:
    prompts: list[Prompt] = []
    refs: list[str] = []
    problems: list[Problem] = []
    for i, rec in enumerate(records):
        prompt, ref, problem = example_of(rec)
        if problem is not None:
            file = str(rec.meta.get("file", "<records>"))
            line = rec.meta.get("line", i + 1)
            problems.append(Problem(file, line, _reference_field(rec), problem, "missing_reference"))
            continue
        prompts.append(prompt)  # type: ignore[arg-type]
        refs.append(ref)  # type: ignore[arg-type]
    if problems:
        raise InputError(
            problems[:20], total=len(problems),
            header=f"{len(problems)} eval record(s) cannot be scored (every example needs a reference answer):",
        )
    if not prompts:
        raise TunelabError("no eval records given")
    return prompts, refs


def _reference_field(rec: Record) -> str:
    return {"label": "label", "preference": "chosen"}.get(rec.kind, "messages")


# -- the run --------------------------------------------------------------------------------------


def run_eval(
    model: Any,
    tokenizer: Any,
    records: list[Record],
    metrics: list[str],
    out_dir: Path | None,
    gen_cfg: GenerationConfig | None = None,
    *,
    label_set: list[str] | None = None,
    model_name: str | None = None,
    data: str | None = None,
    chat_template: bool = True,
    on_batch: Any = None,
    threads: int | None = None,
    label_mode: str = "generate",
) -> EvalResult:
    """Generate an answer for every record, score `metrics`, and write predictions and summary.

    In label_mode "generate", a labelled record's answer is decoded under a choice grammar of the label
    set (`label_set`, else the labelled records' distinct references): it is exactly one label, never
    text a label has to be parsed from (prompt/prefix-tuning adapters decode through HF generate, which
    takes no grammar: their answers are parsed as before). `on_batch(n)` is called as n more records are
    answered (for a progress display); `threads` sets torch's CPU threads (default: physical cores)."""
    gen_cfg = gen_cfg or GenerationConfig()
    chosen = resolve(metrics)  # unknown names fail before any generation
    prompts, refs = _examples(records)
    generator = Generator(model, tokenizer, chat_template=chat_template, threads=threads)

    start = time.perf_counter()
    grammars = None
    if label_mode == "loglik":
        from .label_choice import choose_labels

        if any(rec.kind != "label" for rec in records):
            raise TunelabError("label_mode 'loglik' scores labelled records only (kind 'label')")
        outputs = choose_labels(model, tokenizer, prompts, label_set or sorted(set(refs)),
                                chat_template=chat_template, batch_size=gen_cfg.batch_size, threads=threads,
                                on_batch=on_batch)
    elif label_mode == "generate":
        grammars = label_grammars(model, records, refs, label_set)
        outputs = generator.generate(prompts, gen_cfg, on_batch=on_batch, schemas=grammars)
    else:
        raise TunelabError(f"unknown label_mode '{label_mode}'; use generate or loglik")
    gen_wall = time.perf_counter() - start

    inputs = MetricInputs(
        predictions=[o.text for o in outputs],
        references=refs,
        prompts=prompts,
        model=model,
        tokenizer=tokenizer,
        chat_template=chat_template,
        batch_size=gen_cfg.batch_size,
        label_set=label_set,
    )
    start = time.perf_counter()
    values = {m.name: m.compute(inputs) for m in chosen}
    score_wall = time.perf_counter() - start

    result = EvalResult(
        model=model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "model"),
        n=len(refs),
        metrics=values,
        rows=_rows(records, prompts, refs, outputs, values),
        generation={**gen_cfg.to_dict(), "chat_template": chat_template, "label_mode": label_mode,
                    "stop_token_ids": sorted(generator.stop_token_ids),
                    **({"label_grammar": "choice"} if grammars else {})},
        timings=_timings(outputs, gen_wall, score_wall),
        data=data,
        out_dir=Path(out_dir) if out_dir is not None else None,
    )
    if result.out_dir is not None:
        write_results(result, result.out_dir)
    return result


Progress = Callable[[str, int, int], None]  # on_progress(task, done, total), as every long stage reports


def batch_counter(on_progress: Progress | None, task: str, total: int) -> Callable[[int], None] | None:
    """An `on_batch(n)` for run_eval that reports the running count as on_progress(task, done, total),
    starting with 0 done now (so a display shows the task before its first batch ends)."""
    if on_progress is None:
        return None
    on_progress(task, 0, total)
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        on_progress(task, done, total)

    return on_batch


def label_grammars(model: Any, records: list[Record], refs: list[str],
                   label_set: list[str] | None) -> list[Any] | None:
    """Per record, the choice grammar of the label set for a labelled record (None for others), or None
    when no record is labelled or the model cannot decode under a grammar (prompt learning)."""
    from ..models.generate import is_prompt_learning
    from ..models.grammar import Choice

    labelled = [rec.kind == "label" for rec in records]
    if not any(labelled) or is_prompt_learning(model):
        return None
    labels = list(dict.fromkeys(label_set or sorted({ref for ref, is_label in zip(refs, labelled, strict=True)
                                                      if is_label})))
    if len(labels) < 2:  # a choice of one would score every answer right
        raise TunelabError(f"the label set is one label only ({labels[0]!r}), so choosing among the labels "
                           "tests nothing; give the label set (--labels A,B,...) or eval records of more than one "
                           "label (a limit takes the first N records)")
    return [Choice(tuple(labels)) if is_label else None for is_label in labelled]


def write_results(result: EvalResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / PREDICTIONS_FILE, result.rows)
    write_json(out_dir / SUMMARY_FILE, result.summary())


def _rows(
    records: list[Record],
    prompts: list[Prompt],
    refs: list[str],
    outputs: list[GenerationOutput],
    values: dict[str, MetricValue],
) -> list[dict[str, Any]]:
    rows = []
    for i, (rec, prompt, ref, out) in enumerate(zip(records, prompts, refs, outputs, strict=True)):
        row: dict[str, Any] = {
            "index": i,
            "prompt": prompt,
            "prediction": out.text,
            "reference": ref,
            "finish_reason": out.finish_reason,
            "prompt_tokens": out.n_prompt_tokens,
            "new_tokens": out.n_new_tokens,
            "latency_s": round(out.latency_s, 4),
        }
        for name, mv in values.items():
            if mv.per_example is not None:
                row[name] = mv.per_example[i]
            for key, column in mv.row_fields.items():
                row[key] = column[i]
        for key in ("source", "category"):
            if key in rec.meta:
                row[key] = rec.meta[key]
        row["meta"] = rec.meta
        rows.append(row)
    return rows


def _timings(outputs: list[GenerationOutput], gen_wall: float, score_wall: float) -> dict[str, float]:
    latencies = np.array([o.latency_s for o in outputs])
    new_tokens = np.array([o.n_new_tokens for o in outputs])
    return {
        "generation_s": round(gen_wall, 3),
        "scoring_s": round(score_wall, 3),
        "latency_p50_s": round(float(np.percentile(latencies, 50)), 4),
        "latency_p95_s": round(float(np.percentile(latencies, 95)), 4),
        "tokens_per_answer": round(float(new_tokens.mean()), 2),
        "tokens_per_s": round(float(new_tokens.sum() / gen_wall), 2) if gen_wall > 0 else 0.0,
        "stopped_by_length": int(sum(o.finish_reason == "length" for o in outputs)),
    }


# -- terminal rendering ---------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def _uncertainty(mv: MetricValue) -> str:
    if mv.stderr is not None:
        return f"± {_fmt(mv.stderr)} (se)"
    if mv.ci is not None:
        return f"[{_fmt(mv.ci[0])}, {_fmt(mv.ci[1])}] (95% CI)"
    return "-"


def render_eval(result: EvalResult, console: Any) -> None:
    """Draw the metrics table, the classification detail (if any) and the timings."""
    from rich.table import Table

    table = Table(title=f"eval: {result.model} on {result.data or 'records'} (n={result.n})")
    for col in ("metric", "value", "uncertainty", "aggregation", "better"):
        table.add_column(col, justify="right" if col in ("value", "uncertainty") else "left")
    for name, mv in result.metrics.items():
        table.add_row(name, _fmt(mv.value), _uncertainty(mv), mv.aggregation, "higher" if mv.higher_is_better else "lower")
    console.print(table)
    notes = _notes(result)
    if notes:
        console.print("\n".join(notes), highlight=False, markup=False)
    classification = next((mv for n, mv in result.metrics.items() if n in CLASSIFICATION_METRICS[1:]), None)
    if classification is not None:
        _render_classification(classification.details, console)
    t = result.timings
    console.print(
        f"generation: {t['generation_s']:.1f} s, {t['tokens_per_s']:.1f} tokens/s, "
        f"{t['tokens_per_answer']:.1f} tokens/answer, latency p50 {t['latency_p50_s']:.2f} s / "
        f"p95 {t['latency_p95_s']:.2f} s, {t['stopped_by_length']} cut at max_new_tokens "
        f"({result.generation['max_new_tokens']})",
        highlight=False,
    )
    if result.out_dir is not None:
        console.print(f"wrote {result.out_dir / PREDICTIONS_FILE} and {result.out_dir / SUMMARY_FILE}", highlight=False)


def _notes(result: EvalResult) -> list[str]:
    notes = []
    for name, mv in result.metrics.items():
        d = mv.details
        if "signature" in d:
            notes.append(f"{name}: sacrebleu {d['signature']}")
        if name.startswith("rouge") and "rouge" not in " ".join(notes):
            notes.append(f"rouge: {d['library']}, use_stemmer={d['use_stemmer']}, tokenizer {d['tokenizer']}")
        if "convention" in d:
            notes.append(f"{name}: {d['convention']} ({d['tokens']} tokens)")
        if name == "accuracy" and d.get("unparsed"):
            notes.append(f"accuracy: {d['unparsed']} generation(s) named no label (counted wrong)")
    return notes


def _render_classification(details: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    per = Table(title="per class (macro average over these)")
    for col in ("label", "precision", "recall", "f1", "support"):
        per.add_column(col, justify="left" if col == "label" else "right")
    for label, m in details["per_class"].items():
        per.add_row(label, _fmt(m["precision"]), _fmt(m["recall"]), _fmt(m["f1"]), str(m["support"]))
    console.print(per)
    cm = details["confusion_matrix"]
    grid = Table(title=f"confusion matrix (rows gold, columns predicted; {details['unparsed']} unparsed)")
    grid.add_column("gold \\ pred")
    for label in cm["labels"]:
        grid.add_column(label, justify="right")
    for label, row in zip(cm["labels"], cm["matrix"], strict=True):
        if label != cm["labels"][-1]:  # nobody's gold label is "unparsed"
            grid.add_row(label, *map(str, row))
    console.print(grid)
