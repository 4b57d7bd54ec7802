"""`tunelab export gguf MODEL_DIR --out FILE`: a GGUF file and an Ollama Modelfile beside it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .common import JsonOption, emit, err_console, handle_errors


@handle_errors
def export_gguf(
    source: Path = typer.Argument(..., help="A training run directory (merged first), or a Hugging Face model "
                                  "directory (safetensors, config, tokenizer)."),
    out: Path = typer.Option(..., "--out", help="The GGUF file to write (its Modelfile goes beside it)."),
    quant: str = typer.Option("f16", "--quant", help="f32 | f16 | bf16 | q8_0 | q4_k_m | q4_k_s | q6_k"),
    name: str = typer.Option(None, "--name", help="general.name in the GGUF (default: the directory's name)."),
    modelfile: bool = typer.Option(True, "--modelfile/--no-modelfile", help="Write the Ollama Modelfile."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Compare the GGUF with the trained model "
                                "(base + adapter) on a fixed prompt set; exit 1 when it fails."),
    run: Path = typer.Option(None, "--run", help="For a model directory: the training run it was merged from, "
                             "to verify against."),
    as_json: bool = JsonOption,
) -> None:
    """Write a training run or a model directory as GGUF (llama, gemma3) with its training chat template,
    plus an Ollama Modelfile, and check the GGUF behaves like the trained model."""
    from ..export.to_gguf import export_gguf as run_export

    with err_console.status(f"writing {out}"):
        done = run_export(source, out, quant=quant, name=name, modelfile=modelfile, verify=verify, run=run)
    result = done.gguf

    def render(console: Console) -> None:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(result.tensor_types.items()))
        console.print(f"[green]{result.path}[/]: {result.architecture}, {result.quant}, "
                      f"{result.size_bytes / 1e6:.1f} MB ({kinds})")
        console.print(f"  chat template {result.template['name']} ({result.template['sha256'][:12]}), "
                      f"stops on {result.template['stop_tokens']}")
        if done.modelfile:
            console.print(f"  Ollama: ollama create NAME -f {done.modelfile}")
        for line in done.messages:
            console.print(f"  {line}")

    emit(done.to_dict(), as_json, render)
    if done.verify is not None and not done.verify.passed:
        raise typer.Exit(1)
