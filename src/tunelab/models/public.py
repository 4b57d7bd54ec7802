"""The public name of a base model: what a saved adapter and a model card name as the model it adapts.

A run trains on weights loaded from a path on this machine (a bundled model's converted copy in
~/.cache/tunelab/models, a snapshot in the Hugging Face cache, a local directory), and PEFT records that
path as the adapter's `base_model_name_or_path`. Anyone else needs the base's public id instead:

- a bundled model: the upstream Hugging Face id it was quantised from (`smollm2-135m-instruct` ->
  `HuggingFaceTB/SmolLM2-135M-Instruct`, BundledModel.hf_id);
- a Hugging Face id: that id;
- a local directory that is a Hugging Face cache snapshot (`.../models--ORG--NAME/snapshots/<sha>`):
  `ORG/NAME`;
- a local directory converted by tunelab from a bundled model (its tunelab-model.json names the
  upstream id): that id;
- any other local directory or a .gguf file: its absolute path. Nothing on the directory proves which
  public model it holds (a config's `_name_or_path` names the model it was *derived* from, which for a
  fine-tuned or merged directory is not these weights), so tunelab does not guess; `on_hub` is then
  False and a model card says the base is a local model instead of naming a Hub repo.

Loading never depends on this name: tunelab loads an adapter onto the base the run's config names
(models.adapters), so an adapter that names its public base still loads the local converted weights
offline.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TunelabError
from .registry import _HUB_ID, ModelRef, read_provenance, resolve

_HF_CACHE_DIR = re.compile(r"^models--(?P<org>[^/]+?)--(?P<name>[^/]+)$")


@dataclass(frozen=True)
class PublicBase:
    id: str  # a Hugging Face repo id when on_hub, else an absolute local path
    on_hub: bool
    licence: str | None  # as the bundled model, the provenance or the model's own card states it
    source: str  # how the id was found, for a card's reader: "bundled model smollm2-135m-instruct", ...
    quantized_from: str | None = None  # the GGUF quantisation training's weights were converted from


def public_base(name_or_path: str | os.PathLike | ModelRef) -> PublicBase:
    """The public id of the base model a config names; see the module docstring for the rules."""
    try:
        ref = name_or_path if isinstance(name_or_path, ModelRef) else resolve(name_or_path)
    except TunelabError:
        # a path that is gone since training: keep the name as the run recorded it
        return PublicBase(str(name_or_path), False, None, "as configured")
    if ref.kind == "bundled":
        assert ref.bundled is not None
        return PublicBase(ref.bundled.hf_id, True, ref.bundled.licence, f"bundled model {ref.name}",
                          quantized_from=ref.bundled.quantization)
    if ref.kind == "hub":
        return PublicBase(ref.name, True, None, "Hugging Face id")
    assert ref.path is not None
    if ref.kind == "local":
        found = _from_directory(ref.path)
        if found is not None:
            return found
    return PublicBase(str(ref.path), False, _local_licence(ref.path), "local path")


def _from_directory(directory: Path) -> PublicBase | None:
    prov = read_provenance(directory) or {}
    source = prov.get("source") if isinstance(prov.get("source"), dict) else {}
    upstream = source.get("upstream")
    if isinstance(upstream, str) and _HUB_ID.match(upstream):
        return PublicBase(upstream, True, prov.get("licence"), f"converted by tunelab from {prov.get('name', upstream)}",
                          quantized_from=source.get("quantization"))
    parts = directory.parts
    for i, part in enumerate(parts[:-2]):
        match = _HF_CACHE_DIR.match(part)
        if match and parts[i + 1] == "snapshots":
            repo = f"{match['org']}/{match['name']}"
            if _HUB_ID.match(repo):
                return PublicBase(repo, True, _local_licence(directory), "Hugging Face cache snapshot")
    return None


def _local_licence(path: Path) -> str | None:
    from .info import _card_licence

    prov = read_provenance(path) if path.is_dir() else None
    licence = (prov or {}).get("licence")
    if licence and licence != "unknown":
        return licence
    return _card_licence(path) if path.is_dir() else None
