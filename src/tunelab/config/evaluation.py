"""Config sections of evaluating and comparing: eval (with its LLM judge), rag and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .backend import BackendConfig
from .base import Section


# ------------------------------------------------------------------------------------------------ eval
class JudgeConfig(BackendConfig):
    """The LLM judge (tunelab.evaluate.judge): which backend, how to call it, where its calls are cached."""

    parse_retries: int = Field(2, ge=0, description="Re-asks after a reply that is not the JSON asked for.")


class EvalConfig(Section):
    data: Path | None = Field(None, description="Eval set; default: data.eval.")
    metrics: list[str] = Field(default_factory=lambda: ["rougeL", "bleu", "token_f1"])
    benchmarks: list[str] = Field(default_factory=list, description="lm-eval names, e.g. truthfulqa_mc1.")
    limit: int | None = Field(None, gt=0)
    max_new_tokens: int = Field(128, gt=0)
    batch_size: int = Field(16, gt=0)
    judge: JudgeConfig | None = Field(None, description="Score answers with an LLM judge as well.")
    baseline: bool = Field(False, description="With an adapter: also score the base model on the benchmarks "
                           "(default hellaswag + truthfulqa_mc1, 100 items each) and report the change.")
    benchmark_paths: dict[str, Path] = Field(default_factory=dict, description="A data file per benchmark name, "
                                             "e.g. {hellaswag: data/hellaswag_val.jsonl}; default: found in "
                                             "$TUNELAB_BENCHMARK_DIR, tunelab's cache or the Hugging Face hub. "
                                             "Names are checked against the benchmark registry when the "
                                             "experiment starts.")


# ------------------------------------------------------------------------------------------------- rag
class RagConfig(Section):
    docs: Path | None = Field(None, description="Directory of documents to retrieve from.")
    top_k: int = Field(3, gt=0)
    chunk_tokens: int = Field(256, gt=0)
    chunk_overlap: int = Field(32, ge=0)
    embedding_model: str = "all-minilm-l6-v2"
    context_tokens: int = Field(600, gt=0, description="Prompt budget for retrieved chunks, in the generating "
                                "model's tokens; a chunk that does not fit whole is left out.")
    prompt_template: Path | None = Field(None, description="A RAG prompt template file; default: tunelab's "
                                         "versioned one (placeholders {context} and {question}).")
    index_dir: Path | None = Field(None, description="Where the index lives; default: <run_dir>/rag-index.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        return self


# ------------------------------------------------------------------------------------------- compare
class VariantConfig(Section):
    name: str = Field(..., min_length=1, description="Label of this variant in the table and report.")
    model: str = Field(..., description="Base model the adapter belongs to (or the tuned model itself).")
    adapter: Path | None = Field(None, description="A PEFT adapter or full-model directory; None = the base model.")


class TuneConfig(Section):
    """`compare.tune`: search before training each model's tuned variant (tunelab.pipeline). The space and
    the objective are the `sweep:` section's (its defaults without one); this section is the budget."""

    trials: int | None = Field(20, gt=0, description="Trials of the search per model (complete or pruned); a "
                               "rerun adds only the trials its study is missing. None: until timeout_s.")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting trials for a model after this many "
                                    "seconds.")

    @model_validator(mode="after")
    def _has_budget(self) -> TuneConfig:
        if self.trials is None and self.timeout_s is None:
            raise ValueError("a search needs a budget: give trials, timeout_s or both")
        return self


class CompareConfig(Section):
    models: list[str] = Field(
        default_factory=list,
        description="Base models to compare; each is trained with the method above. Default: [model.name].",
    )
    train: bool = Field(True, description="Train a tuned variant of every model (false: compare bases and extras only).")
    rag: Literal["auto", "on", "off"] = Field(
        "auto", description="Add the with-retrieval variant of each; auto = on when rag.docs is set.",
    )
    rag_aware: Literal["auto", "on", "off"] = Field(
        "auto", description="Also train each model RAG-aware (its examples with retrieved passages, per "
        "data.rag_context or its defaults) and compare it with and without retrieval next to the plain tuned "
        "model; auto = on when data.rag_context is set. Needs rag.docs.",
    )
    extra: list[VariantConfig] = Field(default_factory=list, description="Other adapters or models to include.")
    tune: TuneConfig | None = Field(
        None, description="Search training settings for each model before training its tuned variant "
        "(e.g. {trials: 20}): the sweep: section's space and objective, scored on a development split of the "
        "training data, never the eval set. None: train with the config's settings as they are.")

    @model_validator(mode="after")
    def _tune_needs_training(self) -> CompareConfig:
        if self.tune is not None and not self.train:
            raise ValueError("tune searches the settings of the tuned variants; it needs train: true")
        return self

    @field_validator("rag", "rag_aware", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML reads a bare on/off/yes/no as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
