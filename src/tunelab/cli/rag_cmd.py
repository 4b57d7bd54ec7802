"""`tunelab rag index | query | eval`: build a retrieval index, ask it, score it (parse, call, print)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .common import JsonOption, emit, err_console, handle_errors, progress

app = typer.Typer(help="Retrieval (RAG): index documents, query the index, score retrieval on an eval set.",
                  no_args_is_help=True)


def _rag_config(**fields: Any):
    from pydantic import ValidationError

    from ..config import RagConfig, options_error

    try:
        return RagConfig(**fields)
    except ValidationError as exc:
        # the overlap-below-size check is on the whole section, so its error is located at `rag`
        flags = {"rag.chunk_tokens": "--chunk-tokens", "rag.chunk_overlap": "--overlap", "rag": "--overlap",
                 "rag.embedding_model": "--embedding-model"}
        raise options_error(exc, "rag", flags) from None


@app.command("index")
@handle_errors
def index_cmd(
    docs_dir: Path = typer.Argument(..., help="Directory of documents (.md .txt .html .pdf .docx), read recursively."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory (created, or updated incrementally)."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", help="Tokens per chunk (embedder tokens, heading line included)."),
    overlap: int = typer.Option(32, "--overlap", help="Tokens of whole sentences shared by consecutive chunks."),
    embedding_model: str = typer.Option("all-minilm-l6-v2", "--embedding-model",
                                        help="Bundled name or a local sentence-transformers directory."),
    as_json: bool = JsonOption,
) -> None:
    """Index DOCS_DIR: chunk, embed (only what changed since the last build) and write a FAISS index."""
    from ..rag.index import build_index

    cfg = _rag_config(chunk_tokens=chunk_tokens, chunk_overlap=overlap, embedding_model=embedding_model)
    if as_json:
        result = build_index(docs_dir, out, cfg)
    else:
        with progress() as bar:
            task = bar.add_task("embedding chunks", total=None)
            result = build_index(docs_dir, out, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    emit(result.summary(), as_json, lambda c: _render_index(c, result.summary()))


def _render_index(console: Console, s: dict[str, Any]) -> None:
    files = s["files"]
    table = Table(title=f"RAG index {s['out_dir']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_row("documents", str(s["docs_dir"]))
    table.add_row("embedder", f"{s['embedder']} ({s['dim']} dimensions)")
    table.add_row("files", ", ".join(f"{len(v)} {k}" for k, v in files.items()))
    table.add_row("chunks", f"{s['chunks']} ({s['chunks_embedded']} embedded, {s['chunks_reused']} reused, "
                            f"{s['chunks_dropped']} dropped)")
    ch = s["chunking"]
    table.add_row("chunking", f"{ch['effective_tokens']} tokens, overlap {ch['effective_overlap']} "
                              f"(asked {ch['chunk_tokens']}/{ch['chunk_overlap']})")
    table.add_row("build", "full" + (f" ({s['rebuild_reason']})" if s["rebuild_reason"] else "")
                  if s["full_rebuild"] else "incremental")
    t = s["timings"]
    table.add_row("time", f"{t['total_s']:.1f} s (embedder load {t['load_embedder_s']:.1f} s, embedding {t['embed_s']:.1f} s)")
    console.print(table)
    for k in ("changed", "removed"):
        if files[k]:
            console.print(f"{k}: {', '.join(files[k])}")
    for skip in s["skipped"]:
        console.print(f"[yellow]skipped[/] {skip['path']}: {skip['reason']}", highlight=False)
    for note in s["notes"]:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


@app.command("query")
@handle_errors
def query_cmd(
    index_dir: Path = typer.Argument(..., help="An index directory written by `tunelab rag index`."),
    question: str = typer.Argument(..., help="The question to retrieve passages for."),
    k: int = typer.Option(3, "-k", "--top-k", help="How many chunks to return."),
    as_json: bool = JsonOption,
) -> None:
    """Print the K chunks closest to QUESTION, best first, with source and cosine score."""
    from ..rag.retriever import load_index

    index = load_index(index_dir)
    hits = index.search([question], k)[0]
    result = {"index": str(index_dir), "question": question, "k": k, "hits": [h.to_dict() for h in hits]}

    def render(console: Console) -> None:
        for h in hits:
            console.print(f"[bold]{h.rank}.[/] [cyan]{h.source}[/]  score {h.score:.3f}  [dim]{h.chunk_id}[/]",
                          highlight=False)
            text = " ".join(h.text.split())
            console.print(f"   {text[:400]}{' ...' if len(text) > 400 else ''}", highlight=False, markup=False)

    emit(result, as_json, render)


@app.command("eval")
@handle_errors
def eval_cmd(
    index_dir: Path = typer.Argument(..., help="An index directory written by `tunelab rag index`."),
    data: Path = typer.Option(..., "--data", "-d", help="Eval file; each record's `source` names its gold document or chunk."),
    k: int = typer.Option(5, "-k", "--top-k", help="Hits retrieved per question (recall@1/3/5 up to k, and @k)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write per-question hits and scores here (JSONL)."),
    as_json: bool = JsonOption,
) -> None:
    """Score retrieval on an eval set: recall@k and MRR, with standard errors."""
    from ..io import write_jsonl
    from ..rag.evaluate import evaluate_retrieval
    from ..rag.retriever import load_index

    index = load_index(index_dir)
    if as_json:
        result = evaluate_retrieval(index, data, k)
    else:
        with err_console.status("retrieving"):
            result = evaluate_retrieval(index, data, k)
    if out is not None:
        write_jsonl(out, result.rows)
    summary = result.summary()
    summary["rows_file"] = str(out) if out else None

    def render(console: Console) -> None:
        table = Table(title=f"Retrieval on {data} ({summary['n']} questions, k={k})")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_column("± stderr", justify="right")
        for name, m in summary["metrics"].items():
            table.add_row(name, f"{m['value']:.3f}", f"{m['stderr']:.3f}" if m.get("stderr") is not None else "-")
        console.print(table)
        misses = [r for r in result.rows if r["rr"] == 0]
        if misses:
            console.print(f"{len(misses)} question(s) with no gold source in the top {k}, e.g.:")
            for r in misses[:3]:
                console.print(f"  {r['question']!r} (gold {r['gold']}; got {r['hits'][0]['source'] if r['hits'] else '-'})",
                              highlight=False, markup=False)

    emit(summary, as_json, render)
