"""The `sweep:` section: what `tunelab sweep` searches, what it optimises, and with what budget.

    sweep:
      space:                                     # dotted paths of method.* and train.* fields
        train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
        method.r: {type: int, low: 4, high: 64, log: true}
        train.scheduler: [cosine, linear, constant]          # a plain list is a categorical
        method.target_modules: [all-linear, [q_proj, v_proj]]
      objective: {metric: rougeL}                # or val_loss; direction defaults from the metric
      trials: 20
      pruner: median

The space's keys are checked here against the schema of their section, and every bound and choice is
validated as a value of that field, so a space that would sample an invalid config is an error before
any trial runs. tunelab.sweep owns the meaning (sampling, the development split, storage).
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .base import Section
from .training import MethodConfig, TrainConfig

# The sections a space may reach into. data is left out: every trial trains on the one prepared data set
# and is scored on the one development split, else the objectives would not be comparable.
SPACE_SECTIONS: dict[str, type[Section]] = {"method": MethodConfig, "train": TrainConfig}
# Fields that change what the objective measures (the loss itself), not how well a model is trained.
NOT_SEARCHABLE = {"train.objective": "it changes what the validation loss measures"}


class SpaceParam(Section):
    """One searched field: a float or int range (log-uniform with log: true), or categorical choices."""

    type: Literal["float", "int", "categorical"]
    low: float | None = Field(None, description="Lower bound (float, int).")
    high: float | None = Field(None, description="Upper bound, inclusive (float, int).")
    log: bool = Field(False, description="Sample on a log scale (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Grid step of a float or int range.")
    choices: list[Any] | None = Field(None, description="The values of a categorical (lists allowed).")

    @model_validator(mode="before")
    @classmethod
    def _plain_list(cls, value: Any) -> Any:
        return {"type": "categorical", "choices": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _shape(self) -> SpaceParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical needs a non-empty list of choices")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical takes choices only (no low, high, log or step)")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} range takes low and high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs low and high")
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not be above high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.type == "int" and any(v is not None and v != int(v) for v in (self.low, self.high, self.step)):
            raise ValueError("an int range needs whole-number low, high and step")
        return self

    def values_to_check(self) -> list[Any]:
        """The values that must be valid for the field: the bounds, or every choice."""
        if self.type == "categorical":
            return list(self.choices or [])
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


def _accepts_float(annotation: Any) -> bool:
    return annotation is float or any(_accepts_float(a) for a in typing.get_args(annotation))


def space_errors(space: dict[str, SpaceParam]) -> list[str]:
    """What is wrong with a space's keys and values, one message per problem."""
    errors = []
    for key, param in space.items():
        section, _, name = key.partition(".")
        model = SPACE_SECTIONS.get(section)
        if model is None or not name or "." in name:
            errors.append(f"'{key}': a key is a dotted field path in {' or '.join(SPACE_SECTIONS)} (e.g. train.lr)")
            continue
        if key in NOT_SEARCHABLE:
            errors.append(f"'{key}' cannot be searched: {NOT_SEARCHABLE[key]}")
            continue
        info = model.model_fields.get(name)
        if info is None:
            close = difflib.get_close_matches(name, list(model.model_fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{section}.{close[0]}'?" if close else ""
            errors.append(f"'{key}': {section} has no field '{name}'{hint}")
            continue
        if param.type == "float" and not _accepts_float(info.annotation):
            errors.append(f"'{key}' holds whole numbers: use type int (or categorical)")
            continue
        for value in param.values_to_check():
            try:
                model.model_validate({name: value})
            except ValidationError as exc:
                why = "; ".join(" ".join(str(e["msg"]).split()) for e in exc.errors())
                errors.append(f"'{key}': {value!r} is not a valid {key} ({why})")
    return errors


# Searched when a sweep gives no space: the settings the issue-17 measurements found to decide whether a
# small knowledge set is learned (learning rate, schedule, epochs) and the adapter's capacity.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
    "train.scheduler": {"type": "categorical", "choices": ["cosine", "constant"]},
    "train.epochs": {"type": "int", "low": 1, "high": 6},
    "method.r": {"type": "categorical", "choices": [8, 16, 32]},
}


class SweepObjective(Section):
    metric: str = Field("rougeL", min_length=1, description="val_loss (validation loss on the development "
                        "split), or a generation metric of tunelab.evaluate.metrics scored on it.")
    direction: Literal["maximize", "minimize"] | None = Field(
        None, description="Default: minimize val_loss, maximize a metric where higher is better.")


class SweepConfig(Section):
    space: dict[str, SpaceParam] = Field(
        default_factory=lambda: {k: SpaceParam.model_validate(v) for k, v in DEFAULT_SPACE.items()},
        description="Searched fields by dotted path (method.*, train.*); default: lr, scheduler, epochs, r.")
    objective: SweepObjective = Field(default_factory=SweepObjective)
    trials: int | None = Field(20, gt=0, description="Trials this process runs (--trials); none: until timeout_s.")
    timeout_s: float | None = Field(None, gt=0, description="Stop starting trials after this many seconds.")
    seed: int = Field(42, description="Seed of the TPE sampler.")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops a trial whose intermediate objective is poor (median: below the median of "
        "earlier trials at the same step).")
    startup_trials: int = Field(5, ge=0, description="Trials sampled at random and never pruned, before TPE "
                                "models the space and the pruner starts pruning.")
    dev: Path | None = Field(None, description="A development file to score trials on; default: dev_share of "
                             "the training data, held out from every trial's training.")
    dev_share: float = Field(0.1, gt=0, lt=1, description="Share of the training records held out as the "
                             "development split (when dev is not given).")
    storage: str | None = Field(None, description="Optuna storage: a database URL (sqlite:///f.db, "
                                "postgresql://...) or journal:PATH (a journal file on a shared file system); "
                                "default: sqlite:///<workdir>/<name>/sweep/optuna.db.")
    study: str | None = Field(None, description="Study name; default: the experiment name.")

    @field_validator("space")
    @classmethod
    def _known_fields(cls, value: dict[str, SpaceParam]) -> dict[str, SpaceParam]:
        errors = space_errors(value)
        if errors:
            raise ValueError("; ".join(errors))
        if not value:
            raise ValueError("the space is empty: name at least one field to search")
        return value

    @field_validator("storage")
    @classmethod
    def _storage_shape(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("journal:") and len(value) > 8) and "://" not in value:
            raise ValueError("must be a database URL (sqlite:///path.db, postgresql://...) or journal:PATH")
        return value
