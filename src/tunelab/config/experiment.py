"""The whole experiment file: every section, plus tracking and serving, and the stage inheritance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .base import Section
from .evaluation import CompareConfig, EvalConfig, RagConfig
from .sweep import SweepConfig
from .synth import SynthConfig
from .training import (
    DataConfig,
    MethodConfig,
    ModelConfig,
    StageConfig,
    TaskConfig,
    TrainConfig,
    _check_mixture,
    _deep_merge,
)


# -------------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    enabled: bool = Field(True, description="Track every stage as an MLflow run; false: no tracking at all.")
    uri: str | None = Field(None, description="MLflow tracking URI (a server, a database); default: "
                            "sqlite:///<workdir>/mlflow.db with artifacts in <workdir>/mlartifacts.")
    experiment: str | None = Field(None, description="Default: the experiment name.")
    artifacts: bool = Field(True, description="Copy outputs (adapter, predictions, reports) into the store; "
                            "false records only their paths, as tunelab.artifact.* tags.")


# -------------------------------------------------------------------------------------------- serving
class ServeConfig(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)


RUN_DIR_KIND = "run"  # the marker kind of <workdir>/<name> (tunelab.io): train, run, compare and synth share it


class ExperimentConfig(Section):
    name: str = Field(..., min_length=1, description="Experiment name; used for the run directory and tracking.")
    workdir: Path = Field(Path("runs"), description="Where outputs go: <workdir>/<name>/...")
    seed: int = Field(42, description="The default of data.seed and train.seed (an explicit one wins).")
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
    sweep: SweepConfig | None = Field(None, description="Hyperparameter search (tunelab sweep): space, objective, "
                                      "budget; `sweep: {}` searches the default space.")

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
        so a stage can override just `train.objective`. A stage with a mixture does not inherit data.train.
        The top-level `seed` is the default of data.seed and train.seed (the splits, the data order, the
        adapter's initialisation), so `seed: 7` reruns the whole experiment with another seed."""
        if isinstance(data, dict) and "seed" in data:
            data = dict(data)
            for section in ("data", "train"):
                own = data.get(section)
                if own is None:
                    data[section] = {"seed": data["seed"]}
                elif isinstance(own, dict) and "seed" not in own:
                    data[section] = {**own, "seed": data["seed"]}
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

    @model_validator(mode="after")
    def _tune_fits(self) -> ExperimentConfig:
        if self.compare.tune is None:
            return self
        problem = None
        if self.stages or self.mixture:
            problem = "searches one training run per trial; a config with stages or a mixture cannot be tuned yet"
        elif self.eval.data is None and self.data.eval is None:
            # the search draws its development split from data.train: a test split of data.train would
            # put the questions the comparison reports into the search's training or scoring
            problem = ("needs the held-out questions in a file of their own (data.eval or eval.data), apart "
                       "from data.train, so the search never sees them")
        if problem:  # reported at compare.tune, so the message names its line in the file
            raise ValidationError.from_exception_data("ExperimentConfig", [InitErrorDetails(
                type=PydanticCustomError("value_error", problem), loc=("compare", "tune"), input=None)])
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
