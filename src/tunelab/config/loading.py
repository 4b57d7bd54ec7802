"""Reading an experiment file: YAML with line numbers, `key=value` overrides, validation with errors that
name the dotted path and line, path resolution relative to the file, and saving the resolved config."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, TunelabError
from .experiment import ExperimentConfig
from .messages import error_messages


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


def _is_path_type(annotation: Any) -> bool:
    """Whether a field's type holds paths: Path, Path | None, list[Path], dict[str, Path] ..."""
    return annotation is Path or any(_is_path_type(a) for a in typing.get_args(annotation))


def _resolved(value: Any, fix: Callable[[Path], Path]) -> Any:
    if isinstance(value, Path):
        return fix(value)
    if isinstance(value, list):
        return [_resolved(v, fix) for v in value]
    if isinstance(value, dict):
        return {k: _resolved(v, fix) for k, v in value.items()}
    return value


def _resolve_path_fields(section: BaseModel, fix: Callable[[Path], Path]) -> None:
    """Resolve every Path-typed field of `section` and of the sections inside it, walking the schema,
    so a path field added to any section is resolved without being listed here."""
    for name, info in type(section).model_fields.items():
        value = getattr(section, name)
        if value is None:
            continue
        if _is_path_type(info.annotation):
            setattr(section, name, _resolved(value, fix))
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, BaseModel):
                _resolve_path_fields(child, fix)


def _resolve_paths(config: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Make every path field absolute, relative to the config file's directory."""

    def fix(p: Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else (base / p).resolve()

    _resolve_path_fields(config, fix)
    # Two str fields may hold paths: the chat template (a Jinja file) and the model, which may be a hub id.
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
        raise ConfigError(source, error_messages(_drop_inherited(exc.errors(), lines), lines)) from None
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


def save_resolved(config: ExperimentConfig, out_dir: str | Path, notes: list[str] | None = None) -> Path:
    """Write the resolved config next to an output (config.resolved.yaml); `notes` become comment lines
    at its top (a training run's auto choices and their reasons)."""
    from ..io import write_text

    header = "".join(f"# {line}\n" for note in notes or [] for line in note.splitlines())
    return write_text(Path(out_dir) / "config.resolved.yaml", header + config.to_yaml())
