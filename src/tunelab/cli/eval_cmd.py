"""`tunelab eval`: generation metrics on a data file and/or multiple-choice benchmarks, for a model
with an optional adapter; an LLM judge (--judge SPEC) and the forgetting check (--baseline) on top.

    tunelab eval --data eval.jsonl --judge openai:llama3.1@http://localhost:11434/v1 -o out/
    tunelab eval --adapter runs/exp/train --baseline            # hellaswag + truthfulqa_mc1, 100 each
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..errors import TunelabError
from .common import JsonOption, emit, err_console, handle_errors


def load_with_adapter(model_name: str, adapter: Path | None):
    """The base model and tokenizer, with a PEFT adapter applied and checked (see
    evaluate/adapter_checks.py); returns (model, tokenizer, adapter report or None)."""
    from ..evaluate.adapter_checks import load_with_adapter as load

    return load(model_name, adapter)


def _judge_backend(spec: str, cache_dir: Path | None, no_cache: bool, concurrency: int, timeout: float,
                   api_key_env: str):
    from ..config import JudgeConfig
    from ..evaluate.judge import judge_backend

    try:
        cfg = JudgeConfig(spec=spec, cache=not no_cache, cache_dir=cache_dir, concurrency=concurrency,
                          timeout_s=timeout, api_key_env=api_key_env)
    except ValueError as exc:  # pydantic's ValidationError: the spec or a bound
        raise TunelabError(f"--judge: {' '.join(str(exc).split())}") from None
    return judge_backend(cfg)


def _run_judge(res: Any, backend: Any) -> dict[str, Any]:
    """Judge the generated answers; their scores join the eval's metrics and predictions rows."""
    from ..evaluate.judge import describe_failures, has_context, judge_predictions

    with_context = any(has_context(r) for r in res.rows)
    judged = judge_predictions(res.rows, backend, with_context=with_context)
    dead = {n: m for n, m in judged.metrics.items() if m["n_scored"] == 0}
    if dead:
        name, m = next(iter(dead.items()))
        raise TunelabError(
            f"the judge {judged.judge} could not score a single row for {', '.join(dead)} "
            f"({describe_failures(m)}); first failure: {m['first_failure']}"
        )
    res.metrics.update(judged.metric_values())
    judged.apply(res.rows)
    return judged.to_dict()


@handle_errors
def evaluate(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Base model: bundled name, dir, .gguf or HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT adapter directory (a tunelab train run)."),
    data: Path | None = typer.Option(None, "--data", help="Eval file (chat/alpaca/prompt-completion/label) or prepared split."),
    metrics: str = typer.Option("rougeL,bleu,token_f1", "--metrics", help="Comma-separated metric names."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Comma-separated: truthfulqa_mc1, truthfulqa_mc2, hellaswag, arc_easy, arc_challenge."),
    benchmark_dir: Path | None = typer.Option(None, "--benchmark-dir", help="Where benchmark files are (default: ../shared/benchmarks)."),
    limit: int | None = typer.Option(None, "--limit", help="First N rows of each benchmark / of the data (--baseline default: 100)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write predictions JSONL and summary JSON here."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated label set of a labelled task (default: the distinct references)."),
    label_mode: str = typer.Option("generate", "--label-mode", help="Labelled tasks: generate (parse the label from the answer) or loglik (the most likely label)."),
    judge: str | None = typer.Option(None, "--judge", help="Also score answers with an LLM judge: openai:MODEL@BASE_URL or local:MODEL[+ADAPTER]."),
    judge_cache: Path | None = typer.Option(None, "--judge-cache", help="Directory of cached judge calls (default: <tunelab home>/llm_calls)."),
    no_judge_cache: bool = typer.Option(False, "--no-judge-cache", help="Do not read or write the judge call cache."),
    judge_concurrency: int = typer.Option(4, "--judge-concurrency", help="Judge requests in flight at once (openai)."),
    judge_timeout: float = typer.Option(120.0, "--judge-timeout", help="Seconds per judge request (openai)."),
    judge_api_key_env: str = typer.Option("OPENAI_API_KEY", "--judge-api-key-env", help="Environment variable with the judge's API key."),
    baseline: bool = typer.Option(False, "--baseline", help="With --adapter: score the base model too on the benchmarks (default hellaswag,truthfulqa_mc1) and report the change."),
    as_json: bool = JsonOption,
) -> None:
    """Evaluate a model (optionally with an adapter) on a data file and/or benchmarks."""
    if baseline and adapter is None:
        raise TunelabError("--baseline compares the tuned model with its base: give --adapter DIR")
    if data is None and not benchmark and not baseline:
        raise TunelabError("nothing to evaluate: give --data FILE and/or --benchmark NAMES (or --adapter with --baseline)")
    if judge and data is None:
        raise TunelabError("--judge scores generated answers: give --data FILE")
    if out is not None:  # a folder that is not an earlier `eval --out` is refused before any work
        from ..evaluate.runner import OUTPUT_KIND
        from ..io import claim_output_dir

        claim_output_dir(out, OUTPUT_KIND, [p for p in (data, adapter) if p is not None])
    judge_backend = None
    if judge:  # a bad spec fails before a model is loaded
        judge_backend = _judge_backend(judge, judge_cache, no_judge_cache, judge_concurrency, judge_timeout,
                                       judge_api_key_env)
    model_obj, tokenizer, report = load_with_adapter(model, adapter)
    name = f"{model}+{adapter}" if adapter else model
    result: dict = {"model": name}
    renders = []
    if report is not None:
        result["adapter"] = report.to_dict()
        result["warnings"] = list(report.warnings)
        if not as_json:
            for w in report.warnings:
                err_console.print(f"[yellow]warning:[/] {w}", highlight=False)
    if data is not None:
        from ..evaluate import GenerationConfig, load_eval_records, render_eval, run_eval
        from ..evaluate.runner import write_results

        records = load_eval_records(data)[:limit] if limit else load_eval_records(data)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
        label_set = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
        res = run_eval(model_obj, tokenizer, records, [m.strip() for m in metrics.split(",") if m.strip()],
                       None, gen, model_name=name, data=str(data), label_set=label_set, label_mode=label_mode)
        if judge_backend is not None:
            if not as_json:
                err_console.print(f"judging {res.n} answers with {judge_backend.name} ...")
            result["judge"] = _run_judge(res, judge_backend)
        if out is not None:  # written once everything is scored: no partial summary
            write_results(res, out / "generation")
            res.out_dir = out / "generation"
        result["generation"] = res.summary()
        renders.append(lambda c: render_eval(res, c))
        if "judge" in result:
            renders.append(lambda c: _render_judge_notes(result["judge"], c))
    if baseline:
        from ..evaluate.baseline import DEFAULT_BENCHMARKS, DEFAULT_LIMIT, render_baseline, run_baseline

        names = [b.strip() for b in benchmark.split(",") if b.strip()] if benchmark else list(DEFAULT_BENCHMARKS)
        if not as_json:
            err_console.print(f"forgetting check: base and tuned on {', '.join(names)} ...")
        bl = run_baseline(model_obj, tokenizer, names, limit=limit or DEFAULT_LIMIT, batch_size=max(batch_size, 16),
                          benchmark_dir=benchmark_dir, out_dir=out / "baseline" if out else None)
        result["benchmarks"] = bl["tuned"]
        result["baseline"] = {k: v for k, v in bl.items() if k != "tuned"}
        renders.append(lambda c: c.print(render_baseline(bl)))
        renders.append(lambda c: c.print(
            "[red]forgetting: the tuned model is worse than its base beyond the noise on at least one metric[/]"
            if bl["forgetting"] else "no metric got worse beyond the combined standard error"))
    elif benchmark:
        from ..evaluate.benchmarks.run import render_table, run_benchmarks

        names = [b.strip() for b in benchmark.split(",") if b.strip()]
        if not as_json:
            err_console.print(f"scoring {', '.join(names)} ...")
        bench = run_benchmarks(model_obj, tokenizer, names, limit=limit, batch_size=max(batch_size, 16),
                               benchmark_dir=benchmark_dir, out_dir=out / "benchmarks" if out else None)
        result["benchmarks"] = bench
        renders.append(lambda c: c.print(render_table(bench)))
    emit(result, as_json, lambda c: [r(c) for r in renders])


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
