"""`tunelab export merge` and `tunelab export verify`: the adapter merged into its base as a plain Hugging
Face model directory, and the train/serve parity check of an exported model. tunelab.export.merge and
tunelab.export.verify do the work; a failed verdict exits with status 1.

    tunelab export merge runs/exp --out merged/ [--dtype auto|float32|bfloat16|float16] [--no-verify]
    tunelab export verify runs/exp --artifact merged/          # or --artifact model.gguf
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from .common import JsonOption, emit, err_console, handle_errors

RunArg = typer.Argument(..., help="The run directory `tunelab train` wrote (adapter or whole model).",
                        show_default=False)


@handle_errors
def merge(
    run: Path = RunArg,
    out: Path = typer.Option(..., "--out", "-o", help="The merged model directory to write (new, or an earlier "
                             "merge output).", show_default=False),
    dtype: str = typer.Option("auto", "--dtype", help="Weights: auto (the base's dtype), float32, bfloat16, "
                              "float16."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the parity check against the trained model."),
    as_json: bool = JsonOption,
) -> None:
    """Merge a run's adapter into its base model: safetensors, tokenizer and the training chat template."""
    from ..export.merge import merge_run

    if not as_json:
        err_console.print(f"merging {run} ...", highlight=False, markup=False)
    result = merge_run(run, out, dtype=dtype, verify=not no_verify)
    emit(result.to_dict(), as_json, lambda c: _render_merge(result, c))
    if result.verify is not None and not result.verify.passed:
        raise typer.Exit(code=1)


@handle_errors
def verify(
    run: Path = RunArg,
    artifact: Path = typer.Option(..., "--artifact", "-a", help="A merged model directory or a .gguf file.",
                                  show_default=False),
    max_new_tokens: int = typer.Option(32, "--max-new-tokens", min=1, help="Greedy tokens per prompt."),
    as_json: bool = JsonOption,
) -> None:
    """Check an exported model against the trained model: greedy outputs, logits, template, stop tokens."""
    from ..export.verify import verify as run_verify

    if not as_json:
        err_console.print(f"verifying {artifact} against {run} ...", highlight=False, markup=False)
    result = run_verify(run, artifact, max_new_tokens=max_new_tokens)
    emit(result.to_dict(), as_json, lambda c: _render_verify(result, c))
    if not result.passed:
        raise typer.Exit(code=1)


def _render_merge(result: Any, console: Any) -> None:
    for message in result.messages:
        if not message.startswith("verify:"):
            console.print(message, highlight=False, markup=False)
    console.print(f"merged model: {result.out} ({result.dtype})", highlight=False, markup=False)
    if result.verify is not None:
        _render_verify(result.verify, console)
    else:
        console.print("not verified (--no-verify); check it with: tunelab export verify "
                      f"{result.source} --artifact {result.out}", highlight=False, markup=False)


def _render_verify(result: Any, console: Any) -> None:
    lines = [
        f"artifact: {result.artifact} ({result.artifact_kind}, {result.precision}, run by {result.engine})",
        f"prompts: {len(result.prompts)} from {result.prompt_source}",
        f"greedy agreement: {result.agreement:.0%} "
        f"({sum(c.agree for c in result.prompts)} of {len(result.prompts)} identical)",
        f"largest logit difference: {result.max_logit_diff:.3g} (tolerance {result.tolerance:g} x the logit "
        f"scale for {result.precision} weights)",
    ]
    for i, check in enumerate(result.prompts, 1):
        if not check.agree:
            lines.append(f"  prompt {i}: trained {check.trained!r} / artifact {check.artifact!r}: {check.note}")
    lines.append("differences: " + ("; ".join(str(d) for d in result.differences) if result.differences
                                    else "none in chat template, stop tokens or special tokens"))
    console.print("\n".join(lines), highlight=False, markup=False)
    if result.passed:
        console.print("verdict: PASS", style="bold green", highlight=False, markup=False)
    else:
        console.print("verdict: FAIL", style="bold red", highlight=False, markup=False)
        for reason in result.reasons:
            console.print(f"  - {reason}", highlight=False, markup=False)
