"""Apply a PEFT adapter to a base model and prove it loaded: never score a no-op adapter as "tuned".

    model, tokenizer, report = load_with_adapter("smollm2-135m-instruct", Path("runs/exp/train"))
    peft_model, report = apply_adapter(base_model, adapter_dir, base_name="smollm2-135m-instruct")

Three ways an adapter goes wrong, and what happens here:
- It was trained on another model (other architecture, other hidden size): PEFT or torch raise
  (missing target modules, size mismatch); that becomes a TunelabError naming the adapter, the base
  and the base the adapter records it was trained on.
- Its weights do not reach the model: the names in adapter_model.safetensors do not match the base's
  modules (renamed keys, another model family with the same module names), so PEFT loads nothing for
  them and only warns; the model then scores exactly like the base. The file's tensor names are
  compared with the names the adapted model expects; any weight that goes nowhere, or any expected
  weight missing from the file, is an error.
- It loads but changes nothing: one forward pass on a few tokens with the adapter on and off; identical
  logits get a warning in the report. All-zero LoRA B matrices (a LoRA that was never trained, since
  PEFT initialises B to zero) are named as the reason when that is the case: legitimate, but it scores
  like the base model.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelabError

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."


@dataclass
class AdapterReport:
    adapter: str
    base: str
    peft_type: str | None
    trained_on: str | None  # base_model_name_or_path recorded in adapter_config.json
    tensors: int
    changes_outputs: bool
    max_logit_change: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    file = adapter / "adapter_config.json"
    if not file.is_file():
        raise TunelabError(f"{adapter}: no adapter_config.json; is it a run directory written by `tunelab train`?")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TunelabError(f"{file}: not readable JSON ({exc})") from None


def adapter_tensors(adapter: Path) -> dict[str, Any]:
    """The adapter file's tensors by name (safetensors preferred, as PEFT does)."""
    for name in WEIGHT_FILES:
        file = adapter / name
        if not file.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(str(file))
            import torch

            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise TunelabError(f"{file}: cannot read the adapter weights ({exc})") from None
    raise TunelabError(f"{adapter}: no adapter weights ({' or '.join(WEIGHT_FILES)})")


def apply_adapter(model: Any, adapter: str | Path, *, base_name: str, check_outputs: bool = True,
                  adapter_name: str = "default") -> tuple[Any, AdapterReport]:
    """`model` wrapped by the PEFT adapter at `adapter`, after the checks in the module docstring.

    When `model` is already a PeftModel the adapter is added to it as `adapter_name` (several adapters on
    one base, as the server serves them); the active adapter is then `adapter_name`."""
    from peft import PeftModel

    adapter = Path(adapter)
    config = read_adapter_config(adapter)
    trained_on = config.get("base_model_name_or_path")
    file_tensors = adapter_tensors(adapter)
    recorded = f" (the adapter records it was trained on {trained_on})" if trained_on else ""
    try:
        with warnings.catch_warnings():
            # PEFT only warns about missing keys; _check_keys below makes that an error with the names.
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            if isinstance(model, PeftModel):
                model.load_adapter(str(adapter), adapter_name=adapter_name)
                model.set_adapter(adapter_name)
                peft_model = model
            else:
                peft_model = PeftModel.from_pretrained(model, str(adapter), adapter_name=adapter_name)
    except Exception as exc:  # shape or architecture mismatch from PEFT/torch
        detail = " ".join(str(exc).split())
        if len(detail) > 600:
            detail = detail[:600] + " ..."
        raise TunelabError(f"adapter {adapter} does not fit base model {base_name}{recorded}: {detail}") from None
    peft_model.eval()
    _check_keys(peft_model, file_tensors, adapter, base_name, recorded, adapter_name)
    report = AdapterReport(
        adapter=str(adapter), base=base_name, peft_type=config.get("peft_type"), trained_on=trained_on,
        tensors=len(file_tensors), changes_outputs=True, max_logit_change=float("nan"),
    )
    if check_outputs:
        change = _output_change(peft_model)
        report.max_logit_change = change
        report.changes_outputs = change > 0
        if change == 0:
            report.warnings.append(_no_change_message(adapter, file_tensors))
    return peft_model, report


def _check_keys(peft_model: Any, file_tensors: dict[str, Any], adapter: Path, base_name: str, recorded: str,
                adapter_name: str = "default") -> None:
    from peft import get_peft_model_state_dict

    expected = set(get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False))
    loaded = set(file_tensors)
    base_params = {k for k, _ in peft_model.get_base_model().named_parameters()}
    # Whole layers saved next to the adapter (resized embeddings, modules_to_save) go into base modules.
    unexpected = sorted(k for k in loaded - expected if k.removeprefix(PEFT_PREFIX) not in base_params)
    missing = sorted(expected - loaded)
    if not unexpected and not missing:
        return
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} of the {len(loaded)} tensors in the adapter file match no module of the "
                     f"base (e.g. '{unexpected[0]}')")
    if missing:
        parts.append(f"{len(missing)} adapter weights the base model needs are not in the file "
                     f"(e.g. '{missing[0]}')")
    raise TunelabError(
        f"adapter {adapter} did not load into base model {base_name}{recorded}: {'; '.join(parts)}. PEFT would "
        "leave those weights at their initial values, so the model would score like the base model. Was the "
        "adapter trained on another model, or were its tensor names changed?"
    )


def _output_change(peft_model: Any) -> float:
    """Largest absolute difference of the last position's logits with the adapter on and off."""
    import torch

    config = peft_model.get_base_model().config
    vocab = int(getattr(config, "vocab_size", 0) or 2)
    device = next(peft_model.parameters()).device
    ids = (torch.arange(3, 11, device=device) % vocab)[None]
    with torch.inference_mode():
        on = peft_model(input_ids=ids).logits[:, -1].float()
        with peft_model.disable_adapter():
            off = peft_model(input_ids=ids).logits[:, -1].float()
    return float((on - off).abs().max())


def _no_change_message(adapter: Path, tensors: dict[str, Any]) -> str:
    b_mats = [t for k, t in tensors.items() if "lora_B" in k]
    if b_mats and all(not t.any() for t in b_mats):
        return (f"adapter {adapter}: every LoRA B matrix is exactly zero, so the adapter is untrained (PEFT "
                "initialises B to zero) and the model scores exactly like the base model")
    return f"adapter {adapter} loaded but does not change the model's outputs; it scores like the base model"


def load_with_adapter(
    model_name: str, adapter: str | Path | None, *, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any, AdapterReport | None]:
    """The base model and tokenizer, with the adapter applied and checked when one is given."""
    from .loading import load_model_and_tokenizer

    if adapter is not None:
        read_adapter_config(Path(adapter))  # fail before loading the base model
    model, tokenizer = load_model_and_tokenizer(model_name, dtype=dtype, device=device)
    if adapter is None:
        return model, tokenizer, None
    model, report = apply_adapter(model, adapter, base_name=str(model_name))
    return model, tokenizer, report
