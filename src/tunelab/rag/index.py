"""Build a retrieval index from a documents directory, incrementally.

    result = build_index("docs/", "runs/x/rag-index", RagConfig())
    result.summary()   # files added/changed/removed/unchanged, chunks embedded/reused, full_rebuild

The index directory holds (replaced atomically as a whole, so a reader never sees a mix):
- manifest.json: format, embedder (name, path, fingerprint, dim), chunking parameters, and per source
  file its sha256, title and chunk ids; the files skipped at ingestion with their reasons.
- chunks.jsonl: one chunk per line (id, doc, heading, text, token counts, offsets), in vector order.
- vectors.npy: the L2-normalised float32 embeddings, row i for line i, kept so the FAISS index can be
  rebuilt without embedding anything again.
- index.faiss: a FAISS IndexFlatIP over the vectors: exact inner product = cosine similarity.

Incremental: a second build re-ingests and re-chunks everything (cheap), then embeds only chunks whose
id (a hash of document, heading path and text) is not already stored: an unchanged file costs nothing,
a changed file costs only its new or edited chunks, a deleted file's chunks are dropped. A different
embedder (name or model files), chunking parameters or chunker/ingestion version makes stored vectors
unusable: the build starts over and says why. What is embedded for a chunk is its heading path and text
(`embed_text`), so a short section still carries its topic.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RagConfig
from ..documents.chunk import CHUNKER_VERSION, Chunk, chunk_documents
from ..documents.ingest import INGEST_VERSION, Skipped, ingest
from ..errors import TunelabError
from ..io import atomic_dir, check_output_dir, read_jsonl, write_json, write_jsonl
from .embedder import Embedder

INDEX_FORMAT = 1
MANIFEST_FILE = "manifest.json"
OUTPUT_KIND = "rag-index"  # the marker kind of an index directory (tunelab.io.check_output_dir)
CHUNKS_FILE = "chunks.jsonl"
VECTORS_FILE = "vectors.npy"
FAISS_FILE = "index.faiss"
EMBED_BATCH = 128  # chunks per progress step; the embedder batches within it

Progress = Callable[[int, int], None]  # (chunks embedded so far, chunks to embed)


def embed_text(heading: tuple[str, ...] | list[str], text: str) -> str:
    """What the embedder reads for a chunk: its heading path on one line, then its text."""
    return f"{' > '.join(heading)}\n{text}" if heading else text


@dataclass
class IndexResult:
    out_dir: Path
    docs_dir: Path
    embedder: str
    dim: int
    files_added: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    files_unchanged: list[str] = field(default_factory=list)
    chunks: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_dropped: int = 0
    full_rebuild: bool = True
    rebuild_reason: str | None = None
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    chunking: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "docs_dir": str(self.docs_dir),
            "embedder": self.embedder,
            "dim": self.dim,
            "files": {"added": self.files_added, "changed": self.files_changed,
                      "removed": self.files_removed, "unchanged": self.files_unchanged},
            "chunks": self.chunks,
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "chunks_dropped": self.chunks_dropped,
            "chunking": self.chunking,
            "full_rebuild": self.full_rebuild,
            "rebuild_reason": self.rebuild_reason,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
            "notes": self.notes,
            "timings": self.timings,
        }


def index_dir_for(config: Any) -> Path:
    """Where an experiment's index lives: rag.index_dir, or <run_dir>/rag-index (config: ExperimentConfig)."""
    return Path(config.rag.index_dir) if config.rag.index_dir else Path(config.run_dir) / "rag-index"


def chunk_budget(cfg: RagConfig, window: int | None) -> int:
    """Tokens per chunk, heading line included: the configured size, capped at what the embedder reads
    (its window less the two special tokens [CLS] and [SEP]), so no chunk is embedded cut short."""
    return min(cfg.chunk_tokens, window - 2) if window and window > 2 else cfg.chunk_tokens


def chunking_params(cfg: RagConfig, window: int | None) -> dict[str, Any]:
    budget = chunk_budget(cfg, window)
    return {"chunk_tokens": cfg.chunk_tokens, "chunk_overlap": cfg.chunk_overlap, "effective_tokens": budget,
            "effective_overlap": min(cfg.chunk_overlap, budget - 1), "token_counter": "embedder",
            "heading_line_in_budget": True, "chunker_version": CHUNKER_VERSION, "ingest_version": INGEST_VERSION}


# ------------------------------------------------------------------------------------ previous index


@dataclass
class _Previous:
    manifest: dict[str, Any] | None = None
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # chunk id -> chunks.jsonl row
    vectors: np.ndarray | None = None
    position: dict[str, int] = field(default_factory=dict)  # chunk id -> row in vectors
    problem: str | None = None  # why stored vectors cannot be used


def _load_previous(out_dir: Path) -> _Previous:
    if not (out_dir / MANIFEST_FILE).is_file():
        return _Previous(problem="no previous index")
    try:
        manifest = json.loads((out_dir / MANIFEST_FILE).read_text(encoding="utf-8"))
        rows = read_jsonl(out_dir / CHUNKS_FILE)
        vectors = np.load(out_dir / VECTORS_FILE, allow_pickle=False)
    except (OSError, ValueError) as exc:
        return _Previous(problem=f"the previous index could not be read ({exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        return _Previous(problem="the previous index has another format version")
    if vectors.ndim != 2 or len(vectors) != len(rows):
        return _Previous(manifest, problem="the previous index is inconsistent (vectors and chunks differ in count)")
    return _Previous(manifest, {r["id"]: r for r in rows}, vectors, {r["id"]: i for i, r in enumerate(rows)})


def _incompatibility(prev: _Previous, embedder: dict[str, Any], chunking: dict[str, Any]) -> str | None:
    if prev.problem:
        return prev.problem
    old = prev.manifest or {}
    old_emb = old.get("embedder", {})
    if old_emb.get("name") != embedder["name"]:
        return f"embedding model changed ({old_emb.get('name')} -> {embedder['name']})"
    if old_emb.get("fingerprint") != embedder["fingerprint"]:
        return f"the files of embedding model {embedder['name']} changed"
    if old.get("chunking") != chunking:
        changed = sorted(k for k in chunking if (old.get("chunking") or {}).get(k) != chunking[k])
        return f"chunking parameters changed ({', '.join(changed)})"
    return None


# ------------------------------------------------------------------------------------ build


def build_index(docs_dir: str | Path, out_dir: str | Path, cfg: RagConfig | None = None, *,
                embedder: Embedder | None = None, progress: Progress | None = None) -> IndexResult:
    """Index the documents under `docs_dir` into `out_dir` (created or updated); see the module doc."""
    import faiss

    cfg = cfg or RagConfig()
    t0 = time.perf_counter()
    docs_dir, out_dir = Path(docs_dir).expanduser(), Path(out_dir).expanduser()
    check_output_dir(out_dir, OUTPUT_KIND, [docs_dir])  # before embedding: a refused --out costs nothing
    if not docs_dir.exists():
        raise TunelabError(f"documents directory not found: {docs_dir}")
    if embedder is None or embedder.name != cfg.embedding_model:
        embedder = Embedder(cfg.embedding_model)

    ingested = ingest(docs_dir)
    if not ingested.documents:
        reasons = "".join(f"\n  {s}" for s in ingested.skipped[:20])
        raise TunelabError(f"no documents with text under {docs_dir}; nothing was indexed{reasons}")
    max_len = embedder.max_seq_length
    chunking = chunking_params(cfg, max_len)
    chunks = chunk_documents(ingested.documents, chunking["effective_tokens"], chunking["effective_overlap"],
                             embedder.count_tokens, lambda heading: embedder.count_tokens(embed_text(heading, "")))
    t_chunk = time.perf_counter()

    emb_info = embedder.describe()
    prev = _load_previous(out_dir)
    reason = _incompatibility(prev, emb_info, chunking)
    usable = reason is None
    result = IndexResult(out_dir=out_dir, docs_dir=ingested.root, embedder=embedder.name, dim=0,
                         full_rebuild=not usable, rebuild_reason=reason, skipped=ingested.skipped)

    old_files = (prev.manifest or {}).get("files", {}) if usable else {}
    for doc in ingested.documents:
        old = old_files.get(doc.path)
        bucket = result.files_added if old is None else (
            result.files_unchanged if old.get("sha256") == doc.sha256 else result.files_changed)
        bucket.append(doc.path)
    current = {d.path for d in ingested.documents}
    result.files_removed = sorted(p for p in old_files if p not in current)

    # Reuse a stored vector for every chunk whose id is known: ids hash exactly what was embedded.
    todo = [i for i, c in enumerate(chunks) if not (usable and c.id in prev.position)]
    if todo:
        embedder.model  # noqa: B018 - load it here, so embed_s below is embedding time only
    t_load = time.perf_counter()
    embed_tokens = {i: embedder.count_tokens(embed_text(chunks[i].heading, chunks[i].text)) for i in todo}
    new_vectors = _embed(embedder, [embed_text(chunks[i].heading, chunks[i].text) for i in todo], progress)
    t_embed = time.perf_counter()

    dim = new_vectors.shape[1] if len(todo) else int(prev.vectors.shape[1])  # type: ignore[union-attr]
    vectors = np.zeros((len(chunks), dim), dtype=np.float32)
    fresh = dict(zip(todo, range(len(todo)), strict=True))
    rows = []
    for i, c in enumerate(chunks):
        if i in fresh:
            vectors[i] = new_vectors[fresh[i]]
            n_embed = embed_tokens[i]
        else:
            vectors[i] = prev.vectors[prev.position[c.id]]  # type: ignore[index]
            n_embed = int(prev.rows[c.id].get("embed_tokens", 0))
        rows.append({**c.to_dict(), "embed_tokens": n_embed})
    result.dim = dim
    result.chunks = len(chunks)
    result.chunks_embedded = len(todo)
    result.chunks_reused = len(chunks) - len(todo)
    kept = {c.id for c in chunks}
    result.chunks_dropped = sum(1 for cid in prev.position if cid not in kept) if usable else 0

    # Special tokens ([CLS], [SEP]) take two places of the model's window.
    truncated = [r for r in rows if max_len and r["embed_tokens"] > max_len - 2]
    if truncated:
        result.notes.append(
            f"{len(truncated)} chunk(s) are longer than the embedder's {max_len}-token window (heading path "
            f"included), each a single word over the budget; their ends are not embedded."
        )
    if result.full_rebuild and reason != "no previous index":
        result.notes.append(f"full rebuild: {reason}")

    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    manifest = {
        "format": INDEX_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "docs_dir": str(ingested.root),
        "embedder": {**emb_info, "dim": dim, "max_seq_length": max_len},
        "chunking": chunking,
        "embed_input": "heading path (' > '-joined) on the first line, then the chunk text",
        "similarity": "inner product of L2-normalised vectors (cosine), exact (faiss.IndexFlatIP)",
        "n_chunks": len(chunks),
        "files": {
            d.path: {"sha256": d.sha256, "format": d.format, "title": d.title,
                     "chunks": [c.id for c in chunks if c.doc == d.path]}
            for d in ingested.documents
        },
        "skipped": [{"path": s.path, "reason": s.reason} for s in ingested.skipped],
    }
    with atomic_dir(out_dir, kind=OUTPUT_KIND, inputs=[docs_dir]) as tmp:
        write_jsonl(tmp / CHUNKS_FILE, rows)
        np.save(tmp / VECTORS_FILE, vectors, allow_pickle=False)
        faiss.write_index(index, str(tmp / FAISS_FILE))
        write_json(tmp / MANIFEST_FILE, manifest)
    t_end = time.perf_counter()
    result.chunking = chunking
    result.timings = {"ingest_chunk_s": round(t_chunk - t0, 3), "load_embedder_s": round(t_load - t_chunk, 3),
                      "embed_s": round(t_embed - t_load, 3),
                      "write_s": round(t_end - t_embed, 3), "total_s": round(t_end - t0, 3)}
    return result


def _embed(embedder: Embedder, texts: list[str], progress: Progress | None) -> np.ndarray:
    parts = []
    for start in range(0, len(texts), EMBED_BATCH):
        parts.append(embedder.embed(texts[start : start + EMBED_BATCH]))
        if progress:
            progress(min(start + EMBED_BATCH, len(texts)), len(texts))
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def chunks_of(rows: list[dict[str, Any]]) -> list[Chunk]:
    return [Chunk.from_dict(r) for r in rows]
