"""What a run leaves behind: the trained adapter or model with its tokenizer and chat template, written
so a crash never leaves half a file, and the digest that identifies a stage's start and end weights.

An adapter names its base by the base's public id (models.public: `HuggingFaceTB/SmolLM2-135M-Instruct`
for the bundled SmolLM2), not by the path of the weights it trained on here; PEFT's empty model-card
template is not kept (tunelab.export.card writes the run's card)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from . import distributed


def weights_digest(params: dict[str, torch.nn.Parameter]) -> str:
    """sha256 over the names and exact bytes of the given tensors (a stage's start and end weights)."""
    h = hashlib.sha256()
    for name in sorted(params):
        tensor = distributed.full(params[name].detach()).to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _move_into(src: Path, dst: Path) -> None:
    for item in src.iterdir():
        target = dst / item.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(item, target)


def _name_public_base(adapter_dir: Path, base: str) -> None:
    """adapter_config.json's base_model_name_or_path: the base's public id instead of the local path PEFT
    wrote (it is changed after saving: PEFT looks the name up while saving, on the Hub if it is no path)."""
    from ..models.public import public_base

    file = adapter_dir / "adapter_config.json"
    config = json.loads(file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = public_base(base).id
    file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_artifacts(run_dir: Path, model, tokenizer, adapter: bool, state_dict: dict | None = None,
                   base: str | None = None) -> dict[str, Any]:
    """The trained adapter or model, the tokenizer and its chat template, into run_dir (each file renamed
    into place from a temporary directory, so a crash leaves the previous files, never half of one).
    state_dict: the whole weights when the model itself holds FSDP shards. base: the base model as the
    config names it; an adapter then records the base's public id."""
    tmp = Path(tempfile.mkdtemp(prefix=".artifacts.", dir=run_dir))
    try:
        if not adapter:
            from ..models.templates import stop_token_ids

            stops = stop_token_ids(tokenizer)
            if stops and getattr(model, "generation_config", None) is not None:
                model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
        model.save_pretrained(tmp, **({"state_dict": state_dict} if state_dict is not None else {}))
        tokenizer.save_pretrained(tmp)
        if adapter:
            # PEFT's "[More Information Needed]" card, naming the local base path: written just now into
            # our temporary directory, so it is PEFT's own file and never a user's
            (tmp / "README.md").unlink(missing_ok=True)
            if base is not None and (tmp / "adapter_config.json").is_file():
                _name_public_base(tmp, base)
        if tokenizer.chat_template:
            (tmp / "chat_template.jinja").write_text(tokenizer.chat_template, encoding="utf-8")
        files = sorted(p.name for p in tmp.iterdir())
        _move_into(tmp, run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"kind": "adapter" if adapter else "full", "path": str(run_dir), "files": files}
