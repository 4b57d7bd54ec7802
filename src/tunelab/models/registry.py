"""Where a model name points, and getting it onto disk as a safetensors directory.

`resolve` turns what a user typed into a ModelRef: a bundled model name, a local model directory
(config.json present), a .gguf file, or otherwise a Hugging Face id (org/name). `pull` makes the
model available as a directory `from_pretrained` can read: GGUFs (bundled or the user's own) are
converted once into the tunelab cache (see convert.py), atomically, with a provenance file; hub ids
go through huggingface_hub's own cache; local directories are used in place.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import io
from ..digest import file_digest, path_digest, text_digest
from ..errors import TunelabError
from ..paths import models_cache
from .bundled import BUNDLED, BundledModel, find_bundled, package_dir
from .convert import SAVE_DTYPES, StageCallback, convert_gguf

log = logging.getLogger(__name__)

PROVENANCE_FILE = "tunelab-model.json"
CACHE_KIND = "model"  # the marker kind of a converted model in the cache (tunelab.io.atomic_dir)
CACHE_FORMAT = 1  # bump when the cache layout changes; older caches are then re-pulled
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "README.md"]


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference. kind: "bundled" | "local" | "gguf" | "hub"."""

    kind: str
    name: str  # bundled name, absolute path, or hub id
    path: Path | None = None  # the local directory or the .gguf file
    bundled: BundledModel | None = None

    def cache_dir(self, dtype: str = "float32") -> Path | None:
        """The tunelab cache directory a GGUF model is converted into (None for local and hub models)."""
        suffix = "" if dtype == "float32" else f"-{dtype}"
        if self.kind == "bundled":
            return models_cache() / f"{self.name}{suffix}"
        if self.kind == "gguf":
            assert self.path is not None
            # the file's content keys the cache, so an edited file converts again (tunelab.digest reads it
            # once per change, not once per run)
            key = file_digest(self.path)[:12]
            stem = re.sub(r"[^\w.-]+", "-", self.path.stem)[:60]
            return models_cache() / f"gguf-{stem}-{key}{suffix}"
        return None


def bundled_names() -> list[str]:
    return list(BUNDLED)


def _not_found(text: str, why: str) -> TunelabError:
    return TunelabError(
        f"model '{text}': {why}. Give a bundled model ({', '.join(BUNDLED)}), a model directory with "
        "config.json, a .gguf file, or a Hugging Face id like org/name"
    )


def resolve(name_or_path: str | os.PathLike) -> ModelRef:
    """Turn a bundled name, local directory, .gguf path or Hugging Face id into a ModelRef.

    A bundled name wins over a same-named directory in the working directory; write ./name for that.
    """
    text = str(name_or_path).strip()
    if not text:
        raise _not_found(text, "the name is empty")
    bundled = find_bundled(text)
    if bundled is not None and os.sep not in text:
        return ModelRef("bundled", bundled.name, bundled=bundled)
    path = Path(text).expanduser()
    if path.exists():
        return _resolve_path(path.resolve())
    if text.lower().endswith(".gguf") or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise _not_found(text, f"no such file or directory: {path}")
    if _HUB_ID.match(text):
        return ModelRef("hub", text)
    raise _not_found(text, "not a bundled model, an existing path or a Hugging Face id")


def _resolve_path(path: Path) -> ModelRef:
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelRef("local", str(path), path=path)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef("gguf", str(ggufs[0]), path=ggufs[0])
        what = f"{len(ggufs)} .gguf files (name one)" if ggufs else "no config.json and no .gguf file"
        raise _not_found(str(path), f"the directory has {what}")
    if path.suffix.lower() == ".gguf":
        return ModelRef("gguf", str(path), path=path)
    raise _not_found(str(path), "the file is not a .gguf model")


def read_provenance(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_pulled(ref: ModelRef, dtype: str = "float32") -> bool:
    """True when the model's converted cache is complete (local and hub models: when present)."""
    if ref.kind == "local":
        return True
    if ref.kind == "hub":
        return _hub_cached(ref.name) is not None
    directory = ref.cache_dir(dtype)
    assert directory is not None
    prov = read_provenance(directory)
    complete = (
        prov is not None
        and prov.get("format") == CACHE_FORMAT
        and (directory / "config.json").is_file()
        and any(directory.glob("*.safetensors"))
    )
    if complete and ref.bundled is not None and ref.bundled.is_installed():
        # converted from the packages installed now? An upgraded package converts again
        return prov.get("source", {}).get("sha256") == _bundled_digest(ref.bundled)
    return complete


def _bundled_digest(model: BundledModel) -> str:
    """The content of the packages a bundled model ships in (its GGUF or chunks)."""
    return text_digest("".join(path_digest(package_dir(m)) for m in model.modules))


def model_digest(name_or_path: str | os.PathLike | ModelRef) -> str:
    """What a model's outputs depend on in its files, by content: every file of the directory it loads
    from (weights, config, tokenizer and chat template), without tunelab's provenance note (it holds a
    creation time). Pulls the model first if needed. Cheap after the first time (tunelab.digest)."""
    return path_digest(model_path(name_or_path), skip=(PROVENANCE_FILE,))


def _pull_lock(target: Path):
    """One converter per cache directory at a time; a second waits, then finds the cache complete."""
    return io.file_lock(target.with_name(f".{target.name}.lock"))


def pull(
    name_or_path: str | os.PathLike | ModelRef,
    dtype: str = "float32",
    force: bool = False,
    on_stage: StageCallback | None = None,
) -> Path:
    """Make the model available as a safetensors directory and return it (converting a GGUF once)."""
    ref = name_or_path if isinstance(name_or_path, ModelRef) else resolve(name_or_path)
    if ref.kind == "local":
        assert ref.path is not None
        return ref.path
    if ref.kind == "hub":
        return fetch_hub(ref.name)
    if dtype not in SAVE_DTYPES:
        raise TunelabError(f"cannot cache weights as '{dtype}'; choose one of {', '.join(SAVE_DTYPES)}")
    if ref.bundled is not None:
        ref.bundled.require_installed()
    target = ref.cache_dir(dtype)
    assert target is not None
    with _pull_lock(target):
        if force or not is_pulled(ref, dtype):
            log.info("converting %s into %s (once; about a minute for the bundled models)", ref.name, target)
            _convert_into_cache(ref, target, dtype, on_stage)
    return target


def model_path(name_or_path: str | os.PathLike | ModelRef, dtype: str = "float32") -> Path:
    """The safetensors model directory for a model, pulling it first if needed."""
    return pull(name_or_path, dtype=dtype)


def _package_versions(model: BundledModel) -> dict[str, str]:
    versions = {}
    for dist in model.packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _tool_versions() -> dict[str, str]:
    versions = {}
    for dist in ("tunelab", "transformers", "torch", "gguf"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    return versions


def _convert_into_cache(ref: ModelRef, target: Path, dtype: str, on_stage: StageCallback | None) -> None:
    # chunked bundles are assembled into the cache's filesystem, then removed: the GGUF is only an input
    scratch = Path(tempfile.mkdtemp(prefix=".assemble-", dir=target.parent))
    try:
        if ref.bundled is not None:
            if on_stage is not None:
                on_stage("locating GGUF", None, None)
            gguf = ref.bundled.locate_gguf(scratch)
        else:
            assert ref.path is not None
            gguf = ref.path
        if read_provenance(target) is not None and io.output_kind(target) is None:
            io.mark_output_dir(target, CACHE_KIND)  # converted by a tunelab from before the markers
        with io.atomic_dir(target, kind=CACHE_KIND) as tmp:
            facts = convert_gguf(gguf, tmp, dtype=dtype, on_stage=on_stage)
            io.write_json(tmp / PROVENANCE_FILE, _provenance(ref, gguf, facts))
            _make_readable(tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    # temp dirs and files are created private (0700/0600); a model cache may be shared by a team
    directory.chmod(0o755)
    for path in directory.iterdir():
        path.chmod(0o755 if path.is_dir() else 0o644)


def _provenance(ref: ModelRef, gguf: Path, facts: dict[str, Any]) -> dict[str, Any]:
    source: dict[str, Any] = {"kind": ref.kind, "gguf_file": facts["gguf_file"]}
    if ref.bundled is not None:
        source.update(packages=_package_versions(ref.bundled), upstream=ref.bundled.hf_id,
                      quantization=ref.bundled.quantization, sha256=_bundled_digest(ref.bundled))
        licence = ref.bundled.licence
    else:
        source["gguf_path"] = str(gguf)
        licence = facts.get("gguf_licence") or "unknown"
    return {
        "format": CACHE_FORMAT,
        "name": ref.name,
        "source": source,
        "gguf_sha256": facts["gguf_sha256"],
        "architecture": facts["architecture"],
        "model_type": facts["model_type"],
        "n_params": facts["n_params"],
        "dtype": facts["dtype"],
        "licence": licence,
        "template": facts["template"],
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "convert_seconds": facts["convert_seconds"],
        "versions": _tool_versions(),
    }


def _hub_cached(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=True))
    except Exception:  # any failure here only means "not in the local hub cache"
        return None


def fetch_hub(repo_id: str) -> Path:
    """Download (or find in the hub cache) a Hugging Face model; a clear TunelabError when impossible."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    cached = _hub_cached(repo_id)
    if cached is not None and (cached / "config.json").is_file():
        return cached
    offline = os.environ.get("HF_HUB_OFFLINE", "")
    started = time.perf_counter()
    try:
        path = Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise TunelabError(
            f"Hugging Face model '{repo_id}' was not found or is gated/private ({type(exc).__name__}); "
            "check the id, or use a bundled model, a local model directory or a .gguf file"
        ) from exc
    except Exception as exc:  # offline mode, DNS, proxy, timeouts: all mean "no weights reachable"
        mode = f"HF_HUB_OFFLINE={offline}" if offline else "the hub could not be reached"
        raise TunelabError(
            f"cannot fetch Hugging Face model '{repo_id}': no network access and no local copy of its weights "
            f"are available ({mode}; {type(exc).__name__} after {time.perf_counter() - started:.1f}s). "
            f"Use a bundled model ({', '.join(BUNDLED)}), a local model directory or a .gguf file"
        ) from exc
    if not (path / "config.json").is_file():
        raise TunelabError(f"Hugging Face model '{repo_id}' has no config.json; it is not a transformers model")
    return path
