"""Load a tokenizer and a model by any name `resolve` accepts, on the device and dtype asked for.

The one place a causal LM is loaded: plain, with 4-bit NF4 linear layers (`quantization="nf4"`), with a
PEFT adapter on top (`load_adapter`) or with an adapter merged into its weights (`merge_adapter`).

GPU paths exist for users with GPUs; where the hardware is missing they fail with a message that says
what was asked and what is there, never by silently running somewhere else.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..errors import TunelabError
from .hardware import bf16_pays, cuda_info
from .registry import ModelRef, model_path, resolve
from .templates import ensure_chat_template, stop_token_ids

DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("nf4",)


def resolve_device(device: str = "auto") -> str:
    """"cpu", "cuda", "cuda:N", "mps" or "auto" (cuda when available, else cpu) -> a torch device string.

    The one place a device setting becomes a device: training, the comparison, `tunelab eval`, the judge
    and local teachers all call it, so `auto` means the same GPU (or CPU) everywhere."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
            raise TunelabError(
                f"device '{device}' was requested but no CUDA GPU is available (torch {torch.__version__}, "
                f"{build}); use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise TunelabError(
                f"device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise TunelabError("device 'mps' was requested but Apple MPS is not available here; use --device cpu")
        return device
    raise TunelabError(f"unknown device '{device}'; use cpu, cuda, cuda:N, mps or auto")


def resolve_dtype(dtype: str = "auto", device: str = "cpu") -> str:
    """Pick the weight dtype. "auto": float32 on CPU (training-safe; autocast is the trainer's choice),
    bfloat16 on GPUs that support it, float16 on older GPUs. Impossible requests are errors."""
    dtype = (dtype or "auto").strip().lower()
    if dtype not in DTYPES:
        raise TunelabError(f"unknown dtype '{dtype}'; use one of {', '.join(DTYPES)}")
    on_cuda = device.startswith("cuda")
    if dtype == "auto":
        if on_cuda:
            return "bfloat16" if cuda_info()["bf16"] else "float16"
        return "float32"
    if dtype == "bfloat16":
        if on_cuda and not cuda_info()["bf16"]:
            raise TunelabError("bfloat16 was requested but this GPU has no bf16 support (needs compute "
                               "capability 8.0+); use --dtype float16 or float32")
        if not on_cuda:
            pays, why = bf16_pays("cpu")
            if not pays:
                warnings.warn(f"bfloat16 on this CPU will be slow: {why}", stacklevel=2)
    if dtype == "float16" and device == "cpu":
        warnings.warn("float16 on CPU is slow and numerically fragile; prefer float32", stacklevel=2)
    return dtype


def runtime_identity(dtype: str = "auto", device: str = "cpu") -> dict[str, str]:
    """The device kind and weight dtype a model loads with here. Cache keys hold both: the same weights
    answer differently in another dtype or on another kind of device."""
    target = resolve_device(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a slow-dtype warning belongs to loading, not to computing a key
        chosen = resolve_dtype(dtype, target)
    return {"device": target.split(":")[0], "dtype": chosen}


def load_tokenizer(name_or_path: str | os.PathLike | ModelRef, ensure_template: bool = True):
    """The model's tokenizer, with its chat template (the declared default where it has none)."""
    from transformers import AutoTokenizer

    path = model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise TunelabError(f"cannot load a tokenizer from {path}: {exc}") from exc
    if ensure_template:
        ensure_chat_template(tokenizer)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # batching needs a pad token; padded positions are masked, so reusing eos is harmless
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(kind: str = "nf4") -> Any:
    """4-bit NF4 with fp32 compute (bf16 compute only pays where bf16 matmuls do)."""
    import torch

    if kind not in QUANTIZATIONS:
        raise TunelabError(f"unknown quantization '{kind}'; use one of {', '.join(QUANTIZATIONS)}")
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise TunelabError(
            "method qlora needs bitsandbytes (0.49 or later, which runs 4-bit on CPU too): "
            "pip install 'bitsandbytes>=0.49'"
        ) from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )


def load_model(
    name_or_path: str | os.PathLike | ModelRef,
    dtype: str = "auto",
    device: str = "auto",
    quantization: str | None = None,
    **from_pretrained_kwargs: Any,
):
    """The causal LM in `dtype` on `device` (pulling and converting a GGUF first if needed).

    quantization "nf4": the linear layers in 4-bit NF4 (bitsandbytes, placed on `device` as they load);
    the other layers keep the checkpoint's dtype, since PEFT's k-bit preparation upcasts them (`dtype`
    is not applied)."""
    import torch
    from transformers import AutoModelForCausalLM

    ref = name_or_path if isinstance(name_or_path, ModelRef) else resolve(name_or_path)
    target = resolve_device(device)
    chosen = resolve_dtype(dtype, target) if quantization is None else None
    path = model_path(ref)
    if quantization is not None:
        kwargs = {"quantization_config": quantization_config(quantization), "device_map": target}
    else:
        kwargs = {"dtype": getattr(torch, chosen)}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs, **from_pretrained_kwargs)
    except (OSError, ValueError) as exc:
        raise TunelabError(f"cannot load a causal language model from {path}: {exc}") from exc
    if target != "cpu" and quantization is None:
        model.to(target)
    return model


def load_adapter(model: Any, adapter_dir: str | os.PathLike) -> Any:
    """`model` wrapped by the PEFT adapter saved in `adapter_dir`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir))


def merge_adapter(base: str | os.PathLike | ModelRef, adapter_dir: str | os.PathLike) -> Any:
    """The adapter merged into an unquantized fp32 copy of its base on the CPU (PEFT merge_and_unload;
    a QLoRA adapter merges into the unquantized base)."""
    return load_adapter(load_model(base, dtype="float32", device="cpu"), adapter_dir).merge_and_unload()


def load_model_and_tokenizer(
    name_or_path: str | os.PathLike | ModelRef, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any]:
    """Both, with the model's generation config stopping on the template's end-of-turn token(s)."""
    ref = name_or_path if isinstance(name_or_path, ModelRef) else resolve(name_or_path)
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, dtype=dtype, device=device)
    stops = stop_token_ids(tokenizer)
    if stops:
        model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
