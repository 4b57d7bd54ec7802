"""`tunelab data synth DOCS --teacher SPEC --out DIR`: training data from documents (tunelab.synth.run).

Options given on the command line override the experiment's `synth` section when --config is given.
The options' defaults, bounds and most of their help are the schema's (tunelab.config.synth): an unset
option is None here and the schema's default applies, so the two cannot drift.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined
from rich.table import Table

from ..config import SynthConfig
from ..errors import TunelabError
from .common import JsonOption, emit, err_console, handle_errors, progress_reporter


def _set(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        node = target.get(key)
        if not isinstance(node, dict):
            node = {} if node is None else {"spec": node} if isinstance(node, str) else node
            target[key] = node
        target = node
    target[last] = value


def _field(dotted: str) -> Any:
    """The synth section's field at a dotted path (pydantic FieldInfo)."""
    model: Any = SynthConfig
    for part in dotted.split("."):
        info = model.model_fields[part]
        model = next((a for a in (info.annotation, *typing.get_args(info.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return info


def schema_default(dotted: str) -> Any:
    """The default the schema gives the synth field at `dotted` (PydanticUndefined when it is required)."""
    return _field(dotted).get_default(call_default_factory=True)


# Every option that sets a field of the synth section: parameter -> (flag, field). The options default to
# None (unset: the experiment file's value, else the schema's default); --help shows the schema's default.
OPTIONS = {
    "teacher": ("--teacher", "teacher.spec"), "out": ("--out", "out"), "mode": ("--mode", "mode"),
    "labels": ("--labels", "labels"), "per_chunk": ("--per-chunk", "per_chunk"), "turns": ("--turns", "turns"),
    "chunk_tokens": ("--chunk-tokens", "chunk_tokens"), "chunk_overlap": ("--chunk-overlap", "chunk_overlap"),
    "min_chunk_tokens": ("--min-chunk-tokens", "min_chunk_tokens"), "max_chunks": ("--max-chunks", "max_chunks"),
    "judge": ("--judge", "judge.spec"), "eval_set": ("--eval-set", "eval_set"),
    "eval_fraction": ("--eval-fraction", "eval_fraction"), "prompts": ("--prompts", "prompts"),
    "pool": ("--pool", "filters.pool"), "min_overlap": ("--min-overlap", "filters.min_overlap"),
    "temperature": ("--temperature", "temperature"), "max_tokens": ("--max-tokens", "max_tokens"),
    "seed": ("--seed", "seed"), "parse_retries": ("--parse-retries", "parse_retries"),
    "concurrency": ("--concurrency", "teacher.concurrency"), "timeout": ("--timeout", "teacher.timeout_s"),
    "max_retries": ("--max-retries", "teacher.max_retries"), "api_key_env": ("--api-key-env", "teacher.api_key_env"),
    "batch_size": ("--batch-size", "teacher.batch_size"), "threads": ("--threads", "teacher.threads"),
    "cache_dir": ("--cache-dir", "teacher.cache_dir"), "no_cache": ("--no-cache", "teacher.cache"),
}


def _option(param: str, help: str | None = None, short: str | None = None) -> Any:
    """The typer option of a synth field: unset by default; the help names the schema's default."""
    flag, dotted = OPTIONS[param]
    default = schema_default(dotted)
    text = help or _field(dotted).description or ""
    if default not in (None, [], PydanticUndefined):
        text = f"{text.rstrip('.')} (default: {default})."
    return typer.Option(None, flag, *([short] if short else []), help=text)


@handle_errors
def synth(
    docs: Path | None = typer.Argument(None, metavar="DOCS_DIR", help=_field("docs").description),
    teacher: str | None = _option("teacher", short="-t"),
    out: Path | None = _option("out", "Output dataset directory (replaced atomically).", short="-o"),
    mode: str | None = _option("mode", "qa | instruction | multi_turn | labelled | preference."),
    labels: str | None = _option("labels", "Comma-separated label set (mode labelled)."),
    per_chunk: int | None = _option("per_chunk"),
    turns: int | None = _option("turns"),
    chunk_tokens: int | None = _option("chunk_tokens", "Chunk size in tokens."),
    chunk_overlap: int | None = _option("chunk_overlap", "Overlap between chunks, in tokens."),
    min_chunk_tokens: int | None = _option("min_chunk_tokens"),
    max_chunks: int | None = _option("max_chunks"),
    judge: str | None = _option("judge", "Also check grounding with an LLM judge (a backend spec)."),
    eval_set: str | None = _option("eval_set", "none | held_out | paraphrase."),
    eval_fraction: float | None = _option("eval_fraction"),
    prompts: Path | None = _option("prompts"),
    pool: list[Path] | None = _option("pool", "Existing data file(s) not to duplicate (repeatable)."),
    min_overlap: float | None = _option("min_overlap"),
    temperature: float | None = _option("temperature", "Teacher sampling temperature."),
    max_tokens: int | None = _option("max_tokens"),
    seed: int | None = _option("seed", "Seed of the teacher's sampling and of the eval set's selection."),
    parse_retries: int | None = _option("parse_retries"),
    concurrency: int | None = _option("concurrency", "Teacher requests in flight at once (openai)."),
    timeout: float | None = _option("timeout", "Seconds per teacher request (openai)."),
    max_retries: int | None = _option("max_retries"),
    api_key_env: str | None = _option("api_key_env"),
    batch_size: int | None = _option("batch_size"),
    threads: int | None = _option("threads"),
    cache_dir: Path | None = _option("cache_dir", "Teacher call cache (default <tunelab home>/llm_calls)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the teacher call cache."),
    config: Path | None = typer.Option(None, "--config", "-c", help="An experiment file whose synth section to run."),
    overrides: list[str] | None = typer.Option(None, "--set", help="Override a config value, e.g. synth.max_chunks=10."),
    as_json: bool = JsonOption,
) -> None:
    """Generate a training dataset from documents with a teacher LLM, filtered for grounding."""
    from pydantic import ValidationError

    from ..config import load_config, options_error
    from ..synth.run import from_experiment, run

    values = {"docs": docs, **{p: v for p, v in locals().items() if p in OPTIONS}}
    values.update(labels=[x.strip() for x in labels.split(",")] if labels is not None else None,
                  pool=pool or None, no_cache=False if no_cache else None)  # --no-cache sets teacher.cache false
    given = {OPTIONS[p][1] if p in OPTIONS else p: v for p, v in values.items()}
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
        raise options_error(exc, "synth", {"synth.docs": "DOCS_DIR", **{f"synth.{field}": flag
                                                                        for flag, field in OPTIONS.values()}}) from None

    def execute():
        # progress goes to stderr, so --json still prints one object on stdout
        with progress_reporter() as on_progress:
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
