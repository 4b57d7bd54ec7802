"""Properties of the whole schema, checked by walking it: every Path-typed field is resolved relative to
the config file, and the judge and the teacher share one backend config."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from tunelab.config import BackendConfig, ExperimentConfig, JudgeConfig, TeacherConfig, load_config

SPEC = "openai:m@http://127.0.0.1:9/v1"
# a valid value for every required field on the way to a path field (a new required field fails loudly)
REQUIRED = {"name": "x", "spec": SPEC, "teacher": SPEC, "docs": "docs", "task": "t", "data": ["d.jsonl"],
            "model": "m"}


def _args(annotation: typing.Any) -> list[typing.Any]:
    return [annotation, *[a for arg in typing.get_args(annotation) for a in _args(arg)]]


def path_fields(model: type[BaseModel], prefix: tuple = ()) -> list[tuple[tuple, typing.Any]]:
    """(location, annotation) of every Path-typed field reachable from `model`, found from the
    annotations alone (a list of sections is entered at its first element)."""
    found = []
    for name, info in model.model_fields.items():
        args = _args(info.annotation)
        if Path in args:
            found.append(((*prefix, name), info.annotation))
        is_list = any(typing.get_origin(a) is list for a in args)
        for sub in {a for a in args if isinstance(a, type) and issubclass(a, BaseModel)}:
            found += path_fields(sub, (*prefix, name, 0) if is_list else (*prefix, name))
    return found


def _section_at(loc: tuple) -> list[type[BaseModel]]:
    """The sections along `loc` (the root first), to fill their required fields."""
    models, model = [ExperimentConfig], ExperimentConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        args = _args(model.model_fields[part].annotation)
        model = next(a for a in args if isinstance(a, type) and issubclass(a, BaseModel))
        models.append(model)
    return models


def config_setting(loc: tuple, annotation: typing.Any, value: str) -> dict:
    """The smallest experiment dict that sets the field at `loc` to the relative path `value`."""
    args = _args(annotation)
    leaf: typing.Any = [value] if any(typing.get_origin(a) is list for a in args) else value
    if any(typing.get_origin(a) is dict for a in args):
        leaf = {"key": value}
    root: dict = {}
    node: typing.Any = root
    models = _section_at(loc)
    depth = 0
    for i, part in enumerate(loc[:-1]):
        if isinstance(part, int):
            continue
        depth += 1
        child: dict = {}
        node[part] = [child] if i + 1 < len(loc) and isinstance(loc[i + 1], int) else child
        node = child
        for name, info in models[depth].model_fields.items():
            if info.is_required():
                node[name] = REQUIRED[name]
    node[loc[-1]] = leaf
    for name, info in ExperimentConfig.model_fields.items():
        if info.is_required():
            root.setdefault(name, REQUIRED[name])
    return root


def _value_at(config: BaseModel, loc: tuple) -> typing.Any:
    node: typing.Any = config
    for part in loc:
        node = node[part] if isinstance(part, int) else getattr(node, part)
    return node


def test_every_path_field_of_the_schema_is_resolved_relative_to_the_config_file(tmp_path):
    fields = path_fields(ExperimentConfig)
    locs = {".".join(map(str, loc)) for loc, _ in fields}
    # the walk itself found the fields the old hand list knew, and the one it missed
    assert {"workdir", "data.train", "stages.0.data.eval", "synth.filters.pool", "eval.judge.cache_dir",
            "synth.teacher.cache_dir", "compare.extra.0.adapter", "mixture.0.data"} <= locs
    folder = tmp_path / "experiments"
    folder.mkdir()
    for loc, annotation in fields:
        where = ".".join(map(str, loc))
        path = folder / "exp.yaml"
        path.write_text(json.dumps(config_setting(loc, annotation, f"rel/{where}")), encoding="utf-8")
        value = _value_at(load_config(path), loc)
        values = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else [value]
        assert values == [(folder / "rel" / where).resolve()], where


def test_absolute_and_home_paths_are_kept_and_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = tmp_path / "exp.yaml"
    path.write_text(f"name: x\neval:\n  data: {tmp_path}/abs.jsonl\n  judge: {{spec: '{SPEC}', cache_dir: ~/calls}}\n")
    config = load_config(path)
    assert config.eval.data == tmp_path / "abs.jsonl"
    assert config.eval.judge.cache_dir == tmp_path / "home" / "calls"


def test_judge_and_teacher_share_one_backend_config():
    assert issubclass(JudgeConfig, BackendConfig) and issubclass(TeacherConfig, BackendConfig)
    shared = set(BackendConfig.model_fields)
    assert {"spec", "api_key_env", "concurrency", "timeout_s", "max_retries", "cache", "cache_dir"} <= shared
    # each adds only its own fields; the YAML keys are the same as before the merge
    assert set(JudgeConfig.model_fields) - shared == {"parse_retries"}
    assert set(TeacherConfig.model_fields) - shared == {"batch_size", "threads"}
    for cls in (JudgeConfig, TeacherConfig):
        with pytest.raises(ValueError, match="is not KIND:MODEL"):
            cls(spec="nonsense")
        assert cls(spec=SPEC, concurrency=2).concurrency == 2
