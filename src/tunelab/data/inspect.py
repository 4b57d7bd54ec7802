"""The engine of `tunelab data inspect`: what a prepared split looks like to a model before training.

`inspect_dataset` renders every record of one split with the model's tokenizer (the same rendering
training uses) and reports what users otherwise find out after a wasted run: which tokens are in the
loss (an example, token by token), how long the records are (a histogram), how many records max_length
would truncate and how many would lose their whole answer, and how many loss tokens each record carries.
Records that cannot be rendered are counted and listed with their line, not skipped silently.
`render_inspection` draws the result with rich; the dict itself is JSON-ready for --json.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from ..errors import InputError, Problem, TunelabError
from .records import KINDS, Record
from .render import (
    Rendered,
    end_of_turn_token,
    eos_warnings,
    loss_mask_preview,
    render_preference,
    render_record,
    require_chat_template,
)

MAX_BINS = 10
MAX_ERRORS_SHOWN = 5
BAR_WIDTH = 40
LOSS_STYLE = "black on green"
PROMPT_STYLE = "dim"


def _read_split(path: Path) -> list[tuple[int, Record]]:
    """(line number, record) for every non-empty line; malformed lines are reported all at once."""
    rows: list[tuple[int, Record]] = []
    problems: list[Problem] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row.get("kind") not in KINDS:
                    raise ValueError(f"kind must be one of {', '.join(KINDS)}")
                rows.append((lineno, Record.from_dict(row)))
            except (ValueError, AttributeError, KeyError) as exc:
                problems.append(Problem(str(path), lineno, None, f"not a tunelab record: {exc}"))
    if problems:
        raise InputError(
            problems[:MAX_ERRORS_SHOWN],
            total=len(problems),
            header=f"{len(problems)} unreadable line(s) in {path}; prepare the data again with `tunelab data prepare`:",
        )
    return rows


def _split_path(dataset_dir: Path, split: str) -> Path:
    path = dataset_dir / f"{split}.jsonl"
    if path.is_file():
        return path
    available = (
        sorted(p.stem for p in dataset_dir.glob("*.jsonl") if p.stem != "leaks")
        if dataset_dir.is_dir()
        else []
    )
    hint = (
        f"splits there: {', '.join(available)}"
        if available
        else "is it a directory written by `tunelab data prepare`?"
    )
    raise TunelabError(f"{path} not found ({hint})")


def _render_one(record: Record, tokenizer, max_length: int, train_on: str) -> Rendered:
    """The rendering training would use; a preference record counts as its longer reply."""
    if record.kind == "preference":
        chosen, rejected = render_preference(record, tokenizer, max_length)
        return max(chosen, rejected, key=lambda r: r.full_length)
    return render_record(record, tokenizer, max_length, train_on=train_on)


def _summary(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    return {
        "min": int(arr.min()),
        "median": float(np.median(arr)),
        "mean": round(float(arr.mean()), 2),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
    }


def length_histogram(lengths: list[int], max_bins: int = MAX_BINS) -> dict[str, list[int]]:
    """Equal-width bins with integer edges; bin k counts lengths in [edges[k], edges[k+1])."""
    lo, hi = min(lengths), max(lengths) + 1
    width = max(1, math.ceil((hi - lo) / max_bins))
    edges = list(range(lo, hi + width, width))
    if edges[-1] < hi:
        edges.append(edges[-1] + width)
    counts, _ = np.histogram(lengths, bins=edges)
    # np.histogram closes the last bin on the right; edges end above max, so the bins are half-open.
    return {"edges": edges, "counts": [int(c) for c in counts]}


def inspect_dataset(
    dataset_dir: str | Path,
    tokenizer,
    max_length: int,
    split: str = "train",
    n_examples: int = 1,
    *,
    train_on: str = "assistant",
) -> dict[str, Any]:
    """Render one split of a prepared dataset and measure it; see the module docstring for what is in it."""
    path = _split_path(Path(dataset_dir), split)
    rows = _read_split(path)
    if not rows:
        raise TunelabError(f"{path} holds no records; nothing to inspect")
    kinds = Counter(record.kind for _, record in rows)
    if any(kind != "text" for kind in kinds):
        require_chat_template(tokenizer)  # one clear error instead of one per record

    rendered: list[Rendered] = []
    errors: list[dict[str, Any]] = []
    for lineno, record in rows:
        try:
            rendered.append(_render_one(record, tokenizer, max_length, train_on))
        except TunelabError as exc:
            errors.append({"line": lineno, "kind": record.kind, "message": str(exc)})
    if not rendered:
        raise TunelabError(
            f"no record of {path} could be rendered; first error, line {errors[0]['line']}: "
            f"{errors[0]['message']}"
        )

    lengths = [r.full_length for r in rendered]
    losses = [r.n_loss_tokens for r in rendered]
    eot = None
    if any(kind != "text" for kind in kinds):
        try:
            eot = end_of_turn_token(tokenizer)
        except TunelabError:
            pass  # the template rejects the probe conversation; the records' own errors are listed
    return {
        "dataset": str(path),
        "split": split,
        "records": len(rows),
        "rendered": len(rendered),
        "kinds": dict(sorted(kinds.items())),
        "max_length": max_length,
        "train_on": train_on,
        "lengths": _summary(lengths),
        "histogram": length_histogram(lengths),
        "truncation": {
            "truncated": sum(r.truncated for r in rendered),
            "answer_truncated_away": sum(r.answer_truncated_away for r in rendered),
            "tokens_cut": sum(r.full_length - len(r.input_ids) for r in rendered),
        },
        "loss_tokens": {
            **_summary(losses),
            "total": int(sum(losses)),
            "zero": sum(n == 0 for n in losses),
            "fraction_of_tokens": round(sum(losses) / max(1, sum(len(r.input_ids) for r in rendered)), 4),
        },
        "examples": _examples(rows, tokenizer, max_length, train_on, n_examples),
        "errors": {"count": len(errors), "first": errors[:MAX_ERRORS_SHOWN]},
        "end_of_turn": eot,
        "eos_token": getattr(tokenizer, "eos_token", None),
        "warnings": eos_warnings(tokenizer, eot),
    }


def _examples(
    rows: list[tuple[int, Record]], tokenizer, max_length: int, train_on: str, n_examples: int
) -> list[dict[str, Any]]:
    """Loss-mask previews of the first n records that render (as training sees them: truncated). A
    preference record's preview is its chosen sequence, with the rejected one under "rejected"."""
    out: list[dict[str, Any]] = []
    for lineno, record in rows:
        if len(out) >= n_examples:
            break
        try:
            tokens = loss_mask_preview(record, tokenizer, max_length=None, train_on=train_on)
            rejected = (loss_mask_preview(record, tokenizer, max_length=None, reply="rejected")
                        if record.kind == "preference" else None)
        except TunelabError:
            continue
        out.append({"line": lineno, "kind": record.kind, **_preview(tokens, max_length)})
        if rejected is not None:
            out[-1]["rejected"] = _preview(rejected, max_length)
    return out


def _preview(tokens: list[tuple[str, bool]], max_length: int) -> dict[str, Any]:
    return {
        "n_tokens": len(tokens),
        "n_loss_tokens": sum(inside for _, inside in tokens[:max_length]),
        "truncated": len(tokens) > max_length,
        "tokens": [[text, inside] for text, inside in tokens[:max_length]],
    }


# -- drawing ------------------------------------------------------------------------------------------


def example_text(example: dict[str, Any]) -> Text:
    """The rendered example with in-loss tokens highlighted and the prompt dimmed."""
    text = Text()
    for piece, inside in example["tokens"]:
        text.append(piece, style=LOSS_STYLE if inside else PROMPT_STYLE)
    if example["truncated"]:
        text.append(f"\n… cut here by max_length ({example['n_tokens']} tokens in full)", style="bold yellow")
    return text


def histogram_lines(histogram: dict[str, list[int]], max_length: int) -> list[Text]:
    """One bar per bin; bins above max_length (truncated records) in red."""
    edges, counts = histogram["edges"], histogram["counts"]
    top = max(counts) or 1
    label_width = len(f"{edges[-2]}-{edges[-1] - 1}")
    lines = []
    for k, count in enumerate(counts):
        lo, hi = edges[k], edges[k + 1] - 1
        label = f"{lo}-{hi}" if hi > lo else f"{lo}"
        bar = "█" * max(1 if count else 0, round(BAR_WIDTH * count / top))
        style = "red" if hi > max_length else "cyan"
        line = Text(f"  {label:>{label_width}} ")
        line.append(bar.ljust(BAR_WIDTH), style=style)
        line.append(f" {count}")
        lines.append(line)
    return lines


def render_inspection(result: dict[str, Any], console: Console) -> None:
    """Draw an `inspect_dataset` result for a person."""
    kinds = ", ".join(f"{n} {k}" for k, n in result["kinds"].items())
    console.print(
        f"[bold]{result['dataset']}[/]: {result['records']} records ({kinds}), "
        f"max_length {result['max_length']}, train_on {result['train_on']}"
    )
    for example in result["examples"]:
        sides = [("", example)]
        if "rejected" in example:  # a preference pair: both sequences, each with its reply in the loss
            sides = [(", chosen", example), (", rejected", example["rejected"])]
        for side, shown in sides:
            title = (
                f"line {example['line']} ({example['kind']}{side}): {shown['n_loss_tokens']} of "
                f"{min(shown['n_tokens'], result['max_length'])} tokens in the loss"
            )
            console.print(
                Panel(
                    example_text(shown),
                    title=title,
                    subtitle="[black on green] in loss [/] [dim]not in loss[/]",
                )
            )

    lengths = result["lengths"]
    console.print(
        f"[bold]Tokens per record[/]: min {lengths['min']}, median {lengths['median']:g}, "
        f"p95 {lengths['p95']:g}, max {lengths['max']}"
    )
    for line in histogram_lines(result["histogram"], result["max_length"]):
        console.print(line)

    trunc, n = result["truncation"], result["rendered"]
    style = "green" if not trunc["truncated"] else "yellow"
    console.print(
        f"[{style}]{trunc['truncated']} of {n} records ({100 * trunc['truncated'] / n:.1f}%) are longer "
        f"than max_length {result['max_length']}[/] ({trunc['tokens_cut']} tokens cut)"
    )
    if trunc["answer_truncated_away"]:
        console.print(
            f"[bold red]{trunc['answer_truncated_away']} record(s) would lose their whole answer[/] "
            "(no loss token left): raise max_length or shorten the prompts"
        )

    loss = result["loss_tokens"]
    console.print(
        f"[bold]Loss tokens per record[/]: min {loss['min']}, median {loss['median']:g}, "
        f"mean {loss['mean']:g}, max {loss['max']}; {loss['total']} in all "
        f"({100 * loss['fraction_of_tokens']:.1f}% of tokens)"
    )
    if result["end_of_turn"]:
        console.print(f"End of turn: {result['end_of_turn']} (eos_token {result['eos_token']})")
    for warning in result["warnings"]:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)
    errors = result["errors"]
    if errors["count"]:
        console.print(f"[bold red]{errors['count']} record(s) could not be rendered:[/]")
        for err in errors["first"]:
            console.print(
                f"  line {err['line']} ({err['kind']}): {err['message']}", style="red", highlight=False
            )
