"""The comparison matrix: which variants an experiment compares, and the content hashes its keys use.

A variant is one row of the table: a base model, optionally tuned (a PEFT adapter or a full model
directory), optionally answering with retrieved context (RAG). The matrix of an experiment is
`models x {base, tuned, rag-aware tuned} x {no retrieval, retrieval}` (rag-aware tuned with
compare.rag_aware: a model tuned on examples with retrieved passages, compare.ragaware), plus any
`compare.extra` adapters, each with and without retrieval. Variants are ordered so the table reads top-down: per model, base before tuned,
no retrieval before retrieval.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..digest import file_digest

RAG_AWARE = "rag-aware tuned"  # the kind of a model tuned on examples with retrieved passages (compare.ragaware)
RAG_AWARE_DIR = "train-rag-aware"  # under the experiment's run dir, next to train/


@dataclass(frozen=True)
class Variant:
    model: str  # the base model name as the user wrote it
    kind: str  # "base" | "tuned" | an extra variant's name
    rag: bool
    weights: Path | None = None  # adapter or full-model dir; None for the base

    @property
    def tuned(self) -> bool:
        return self.kind != "base"

    @property
    def id(self) -> str:
        """A directory-safe identifier: `<model>--<kind>--<rag|norag>`."""
        return f"{slug(self.model)}--{slug(self.kind)}--{'rag' if self.rag else 'norag'}"

    @property
    def label(self) -> str:
        """How the variant reads in the table: `smollm2-135m-instruct tuned + RAG`."""
        return f"{short_model(self.model)} {self.kind}{' + RAG' if self.rag else ''}"


def slug(text: str) -> str:
    """A lowercase directory-safe form of a model name, path or label."""
    text = Path(text).name if ("/" in text or "\\" in text) and Path(text).exists() else text
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.") or "model"


def short_model(name: str) -> str:
    return Path(name).name if Path(name).exists() else name


def models_of(config: ExperimentConfig) -> list[str]:
    return list(dict.fromkeys(config.compare.models or [config.model.name]))


def rag_enabled(config: ExperimentConfig) -> bool:
    mode = config.compare.rag
    return mode == "on" or (mode == "auto" and config.rag.docs is not None)


def rag_aware_enabled(config: ExperimentConfig) -> bool:
    mode = config.compare.rag_aware
    return config.compare.train and (mode == "on" or (mode == "auto" and config.data.rag_context is not None))


def training_config(config: ExperimentConfig, model: str, rag_aware: bool = False) -> ExperimentConfig:
    """The experiment's training settings applied to one model: its run dir is `<run_dir>/train/<model>`,
    or `<run_dir>/train-rag-aware/<model>` for its RAG-aware variant. The plain tuned model's data has no
    rag_context (its examples are the bare questions), so its reuse key is the same with or without one."""
    out = config.model_copy(deep=True)
    out.model.name = model
    out.workdir = Path(config.run_dir) / (RAG_AWARE_DIR if rag_aware else "train")
    out.name = slug(model)
    if rag_aware:
        if out.data.rag_context is None:
            from ..config.ragcontext import RagContextConfig

            out.data.rag_context = RagContextConfig()  # compare.rag_aware on without a section: its defaults
    else:
        out.data.rag_context = None
    return out


def build_matrix(config: ExperimentConfig) -> list[Variant]:
    """Every variant the experiment compares, in table order."""
    rag_modes = [False, True] if rag_enabled(config) else [False]
    variants: list[Variant] = []
    for model in models_of(config):
        kinds: list[tuple[str, Path | None]] = [("base", None)]
        if config.compare.train:
            kinds.append(("tuned", training_config(config, model).run_dir))
        if rag_aware_enabled(config):
            kinds.append((RAG_AWARE, training_config(config, model, rag_aware=True).run_dir))
        for kind, weights in kinds:
            variants += [Variant(model, kind, rag, weights) for rag in rag_modes]
    for extra in config.compare.extra:
        variants += [Variant(extra.model, extra.name, rag, extra.adapter) for rag in rag_modes]
    seen: set[str] = set()
    for v in variants:
        if v.id in seen:
            from ..errors import TunelabError

            raise TunelabError(f"compare: two variants would both be called '{v.label}'; rename one in compare.extra")
        seen.add(v.id)
    return variants


def stable_hash(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    return file_digest(path)[:16]


# What a trained directory's outputs depend on: the weights and the configs that say how to apply them
# (an adapter's alpha scales its weights without changing them). Logs, summaries and checkpoints are not.
WEIGHT_FILES = ("*.safetensors", "*.bin", "adapter_config.json", "config.json")


def weights_hash(weights: Path | None) -> str | None:
    """A content hash of an adapter / full-model directory's weights and their configs (None for the base)."""
    if weights is None:
        return None
    files = sorted({f for pattern in WEIGHT_FILES for f in weights.glob(pattern) if f.is_file()})
    return stable_hash({f.name: file_digest(f) for f in files}) if files else None


def model_identity(config: ExperimentConfig, model: str, device: str) -> dict[str, Any]:
    """What a model's outputs depend on besides weights trained on top of it, by content: the base
    model's files, the chat template's text (config.model.chat_template names a file), and the device
    kind and dtype it runs with on this machine."""
    from ..models.loading import runtime_identity
    from ..models.registry import model_digest

    template = config.model.chat_template
    return {"base_model": model_digest(model),
            "chat_template": file_digest(template) if template and Path(template).is_file() else template,
            **runtime_identity(config.model.dtype, device)}
