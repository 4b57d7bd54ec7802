"""Query a built index: embed the questions (batched), search FAISS, return ranked hits.

    index = load_index("runs/x/rag-index")
    hits = index.search(["How many days of annual leave?"], k=3)[0]
    hits[0].source, hits[0].score, hits[0].text

Queries are embedded with the model the index was built with; if that model's files changed since,
search refuses (the vectors would not be comparable) and asks for a rebuild.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import TunelabError
from ..io import read_jsonl
from .embedder import Embedder
from .index import CHUNKS_FILE, FAISS_FILE, INDEX_FORMAT, MANIFEST_FILE


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc: str
    heading: tuple[str, ...]
    text: str
    score: float  # cosine similarity of query and chunk
    rank: int  # 1 = best

    @property
    def source(self) -> str:
        return " > ".join((self.doc, *self.heading))

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "chunk_id": self.chunk_id, "doc": self.doc, "heading": list(self.heading),
                "source": self.source, "score": round(self.score, 6), "text": self.text}


class Index:
    """A loaded index; `search` embeds queries lazily with the index's own embedding model."""

    def __init__(self, path: Path, manifest: dict[str, Any], rows: list[dict[str, Any]], faiss_index: Any,
                 embedder: Embedder | None = None):
        self.path = path
        self.manifest = manifest
        self.rows = rows
        self.faiss_index = faiss_index
        self._embedder = embedder

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            info = self.manifest["embedder"]
            embedder = Embedder(info["name"])
            if embedder.spec.fingerprint != info.get("fingerprint"):
                raise TunelabError(
                    f"the embedding model '{info['name']}' has changed since the index at {self.path} was built; "
                    "rebuild it with `tunelab rag index`"
                )
            self._embedder = embedder
        return self._embedder

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        """The k best chunks for each query (fewer if the index is smaller), best first."""
        if isinstance(queries, str):
            raise TypeError("search takes a list of queries; wrap a single query in a list")
        if k <= 0:
            raise TunelabError(f"k must be > 0, got {k}")
        if not queries:
            return []
        vectors = self.embedder.embed(list(queries))
        return self.search_vectors(vectors, k)

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        k = min(k, len(self.rows))
        scores, ids = self.faiss_index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        out = []
        for q_scores, q_ids in zip(scores, ids, strict=True):
            hits = []
            for rank, (score, idx) in enumerate(zip(q_scores, q_ids, strict=True), start=1):
                if idx < 0:  # FAISS pads with -1 when fewer vectors exist
                    break
                row = self.rows[idx]
                hits.append(Hit(row["id"], row["doc"], tuple(row["heading"]), row["text"], float(score), rank))
            out.append(hits)
        return out


def load_index(path: str | Path, embedder: Embedder | None = None) -> Index:
    """Open an index directory written by build_index; a missing or damaged one is a clear error."""
    import faiss

    path = Path(path).expanduser()
    manifest_file = path / MANIFEST_FILE
    if not manifest_file.is_file():
        raise TunelabError(f"{path} is not a RAG index (no {MANIFEST_FILE}); build one with `tunelab rag index`")
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        rows = read_jsonl(path / CHUNKS_FILE)
        index = faiss.read_index(str(path / FAISS_FILE))
    except (OSError, ValueError, RuntimeError) as exc:
        raise TunelabError(f"the RAG index at {path} is damaged ({exc}); rebuild it with `tunelab rag index`") from None
    if manifest.get("format") != INDEX_FORMAT:
        raise TunelabError(f"the RAG index at {path} has format {manifest.get('format')}, this tunelab reads "
                           f"{INDEX_FORMAT}; rebuild it with `tunelab rag index`")
    if index.ntotal != len(rows):
        raise TunelabError(f"the RAG index at {path} is damaged ({index.ntotal} vectors, {len(rows)} chunks); rebuild it")
    threads = int(os.environ.get("TUNELAB_THREADS", 0))
    if threads:
        faiss.omp_set_num_threads(threads)
    info = manifest.get("embedder", {})
    if embedder is not None and (embedder.name, embedder.spec.fingerprint) != (info.get("name"), info.get("fingerprint")):
        embedder = None  # not the index's model: the property loads (and checks) the right one
    return Index(path, manifest, rows, index, embedder)
