"""Raw documents as training data: a directory or document files in `data.train` become text records.

    stages:
      - name: docs
        data: {train: handbook/docs}      # Markdown, text, HTML, PDF, DOCX (tunelab.documents.ingest)
        train: {objective: causal}        # continued pre-training on the documents' text
      - name: qa
        data: {train: qa.jsonl}

Every document is one text record (`{"text": ..., "source": <relative path>, "title": ...}`); the causal
objective cuts long ones into max_length windows, so no text is lost. The records are written to
`<dataset dir>-documents/documents.jsonl` (rewritten only when the documents changed, so a prepared
dataset is reused while they do not) and then prepared like any JSONL input: cleaning, dedup, PII and
the split apply to documents as to other records. Files the ingester cannot read are listed, with the
reason, in `skipped.json` beside it and in the run's warnings; no readable document at all is an error.
A directory `tunelab data synth` wrote is data, not documents (its manifest says so; data/inputs.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..data.inputs import synth_manifest
from ..errors import TunelabError
from ..io import write_json, write_text

DOCUMENT_SUFFIXES = (".md", ".markdown", ".txt", ".html", ".htm", ".pdf", ".docx")


def is_documents(path: Path) -> bool:
    path = Path(path)
    if path.is_dir():
        return synth_manifest(path) is None
    return path.suffix.lower() in DOCUMENT_SUFFIXES


def documents_to_records(data: DataConfig, dataset_dir: Path) -> tuple[DataConfig, dict[str, Any] | None]:
    """data with its document inputs replaced by one JSONL of text records; (data, None) when it has none.
    The second value says how many documents were read and which were skipped."""
    docs = [Path(p) for p in data.train if is_documents(Path(p))]
    if not docs:
        return data, None
    from ..documents.ingest import ingest

    if data.format not in ("auto", "text"):
        raise TunelabError(f"data.format is {data.format}, but data.train holds documents, which become text "
                           "records: use format auto (or text), or give the documents in a stage of their own")
    if data.fields:
        raise TunelabError("data.fields maps the field names of data files, but data.train holds documents, "
                           "which have none: give the documents in a stage of their own")
    missing = [str(p) for p in docs if not p.exists()]
    if missing:
        raise TunelabError(f"data.train: {', '.join(missing)} not found")
    result = ingest(docs)
    skipped = [{"path": s.path, "reason": s.reason} for s in result.skipped]
    if not result.documents:
        shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:5]) or "no files"
        raise TunelabError(f"data.train: no readable document in {', '.join(map(str, docs))} ({shown})")
    out_dir = Path(str(dataset_dir) + "-documents")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "documents.jsonl"
    text = "".join(json.dumps({"text": d.text, "source": d.path, "title": d.title}, ensure_ascii=False) + "\n"
                   for d in result.documents)
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        write_text(target, text)
    write_json(out_dir / "skipped.json", skipped)
    rest = [p for p in data.train if not is_documents(Path(p))]
    info = {"documents": len(result.documents), "skipped": skipped, "records": str(target)}
    return data.model_copy(update={"train": [*rest, target]}), info
