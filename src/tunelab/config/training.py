"""Config sections of preparing data and training: model, data, method, train, mixture and stages."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, WrapSerializer, WrapValidator, field_validator, model_validator

from .base import Section
from .grpo import GrpoConfig, RewardConfig
from .preference import PreferenceConfig
from .ragcontext import RagContextConfig

AUTO = "auto"


def _pass_auto(value: Any, handler: Any) -> Any:
    return value if value == AUTO else handler(value)


def Auto(inner: Any) -> Any:  # noqa: N802 - a type constructor, named like one
    """A field type that takes `inner`'s values or "auto": the value is then chosen from the data's size
    and the method by the rules in tunelab.train.auto, and recorded with its reason. "auto" skips the
    inner type's checks, so a bad number is reported against the number's bounds alone."""
    return Annotated[inner, WrapValidator(_pass_auto), WrapSerializer(_pass_auto)]


# --------------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    name: str = Field("smollm2-135m-instruct", description="Bundled name, Hugging Face id, local dir or .gguf file.")
    chat_template: str | None = Field(
        None, description="Override the chat template: a path to a Jinja file. Default: the model's own, or "
        "tunelab's declared default for base models without one."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto picks bf16 only where it pays (avx512_bf16/AMX CPU, or GPU)."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"


# ---------------------------------------------------------------------------------------------- data
class CleanConfig(Section):
    normalize: Literal["NFC", "NFKC", "none"] = Field("NFC", description="Unicode normalisation form.")
    strip_html: bool = False
    min_chars: int = Field(1, ge=0, description="Drop records whose texts total fewer characters.")
    max_chars: int | None = Field(None, gt=0, description="Drop records whose texts total more characters.")


class SplitConfig(Section):
    train: float | None = Field(None, ge=0, le=1, description="Default: what validation and test leave.")
    validation: Auto(Annotated[float, Field(ge=0, le=1)]) = Field(
        AUTO, description="The share held out for validation loss; auto: none for small sets (they need "
        "every pair), a small share for large ones (tunelab.train.auto). Giving train alone implies it."
    )
    test: float = Field(0.0, ge=0, le=1)
    stratify: bool | None = Field(None, description="Keep label proportions; default: on for labelled data.")
    group_by: str | None = Field(None, description="A record field (e.g. source) whose groups stay in one split.")

    @model_validator(mode="before")
    @classmethod
    def _implied(cls, data: Any) -> Any:
        """{train: 0.9} means validation 0.1 (the rest), and {validation: 0.1} means train 0.9: a share the
        user fixed by giving the others is theirs, not auto's."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        test = data.get("test", 0.0)
        numbers = all(isinstance(v, int | float) for v in (data.get("train", 0.0), test))
        if data.get("validation", AUTO) == AUTO and data.get("train") is not None and numbers:
            if data["train"] + test > 1.0 + 1e-6:
                raise ValueError(f"split ratios must sum to 1, got {data['train'] + test:g} without validation")
            data["validation"] = round(1.0 - data["train"] - test, 10)
        elif data.get("train") is None and isinstance(data.get("validation"), int | float) and numbers:
            data["train"] = round(1.0 - data["validation"] - test, 10)
        return data

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        if self.validation == AUTO:
            return self
        if self.train is None:
            if self.validation + self.test > 1.0 + 1e-6:
                raise ValueError(f"split ratios must sum to 1, got {self.validation + self.test:g} without train")
            return self
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:g}")
        return self

    def ratios(self) -> dict[str, float]:
        if self.validation == AUTO:
            from ..errors import TunelabError

            raise TunelabError("data.split.validation is auto: the share is chosen from the record count when "
                               "training prepares the data (tunelab.train.auto); give a number to prepare here")
        return {"train": 1.0 - self.validation - self.test if self.train is None else self.train,
                "validation": self.validation, "test": self.test}


# The record fields a data.fields mapping may name: every field of the formats in tunelab.data.formats
# (tests/data/test_fieldmap.py keeps the two equal).
DATA_FIELDS = (
    "instruction", "input", "output", "system", "messages", "conversations", "prompt", "completion",
    "text", "label", "chosen", "rejected", "question", "answer", "context",
)


def field_map_errors(fields: dict[str, str]) -> list[str]:
    """What is wrong with a field mapping {format field: source field}, one message per key."""
    errors = []
    for key, source in fields.items():
        if key not in DATA_FIELDS:
            close = difflib.get_close_matches(key, DATA_FIELDS, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"fields a mapping can name: {', '.join(DATA_FIELDS)}"
            errors.append(f"unknown field '{key}' (in {key}: {source}); {hint}")
        elif not source.strip():
            errors.append(f"'{key}' is mapped to an empty field name")
    sources = list(fields.values())
    for source in sorted({s for s in sources if sources.count(s) > 1}):
        keys = ", ".join(k for k, s in fields.items() if s == source)
        errors.append(f"'{source}' is mapped to more than one field ({keys})")
    return errors


class DataConfig(Section):
    train: list[Path] = Field(default_factory=list, description="Training inputs (JSONL, JSON, CSV, Parquet, HF dir, "
                              "or a directory `tunelab data synth` wrote).")
    eval: Path | None = Field(None, description="A held-out evaluation file, checked for leaks against train.")
    format: Literal[
        "auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text", "label", "preference", "qna"
    ] = "auto"
    fields: dict[str, str] = Field(
        default_factory=dict, description="Read other field names as a format's: {prompt: q, completion: a} "
        "takes q as the prompt and a as the completion of every row."
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 42
    dedup: Literal["none", "exact", "near"] = Field("near", description="near = exact + MinHash near-duplicates.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard at which two records are near-duplicates.")
    pii: Literal["off", "mask"] = Field("mask", description="mask = replace PII with typed placeholders.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    max_length: int = Field(1024, gt=0, description="Tokens per rendered example (longer ones are truncated).")
    skip_invalid: bool = Field(False, description="Skip bad records (counted by reason) instead of stopping.")
    rag_context: RagContextConfig | None = Field(
        None, description="Train a RAG-aware model too: its examples carry passages retrieved from rag.docs in "
        "the inference-time RAG prompt, mixed for robustness (compare.rag_aware; tunelab.compare.ragaware).")

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        errors = field_map_errors(value)
        if errors:
            raise ValueError("; ".join(errors))
        return value


# -------------------------------------------------------------------------------------------- method
class MethodConfig(Section):
    # The names of train.methods.METHODS, whose entries hold each method's facts (config cannot import
    # train; tests/train/test_methods.py checks the two are equal).
    name: Literal["full", "lora", "dora", "qlora", "ia3", "prompt", "prefix"] = "lora"
    r: int = Field(16, gt=0, description="LoRA/DoRA/QLoRA rank.")
    alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Module names to adapt; all-linear resolves per architecture."
    )
    num_virtual_tokens: int = Field(20, gt=0, description="Prompt and prefix tuning length.")
    embedding_lr: float | None = Field(None, gt=0, description="Separate learning rate for embeddings (full).")


# --------------------------------------------------------------------------------------------- train
class TrainConfig(Section):
    objective: Literal["sft", "causal", "dpo", "orpo", "grpo"] = Field(
        "sft", description="sft: loss on completions; causal: all tokens; dpo / orpo: preference pairs "
        "(chosen over rejected reply), settings in train.preference; grpo: sampled completions scored "
        "by train.rewards (train.grpo)."
    )
    # auto (the default) in the fields below: chosen from the data's size and the method by the rules in
    # tunelab.train.auto, each with its reason (the dry run prints them; summary.json records them)
    epochs: Auto(Annotated[float, Field(gt=0)]) = Field(AUTO, description="Passes over the training set; auto: "
                                                         "enough optimizer steps for a small set, 1-2 for large.")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    lr: Auto(Annotated[float, Field(gt=0)]) = Field(AUTO, description="Peak learning rate; auto: the method's.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    scheduler: Literal["auto", "cosine", "linear", "constant"] = Field(
        AUTO, description="auto: constant for small sets (a decay under-trains them), cosine for large."
    )
    warmup_ratio: Auto(Annotated[float, Field(ge=0, lt=1)]) = Field(AUTO, description="auto: none for small "
                                                                    "sets, 0.03 for large.")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    packing: bool = Field(True, description="Pack examples into full sequences, no attention across examples.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = Field(False, description="torch.compile the model (slow first step, faster after).")
    eval_every: int | None = Field(None, gt=0, description="Validation loss every N steps (default: each epoch).")
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N steps (default: each epoch).")
    keep_last: int = Field(2, gt=0, description="Checkpoints kept.")
    early_stopping_patience: Auto(Annotated[int, Field(gt=0)] | None) = Field(
        AUTO, description="Evaluations without improvement before stopping; null: never; auto: on only when "
        "there is a validation split evaluated often enough for it to act."
    )
    seed: int = 42
    eval_generate_every: int | None = Field(
        None, gt=0, description="Every N steps, generate answers for the first validation examples and log "
        "their ROUGE-L (off by default: generation is slow next to a loss evaluation)."
    )
    eval_generate_n: int = Field(16, gt=0, description="Validation examples answered by eval_generate_every.")
    eval_generate_max_new_tokens: int = Field(64, gt=0, description="Answer length cap for eval_generate_every.")
    grpo: GrpoConfig = Field(default_factory=GrpoConfig, description="Sampling and update settings of the "
                             "grpo objective.")
    rewards: list[RewardConfig] = Field(default_factory=list, description="What the grpo objective rewards: "
                                        "built-ins by name, or your own functions by import path.")

    @model_validator(mode="after")
    def _grpo_rewards(self) -> TrainConfig:
        if self.objective == "grpo" and not self.rewards:
            raise ValueError("the grpo objective needs train.rewards (e.g. [{name: label}])")
        return self
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="dpo / orpo settings.")


# ------------------------------------------------------------------------------------- mixture/stages
class TaskConfig(Section):
    """One task of a multi-task mixture: its data (prepared on its own, with its own validation split)
    and its sampling weight (train.mixture.py says how weights become the epoch's examples)."""

    task: str = Field(..., min_length=1, description="Task name; validation loss is logged as val_loss/<task>.")
    data: list[Path] = Field(..., min_length=1, description="The task's input file(s), any data format.")
    weight: float = Field(1.0, gt=0, description="Sampling weight; the task's share of an epoch is "
                          "weight / sum of weights.")

    @field_validator("data", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value


def _check_mixture(tasks: list[TaskConfig]) -> None:
    names = [t.task for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"task names must be unique, {', '.join(repeated)} repeated")


class StageConfig(Section):
    """One stage of sequential fine-tuning. data, method and train inherit every key the stage does not
    set from the experiment's top-level sections (merged before validation); the stage starts from the
    previous stage's weights (train.stages says how)."""

    name: str | None = Field(None, description="Stage name (its directory is stages/<index>-<name>); "
                             "default: the objective.")
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mixture: list[TaskConfig] = Field(default_factory=list, description="A mixture for this stage only "
                                      "(not inherited).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and (set(value) & set('/\\:*?"<>|') or value.startswith(".") or not value):
            raise ValueError("must be usable as a directory name")
        return value

    @model_validator(mode="after")
    def _data_or_mixture(self) -> StageConfig:
        _check_mixture(self.mixture)
        if self.mixture and self.data.train:
            raise ValueError("a stage takes data.train or a mixture, not both")
        return self


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
