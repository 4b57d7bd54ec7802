"""The experiment config: one YAML file per experiment, one pydantic schema, validated in one place.

Every section has documented defaults, so a minimal file (`name` and `model`) is a whole experiment.
Unknown keys are errors with a did-you-mean suggestion; every error names its dotted path in the file
and its line, and says what was expected and what was found (`train.lr (line 12): must be > 0, got -1`).
The resolved config (defaults filled in, paths made absolute) is saved next to every output so every
result can be re-run.

Later stages own their sections' meaning; this package only fixes their shape and bounds. The schema
lives in base, backend, training, evaluation, synth, sweep and experiment; reading, overriding, validating,
resolving and saving a file in loading; the wording of every validation error in messages.
"""

from .backend import BackendConfig
from .base import Section
from .evaluation import CompareConfig, EvalConfig, JudgeConfig, RagConfig, VariantConfig
from .experiment import RUN_DIR_KIND, ExperimentConfig, ServeConfig, TrackingConfig
from .loading import apply_overrides, load_config, parse_override, save_resolved, validate_data
from .messages import ALIASES, format_error, options_error
from .sweep import DEFAULT_SPACE, SpaceParam, SweepConfig, SweepObjective
from .synth import SynthConfig, SynthFilterConfig, TeacherConfig
from .training import (
    DATA_FIELDS,
    CleanConfig,
    DataConfig,
    MethodConfig,
    ModelConfig,
    SplitConfig,
    StageConfig,
    TaskConfig,
    TrainConfig,
    field_map_errors,
)

__all__ = [
    "ALIASES", "DATA_FIELDS", "DEFAULT_SPACE", "SpaceParam", "SweepConfig", "SweepObjective", "RUN_DIR_KIND", "BackendConfig", "CleanConfig", "CompareConfig", "DataConfig", "EvalConfig", "ExperimentConfig",
    "JudgeConfig", "MethodConfig", "ModelConfig", "RagConfig", "Section", "ServeConfig", "SplitConfig",
    "StageConfig", "SynthConfig", "SynthFilterConfig", "TaskConfig", "TeacherConfig", "TrackingConfig",
    "TrainConfig", "VariantConfig", "apply_overrides", "field_map_errors", "format_error", "load_config", "options_error",
    "parse_override", "save_resolved", "validate_data",
]
