"""`tunelab data prepare|inspect`: build a dataset directory and look inside it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..config import DataConfig, SplitConfig, options_error
from ..errors import TunelabError
from .common import JsonOption, emit, err_console, handle_errors, parse_pairs

app = typer.Typer(help="Prepare datasets: validate, clean, deduplicate, scrub PII, split, render.", no_args_is_help=True)


def _parse_split(text: str) -> SplitConfig:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise TunelabError(f"--split '{text}': give train,validation[,test] ratios, e.g. 0.8,0.1,0.1")
    try:
        values = [float(p) for p in parts] + [0.0] * (3 - len(parts))
    except ValueError:
        raise TunelabError(f"--split '{text}': ratios must be numbers") from None
    from pydantic import ValidationError

    try:
        return SplitConfig(train=values[0], validation=values[1], test=values[2])
    except ValidationError as exc:
        raise options_error(exc, "data.split", {f"data.split{k}": "--split" for k in ("", ".train", ".validation",
                                                                                     ".test")}) from None


# where each prepare option lands in an experiment file's data section (for error messages)
PREPARE_FLAGS = {"data.train": "INPUTS", "data.eval": "--eval", "data.format": "--format", "data.seed": "--seed",
                 "data.dedup": "--dedup", "data.near_threshold": "--near-threshold", "data.pii": "--pii",
                 "data.max_length": "--max-length", "data.skip_invalid": "--skip-invalid",
                 "data.clean.normalize": "--normalize", "data.clean.strip_html": "--strip-html",
                 "data.clean.min_chars": "--min-chars", "data.clean.max_chars": "--max-chars",
                 "data.fields": "--field"}


@app.command("prepare")
@handle_errors
def prepare(
    inputs: list[Path] = typer.Argument(..., help="Input files (JSONL, JSON, CSV, Parquet), saved HF dataset dirs, "
                                        "a directory `tunelab data synth` wrote, or a `tunelab serve "
                                        "--feedback-db` database (its preference pairs)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output dataset directory (replaced atomically)."),
    fmt: str = typer.Option("auto", "--format", "-f", help="alpaca|chat|sharegpt|prompt_completion|text|label|preference|qna|auto"),
    field: list[str] = typer.Option([], "--field", help="Read YOUR_FIELD as a format's field: FORMAT_FIELD=YOUR_FIELD "
                                    "(repeatable), e.g. --field prompt=q --field completion=a."),
    eval_file: Path | None = typer.Option(None, "--eval", help="A held-out eval file (checked for leaks against train)."),
    split: str = typer.Option("0.9,0.1,0", "--split", help="train,validation[,test] ratios."),
    seed: int = typer.Option(42, "--seed"),
    dedup: str = typer.Option("near", "--dedup", help="none|exact|near"),
    near_threshold: float = typer.Option(0.85, "--near-threshold", help="Jaccard threshold for near duplicates."),
    pii: str = typer.Option("mask", "--pii", help="mask|off"),
    max_length: int = typer.Option(1024, "--max-length", help="Token budget per example (with --model)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Render with this model's template for token stats."),
    skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip bad records (counted) instead of stopping."),
    strip_html: bool = typer.Option(False, "--strip-html"),
    normalize: str = typer.Option("NFC", "--normalize", help="NFC|NFKC|none"),
    min_chars: int = typer.Option(1, "--min-chars"),
    max_chars: int | None = typer.Option(None, "--max-chars"),
    group_by: str | None = typer.Option(None, "--group-by", help="Keep records sharing this field in one split."),
    stratify: bool | None = typer.Option(None, "--stratify/--no-stratify", help="Default: on for labelled data."),
    as_json: bool = JsonOption,
) -> None:
    """Validate, clean, deduplicate, scrub PII and split INPUTS into a dataset directory."""
    from pydantic import ValidationError

    from ..data.prepare import run

    split_cfg = _parse_split(split)
    split_cfg.group_by = group_by
    split_cfg.stratify = stratify
    try:
        config = DataConfig(
            train=inputs,
            eval=eval_file,
            format=fmt,
            fields=parse_pairs(field, "--field", "FORMAT_FIELD=YOUR_FIELD", "prompt=question"),
            split=split_cfg,
            seed=seed,
            dedup=dedup,
            near_threshold=near_threshold,
            pii=pii,
            max_length=max_length,
            skip_invalid=skip_invalid,
            clean={"normalize": normalize, "strip_html": strip_html, "min_chars": min_chars, "max_chars": max_chars},
        )
    except ValidationError as exc:
        raise options_error(exc, "data", PREPARE_FLAGS) from None

    if as_json:
        result = run(config, out, model=model)
    else:
        with err_console.status("preparing") as status:
            result = run(config, out, model=model, on_stage=lambda s: status.update(f"[bold]{s}"))
    emit(result.to_dict(), as_json, lambda c: _render_prepare(c, result))


def _render_prepare(console, result) -> None:
    m = result.manifest
    table = Table(title=f"dataset {result.out_dir}  (version {m['dataset_hash'][:12]})")
    table.add_column("split")
    table.add_column("records", justify="right")
    for name, n in result.splits.items():
        table.add_row(name, str(n))
    console.print(table)
    console.print(f"rows read: {m['rows_in']}, valid: {m['records_valid']}, formats: {m['formats']}")
    if m["skipped_invalid"]:
        console.print(f"[yellow]skipped invalid[/]: {m['skipped_invalid']}")
    console.print(f"removed: {m['removed'] or 'nothing'}")
    console.print(f"PII replaced: {m['pii'] or 'none found'}")
    tokens = m.get("tokens")
    if tokens:
        for name, st in tokens.items():
            if isinstance(st, dict):
                console.print(f"tokens[{name}]: {st}")


@app.command("inspect")
@handle_errors
def inspect(
    dataset: Path = typer.Argument(..., help="A dataset directory written by `tunelab data prepare`."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model whose template renders the data."),
    split: str = typer.Option("train", "--split"),
    max_length: int = typer.Option(1024, "--max-length"),
    examples: int = typer.Option(1, "--examples", "-n", help="How many examples to show."),
    as_json: bool = JsonOption,
) -> None:
    """Show an example with its loss tokens highlighted, the token-length histogram, and truncation counts."""
    from ..data.inspect import inspect_dataset, render_inspection
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(model)
    result = inspect_dataset(dataset, tokenizer, max_length, split=split, n_examples=examples)
    emit(result, as_json, lambda c: render_inspection(result, c))


from .synth_cmd import synth  # noqa: E402  (its own module: the synth command has many options)

app.command("synth")(synth)
