"""Convert a GGUF file once into a plain safetensors model directory that training can use.

transformers loads a GGUF by dequantising it, but a model loaded that way keeps a GGUF quantizer
attached: `save_pretrained` refuses to write it and the Trainer refuses to train it. So the model is
loaded with `GgufConfig(dequantize=True)` (plain nn.Linear layers), the quantizer and its config are
detached, and the weights are written as safetensors next to the tokenizer, which carries the chat
template that training and serving will share (see templates.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from .gguf_meta import HF_ARCHITECTURES, GgufHeader, read_gguf_header
from .templates import ensure_chat_template, stop_token_ids

StageCallback = Callable[[str, int | None, int | None], None]  # (stage, done, total)

SAVE_DTYPES = ("float32", "bfloat16", "float16")


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_progress(on_stage: StageCallback | None) -> Iterator[None]:
    """Route transformers' per-tensor tqdm bar for GGUF dequantisation to `on_stage` instead of stderr,
    and silence its other bars while converting.

    The bars would otherwise tear through the CLI's spinner. If transformers moves the dequantisation
    bar, this leaves it alone and it prints as before.
    """
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return

    def reporting(iterable, desc=None, **_kwargs):
        items = list(iterable)
        for i, item in enumerate(items):
            if on_stage is not None:
                on_stage("dequantizing weights", i, len(items))
            yield item
        if on_stage is not None:
            on_stage("dequantizing weights", len(items), len(items))

    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" / "Writing model shards": same reason
    gguf_utils.tqdm = reporting
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _detach_quantizer(model) -> None:
    """Make a dequantised GGUF model an ordinary one, so save_pretrained and Trainer accept it."""
    for attr in ("hf_quantizer", "quantization_method"):
        if hasattr(model, attr):
            with contextlib.suppress(AttributeError):
                delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _stage(on_stage: StageCallback | None, text: str) -> None:
    if on_stage is not None:
        on_stage(text, None, None)


def _load_dequantized(gguf_path: Path, header: GgufHeader, dtype: str, on_stage: StageCallback | None):
    """(tokenizer with its chat template, template info, plain dequantised model) from a GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _stage(on_stage, "loading tokenizer")
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        template = ensure_chat_template(tokenizer)
        context = header.arch_value("context_length")
        if context:
            # the GGUF gives no limit, so transformers would report ~1e30 and never warn on overflow
            tokenizer.model_max_length = int(context)
        _stage(on_stage, "dequantizing weights")
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=getattr(torch, dtype), quantization_config=GgufConfig(dequantize=True)
        )
    except (OSError, ValueError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise TunelabError(f"{gguf_path}: transformers could not load this GGUF ({exc})") from exc
    _detach_quantizer(model)

    # Generation must stop where the template ends a turn, or served models ramble on.
    stops = stop_token_ids(tokenizer)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if tokenizer.pad_token_id is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, template, model


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    on_stage: StageCallback | None = None,
) -> dict[str, Any]:
    """Write `out_dir` (which must exist and be empty) from `gguf_path`; return the facts for provenance.

    dtype is the dtype of the saved weights. float32 is the default because the dequantised values
    are exact in float32; bfloat16 halves the size at a small rounding cost.
    """
    if dtype not in SAVE_DTYPES:
        raise TunelabError(f"cannot save weights as '{dtype}'; choose one of {', '.join(SAVE_DTYPES)}")
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    started = time.perf_counter()
    header = read_gguf_header(gguf_path)
    if header.architecture not in HF_ARCHITECTURES:
        raise TunelabError(
            f"{gguf_path}: GGUF architecture '{header.architecture}' is not one tunelab knows how to convert "
            f"(known: {', '.join(sorted(HF_ARCHITECTURES))})"
        )
    _stage(on_stage, "checksumming GGUF")
    sha = sha256_file(gguf_path)

    with _quiet_progress(on_stage):
        tokenizer, template, model = _load_dequantized(gguf_path, header, dtype, on_stage)
        _stage(on_stage, "saving safetensors")
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
    if not list(out_dir.glob("*.safetensors")):
        raise TunelabError(f"conversion of {gguf_path} wrote no safetensors file to {out_dir}")

    n_params = sum(p.numel() for p in model.parameters())
    return {
        "gguf_sha256": sha,
        "gguf_file": gguf_path.name,
        "gguf_architecture": header.architecture,
        "gguf_file_type": header.metadata.get("general.file_type"),
        "gguf_licence": header.metadata.get("general.license"),
        "gguf_model_name": header.metadata.get("general.name"),
        "architecture": type(model).__name__,
        "model_type": model.config.model_type,
        "n_params": n_params,
        "dtype": dtype,
        "template": template,
        "convert_seconds": round(time.perf_counter() - started, 1),
    }
