"""Fine-tuning methods, picked by name: full, lora, dora, qlora, ia3, prompt, prefix.

Each method's registry entry (`METHODS`) holds every fact the other stages read about it, so a new method
is one entry here (plus its test; tests/train/test_methods.py checks the entries are complete and that
config.MethodConfig accepts exactly these names): how the base model is loaded (qlora: 4-bit NF4 through
bitsandbytes, which trains on CPU as well as CUDA since bitsandbytes 0.49) and in which dtype, how it is
adapted (PEFT 0.21 for everything but full), which micro-batch layout it can use (PEFT's prompt and
prefix tuning drop position ids, so they cannot train on packed rows), whether the result is saved as a
PEFT adapter or as a whole model and whether it can be merged into plain weights, which settings make two
adapters the same shape (stages.py), its memory model (models/memory.py) and its suggested learning
rate (plan.py).

"all-linear" target modules are resolved here, per architecture, to the names of the Linear layers
inside the decoder (the output layer excluded), so the resolved list is recorded in the run summary.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import MethodConfig
from ..errors import TunelabError
from ..models.memory import FULL, LORA, QLORA, MemoryModel

# PEFT 0.21 reads transformers' deprecated `is_gradient_checkpointing` when it wraps a model; the
# FutureWarning is about PEFT's code, not the user's, and would print on every training run.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    adapter: bool  # saved as a PEFT adapter (else the whole model in safetensors)
    packing: bool  # can train on packed rows (position ids restart per example)
    quantized: bool  # the base's linear layers load in 4-bit NF4 (which FSDP cannot shard)
    apply: Callable[[nn.Module, MethodConfig], nn.Module]
    lora_family: bool  # LoRA adapters (method.r, method.alpha) on the resolved target modules
    shape_keys: tuple[str, ...]  # the settings that make two adapters the same shape (one can continue the other)
    mergeable: bool  # the result is, or merges into, plain weights (a soft prompt or prefix does not)
    auto_dtype: str | None  # the weight dtype when model.dtype is auto (None: the loader's default)
    memory: MemoryModel | None  # its training-memory model (None: not estimated)
    suggest_lr: Callable[[int], tuple[float, str]]  # (lr, reason) for a model of n parameters


# -- target modules -----------------------------------------------------------------------------------


def _output_layer(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if callable(get) else None


def linear_module_names(model: nn.Module) -> list[str]:
    """Leaf names of every Linear (including bitsandbytes' 4-bit Linear) except the output layer."""
    head = _output_layer(model)
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module is not head and name
    }
    if not names:
        raise TunelabError("the model has no Linear layers to adapt; pick method.name: full")
    return sorted(names)


def resolve_targets(model: nn.Module, cfg: MethodConfig) -> list[str]:
    """The module names a LoRA-family method adapts; an unknown name is an error naming the valid ones."""
    available = linear_module_names(model)
    if cfg.target_modules == "all-linear":
        return available
    missing = [t for t in cfg.target_modules if t not in available]
    if missing:
        raise TunelabError(
            f"method.target_modules: {', '.join(missing)} not found in this model; its linear layers are "
            f"{', '.join(available)} (or use all-linear)"
        )
    return list(cfg.target_modules)


def _ia3_targets(model: nn.Module, cfg: MethodConfig) -> tuple[list[str], list[str]]:
    """(target, feed-forward) modules for IA3. With all-linear we follow the IA3 paper as PEFT encodes it
    per architecture (keys, values and the FFN input); unknown architectures scale every linear layer,
    treating layers that shrink their input (down projections) as feed-forward."""
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF_MAP,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGET_MAP,
    )

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if cfg.target_modules == "all-linear" and model_type in TARGET_MAP and model_type in FF_MAP:
        return list(TARGET_MAP[model_type]), list(FF_MAP[model_type])
    targets = resolve_targets(model, cfg)
    head = _output_layer(model)
    shrink = {
        name.rsplit(".", 1)[-1]
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not head and m.in_features > m.out_features
    }
    return targets, [t for t in targets if t in shrink]


# -- appliers -----------------------------------------------------------------------------------------


def _lora(model: nn.Module, cfg: MethodConfig, *, dora: bool = False) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=resolve_targets(model, cfg),
        use_dora=dora,
        bias="none",
    )
    return get_peft_model(model, peft_cfg)


def _qlora(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import prepare_model_for_kbit_training

    # Gradient checkpointing does not pay below ~1B parameters on CPU; keep it off.
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return _lora(model, cfg)


def _ia3(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import IA3Config, get_peft_model

    targets, feedforward = _ia3_targets(model, cfg)
    return get_peft_model(
        model, IA3Config(task_type="CAUSAL_LM", target_modules=targets, feedforward_modules=feedforward)
    )


def _prompt(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    # Initialising the soft prompt from real token embeddings trains much better than random vectors.
    peft_cfg = PromptTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
    )
    return get_peft_model(model, peft_cfg)


def _prefix(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=cfg.num_virtual_tokens))


def _full(model: nn.Module, cfg: MethodConfig) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


# -- suggested learning rates (rules of thumb, see plan.py) -------------------------------------------


def _full_lr(n_params: int) -> tuple[float, str]:
    lr = 2e-5 if n_params < 1e9 else 1e-5 if n_params < 7e9 else 5e-6
    return lr, f"full fine-tuning of a {n_params / 1e6:,.0f}M-parameter model: {lr:g} keeps it from " \
               "forgetting what it knew (larger models want smaller steps)"


def _lora_lr(n_params: int) -> tuple[float, str]:
    lr = 2e-4 if n_params <= 13e9 else 1e-4
    return lr, f"LoRA-family adapters train well at {lr:g} for a {n_params / 1e6:,.0f}M-parameter model " \
               "(QLoRA paper: 2e-4 up to 13B, 1e-4 above)"


def _fixed_lr(lr: float, reason: str) -> Callable[[int], tuple[float, str]]:
    return lambda _n_params: (lr, reason)


_LORA_SHAPE = ("r", "alpha", "target_modules")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("full", "every weight trained; saved as a whole model", False, True, False, _full,
               lora_family=False, shape_keys=(), mergeable=True,
               auto_dtype="float32",  # full fine-tuning keeps fp32 master weights; autocast does the fast math
               memory=FULL, suggest_lr=_full_lr),
        Method("lora", "low-rank adapters on the linear layers", True, True, False, _lora,
               lora_family=True, shape_keys=_LORA_SHAPE, mergeable=True, auto_dtype=None, memory=LORA,
               suggest_lr=_lora_lr),
        Method("dora", "weight-decomposed LoRA (magnitude + direction)", True, True, False,
               lambda model, cfg: _lora(model, cfg, dora=True),
               lora_family=True, shape_keys=_LORA_SHAPE, mergeable=True, auto_dtype=None, memory=None,
               suggest_lr=_lora_lr),
        Method("qlora", "LoRA on a 4-bit NF4 base (bitsandbytes)", True, True, True, _qlora,
               lora_family=True, shape_keys=_LORA_SHAPE, mergeable=True, auto_dtype=None, memory=QLORA,
               suggest_lr=_lora_lr),
        Method("ia3", "learned rescaling vectors on keys, values and FFN", True, True, False, _ia3,
               lora_family=False, shape_keys=("target_modules",), mergeable=True, auto_dtype=None, memory=None,
               suggest_lr=_fixed_lr(3e-3, "IA3 scaling vectors need a high lr (IA3 paper: 3e-3)")),
        Method("prompt", "a trained soft prompt prepended to every input", True, False, False, _prompt,
               lora_family=False, shape_keys=("num_virtual_tokens",), mergeable=False, auto_dtype=None,
               memory=None, suggest_lr=_fixed_lr(3e-2, "soft prompts need a very high lr (PEFT prompt-tuning "
                                                       "examples: 3e-2)")),
        Method("prefix", "trained key/value prefixes in every layer", True, False, False, _prefix,
               lora_family=False, shape_keys=("num_virtual_tokens",), mergeable=False, auto_dtype=None,
               memory=None, suggest_lr=_fixed_lr(1e-2, "prefix parameters need a high lr (PEFT prefix-tuning "
                                                       "examples: 1e-2)")),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise TunelabError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def virtual_tokens(model: nn.Module) -> int:
    """Positions prompt tuning prepends to the hidden states (0 for every other method)."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and str(getattr(peft_cfg, "peft_type", "")).endswith("PROMPT_TUNING"):
        return int(peft_cfg.num_virtual_tokens)
    return 0


# -- parameters ---------------------------------------------------------------------------------------


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def param_groups(model: nn.Module, lr: float, weight_decay: float, embedding_lr: float | None) -> list[dict]:
    """Optimizer groups: no weight decay on vectors (norms, biases, IA3/DoRA scales); embeddings at their
    own lr when method.embedding_lr is set."""
    embeddings: set[int] = set()
    if embedding_lr is not None:
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        for module in (causal.get_input_embeddings(), causal.get_output_embeddings()):
            if module is not None and getattr(module, "weight", None) is not None:
                embeddings.add(id(module.weight))
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in trainable_parameters(model).values():
        group_lr = embedding_lr if id(p) in embeddings else lr
        decay = weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((group_lr, decay), []).append(p)
    return [{"params": ps, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), ps in groups.items()]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    embedding_lr: float | None) -> torch.optim.Optimizer:
    """AdamW, fused where this torch build has a fused kernel for the device, else foreach."""
    groups = param_groups(model, lr, weight_decay, embedding_lr)
    if not groups:
        raise TunelabError("the method left no trainable parameters; check method.target_modules")
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)
