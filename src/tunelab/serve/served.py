"""What a server serves: the base's public name, and each adapter checked before it is loaded.

An adapter is served under a name the user picks (`--adapter NAME=RUN`). Before its weights load:
- the path is a training run directory (or a bare PEFT adapter directory) holding an adapter; a run of
  the `full` method is a whole model and is served with --model instead;
- its PEFT type can share a batch with other adapters: LoRA (and DoRA, a LoRA variant), whose
  per-row `adapter_names` forward PEFT supports. Prompt and prefix tuning (virtual tokens prepended inside
  every forward) and IA3 (scaling vectors PEFT cannot mix per row) are refused with what to do instead;
- the base it records (summary.json's model, adapter_config.json's base_model_name_or_path) is the
  served base, by any name it goes by: the bundled name, the upstream hub id, the local directory;
- its training chat template (the run's chat_template.jinja) is compared with the base's: render_chat must
  render what the adapter was trained on.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..models.adapters import read_adapter_config
from ..models.registry import ModelRef, read_provenance, resolve
from ..models.templates import chat_template_for, template_sha256

MIXABLE_PEFT_TYPES = ("LORA",)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


def served_name(ref: ModelRef) -> str:
    """The model name clients use for the base: never a path on this machine."""
    if ref.kind in ("bundled", "hub"):
        return ref.name
    return Path(ref.name).stem if ref.kind == "gguf" else Path(ref.name).name


def check_adapter_name(name: str, taken: list[str]) -> None:
    if not _NAME.match(name or ""):
        raise TunelabError(f"adapter name '{name}': use 1-64 letters, digits, '.', '_', ':' or '-' starting with a "
                           "letter or digit (a name, not a path)")
    if name in taken:
        raise TunelabError(f"adapter name '{name}' is used twice (or is the base model's name); give each its own")


def adapter_dir(path: str | Path) -> Path:
    """The directory holding the adapter of a run (or the adapter directory itself)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise TunelabError(f"adapter {path}: no such directory (give a training run directory)")
    if (path / "adapter_config.json").is_file():
        return path
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        raise TunelabError(f"{path} holds a whole fine-tuned model (method full), not an adapter; serve it as the "
                           f"base with --model {path}")
    lineage = path / "lineage.json"
    if lineage.is_file():  # a staged run: its final stage says where the adapter was written
        final = Path(json.loads(lineage.read_text(encoding="utf-8")).get("final", {}).get("path") or path)
        if final != path and (final / "adapter_config.json").is_file():
            return final
    raise TunelabError(f"{path}: no adapter_config.json; is it a run directory written by `tunelab train`?")


def check_mixable(name: str, directory: Path) -> dict[str, Any]:
    """The adapter's config, after refusing the PEFT types that cannot share a batch."""
    config = read_adapter_config(directory)
    peft_type = str(config.get("peft_type") or "").upper()
    if peft_type in MIXABLE_PEFT_TYPES:
        return config
    if config.get("num_virtual_tokens") or "PROMPT" in peft_type or "PREFIX" in peft_type:
        why = ("prompt/prefix tuning adds virtual tokens inside every forward pass and cannot be merged, so it "
               "cannot share a batch with other requests; evaluate it with `tunelab eval`")
    else:
        why = (f"PEFT cannot mix {peft_type or 'this'} adapters with others in one batch; merge it into its base "
               f"(`tunelab export merge {directory} --out DIR`) and serve the merged model with --model DIR")
    raise TunelabError(f"adapter '{name}' ({directory}) is a {peft_type or 'unknown'} adapter; the server serves "
                       f"LoRA adapters (DoRA included) side by side on one base. {why}")


def _identities(text: str) -> set[str]:
    """The names one model goes by: as written, its bundled name and upstream id, its directory."""
    text = str(text).strip()
    out = {text.lower()} if text else set()
    try:
        ref = resolve(text)
    except TunelabError:
        return out
    out.add(ref.name.lower())
    if ref.bundled is not None:
        out.add(ref.bundled.hf_id.lower())
        cache = ref.cache_dir()
        if cache is not None:
            out.add(str(cache).lower())
    if ref.path is not None and ref.path.is_dir():
        out.add(str(ref.path.resolve()).lower())
        prov = read_provenance(ref.path) or {}
        for name in (prov.get("name"), (prov.get("source") or {}).get("upstream")):
            if name:
                out.add(str(name).lower())
    return out


def recorded_bases(directory: Path, config: dict[str, Any]) -> list[str]:
    """What the run says it was trained on."""
    found = []
    for holder, key in (("summary.json", "model"), ("lineage.json", "base_model")):
        file = directory / holder
        if file.is_file():
            try:
                value = json.loads(file.read_text(encoding="utf-8")).get(key)
            except (OSError, json.JSONDecodeError):
                value = None
            if value:
                found.append(str(value))
    if config.get("base_model_name_or_path"):
        found.append(str(config["base_model_name_or_path"]))
    return found


def check_base(name: str, directory: Path, config: dict[str, Any], base: str) -> None:
    """The adapter was trained on the served base (by any of its names), or a clear error."""
    recorded = recorded_bases(directory, config)
    if not recorded:
        return  # nothing recorded: PEFT's shape checks and the key check still guard the load
    served = _identities(base)
    if any(_identities(r) & served for r in recorded):
        return
    raise TunelabError(f"adapter '{name}' ({directory}) was trained on {' / '.join(dict.fromkeys(recorded))}, "
                       f"but the server's base model is {base}; serve it with --model set to its base")


def check_adapters(base: str, base_name: str, adapters: dict[str, Path]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Every adapter checked before any weights load: served name -> (its adapter directory, its config)."""
    checked: dict[str, tuple[Path, dict[str, Any]]] = {}
    for name, path in adapters.items():
        check_adapter_name(name, [base_name, *checked])
        directory = adapter_dir(path)
        config = check_mixable(name, directory)
        check_base(name, directory, config, base)
        checked[name] = (directory, config)
    return checked


def choose_template(tokenizer: Any, adapters: dict[str, Path]) -> list[str]:
    """Make the tokenizer's chat template the one the adapters were trained with; return notes to show.

    tunelab trains with the base's template, so normally nothing changes. Adapters trained with another
    template (model.chat_template in their config) are served with it, base requests too, and that is said;
    adapters that disagree with each other cannot be served together."""
    base_template = tokenizer.chat_template
    trained: dict[str, list[str]] = {}
    for name, directory in adapters.items():
        file = directory / "chat_template.jinja"
        if file.is_file():
            trained.setdefault(file.read_text(encoding="utf-8"), []).append(name)
    differing = {t: names for t, names in trained.items() if t != base_template}
    if not differing:
        return []
    if len(trained) > 1:
        groups = "; ".join(f"{', '.join(n)}: {chat_template_for_text(tokenizer, t)}" for t, n in trained.items())
        raise TunelabError(f"these adapters were trained with different chat templates ({groups}); a server renders "
                           "chats with one template, so serve them from separate servers")
    template, names = next(iter(differing.items()))
    note = (f"adapter(s) {', '.join(names)} were trained with chat template {chat_template_for_text(tokenizer, template)}, "
            f"not the base's {chat_template_for_text(tokenizer, base_template)}; chats are rendered with the "
            "adapters' training template, requests for the base model too")
    tokenizer.chat_template = template
    warnings.warn(note, stacklevel=2)
    return [note]


def chat_template_for_text(tokenizer: Any, template: str | None) -> str:
    if not template:
        return "(none)"
    saved = tokenizer.chat_template
    try:
        tokenizer.chat_template = template
        info = chat_template_for(tokenizer)
    finally:
        tokenizer.chat_template = saved
    return f"'{info.name}' (sha256 {template_sha256(template)[:12]})"
