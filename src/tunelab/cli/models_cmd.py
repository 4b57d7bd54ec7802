"""`tunelab models list | info | pull`: parse, call tunelab.models, print (a table, or one JSON object)."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .common import JsonOption, emit, err_console, handle_errors

app = typer.Typer(help="Bundled offline models, the model cache, and what a model needs to train.",
                  no_args_is_help=True)


def _yes(flag: bool) -> str:
    return "[green]yes[/]" if flag else "[dim]no[/]"


@app.command("list")
@handle_errors
def list_cmd(as_json: bool = JsonOption) -> None:
    """Show the bundled models: size, architecture, chat template, licence, installed and pulled."""
    from ..models.info import list_models

    result = list_models()

    def render(console: Console) -> None:
        table = Table(title="Bundled models", caption=f"cache: {result['cache']}")
        table.add_column("name", no_wrap=True, style="bold")
        for col in ("params", "architecture", "kind", "chat template", "licence", "installed", "pulled"):
            table.add_column(col)
        for m in result["models"]:
            template = f"{m['chat_template']['name']} ({m['chat_template']['source']})"
            table.add_row(m["name"], m["params"], m["architecture"], m["kind"], template, m["licence"],
                          _yes(m["installed"]), _yes(m["pulled"]))
        console.print(table)
        for m in result["models"]:
            if m["install_hint"]:
                console.print(f"[yellow]{m['name']}[/] is not installed: {m['install_hint']}")

    emit(result, as_json, render)


def _render_info(info: dict[str, Any]) -> Any:
    from ..models.memory import MEMORY_MODELS

    def render(console: Console) -> None:
        t = info["chat_template"]
        table = Table(title=f"Model {info['name']}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        rows = [
            ("source", f"{info['kind']}: {info['path']}"),
            ("architecture", f"{info['architecture']} ({info['model_type']})"),
            ("parameters", f"{info['params']} ({info['n_params']:,})"),
            ("layers / hidden", f"{info['num_layers']} / {info['hidden_size']}"),
            ("context length", str(info["context_length"])),
            ("vocabulary", f"{info['vocab_size']:,}" if info["vocab_size"] else "unknown"),
            ("chat template", f"{t.get('name')} (source: {t.get('source')}, eos {t.get('eos_token')!r}, "
                              f"stop {t.get('stop_tokens')})"),
            ("licence", info["licence"]),
            ("pulled", "yes" if info["pulled"] else "no (run `tunelab models pull`)"),
            ("bf16 pays here", f"{'yes' if info['bf16']['pays'] else 'no'}: {info['bf16']['reason']}"),
            ("metadata from", info["metadata_source"]),
        ]
        for key, value in rows:
            table.add_row(key, value, style=None)
        console.print(table)

        mem = info["memory"]
        s = mem["settings"]
        mt = Table(title=f"Training memory estimate (GiB): seq {s['seq_len']}, batch {s['batch']}, "
                         f"LoRA r {s['lora_r']}, {s['dtype']}, {s['optimizer']}")
        parts = ["weights", "lora_params", "gradients", "optimizer_states", "activations", "logits_and_loss", "total"]
        mt.add_column("method")
        for p in parts:
            mt.add_column(p.replace("_", " "), justify="right")
        for method in MEMORY_MODELS:
            mt.add_row(method, *(f"{mem[method][p]:.2f}" for p in parts))
        console.print(mt)
        console.print(f"[dim]{mem['assumptions']}[/]")

    return render


@app.command("info")
@handle_errors
def info_cmd(
    name: str = typer.Argument(..., help="Bundled name, model directory, .gguf file or Hugging Face id."),
    seq_len: int = typer.Option(512, "--seq-len", min=1, help="Sequence length for the memory estimate."),
    batch: int = typer.Option(8, "--batch", min=1, help="Batch size for the memory estimate."),
    lora_r: int = typer.Option(16, "--lora-r", min=1, help="LoRA rank for the memory estimate."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | bfloat16 | float16 (weights/compute)."),
    as_json: bool = JsonOption,
) -> None:
    """Architecture, size, context, vocabulary, chat template, licence, memory estimates, bf16 advice."""
    from ..models.info import model_info

    info = model_info(name, seq_len=seq_len, batch=batch, lora_r=lora_r, dtype=dtype,
                      notice=lambda msg: err_console.print(f"[dim]{msg}[/]"))
    emit(info, as_json, _render_info(info))


@app.command("pull")
@handle_errors
def pull_cmd(
    name: str = typer.Argument(..., help="Bundled name, .gguf file or Hugging Face id."),
    dtype: str = typer.Option("float32", "--dtype", help="dtype of the cached weights: float32 | bfloat16."),
    force: bool = typer.Option(False, "--force", help="Convert again even if the cache is complete."),
    as_json: bool = JsonOption,
) -> None:
    """Convert a model once into the safetensors cache (about a minute for the bundled models)."""
    from ..models.registry import is_pulled, pull, read_provenance, resolve

    ref = resolve(name)
    already = is_pulled(ref, dtype) and not force
    started = time.perf_counter()
    with err_console.status(f"pulling {ref.name}") as status:

        def on_stage(stage: str, done: int | None, total: int | None) -> None:
            count = f" {done}/{total}" if total else ""
            status.update(f"pulling {ref.name}: {stage}{count}")

        path = pull(ref, dtype=dtype, force=force, on_stage=on_stage)
    prov = read_provenance(path) or {}
    result = {
        "name": ref.name,
        "kind": ref.kind,
        "path": str(path),
        "already_pulled": already or ref.kind == "local",
        "seconds": round(time.perf_counter() - started, 1),
        "template": prov.get("template"),
        "gguf_sha256": prov.get("gguf_sha256"),
    }

    def render(console: Console) -> None:
        how = "already in the cache" if result["already_pulled"] else f"converted in {result['seconds']} s"
        console.print(f"[green]{ref.name}[/]: {how}\n  {path}")
        if result["template"]:
            t = result["template"]
            console.print(f"  chat template: {t['name']} ({t['source']}), stops on {t['stop_tokens']}")

    emit(result, as_json, render)
