"""Config section of `tunelab data synth`: documents, teacher, modes and filters."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .backend import BackendConfig
from .base import Section
from .evaluation import JudgeConfig


# ---------------------------------------------------------------------------------------------- synth
def _spec_shorthand(value: Any) -> Any:
    """`teacher: openai:m@url` in YAML means `teacher: {spec: openai:m@url}`."""
    return {"spec": value} if isinstance(value, str) else value


class TeacherConfig(BackendConfig):
    """The teacher LLM of `tunelab data synth` (tunelab.synth): which backend and how to call it."""

    batch_size: int = Field(8, gt=0, description="Conversations generated together (local).")
    threads: int | None = Field(None, gt=0, description="CPU threads for generation (local); default: "
                                "$TUNELAB_THREADS, else the physical cores.")


class SynthFilterConfig(Section):
    """What a generated record must pass to be kept; each filter reports how many it dropped."""

    min_prompt_chars: int = Field(10, ge=1, description="Shortest question, instruction or labelled text.")
    max_prompt_chars: int = Field(1000, gt=0)
    min_answer_chars: int = Field(2, ge=1)
    max_answer_chars: int = Field(3000, gt=0)
    min_overlap: float = Field(0.5, ge=0, le=1, description="Share of an answer's content words (stemmed, "
                               "stop words left out) that must occur in its source chunk.")
    min_topic_overlap: float = Field(0.2, ge=0, le=1, description="The same share for a question or a "
                                     "labelled text: it must be about its chunk.")
    check_numbers: bool = Field(True, description="Every number in an answer must occur in its chunk.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="MinHash Jaccard of whole records (as in "
                                  "data prepare) at which a record is a near duplicate.")
    similar_threshold: float = Field(0.8, gt=0, le=1, description="ROUGE F (content words; ROUGE-1 for "
                                     "questions, ROUGE-L for answers) that two records' questions and their "
                                     "answers both reach: the later one is dropped.")
    pool: list[Path] = Field(default_factory=list, description="Existing data files generated records "
                             "must not duplicate (any format data prepare reads).")

    @field_validator("pool", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value


class SynthConfig(Section):
    """Synthetic training data from documents (`tunelab data synth`, tunelab.synth.run)."""

    docs: Path = Field(..., description="A directory (read recursively) or file of documents: md, txt, html, pdf, docx.")
    out: Path | None = Field(None, description="Output dataset directory; default: <run_dir>/synth.")
    teacher: TeacherConfig = Field(..., description="The teacher model (a spec string, or a mapping with options).")
    mode: Literal["qa", "instruction", "multi_turn", "labelled", "preference"] = Field(
        "qa", description="qa and instruction and multi_turn give chat records, labelled label records, "
        "preference (grounded chosen, plausible ungrounded rejected) preference records.")
    labels: list[str] = Field(default_factory=list, description="The label set (mode labelled).")
    per_chunk: int = Field(3, gt=0, le=20, description="Items asked of the teacher per chunk.")
    turns: int = Field(3, ge=2, le=10, description="User turns per conversation (mode multi_turn).")
    chunk_tokens: int = Field(256, gt=0)
    chunk_overlap: int = Field(32, ge=0)
    min_chunk_tokens: int = Field(24, ge=0, description="Chunks with fewer tokens carry too little to ask about.")
    max_chunks: int | None = Field(None, gt=0, description="Use at most this many chunks, evenly spread over "
                                   "the documents (for a first look at a large corpus).")
    temperature: float = Field(0.0, ge=0)
    max_tokens: int = Field(768, gt=0, description="Tokens per teacher reply.")
    seed: int = 42
    parse_retries: int = Field(2, ge=0, description="Re-asks after a reply that is not the JSON asked for.")
    prompts: Path | None = Field(None, description="A directory of prompt files overriding tunelab's "
                                 "(same names: qa.txt, ...); each carries its own version.")
    filters: SynthFilterConfig = Field(default_factory=SynthFilterConfig)
    judge: JudgeConfig | None = Field(None, description="Also check grounding with an LLM judge.")
    eval_set: Literal["none", "held_out", "paraphrase"] = Field(
        "none", description="held_out: whole sections never trained on (tests retrieval and generalisation); "
        "paraphrase: new wordings of training questions (tests whether the facts were learned).")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of chunks held out, or of training "
                                 "records paraphrased.")

    @field_validator("teacher", "judge", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _spec_shorthand(value)

    @model_validator(mode="after")
    def _consistent(self) -> SynthConfig:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_tokens ({self.chunk_tokens})")
        if self.mode == "labelled":
            labels = [x.strip() for x in self.labels]
            if len(labels) < 2 or any(not x for x in labels):
                raise ValueError("mode labelled needs labels: at least two non-blank label names")
            if len({x.casefold() for x in labels}) != len(labels):
                raise ValueError(f"labels repeat a name: {labels}")
        elif self.labels:
            raise ValueError(f"labels are only used by mode labelled (mode is {self.mode})")
        if self.eval_set == "paraphrase" and self.mode in ("multi_turn", "preference"):
            raise ValueError(f"eval_set paraphrase needs single-question records; use held_out with mode {self.mode}")
        return self
