"""`data.rag_context`: how the RAG-aware tuned model's training examples get retrieved passages.

The section only fixes shape and bounds; tunelab.compare.ragaware builds the examples (it may see both
the training data and the RAG index, which the train and rag stages may not see of each other).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .base import Section


class RagMixConfig(Section):
    """The shares of training examples rendered each way; they must sum to 1. Counts are rounded so they
    add up to the number of examples (largest remainder) and the examples are drawn with `seed`."""

    gold_with_distractors: float = Field(
        0.6, ge=0, le=1, description="Examples whose passages hold the gold passage among top_k - 1 retrieved "
        "distractors (the gold forced in per `gold`, or, where it is unknown, the top_k retrieved as they are).")
    distractors_only: float = Field(
        0.2, ge=0, le=1, description="Examples whose passages are retrieved distractors without the gold "
        "passage: the model learns to answer from what it learned (or with `abstain`) when retrieval misses.")
    no_context: float = Field(
        0.2, ge=0, le=1, description="Examples left as the bare question, as for plain tuning, so the model "
        "still answers without retrieval.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> RagMixConfig:
        total = self.gold_with_distractors + self.distractors_only + self.no_context
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the mix shares must sum to 1, got {total:g}")
        return self


class RagContextConfig(Section):
    """Training examples rendered with passages retrieved for their question from the experiment's own
    RAG index (rag.docs), in the very prompt the RAG variants get at inference (rag.prompt_template,
    rag.context_tokens), so that training and inference see the same tokens."""

    top_k: int | None = Field(None, gt=0, description="Passages per example; default: rag.top_k, as at inference.")
    gold: Literal["auto", "force", "off"] = Field(
        "auto", description="The gold passage comes from provenance: the record's chunk_id or source document "
        "(what `data synth` writes, or a `source` field) or a `context` field. auto: forced into the passages "
        "of gold_with_distractors examples where known, retrieval decides where not; force: every record must "
        "name its gold (an error names the first that does not); off: retrieval decides for every example. "
        "The manifest counts how often the gold was among the retrieved passages either way.")
    mix: RagMixConfig = Field(default_factory=RagMixConfig)
    abstain: str | None = Field(
        None, description="The answer trained for distractors_only examples, e.g. \"I don't know.\"; default: "
        "the record's own answer (the model answers from what it learned).")
    seed: int | None = Field(None, description="Seed of the mix and of where a forced gold passage goes; "
                             "default: data.seed.")
