"""What a training run directory holds, read for export, and the trained model loaded back from it.

    source = read_run(Path("runs/exp"))          # base, method, adapter or whole model, chat template
    model, tokenizer = load_trained(source)      # base + adapter exactly as `tunelab eval --adapter` scores it

The base is the `model.name` training loaded (config.resolved.yaml), not adapter_config.json's
`base_model_name_or_path`, which may be a public id for the Hub rather than something loadable here.
The tokenizer and chat template are the run's own (the files training saved), so a template given with
`model.chat_template` is the one export carries, not the base model's.

A QLoRA adapter was trained on the base quantized to 4-bit NF4, but tunelab evaluates it on the base in
full precision (models.adapters, compare), so that is "the trained model" here too: the merged export
reproduces the model whose scores were reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TunelabError

# PEFT methods whose result is not a weight update: a soft prompt or per-layer prefixes are extra inputs
PROMPT_LEARNING = ("PROMPT_TUNING", "PREFIX_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT")


@dataclass(frozen=True)
class RunSource:
    run_dir: Path
    base: str  # the model.name training loaded
    method: str  # method.name
    kind: str  # "adapter" (PEFT adapter on `base`) | "full" (a whole model in run_dir)
    peft_type: str | None
    chat_template: str  # the exact text training rendered with

    @property
    def quantized(self) -> bool:
        """Trained on a 4-bit base (QLoRA)."""
        from ..train.methods import METHODS

        method = METHODS.get(self.method)
        return bool(method and method.quantized and self.kind == "adapter")

    @property
    def mergeable(self) -> bool:
        return self.kind == "full" or (self.peft_type or "").upper() not in PROMPT_LEARNING


def read_run(run_dir: str | Path) -> RunSource:
    """The facts export needs from a `tunelab train` run directory; a TunelabError names what is missing."""
    import yaml

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TunelabError(f"{run_dir}: no such run directory (give the directory `tunelab train` wrote)")
    config_file = run_dir / "config.resolved.yaml"
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TunelabError(f"{run_dir}: no config.resolved.yaml, so this is not a run directory written by "
                           "`tunelab train`") from None
    except (OSError, yaml.YAMLError) as exc:
        raise TunelabError(f"{config_file}: not readable YAML ({exc})") from None
    base = ((config or {}).get("model") or {}).get("name") if isinstance(config, dict) else None
    if not base:
        raise TunelabError(f"{config_file}: model.name is missing, so the base model is unknown")
    method = str(((config or {}).get("method") or {}).get("name") or "")
    peft_type = None
    if (run_dir / "adapter_config.json").is_file():
        from ..models.adapters import read_adapter_config

        kind, peft_type = "adapter", read_adapter_config(run_dir).get("peft_type")
    elif (run_dir / "config.json").is_file() and any(run_dir.glob("*.safetensors")):
        kind = "full"
    else:
        raise TunelabError(f"{run_dir}: neither a PEFT adapter (adapter_config.json) nor a whole model "
                           "(config.json + safetensors); has training finished?")
    return RunSource(run_dir, str(base), method, kind, peft_type, _run_template(run_dir))


def _run_template(run_dir: Path) -> str:
    file = run_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = getattr(run_tokenizer(run_dir), "chat_template", None)
    if not isinstance(template, str) or not template:
        raise TunelabError(f"{run_dir}: no chat_template.jinja and no chat template in its tokenizer files, so "
                           "the template training used is unknown")
    return template


def run_tokenizer(run_dir: Path, template: str | None = None) -> Any:
    """The tokenizer training saved into the run (with `template` set when given)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(run_dir))
    except (OSError, ValueError) as exc:
        raise TunelabError(f"{run_dir}: cannot load the run's tokenizer ({exc})") from None
    if template is not None:
        tokenizer.chat_template = template
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # as models.loading does: padded positions are masked
    return tokenizer


def unmergeable_error(source: RunSource, what: str) -> TunelabError:
    return TunelabError(
        f"{source.run_dir}: a {source.peft_type} adapter ({source.method or 'prompt learning'}) cannot be {what}: "
        "it adds trained virtual tokens to every input instead of changing weights, so there is no merged model. "
        f"Use the adapter as it is: serve it with `tunelab serve --model {source.base} --adapter NAME="
        f"{source.run_dir}`, or score it with `tunelab eval --model {source.base} --adapter {source.run_dir}`"
    )


def load_base(source: RunSource, device: str = "cpu") -> Any:
    """The run's base in float32 (a whole-model run: the trained model itself)."""
    from ..models.loading import load_model

    name = str(source.run_dir) if source.kind == "full" else source.base
    return load_model(name, dtype="float32", device=device)


def load_trained(source: RunSource, device: str = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer): the trained model in float32 as evaluation scores it, the adapter applied with
    models.adapters' checks, generation stopping on the run template's end-of-turn token(s)."""
    from ..models.adapters import apply_adapter
    from ..models.templates import stop_token_ids

    if not source.mergeable:
        raise unmergeable_error(source, "compared with an exported model")
    tokenizer = run_tokenizer(source.run_dir, source.chat_template)
    model = load_base(source, device)
    if source.kind == "adapter":
        model, _report = apply_adapter(model, source.run_dir, base_name=source.base, check_outputs=False)
    stops = stop_token_ids(tokenizer)
    if stops:
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    model.eval()
    return model, tokenizer


def public_base_id(base: str) -> str | None:
    """The base's public Hugging Face id (models.public's rules), or None when it is only a path here."""
    from ..models.public import public_base

    found = public_base(base)
    return found.id if found.on_hub else None
