"""`tunelab data synth DOCS --teacher SPEC --out DIR`: training data from documents (tunelab.synth.run).

Options given on the command line override the experiment's `synth` section when --config is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from ..errors import ConfigError, TunelabError
from .common import JsonOption, emit, err_console, handle_errors, progress


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        node = target.get(key)
        if not isinstance(node, dict):
            node = {} if node is None else {"spec": node} if isinstance(node, str) else node
            target[key] = node
        target = node
    target[last] = value


@handle_errors
def synth(
    docs: Path | None = typer.Argument(None, metavar="DOCS_DIR", help="A directory (read recursively) or file of documents: md, txt, html, pdf, docx."),
    teacher: str | None = typer.Option(None, "--teacher", "-t", help="openai:MODEL@BASE_URL, openai:MODEL or local:MODEL."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output dataset directory (replaced atomically)."),
    mode: str | None = typer.Option(None, "--mode", help="qa | instruction | multi_turn | labelled | preference (default qa)."),
    labels: str | None = typer.Option(None, "--labels", help="Comma-separated label set (mode labelled)."),
    per_chunk: int | None = typer.Option(None, "--per-chunk", help="Items asked per chunk (default 3)."),
    turns: int | None = typer.Option(None, "--turns", help="User turns per conversation (multi_turn, default 3)."),
    chunk_tokens: int | None = typer.Option(None, "--chunk-tokens", help="Chunk size in tokens (default 256)."),
    chunk_overlap: int | None = typer.Option(None, "--chunk-overlap", help="Overlap between chunks (default 32)."),
    min_chunk_tokens: int | None = typer.Option(None, "--min-chunk-tokens", help="Skip smaller chunks (default 24)."),
    max_chunks: int | None = typer.Option(None, "--max-chunks", help="Use at most N chunks, spread over the documents."),
    judge: str | None = typer.Option(None, "--judge", help="Also check grounding with an LLM judge (a backend spec)."),
    eval_set: str | None = typer.Option(None, "--eval-set", help="none | held_out | paraphrase (default none)."),
    eval_fraction: float | None = typer.Option(None, "--eval-fraction", help="Share held out / paraphrased (default 0.1)."),
    prompts: Path | None = typer.Option(None, "--prompts", help="Directory of prompt files overriding tunelab's."),
    pool: list[Path] | None = typer.Option(None, "--pool", help="Existing data file(s) not to duplicate (repeatable)."),
    min_overlap: float | None = typer.Option(None, "--min-overlap", help="Share of a reply's content words that must be in its chunk (default 0.5)."),
    temperature: float | None = typer.Option(None, "--temperature", help="Teacher sampling temperature (default 0)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Tokens per teacher reply (default 768)."),
    seed: int | None = typer.Option(None, "--seed"),
    parse_retries: int | None = typer.Option(None, "--parse-retries", help="Re-asks after unusable JSON (default 2)."),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Teacher requests in flight (openai, default 4)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Seconds per teacher request (openai, default 120)."),
    max_retries: int | None = typer.Option(None, "--max-retries", help="Retries on timeouts, 429 and 5xx (openai, default 4)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Variable holding the API key (default OPENAI_API_KEY)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Conversations generated together (local, default 8)."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for generation (local)."),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Teacher call cache (default <tunelab home>/llm_calls)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the teacher call cache."),
    config: Path | None = typer.Option(None, "--config", "-c", help="An experiment file whose synth section to run."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a config value, e.g. synth.max_chunks=10."),
    as_json: bool = JsonOption,
) -> None:
    """Generate a training dataset from documents with a teacher LLM, filtered for grounding."""
    from pydantic import ValidationError

    from ..config import SynthConfig, load_config
    from ..synth.run import from_experiment, run

    given: dict[str, Any] = {
        "docs": docs, "out": out, "mode": mode, "per_chunk": per_chunk, "turns": turns,
        "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap, "min_chunk_tokens": min_chunk_tokens,
        "max_chunks": max_chunks, "judge.spec": judge, "eval_set": eval_set, "eval_fraction": eval_fraction,
        "prompts": prompts, "filters.pool": pool or None, "filters.min_overlap": min_overlap,
        "temperature": temperature, "max_tokens": max_tokens, "seed": seed, "parse_retries": parse_retries,
        "teacher.spec": teacher, "teacher.concurrency": concurrency, "teacher.timeout_s": timeout,
        "teacher.max_retries": max_retries, "teacher.api_key_env": api_key_env, "teacher.batch_size": batch_size,
        "teacher.threads": threads,
        "teacher.cache_dir": cache_dir, "teacher.cache": False if no_cache else None,
        "labels": [x.strip() for x in labels.split(",")] if labels is not None else None,
    }
    experiment = None
    if config is not None:
        experiment = load_config(config, list(overrides or []))
        base = json_ready(from_experiment(experiment))
    elif overrides:
        raise TunelabError("--set needs --config (it overrides the experiment file's values)")
    else:
        base = {}
        missing = [name for name, value in (("DOCS", docs), ("--teacher", teacher), ("--out", out)) if value is None]
        if missing:
            raise TunelabError(f"missing {', '.join(missing)}: give DOCS --teacher SPEC --out DIR, or --config FILE")
    for key, value in given.items():
        if value is not None:
            _set(base, key, value)
    try:
        cfg = SynthConfig.model_validate(base)
    except ValidationError as exc:
        raise ConfigError("options", [f"{'.'.join(map(str, e['loc'])) or '(options)'}: "
                                      f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]) from None

    def execute():
        if as_json:
            return run(cfg)
        with progress() as bar:
            tasks: dict[str, Any] = {}

            def on_progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total or None)
                bar.update(tasks[stage], completed=done, total=total or None)

            return run(cfg, on_progress=on_progress)

    if experiment is None:
        result = execute()
    else:  # with an experiment file, synth is a tracked run of the experiment like every other stage
        from ..track import Tracker

        with Tracker.from_config(experiment).run("synth", name="synth", tags={"teacher": cfg.teacher.spec}) as tr:
            result = execute()
            summary = result.to_dict()
            tr.log_metrics({"records": summary["records"], "yield": summary["yield"], "chunks": summary["chunks"],
                            "dropped": summary["dropped"]})
            tr.log_artifact(result.out_dir / "manifest.json", artifact_path="synth")
    emit(result.to_dict(), as_json, lambda c: _render(c, result))


def json_ready(cfg: Any) -> dict[str, Any]:
    import json

    return json.loads(cfg.model_dump_json(by_alias=True))


def _render(console, result) -> None:
    m = result.manifest
    console.print(f"[bold]{m['records']['train']}[/] training records"
                  + (f", [bold]{m['records']['eval']}[/] eval records ({m['eval_set']['how']})" if m["records"]["eval"] else "")
                  + f" -> {result.out_dir}")
    ch = m["chunks"]
    console.print(f"documents: {m['documents']} ({len(m['skipped_files'])} skipped), chunks: {ch['total']} "
                  f"(too short {ch['too_short']}, not sampled {ch['not_sampled']}, train {ch['train']}, eval {ch['eval']})")
    for s in m["skipped_files"]:
        err_console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")
    calls = m["teacher_calls"]
    console.print(f"teacher {m['teacher']['name']}: {calls['ok']} of {calls['requests']} replies usable, "
                  f"{calls['attempts']} calls ({calls['cached_attempts']} from cache); failures: {calls['failures'] or 'none'}")
    table = Table(title="filters (training records)")
    for col in ("filter", "in", "dropped", "reasons"):
        table.add_column(col, justify="right" if col in ("in", "dropped") else "left")
    for name, step in m["filters"]["train"]["steps"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in step["reasons"].items())
        table.add_row(name, str(step["in"]), str(step["dropped"]), reasons)
    console.print(table)
    y = m["yield"]
    console.print(f"yield: {y['records_per_chunk']} records per chunk ({y['candidates_per_chunk']} generated); "
                  f"{y['chunks_without_records']} of {y['chunks']} chunks gave none")
    console.print("prompts: " + ", ".join(f"{k} {v['version']}" for k, v in m["prompts"].items()))
    console.print("review what was dropped and why: " + str(result.out_dir / "review" / "dropped.jsonl"))
    for step in m["next"]:
        console.print(f"next: {step}")
