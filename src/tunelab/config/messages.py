"""One wording for every pydantic validation error a user sees, from a config file or from options.

Each error names its dotted path in an experiment file, then where the value came from (its line in
the file, or the command-line option that set it), then what was expected and what was found:

    train.lr (line 5): must be > 0, got -1
    train.epocs (line 6): unknown key; did you mean 'epochs'?
    synth.teacher.concurrency (--concurrency): must be > 0, got 0

`tunelab.config.loading` uses it for files; every CLI command that validates options against a config
section calls `options_error`, so a bad option reads like the same mistake made in a file.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Mapping

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError

# Names users bring from other tools (PEFT, HF TrainingArguments, Axolotl) mapped to ours.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "learning_rate": "lr",
    "num_epochs": "epochs", "num_train_epochs": "epochs", "micro_batch_size": "batch_size",
    "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "lr_scheduler_type": "scheduler", "sequence_len": "max_length", "max_seq_length": "max_length",
}


def _models_in(annotation: typing.Any) -> list[type[BaseModel]]:
    """The config sections an annotation holds: `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _models_in(a)]


def _fields_at(path: tuple) -> list[str]:
    """Field names valid at a dotted path of the schema (for did-you-mean)."""
    from .experiment import ExperimentConfig

    model: type[BaseModel] | None = ExperimentConfig
    for part in path:
        if isinstance(part, int):
            continue  # a list's element has the list field's section (stages, mixture, compare.extra)
        info = model.model_fields.get(part) if model is not None else None
        if info is None:
            return []
        models = _models_in(info.annotation)
        model = models[0] if models else None
    return list(model.model_fields) if model else []


def dotted(path: tuple) -> str:
    """("stages", 0, "train", "lr") -> "stages[0].train.lr"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def line_of(loc: tuple, lines: Mapping[tuple, int]) -> int:
    """The line of the deepest key of `loc` the file has (0 when none)."""
    for i in range(len(loc), 0, -1):
        if loc[:i] in lines:
            return lines[loc[:i]]
    return 0


def format_error(err: Mapping[str, typing.Any], lines: Mapping[tuple, int] | None = None,
                 prefix: tuple = (), flags: Mapping[str, str] | None = None) -> str:
    """One pydantic error as `dotted.path (line N | --flag): what is wrong, got X`.

    `prefix` is where the validated section sits in an experiment file (("synth",) for a SynthConfig);
    `lines` maps key paths of the file to lines; `flags` maps dotted paths to the options that set them."""
    loc = prefix + tuple(p for p in err["loc"] if not str(p).startswith("function-"))
    where = dotted(loc) or "(top level)"
    line = line_of(loc, lines or {})
    flag = (flags or {}).get(dotted(loc))
    if line:
        where += f" (line {line})"
    elif flag:
        where += f" ({flag})"
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
    msg = " ".join(str(err["msg"]).removeprefix("Value error, ").split())
    if given is not None and not isinstance(given, dict | list):
        return f"{where}: {msg}, got {given!r}"
    return f"{where}: {msg}"


def error_messages(errors: list[Mapping[str, typing.Any]], lines: Mapping[tuple, int] | None = None,
                   prefix: tuple = (), flags: Mapping[str, str] | None = None) -> list[str]:
    """Every error formatted, in the order of the lines they are on (options keep pydantic's order)."""
    ordered = sorted(errors, key=lambda e: line_of(prefix + tuple(e["loc"]), lines or {}))
    return [format_error(e, lines, prefix, flags) for e in ordered]


def options_error(exc: ValidationError, section: str, flags: Mapping[str, str]) -> ConfigError:
    """The error for command-line options that do not validate against a config section (`section` is
    its dotted place in an experiment file, "" for the whole file; `flags` maps dotted paths to the
    options, e.g. {"rag.chunk_overlap": "--overlap"})."""
    prefix = tuple(section.split(".")) if section else ()
    return ConfigError("options", error_messages(exc.errors(), prefix=prefix, flags=flags))
