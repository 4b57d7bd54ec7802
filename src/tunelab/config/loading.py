"""Reading an experiment file: YAML with line numbers, `key=value` overrides, validation with errors that
name the dotted path and line, path resolution relative to the file, and saving the resolved config."""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError, TunelabError
from .experiment import ExperimentConfig


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
    from ..io import write_text

    return write_text(Path(out_dir) / "config.resolved.yaml", config.to_yaml())
