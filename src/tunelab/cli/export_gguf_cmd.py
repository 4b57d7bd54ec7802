"""`tunelab export gguf MODEL_DIR --out FILE`: a GGUF file and an Ollama Modelfile beside it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from .common import JsonOption, emit, err_console, handle_errors


@handle_errors
def export_gguf(
    model_dir: Path = typer.Argument(..., help="A Hugging Face model directory (safetensors, config, tokenizer)."),
    out: Path = typer.Option(..., "--out", help="The GGUF file to write (its Modelfile goes beside it)."),
    quant: str = typer.Option("f16", "--quant", help="f32 | f16 | bf16 | q8_0 | q4_k_m | q4_k_s | q6_k"),
    name: str = typer.Option(None, "--name", help="general.name in the GGUF (default: the directory's name)."),
    modelfile: bool = typer.Option(True, "--modelfile/--no-modelfile", help="Write the Ollama Modelfile."),
    as_json: bool = JsonOption,
) -> None:
    """Write a model directory as GGUF (llama, gemma3) with its training chat template, plus an Ollama Modelfile."""
    from ..export.gguf import write_gguf
    from ..export.ollama import modelfile_params, write_modelfile

    with err_console.status(f"writing {out}"):
        result = write_gguf(model_dir, out, quant=quant, name=name)
    data = result.to_dict()
    if modelfile:
        generation_file = Path(model_dir) / "generation_config.json"
        generation = json.loads(generation_file.read_text()) if generation_file.is_file() else {}
        wanted = {k: generation.get(k) for k in ("do_sample", "temperature", "top_p", "top_k",
                                                 "repetition_penalty", "max_new_tokens")}
        path = write_modelfile(result.path, chat_template=result.chat_template,
                               stop_tokens=result.template["stop_tokens"], params=modelfile_params(wanted))
        data["modelfile"] = str(path)

    def render(console: Console) -> None:
        kinds = ", ".join(f"{n} {t}" for t, n in sorted(result.tensor_types.items()))
        console.print(f"[green]{result.path}[/]: {result.architecture}, {result.quant}, "
                      f"{result.size_bytes / 1e6:.1f} MB ({kinds})")
        console.print(f"  chat template {result.template['name']} ({result.template['sha256'][:12]}), "
                      f"stops on {result.template['stop_tokens']}")
        if modelfile:
            console.print(f"  Ollama: ollama create NAME -f {data['modelfile']}")

    emit(data, as_json, render)
