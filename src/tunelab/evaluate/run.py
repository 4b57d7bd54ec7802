"""`run(model, settings) -> EvalRun`: the evaluation stage behind `tunelab eval`, as a library function.

    from tunelab.config import EvalConfig, JudgeConfig
    from tunelab.evaluate.run import run

    settings = EvalConfig(data="eval.jsonl", judge=JudgeConfig(spec="openai:llama3.1@http://localhost:11434/v1"))
    result = run("smollm2-135m-instruct", settings, adapter=Path("runs/exp/train"), out=Path("out"))
    result.to_dict()   # what `tunelab eval --json` prints

One model (with its adapter applied and checked) answers the eval data, scored on `settings.metrics`
and, with `settings.judge`, by the LLM judge; then the forgetting check (`settings.baseline`: base and
tuned on the benchmarks) or plain benchmark scores. With `out`: generation/ (predictions, summary),
baseline/ or benchmarks/.

`judge_rows` is the one way generated answers are judged, here and in the comparison
(tunelab.compare.run): parse failures are counted by reason next to the mean of the rows that were
scored, never scored as zeros, and a judge that scores no row at all on a metric is an error that names
its first failure, raised before anything is written or cached (a dead judge server must not produce a
result, or a cache entry, that looks like an evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import EvalConfig
from ..errors import TunelabError


@dataclass
class EvalRun:
    """What one evaluation found; `to_dict()` is the JSON `tunelab eval --json` prints."""

    model: str  # the model's name, `BASE+ADAPTER` with an adapter
    adapter: Any = None  # models.adapters.AdapterReport, with an adapter
    generation: Any = None  # evaluate.runner.EvalResult, with eval data
    judge: dict[str, Any] | None = None  # the judge's metrics, failures and call stats
    benchmarks: dict[str, Any] | None = None  # benchmark scores (the tuned model's, with a baseline)
    baseline: dict[str, Any] | None = None  # evaluate.baseline.run_baseline's result: base, tuned, changes

    @property
    def warnings(self) -> list[str]:
        return list(self.adapter.warnings) if self.adapter is not None else []

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        if self.adapter is not None:
            out["adapter"] = self.adapter.to_dict()
            out["warnings"] = self.warnings
        if self.generation is not None:
            if self.judge is not None:
                out["judge"] = self.judge
            out["generation"] = self.generation.summary()
        if self.baseline is not None:
            out["benchmarks"] = self.baseline["tuned"]
            out["baseline"] = {k: v for k, v in self.baseline.items() if k != "tuned"}
        elif self.benchmarks is not None:
            out["benchmarks"] = self.benchmarks
        return out


def judge_rows(rows: list[dict[str, Any]], backend: Any, *, with_context: bool, retries: int,
               what: str = "", metrics: Sequence[str] | None = None,
               on_progress: Callable[[str, int, int], None] | None = None, task: str = "judging") -> Any:
    """Judge predictions rows on `metrics` (default: judge_predictions') and add each row's scores to it;
    returns the evaluate.judge.JudgeResult. `on_progress(task, done, total)` counts judgements as they end.

    Raises TunelabError, before any row is changed, when a metric got no score on any row because the
    judge failed (an answer with no statements to check is not a failure of the judge)."""
    from .judge import NO_STATEMENTS, describe_failures, judge_predictions

    judged = judge_predictions(rows, backend, with_context=with_context, retries=retries, metrics=metrics,
                               on_progress=on_progress, task=task)
    dead = {name: m for name, m in judged.metrics.items()
            if m["n_scored"] == 0 and set(m["failures"]) - {NO_STATEMENTS}}
    if dead:
        name, m = next(iter(dead.items()))
        raise TunelabError(
            f"{what + ': ' if what else ''}the judge {judged.judge} could not score a single row for "
            f"{', '.join(dead)} ({describe_failures(m)}); first failure: {m['first_failure']}"
        )
    judged.apply(rows)
    return judged


def _check(settings: EvalConfig, adapter: Path | None) -> None:
    if settings.baseline and adapter is None:
        raise TunelabError("--baseline compares the tuned model with its base: give --adapter DIR")
    if settings.data is None and not settings.benchmarks and not settings.baseline:
        raise TunelabError("nothing to evaluate: give --data FILE and/or --benchmark NAMES (or --adapter with --baseline)")
    if settings.judge is not None and settings.data is None:
        raise TunelabError("--judge scores generated answers: give --data FILE")


def run(
    model: str,
    settings: EvalConfig,
    *,
    adapter: Path | None = None,
    out: Path | None = None,
    labels: Sequence[str] | None = None,
    label_mode: str = "generate",
    benchmark_dir: Path | None = None,
    device: str = "auto",
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> EvalRun:
    """Evaluate `model` (with `adapter`) as `settings` says; see the module docstring.
    `on_progress(task, done, total)` is called as answers are generated and judged and benchmark items
    scored."""
    stage = on_stage or (lambda _s: None)
    _check(settings, adapter)
    if out is None:
        return _evaluate(model, settings, adapter, None, labels, label_mode, benchmark_dir, device, stage,
                         on_progress)
    from ..io import claimed_output_dir
    from .runner import OUTPUT_KIND

    # a folder that is not an earlier `eval --out` is refused before any work; one this run created is
    # removed again if the run fails, so a failure leaves no output behind
    with claimed_output_dir(out, OUTPUT_KIND, [p for p in (settings.data, adapter) if p is not None]):
        return _evaluate(model, settings, adapter, out, labels, label_mode, benchmark_dir, device, stage,
                         on_progress)


def _evaluate(model: str, settings: EvalConfig, adapter: Path | None, out: Path | None,
              labels: Sequence[str] | None, label_mode: str, benchmark_dir: Path | None, device: str,
              stage: Callable[[str], None], on_progress: Callable[[str, int, int], None] | None) -> EvalRun:
    backend = None
    if settings.judge is not None:  # a judge that cannot be built fails before a model is loaded
        from .judge import judge_backend

        backend = judge_backend(settings.judge)
    names = list(settings.benchmarks)
    if settings.baseline:
        from .baseline import DEFAULT_BENCHMARKS

        names = names or list(DEFAULT_BENCHMARKS)
    paths = _benchmark_files(names, settings, benchmark_dir)  # a missing file is said before a model loads
    from ..models.adapters import load_with_adapter

    model_obj, tokenizer, report = load_with_adapter(model, adapter, device=device)
    result = EvalRun(model=f"{model}+{adapter}" if adapter else model, adapter=report)
    for warning in result.warnings:  # said now: an adapter that changes nothing makes the rest moot
        stage(f"warning: {warning}")
    if settings.data is not None:
        result.generation, result.judge = _generate(model_obj, tokenizer, settings, result.model, backend,
                                                    out, labels, label_mode, stage, on_progress)
    batch_size = max(settings.batch_size, 16)
    if settings.baseline:
        from .baseline import DEFAULT_LIMIT, run_baseline

        stage(f"forgetting check: base and tuned on {', '.join(names)} ...")
        result.baseline = run_baseline(model_obj, tokenizer, names, limit=settings.limit or DEFAULT_LIMIT,
                                       batch_size=batch_size, benchmark_dir=benchmark_dir, paths=paths,
                                       out_dir=out / "baseline" if out else None, progress=on_progress)
    elif names:
        from .benchmarks.run import run_benchmarks

        stage(f"scoring {', '.join(names)} ...")
        result.benchmarks = run_benchmarks(model_obj, tokenizer, names, limit=settings.limit, batch_size=batch_size,
                                           benchmark_dir=benchmark_dir, paths=paths,
                                           out_dir=out / "benchmarks" if out else None, progress=on_progress)
    return result


def _benchmark_files(names: list[str], settings: EvalConfig, benchmark_dir: Path | None) -> dict[str, Path]:
    """Each benchmark's data file, found (or fetched) now; unknown names and missing files fail here."""
    from .benchmarks.registry import find_data_file, get_benchmark

    given = {get_benchmark(n).name: file for n, file in settings.benchmark_paths.items()}  # known names only
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise TunelabError(f"--benchmark-path names {', '.join(unknown)}, which is not being evaluated "
                           f"(benchmarks: {', '.join(names) or 'none'})")
    return {n: find_data_file(get_benchmark(n), benchmark_dir, path=given.get(n)) for n in names}


def _generate(model: Any, tokenizer: Any, settings: EvalConfig, name: str, backend: Any, out: Path | None,
              labels: Sequence[str] | None, label_mode: str, stage: Callable[[str], None],
              on_progress: Callable[[str, int, int], None] | None) -> tuple[Any, Any]:
    """Answers to the eval data with their metrics (and the judge's); written to out/generation only
    once everything is scored, so a failing judge leaves no partial summary."""
    from ..models.generate import GenerationConfig
    from .judge import has_context
    from .runner import batch_counter, load_eval_records, run_eval, write_results

    records = load_eval_records(settings.data)
    records = records[: settings.limit] if settings.limit else records
    gen = GenerationConfig(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size)
    res = run_eval(model, tokenizer, records, list(settings.metrics), None, gen, model_name=name,
                   data=str(settings.data), label_set=list(labels) if labels else None, label_mode=label_mode,
                   on_batch=batch_counter(on_progress, "generating", len(records)))
    judged = None
    if backend is not None:
        stage(f"judging {res.n} answers with {backend.name} ...")
        judge = judge_rows(res.rows, backend, with_context=any(has_context(r) for r in res.rows),
                           retries=settings.judge.parse_retries, on_progress=on_progress)
        res.metrics.update(judge.metric_values())
        judged = judge.to_dict()
    if out is not None:
        write_results(res, out / "generation")
        res.out_dir = out / "generation"
    return res, judged
