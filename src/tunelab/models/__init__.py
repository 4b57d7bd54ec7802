"""The model registry: bundled offline models, the GGUF -> safetensors cache, loading, chat templates,
hardware detection and memory estimates; and the services every stage uses on a loaded model:
batched text generation (models.generate) and checked PEFT adapter loading (models.adapters).

Importing this package is cheap: torch and transformers are imported only by the functions that
need them (generate and adapters are imported from their modules, not from here, for that reason).

    ref = resolve("gemma3-270m")          # bundled name | model dir | .gguf path | org/name
    path = pull("gemma3-270m")            # converts the GGUF once into ~/.cache/tunelab/models
    model, tok = load_model_and_tokenizer("smollm2-135m-instruct", dtype="auto", device="cpu")
    template_info(tok)                    # {"name", "source", "sha256", "eos_token", "stop_tokens"}
"""

from .bundled import BUNDLED, BundledModel, find_bundled
from .hardware import bf16_pays, cpu_features, cuda_info, hardware_summary, physical_cores
from .info import list_models, model_info
from .loading import (
    load_model,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from .memory import ArchShape, estimate_all_methods, estimate_training_memory
from .registry import ModelRef, is_pulled, model_path, pull, read_provenance, resolve
from .templates import ensure_chat_template, generation_header, stop_token_ids, template_info

__all__ = [
    "BUNDLED",
    "ArchShape",
    "BundledModel",
    "ModelRef",
    "bf16_pays",
    "cpu_features",
    "cuda_info",
    "ensure_chat_template",
    "estimate_all_methods",
    "estimate_training_memory",
    "find_bundled",
    "generation_header",
    "hardware_summary",
    "is_pulled",
    "list_models",
    "load_model",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "model_info",
    "model_path",
    "physical_cores",
    "pull",
    "read_provenance",
    "resolve",
    "resolve_device",
    "resolve_dtype",
    "stop_token_ids",
    "template_info",
]
