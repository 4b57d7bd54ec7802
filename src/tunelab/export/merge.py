"""Merge a run's adapter into its base: a standard Hugging Face model directory that plain transformers loads.

    result = merge_run(Path("runs/exp"), Path("out/merged"), dtype="auto")
    AutoModelForCausalLM.from_pretrained("out/merged")        # no tunelab, no PEFT needed

What the directory holds: the merged weights (safetensors), config.json, generation_config.json whose
eos_token_id is the run template's end-of-turn token(s) (so `generate` stops where the trained model
stops), the run's tokenizer files with the exact chat template training rendered with
(chat_template.jinja, compared byte for byte after writing), and `tunelab-merge.json`: the source run,
the base model (and its public id where known), method, dtype, whether the base was dequantized, and the
parity check's verdict.

How: the base is loaded in float32 on the CPU, the adapter applied with models.adapters' checks (a
mismatched adapter is an error, never a silent no-op) and merged with PEFT's merge_and_unload (LoRA, DoRA,
IA3, ... anything that is a weight update); the sum is then cast to `dtype`. A whole-model (full
fine-tuning) run is loaded and saved the same way. Merging in float32 and casting once loses less than
merging in a low-precision dtype, where each update is rounded against the weight it is added to.

QLoRA: merging into 4-bit weights re-rounds every merged weight to 4 bits, which wipes out most of the
adapter's small update. So the adapter is merged into the base in full precision: the unquantized base
tunelab also evaluates QLoRA adapters on (export.source), and a base whose checkpoint is itself 4-bit is
dequantized first. Either way the result says so.

Prompt and prefix tuning train virtual tokens, not weights: there is nothing to merge, and the error
says what to use instead.

The output directory is written in a temporary sibling and renamed into place (tunelab.io.atomic_dir,
kind "merged-model"): a user's folder is refused, an earlier merge output is replaced only whole, and a
failure leaves nothing behind. `verify=True` (the default) runs export.verify on the finished directory
before it is moved into place and records the verdict; a failed verdict is reported, not an error.
"""

from __future__ import annotations

import gc
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import atomic_dir, check_output_dir, write_json
from ..secrets import redact_text
from .card import build_card
from .source import RunSource, load_base, public_base_id, read_run, run_tokenizer, unmergeable_error
from .verify import VerifyResult
from .verify import verify as verify_artifact

OUTPUT_KIND = "merged-model"
MANIFEST = "tunelab-merge.json"
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class MergeResult:
    out: Path
    dtype: str  # the dtype the weights were saved in
    dequantized: bool  # the base was 4-bit in training or on disk, and was merged in full precision
    verify: VerifyResult | None
    messages: list[str] = field(default_factory=list)
    source: str = ""  # the run directory
    base: str = ""
    base_public_id: str | None = None
    method: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "dtype": self.dtype, "dequantized": self.dequantized,
                "source": self.source, "base": self.base, "base_public_id": self.base_public_id,
                "method": self.method, "messages": list(self.messages),
                "verify": self.verify.to_dict() if self.verify is not None else None}


def merge_run(run_dir: Path, out: Path, *, dtype: str = "auto", verify: bool = True) -> MergeResult:
    """Write the run's merged model to `out` (see the module docstring); return what was done."""
    run_dir, out = Path(run_dir), Path(out)
    if dtype not in DTYPES:
        raise TunelabError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    source = read_run(run_dir)
    if not source.mergeable:
        raise unmergeable_error(source, "merged")
    check_output_dir(out, OUTPUT_KIND, [run_dir])  # refused before minutes of loading, not after
    result = MergeResult(out=out, dtype=dtype, dequantized=False, verify=None, source=str(run_dir),
                         base=source.base, base_public_id=public_base_id(source.base), method=source.method)
    with atomic_dir(out, kind=OUTPUT_KIND, inputs=[run_dir]) as tmp:
        _write_merged(source, tmp, result)
        if verify:
            result.verify = verify_artifact(run_dir, tmp)
            result.verify.artifact = out  # checked where it was built; it is read from `out` from now on
            result.messages.append(f"verify: {result.verify.verdict}"
                                   + (f" ({'; '.join(result.verify.reasons)})" if result.verify.reasons else ""))
        write_json(tmp / MANIFEST, _manifest(source, result))
        # the merged model's own card (base, training, comparison), so `export hub DIR` needs no --run
        (tmp / "README.md").write_text(redact_text(build_card(run_dir, kind="merged")), encoding="utf-8")
    return result


def _write_merged(source: RunSource, tmp: Path, result: MergeResult) -> None:
    import torch

    from ..models.templates import stop_token_ids

    tokenizer = run_tokenizer(source.run_dir, source.chat_template)
    model = load_base(source, "cpu")
    if _is_quantized(model):
        model = model.dequantize()
        result.dequantized = True
        result.messages.append(f"the base {source.base} is stored in 4-bit; it was dequantized to float32 "
                               "before merging, since merging into quantized weights loses quality")
    if source.kind == "adapter":
        from ..models.adapters import apply_adapter

        if source.quantized:
            result.dequantized = True
            result.messages.append(
                f"QLoRA: the adapter was trained on {source.base} quantized to 4-bit NF4; it is merged into the "
                "base in full precision (float32, the base `tunelab eval --adapter` scores it on) and not into "
                "4-bit weights, because merging into a quantized base re-rounds every merged weight to 4 bits "
                "and loses most of the adapter's update")
        model, _report = apply_adapter(model, source.run_dir, base_name=source.base, check_outputs=False)
        model = model.merge_and_unload()
        result.messages.append(f"merged the {source.peft_type} adapter of {source.run_dir} into {source.base}")
    else:
        result.messages.append(f"{source.run_dir} holds a whole fine-tuned model: saved as it is")
    chosen = _saved_dtype(source, result.dtype)
    result.dtype = chosen
    model = model.to(getattr(torch, chosen))
    stops = stop_token_ids(tokenizer)
    if stops:  # plain `generate` stops where the trained model stops
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    del model
    gc.collect()  # the merged copy is not needed while verify loads two more
    _check_template(tmp, source.chat_template)
    result.messages.append(f"wrote {chosen} weights, the run's tokenizer and its chat template")


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
                or getattr(model, "hf_quantizer", None) is not None)


def _saved_dtype(source: RunSource, dtype: str) -> str:
    """`auto`: the dtype of the base checkpoint's weights (config.json), so the merged model is as large
    and as precise as the model it came from; float32 when the checkpoint does not say."""
    if dtype != "auto":
        return dtype
    from ..models.registry import model_path

    try:
        directory = source.run_dir if source.kind == "full" else Path(model_path(source.base))
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, TunelabError):
        return "float32"
    declared = config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype")
    return declared if declared in DTYPES[1:] else "float32"


def _check_template(directory: Path, template: str) -> None:
    from transformers import AutoTokenizer

    written = AutoTokenizer.from_pretrained(str(directory)).chat_template
    if written != template:
        raise TunelabError(f"{directory}: the saved tokenizer's chat template is not the run's template; the "
                           "merged model would answer in another format (nothing was written)")


def _manifest(source: RunSource, result: MergeResult) -> dict[str, Any]:
    from .. import __version__
    from ..models.templates import template_sha256

    return {
        "kind": OUTPUT_KIND,
        "source_run": str(source.run_dir.resolve()),
        "base": source.base,
        "base_public_id": result.base_public_id,
        "method": source.method,
        "peft_type": source.peft_type,
        "dtype": result.dtype,
        "dequantized": result.dequantized,
        "chat_template_sha256": template_sha256(source.chat_template),
        "verify": None if result.verify is None else {
            "verdict": result.verify.verdict, "reasons": result.verify.reasons,
            "agreement": result.verify.agreement, "max_logit_diff": result.verify.max_logit_diff,
            "precision": result.verify.precision, "tolerance": result.verify.tolerance},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tunelab_version": __version__,
    }
