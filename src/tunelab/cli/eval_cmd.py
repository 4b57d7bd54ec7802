"""`tunelab eval`: generation metrics on a data file and/or multiple-choice benchmarks, for a model
with an optional adapter; an LLM judge (--judge SPEC) and the forgetting check (--baseline) on top.
The options are validated as the config's eval section; tunelab.evaluate.run does the work, and
tunelab.evaluate.agreement with --agreement (the judge against people's blind ratings).

    tunelab eval --data eval.jsonl --judge openai:llama3.1@http://localhost:11434/v1 -o out/
    tunelab eval --adapter runs/exp/train --baseline            # hellaswag + truthfulqa_mc1, 100 each
    tunelab eval --judge openai:llama3.1@http://localhost:11434/v1 --agreement ratings.jsonl  # judge vs people
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import JsonOption, emit, err_console, handle_errors, parse_pairs, progress_reporter


@handle_errors
def evaluate(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Base model: bundled name, dir, .gguf or HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT adapter directory (a tunelab train run)."),
    data: Path | None = typer.Option(None, "--data", help="Eval file (chat/alpaca/prompt-completion/label) or prepared split."),
    metrics: str = typer.Option("rougeL,bleu,token_f1", "--metrics", help="Comma-separated metric names."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Comma-separated: truthfulqa_mc1, truthfulqa_mc2, hellaswag, arc_easy, arc_challenge."),
    benchmark_dir: Path | None = typer.Option(None, "--benchmark-dir", help="A directory holding the benchmark files (default: $TUNELAB_BENCHMARK_DIR, then <tunelab home>/benchmarks, then the Hugging Face hub)."),
    benchmark_path: list[str] | None = typer.Option(None, "--benchmark-path", help="NAME=FILE: the data file of one benchmark (repeatable), e.g. hellaswag=data/hellaswag_val.jsonl."),
    limit: int | None = typer.Option(None, "--limit", help="First N rows of each benchmark / of the data (--baseline default: 100)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write predictions JSONL and summary JSON here."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated label set of a labelled task (default: the distinct references)."),
    label_mode: str = typer.Option("generate", "--label-mode", help="Labelled tasks: generate (decode one of the labels, under a choice grammar) or loglik (the most likely label)."),
    judge: str | None = typer.Option(None, "--judge", help="Also score answers with an LLM judge: openai:MODEL@BASE_URL or local:MODEL[+ADAPTER]."),
    judge_cache: Path | None = typer.Option(None, "--judge-cache", help="Directory of cached judge calls (default: <tunelab home>/llm_calls)."),
    no_judge_cache: bool = typer.Option(False, "--no-judge-cache", help="Do not read or write the judge call cache."),
    judge_concurrency: int = typer.Option(4, "--judge-concurrency", help="Judge requests in flight at once (openai)."),
    judge_timeout: float = typer.Option(120.0, "--judge-timeout", help="Seconds per judge request (openai)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env", help="Environment variable with the judge's API key."),
    device: str = typer.Option("auto", "--device", help="auto (the GPU when there is one, as training picks), cpu, cuda or cuda:N."),
    baseline: bool = typer.Option(False, "--baseline", help="With --adapter: score the base model too on the benchmarks (default hellaswag,truthfulqa_mc1) and report the change."),
    agreement: Path | None = typer.Option(None, "--agreement", help="With --judge: a ratings file (JSONL, the browser review's export); judge its answers and report how far the judge agrees with people."),
    agreement_metric: str = typer.Option("judge_accuracy", "--agreement-metric", help="With --agreement: the judge rubric that scores each answer: judge_accuracy (needs references) or judge_relevance."),
    as_json: bool = JsonOption,
) -> None:
    """Evaluate a model (optionally with an adapter) on a data file and/or benchmarks."""
    from pydantic import ValidationError

    from ..config import EvalConfig, options_error
    from ..evaluate.run import run

    options = {"data": data, "metrics": _names(metrics), "benchmarks": _names(benchmark), "limit": limit,
               "max_new_tokens": max_new_tokens, "batch_size": batch_size, "baseline": baseline,
               "benchmark_paths": parse_pairs(benchmark_path, "--benchmark-path", "NAME=FILE",
                                                 "hellaswag=hellaswag_val.jsonl")}
    if judge:
        options["judge"] = {"spec": judge, "cache": not no_judge_cache, "cache_dir": judge_cache,
                            "concurrency": judge_concurrency, "timeout_s": judge_timeout,
                            "api_key_env": judge_api_key_env}
    try:
        settings = EvalConfig.model_validate(options)
    except ValidationError as exc:
        raise options_error(exc, "eval", EVAL_FLAGS) from None
    if agreement is not None:
        _agreement(agreement, settings, agreement_metric, out, as_json,
                   [flag for flag, given in (("--data", data), ("--benchmark", benchmark), ("--adapter", adapter),
                                             ("--baseline", baseline)) if given])
        return
    say = None if as_json else (lambda s: err_console.print(s, highlight=False, markup=False))
    with progress_reporter() as on_progress:  # on stderr: --json still prints one object on stdout
        result = run(model, settings, adapter=adapter, out=out, labels=_names(labels) or None,
                     label_mode=label_mode, benchmark_dir=benchmark_dir, device=device, on_stage=say,
                     on_progress=on_progress)
    emit(result.to_dict(), as_json, lambda c: _render(result, c))


def _agreement(path: Path, settings: Any, metric: str, out: Path | None, as_json: bool, others: list[str]) -> None:
    from ..errors import TunelabError
    from ..evaluate.agreement import render_agreement, run_agreement

    if settings.judge is None:
        raise TunelabError("--agreement needs --judge SPEC: the judge whose verdicts are compared with the ratings")
    if others:
        raise TunelabError(f"--agreement judges the answers in the ratings file and runs no model: drop "
                           f"{', '.join(others)}")
    with progress_reporter() as on_progress:  # the judge's progress, on stderr
        report = run_agreement(path, settings.judge, metric=metric, out=out, on_progress=on_progress)
    emit(report, as_json, lambda c: c.print(render_agreement(report)))


# where each option lands in an experiment file's eval section (for error messages)
EVAL_FLAGS = {"eval.data": "--data", "eval.metrics": "--metrics", "eval.benchmarks": "--benchmark",
              "eval.limit": "--limit", "eval.max_new_tokens": "--max-new-tokens", "eval.batch_size": "--batch-size",
              "eval.judge.spec": "--judge", "eval.judge.cache_dir": "--judge-cache",
              "eval.judge.concurrency": "--judge-concurrency", "eval.judge.timeout_s": "--judge-timeout",
              "eval.judge.api_key_env": "--judge-api-key-env", "eval.benchmark_paths": "--benchmark-path"}


def _names(text: str | None) -> list[str]:
    """A comma-separated option as its names."""
    return [x.strip() for x in text.split(",") if x.strip()] if text else []


def _render(result: Any, console: Any) -> None:
    from ..evaluate.runner import render_eval

    if result.generation is not None:
        render_eval(result.generation, console)
        if result.judge is not None:
            _render_judge_notes(result.judge, console)
    if result.baseline is not None:
        from ..evaluate.baseline import render_baseline

        bl = result.baseline
        console.print(render_baseline(bl))
        console.print("[red]forgetting: the tuned model is worse than its base beyond the noise on at least one "
                      "metric[/]" if bl["forgetting"] else "no metric got worse beyond its 95% interval")
    elif result.benchmarks is not None:
        from ..evaluate.benchmarks.run import render_table

        console.print(render_table(result.benchmarks))


def _render_judge_notes(judged: dict[str, Any], console: Any) -> None:
    from ..evaluate.judge import describe_failures

    lines = [f"judge: {judged['judge']} (prompts {', '.join(judged['prompt_versions'].values())})"]
    for name, m in judged["metrics"].items():
        line = f"{name} ({m['scale']}): {describe_failures(m)}"
        if m["n_failed"]:
            line += f"; first failure: {m['first_failure']}"
        lines.append(line)
    stats = judged.get("stats", {})
    if "cache" in stats:
        c = stats["cache"]
        lines.append(f"judge calls: {stats['calls']} ({stats['cached']} from the cache at {c['dir']})")
    console.print("\n".join(lines), highlight=False, markup=False)
