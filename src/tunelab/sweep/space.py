"""The search space of a sweep: sampling each field with Optuna's trial.suggest_*, and turning the sampled
values into a config through tunelab.config's own `key=value` overrides.

Optuna stores categorical choices as JSON scalars; a choice that is a list (method.target_modules:
[q_proj, v_proj]) is offered to Optuna as its JSON text and turned back into the list here, so the study
storage, the MLflow params and the report all show the same label.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ..config import ExperimentConfig, SpaceParam, apply_overrides, validate_data

_SCALARS = (str, int, float, bool, type(None))


def _label(choice: Any) -> Any:
    return choice if isinstance(choice, _SCALARS) else json.dumps(choice)


def decode(param: SpaceParam, value: Any) -> Any:
    """A value as Optuna stores it -> the config value (a categorical's list back from its label)."""
    if param.type != "categorical":
        return value
    for choice in param.choices or []:
        if _label(choice) == value:
            return choice
    return value


def sample(trial: Any, space: dict[str, SpaceParam]) -> dict[str, Any]:
    """One value per searched field, drawn through `trial` (an optuna Trial): {dotted path: config value}."""
    values: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "float":
            values[key] = trial.suggest_float(key, float(p.low), float(p.high), log=p.log, step=p.step)
        elif p.type == "int":
            values[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
        else:
            values[key] = decode(p, trial.suggest_categorical(key, [_label(c) for c in p.choices or []]))
    return values


def encode_params(space: dict[str, SpaceParam], values: dict[str, Any]) -> dict[str, Any]:
    """Config values -> the values Optuna stores (for study.enqueue_trial)."""
    return {k: _label(v) if k in space and space[k].type == "categorical" else v for k, v in values.items()}


def decode_params(space: dict[str, SpaceParam], params: dict[str, Any]) -> dict[str, Any]:
    """A finished trial's stored params -> config values (params outside the space are kept as stored)."""
    return {k: decode(space[k], v) if k in space else v for k, v in params.items()}


def overrides(values: dict[str, Any]) -> list[str]:
    """{"train.lr": 1e-4, "method.target_modules": ["q_proj"]} -> ["train.lr=0.0001", ...] (YAML values)."""
    out = []
    for key, value in values.items():
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
        out.append(f"{key}={text.removesuffix('...').strip()}")
    return out


def apply(config: ExperimentConfig, values: dict[str, Any], **top: Any) -> ExperimentConfig:
    """`config` with the sampled values applied as overrides (and top-level keys such as name and workdir
    replaced), validated as a whole file would be."""
    data = config.resolved()
    data.update(top)
    data = apply_overrides(data, overrides(values))
    return validate_data(data, source=f"{config.name} with {', '.join(overrides(values)) or 'no overrides'}")
