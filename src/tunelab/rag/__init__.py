"""Retrieval-augmented generation: embed document chunks, index them, retrieve, and build the prompt.

    from tunelab.config import RagConfig
    from tunelab.rag import build_index, load_index, rag_messages, retrieval_metrics

    cfg = RagConfig(chunk_tokens=256, chunk_overlap=32, context_tokens=600)
    result = build_index("examples/handbook/docs", "runs/x/rag-index", cfg)   # incremental on rebuild
    # in a pipeline: build_index(config.rag.docs, index_dir_for(config), config.rag)
    index = load_index("runs/x/rag-index")
    hits = index.search(["How many days of annual leave do I get?"], k=cfg.top_k)   # list[list[Hit]]
    messages = rag_messages([{"role": "user", "content": "How many days ...?"}], hits[0],
                            tokenizer, cfg.context_tokens)       # tokenizer: the generating model's
    scores = retrieval_metrics(hits, ["03-leave-and-holidays.md"], ks=(1, 3))    # MetricValue per name

Modules: embedder (bundled MiniLM or a local sentence-transformers dir), index (build, incremental),
retriever (load, search), prompt (versioned template, token budget), metrics (recall@k, MRR),
evaluate (score an eval file's `source` fields). Names are imported lazily: importing this package
loads neither FAISS nor sentence-transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Embedder": "embedder",
    "build_index": "index",
    "IndexResult": "index",
    "index_dir_for": "index",
    "load_index": "retriever",
    "Index": "retriever",
    "Hit": "retriever",
    "rag_messages": "prompt",
    "build_rag_prompt": "prompt",
    "load_template": "prompt",
    "RAG_PROMPT_VERSION": "prompt",
    "retrieval_metrics": "metrics",
    "evaluate_retrieval": "evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
