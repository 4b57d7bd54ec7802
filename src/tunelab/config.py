"""The experiment config: one YAML file per experiment, one pydantic schema, validated in one place.

Every section has documented defaults, so a minimal file (`name` and `model`) is a whole experiment.
Unknown keys are errors with a did-you-mean suggestion; every error names its dotted path in the file
and its line, and says what was expected and what was found (`train.lr (line 12): must be > 0, got -1`).
The resolved config (defaults filled in, paths made absolute) is saved next to every output so every
result can be re-run.

Later stages own their sections' meaning; this module only fixes their shape and bounds.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, TunelabError


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
    train: float = Field(0.9, ge=0, le=1)
    validation: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.0, ge=0, le=1)
    stratify: bool | None = Field(None, description="Keep label proportions; default: on for labelled data.")
    group_by: str | None = Field(None, description="A record field (e.g. source) whose groups stay in one split.")

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitConfig:
        total = self.train + self.validation + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {total:g}")
        return self

    def ratios(self) -> dict[str, float]:
        return {"train": self.train, "validation": self.validation, "test": self.test}


class DataConfig(Section):
    train: list[Path] = Field(default_factory=list, description="Training inputs (JSONL, JSON, CSV, Parquet, HF dir).")
    eval: Path | None = Field(None, description="A held-out evaluation file, checked for leaks against train.")
    format: Literal[
        "auto", "alpaca", "chat", "sharegpt", "prompt_completion", "text", "label", "preference"
    ] = "auto"
    split: SplitConfig = Field(default_factory=SplitConfig)
    seed: int = 42
    dedup: Literal["none", "exact", "near"] = Field("near", description="near = exact + MinHash near-duplicates.")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Estimated Jaccard at which two records are near-duplicates.")
    pii: Literal["off", "mask"] = Field("mask", description="mask = replace PII with typed placeholders.")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    max_length: int = Field(1024, gt=0, description="Tokens per rendered example (longer ones are truncated).")
    skip_invalid: bool = Field(False, description="Skip bad records (counted by reason) instead of stopping.")

    @field_validator("train", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str | Path) else value


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
    objective: Literal["sft", "causal"] = Field("sft", description="sft: loss on completions; causal: all tokens.")
    epochs: float = Field(3, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    batch_size: int = Field(8, gt=0, description="Examples per micro-batch.")
    grad_accum: int = Field(1, gt=0, description="Micro-batches per optimizer step.")
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    packing: bool = Field(True, description="Pack examples into full sequences, no attention across examples.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = Field(False, description="torch.compile the model (slow first step, faster after).")
    eval_every: int | None = Field(None, gt=0, description="Validation loss every N steps (default: each epoch).")
    save_every: int | None = Field(None, gt=0, description="Checkpoint every N steps (default: each epoch).")
    keep_last: int = Field(2, gt=0, description="Checkpoints kept.")
    early_stopping_patience: int | None = Field(None, gt=0)
    seed: int = 42
    eval_generate_every: int | None = Field(
        None, gt=0, description="Every N steps, generate answers for the first validation examples and log "
        "their ROUGE-L (off by default: generation is slow next to a loss evaluation)."
    )
    eval_generate_n: int = Field(16, gt=0, description="Validation examples answered by eval_generate_every.")
    eval_generate_max_new_tokens: int = Field(64, gt=0, description="Answer length cap for eval_generate_every.")


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


# ------------------------------------------------------------------------------------------------ eval
class JudgeConfig(Section):
    """The LLM judge (tunelab.evaluate.judge): which backend, how to call it, where its calls are cached."""

    spec: str = Field(..., description="Judge backend: openai:MODEL@BASE_URL, openai:MODEL or local:MODEL[+ADAPTER].")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (openai).")
    concurrency: int = Field(4, gt=0, description="Requests in flight at once (openai).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (openai).")
    max_retries: int = Field(4, ge=0, description="Retries on timeouts, connection errors, 429 and 5xx (openai).")
    parse_retries: int = Field(2, ge=0, description="Re-asks after a reply that is not the JSON asked for.")
    cache: bool = Field(True, description="Cache judge calls on disk: re-runs are free, interrupted runs resume.")
    cache_dir: Path | None = Field(None, description="Default: <tunelab home>/llm_calls.")

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        from .llm import parse_spec

        try:
            parse_spec(value)
        except TunelabError as exc:
            raise ValueError(str(exc)) from None
        return value


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


# -------------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    enabled: bool = Field(True, description="Track every stage as an MLflow run; false: no tracking at all.")
    uri: str | None = Field(None, description="MLflow tracking URI (a server, a database); default: "
                            "sqlite:///<workdir>/mlflow.db with artifacts in <workdir>/mlartifacts.")
    experiment: str | None = Field(None, description="Default: the experiment name.")
    artifacts: bool = Field(True, description="Copy outputs (adapter, predictions, reports) into the store; "
                            "false records only their paths, as tunelab.artifact.* tags.")


# ------------------------------------------------------------------------------------------- compare
class VariantConfig(Section):
    name: str = Field(..., min_length=1, description="Label of this variant in the table and report.")
    model: str = Field(..., description="Base model the adapter belongs to (or the tuned model itself).")
    adapter: Path | None = Field(None, description="A PEFT adapter or full-model directory; None = the base model.")


class CompareConfig(Section):
    models: list[str] = Field(
        default_factory=list,
        description="Base models to compare; each is trained with the method above. Default: [model.name].",
    )
    train: bool = Field(True, description="Train a tuned variant of every model (false: compare bases and extras only).")
    rag: Literal["auto", "on", "off"] = Field(
        "auto", description="Add the with-retrieval variant of each; auto = on when rag.docs is set.",
    )
    extra: list[VariantConfig] = Field(default_factory=list, description="Other adapters or models to include.")

    @field_validator("rag", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        # YAML reads a bare on/off/yes/no as a boolean
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


# -------------------------------------------------------------------------------------------- serving
class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)


# ---------------------------------------------------------------------------------------------- synth
def _spec_shorthand(value: Any) -> Any:
    """`teacher: openai:m@url` in YAML means `teacher: {spec: openai:m@url}`."""
    return {"spec": value} if isinstance(value, str) else value


class TeacherConfig(Section):
    """The teacher LLM of `tunelab data synth` (tunelab.synth): which backend and how to call it."""

    spec: str = Field(..., description="openai:MODEL@BASE_URL, openai:MODEL or local:MODEL[+ADAPTER].")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (openai).")
    concurrency: int = Field(4, gt=0, description="Requests in flight at once (openai).")
    timeout_s: float = Field(120.0, gt=0, description="Per-request timeout (openai).")
    max_retries: int = Field(4, ge=0, description="Retries on timeouts, connection errors, 429 and 5xx (openai).")
    batch_size: int = Field(8, gt=0, description="Conversations generated together (local).")
    threads: int | None = Field(None, gt=0, description="CPU threads for generation (local); default: "
                                "$TUNELAB_THREADS, else the physical cores.")
    cache: bool = Field(True, description="Cache teacher calls on disk: re-runs are free, interrupted runs resume.")
    cache_dir: Path | None = Field(None, description="Default: <tunelab home>/llm_calls.")

    @field_validator("spec")
    @classmethod
    def _valid_spec(cls, value: str) -> str:
        return JudgeConfig._valid_spec(value)


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


class ExperimentConfig(Section):
    name: str = Field(..., min_length=1, description="Experiment name; used for the run directory and tracking.")
    workdir: Path = Field(Path("runs"), description="Where outputs go: <workdir>/<name>/...")
    seed: int = 42
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    mixture: list[TaskConfig] = Field(default_factory=list, description="Multi-task training: datasets "
                                      "sampled by weight, validation loss per task (instead of data.train).")
    stages: list[StageConfig] = Field(default_factory=list, description="Sequential fine-tuning: each stage "
                                      "starts from the previous one's weights.")
    eval: EvalConfig = Field(default_factory=EvalConfig)
    rag: RagConfig = Field(default_factory=RagConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    synth: SynthConfig | None = Field(None, description="Generate training data from documents (tunelab data synth).")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        bad = set(value) & set('/\\:*?"<>|')
        if bad or value.startswith("."):
            raise ValueError(f"must be usable as a directory name (no {''.join(sorted(bad)) or 'leading dot'})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _stages_inherit(cls, data: Any) -> Any:
        """Each stage's data/method/train = the top-level section with the stage's keys merged over it,
        so a stage can override just `train.objective`. A stage with a mixture does not inherit data.train."""
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            return data
        stages = []
        for stage in data["stages"]:
            if isinstance(stage, dict):
                stage = dict(stage)
                for section in ("data", "method", "train"):
                    top = data.get(section)
                    top = top.model_dump() if isinstance(top, BaseModel) else (top or {})
                    own = stage.get(section)
                    if not isinstance(top, dict) or not isinstance(own, dict | None):
                        continue  # a malformed section is reported by validation, at its own path
                    if section == "data" and stage.get("mixture") and "train" not in (own or {}):
                        top = {k: v for k, v in top.items() if k != "train"}
                    stage[section] = _deep_merge(top, own or {})
            stages.append(stage)
        return {**data, "stages": stages}

    @model_validator(mode="after")
    def _data_or_mixture(self) -> ExperimentConfig:
        _check_mixture(self.mixture)
        if self.mixture and self.data.train:
            raise ValueError("give data.train or a mixture, not both (each mixture task names its own data)")
        if self.mixture and self.stages:
            raise ValueError("with stages, give the mixture inside the stage that trains on it")
        return self

    @property
    def run_dir(self) -> Path:
        return self.workdir / self.name

    def resolved(self) -> dict[str, Any]:
        """The whole config with defaults filled in, as plain JSON-able data."""
        return json.loads(self.model_dump_json())

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the given sections (all when none), for caching and resume checks."""
        data = self.resolved()
        if sections:
            data = {s: data[s] for s in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.resolved(), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------- loading/errors
def _line_index(text: str) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines

    def walk(node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = (*path, key_node.value)
                lines[key] = key_node.start_mark.line + 1
                walk(value_node, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i))

    if root is not None:
        walk(root, ())
    return lines


def _fields_at(path: tuple) -> list[str]:
    """Field names valid at a dotted path of the schema (for did-you-mean)."""
    model: type[BaseModel] | None = ExperimentConfig
    item: type[BaseModel] | None = None  # the element model of a list field (stages, mixture)
    for part in path:
        if isinstance(part, int):
            model, item = item, None
            continue
        if model is None:
            return []
        info = model.model_fields.get(part)
        if info is None:
            return []
        ann = info.annotation
        args = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        item = args[0] if typing.get_origin(ann) is list and args else None
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model else []


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Names users bring from other tools (PEFT, HF TrainingArguments, Axolotl) mapped to ours.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr",
    "num_epochs": "epochs", "num_train_epochs": "epochs", "micro_batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler", "sequence_len": "max_length", "max_seq_length": "max_length",
}


def _line_of(loc: tuple, lines: dict[tuple, int]) -> int:
    for i in range(len(loc), 0, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 0


def _format_error(err: dict, lines: dict[tuple, int]) -> str:
    loc = tuple(p for p in err["loc"] if p not in ("function-after",) and not str(p).startswith("function-"))
    where = _dotted(loc) or "(top level)"
    line = _line_of(loc, lines)
    if line:
        where += f" (line {line})"
    etype = err["type"]
    given = err.get("input")
    if etype == "extra_forbidden":
        options = _fields_at(loc[:-1])
        close = [ALIASES[loc[-1]]] if ALIASES.get(loc[-1]) in options else []
        close = close or difflib.get_close_matches(str(loc[-1]), options, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(options)}" if options else "")
        return f"{where}: unknown key{hint}"
    if etype == "missing":
        return f"{where}: required, but missing"
    ctx = err.get("ctx") or {}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}", "less_than_equal": "<= {le}"}
    if etype in bounds:
        nums = {k: f"{v:g}" if isinstance(v, int | float) else v for k, v in ctx.items()}
        return f"{where}: must be {bounds[etype].format(**nums)}, got {given!r}"
    if etype == "literal_error":
        return f"{where}: must be one of {ctx.get('expected')}, got {given!r}"
    msg = err["msg"].removeprefix("Value error, ")
    if given is not None and not isinstance(given, dict | list):
        return f"{where}: {msg}, got {given!r}"
    return f"{where}: {msg}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-4` -> (["train", "lr"], 0.0001); the value is parsed as YAML."""
    if "=" not in text:
        raise TunelabError(f"override '{text}' must look like section.key=value")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise TunelabError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise TunelabError(f"override '{text}': value is not valid YAML ({exc})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides; a number indexes a list (`stages.1.train.lr=1e-4`)."""

    def index(node: list, part: str, item: str) -> int:
        if not part.isdigit() or int(part) >= len(node):
            raise TunelabError(f"override '{item}': '{part}' is not an index of that list (0 to {len(node) - 1})")
        return int(part)

    for item in overrides:
        path, value = parse_override(item)
        node: Any = data
        for part in path[:-1]:
            if isinstance(node, list):
                child = node[index(node, part, item)]
            else:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
            if not isinstance(child, dict | list):
                raise TunelabError(f"override '{item}': '{part}' is not a section")
            node = child
        if isinstance(node, list):
            node[index(node, path[-1], item)] = value
        else:
            node[path[-1]] = value
    return data


def _resolve_paths(config: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Make every path field absolute, relative to the config file's directory."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    config.workdir = fix(config.workdir)
    config.data.train = [fix(p) for p in config.data.train]
    config.data.eval = fix(config.data.eval)
    config.eval.data = fix(config.eval.data)
    config.rag.docs = fix(config.rag.docs)
    config.rag.index_dir = fix(config.rag.index_dir)
    config.rag.prompt_template = fix(config.rag.prompt_template)
    for task in config.mixture:
        task.data = [fix(p) for p in task.data]
    for stage in config.stages:
        stage.data.train = [fix(p) for p in stage.data.train]
        stage.data.eval = fix(stage.data.eval)
        for task in stage.mixture:
            task.data = [fix(p) for p in task.data]
    for variant in config.compare.extra:
        variant.adapter = fix(variant.adapter)
    if config.synth is not None:
        synth = config.synth
        synth.docs, synth.out, synth.prompts = fix(synth.docs), fix(synth.out), fix(synth.prompts)
        synth.teacher.cache_dir = fix(synth.teacher.cache_dir)
        synth.filters.pool = [fix(p) for p in synth.filters.pool]
        if synth.judge is not None:
            synth.judge.cache_dir = fix(synth.judge.cache_dir)
    if config.model.chat_template:
        config.model.chat_template = str(fix(Path(config.model.chat_template)))
    # A model given as a relative local path (./my-model, ../ckpt.gguf) is resolved too; names and hub ids stay.
    name = config.model.name
    if name.startswith((".", "~")) or name.endswith(".gguf"):
        config.model.name = str(fix(Path(name)))
    return config


def _drop_inherited(errors: list[dict], lines: dict[tuple, int]) -> list[dict]:
    """A bad top-level value is inherited by every stage; report it once, at the line where it is written
    (a stage's error stays when the stage itself sets the key)."""
    top = {(tuple(e["loc"]), e["type"]) for e in errors}
    kept = []
    for e in errors:
        loc = tuple(e["loc"])
        inherited = len(loc) > 3 and loc[0] == "stages" and loc[:4] not in lines
        if not (inherited and (loc[2:], e["type"]) in top):
            kept.append(e)
    return kept


def validate_data(data: Any, source: str = "<config>", text: str = "", base: Path | None = None) -> ExperimentConfig:
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(top level): must be a mapping of sections, got {type(data).__name__}"])
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        lines = _line_index(text)
        errors = _drop_inherited(exc.errors(), lines)
        errors = sorted(errors, key=lambda e: _line_of(tuple(e["loc"]), lines))
        raise ConfigError(source, [_format_error(e, lines) for e in errors]) from None
    return _resolve_paths(config, base or Path.cwd())


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment file; raises ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise TunelabError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(str(path), [f"not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if data is None:
        data = {}
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(str(path), ["(top level): must be a mapping of sections"])
        data = apply_overrides(data, overrides)
    return validate_data(data, str(path), text, base=path.parent.resolve())


def save_resolved(config: ExperimentConfig, out_dir: str | Path) -> Path:
    """Write the resolved config next to an output (config.resolved.yaml)."""
    from .io import write_text

    return write_text(Path(out_dir) / "config.resolved.yaml", config.to_yaml())
