"""`tunelab eval`: generation metrics on a data file and/or multiple-choice benchmarks, for a model
with an optional adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import TunelabError
from .common import JsonOption, emit, err_console, handle_errors


def load_with_adapter(model_name: str, adapter: Path | None):
    """The base model (and tokenizer), with a PEFT adapter applied when given; a bad adapter is an error."""
    from ..models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(model_name)
    if adapter is None:
        return model, tokenizer
    if not (adapter / "adapter_config.json").is_file():
        raise TunelabError(f"{adapter}: no adapter_config.json; is it a run directory written by `tunelab train`?")
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:  # shape or architecture mismatch from PEFT/torch
        raise TunelabError(f"adapter {adapter} does not fit base model {model_name}: {exc}") from None
    model.eval()
    return model, tokenizer


@handle_errors
def evaluate(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Base model: bundled name, dir, .gguf or HF id."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A PEFT adapter directory (a tunelab train run)."),
    data: Path | None = typer.Option(None, "--data", help="Eval file (chat/alpaca/prompt-completion/label) or prepared split."),
    metrics: str = typer.Option("rougeL,bleu,token_f1", "--metrics", help="Comma-separated metric names."),
    benchmark: str | None = typer.Option(None, "--benchmark", help="Comma-separated: truthfulqa_mc1, truthfulqa_mc2, hellaswag, arc_easy, arc_challenge."),
    benchmark_dir: Path | None = typer.Option(None, "--benchmark-dir", help="Where benchmark files are (default: ../shared/benchmarks)."),
    limit: int | None = typer.Option(None, "--limit", help="First N rows of each benchmark / of the data."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens"),
    batch_size: int = typer.Option(16, "--batch-size"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write predictions JSONL and summary JSON here."),
    as_json: bool = JsonOption,
) -> None:
    """Evaluate a model (optionally with an adapter) on a data file and/or benchmarks."""
    if data is None and not benchmark:
        raise TunelabError("nothing to evaluate: give --data FILE and/or --benchmark NAMES")
    model_obj, tokenizer = load_with_adapter(model, adapter)
    name = f"{model}+{adapter}" if adapter else model
    result: dict = {"model": name}
    renders = []
    if data is not None:
        from ..evaluate import GenerationConfig, load_eval_records, render_eval, run_eval

        records = load_eval_records(data)[:limit] if limit else load_eval_records(data)
        gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
        res = run_eval(model_obj, tokenizer, records, [m.strip() for m in metrics.split(",") if m.strip()],
                       out / "generation" if out else None, gen, model_name=name, data=str(data))
        result["generation"] = res.summary()
        renders.append(lambda c: render_eval(res, c))
    if benchmark:
        from ..evaluate.benchmarks.run import render_table, run_benchmarks

        names = [b.strip() for b in benchmark.split(",") if b.strip()]
        if not as_json:
            err_console.print(f"scoring {', '.join(names)} ...")
        bench = run_benchmarks(model_obj, tokenizer, names, limit=limit, batch_size=max(batch_size, 16),
                               benchmark_dir=benchmark_dir, out_dir=out / "benchmarks" if out else None)
        result["benchmarks"] = bench
        renders.append(lambda c: c.print(render_table(bench)))
    emit(result, as_json, lambda c: [r(c) for r in renders])
