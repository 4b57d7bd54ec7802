"""Reward functions of the grpo objective: built-ins by name, and the user's own by import path.

A reward scores sampled completions; `build_rewards(train.rewards)` turns the config entries into
`BoundReward`s, each scoring a batch of `Sample`s with one number per sample. Every entry of REWARDS
carries its own facts (what it needs, its options and their defaults); config/grpo.py lists the names.

Built-ins (1 is best for all of them):
- exact_match: 1 when the completion equals the reference after SQuAD normalisation (lowercase, no
  punctuation, articles or extra spaces; tunelab.evaluate.metrics.text), else 0.
- rougeL: ROUGE-L F-measure against the reference (rouge-score, stemmed), 0-1.
- regex: 1 when `pattern` is found in the completion (`mode: search`, default) or matches all of it
  (`mode: fullmatch`), else 0.
- json: 1 when the completion parses as JSON and, given `schema` (a JSON schema object), satisfies it,
  else 0. The common keywords are checked (type, properties, required, additionalProperties, items,
  enum, const, min/max items, length and value); a schema using others is refused at the start.
- length: 1 at `target` tokens (the completion's generated tokens, end-of-turn included), falling
  linearly to 0 at 0 and at 2 x target, 0 beyond.
- label: classification; 1 when the completion, stripped and case-folded, equals the label, else 0.
- judge: an LLM judge's 1-5 accuracy rating against the reference (tunelab.evaluate.judge, any backend
  spec eval.judge takes: `spec` and the same options), mapped to 0-1; a completion the judge could not
  rate after its retries scores 0.

A user function `package.module:function` is imported (from sys.path, which includes the working
directory) and called as `fn(completion, prompt=messages, reference=str|None, **options)` once per
completion; it runs the user's own code in the training process. A function that cannot be imported,
raises, or returns something other than a finite number stops training with a TunelabError naming it.
"""

from __future__ import annotations

import importlib
import json
import math
import numbers
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config.grpo import RewardConfig
from ..errors import TunelabError


@dataclass(frozen=True)
class Sample:
    """One sampled completion and what it answered."""

    prompt: list[dict[str, str]]
    completion: str
    reference: str | None
    n_tokens: int  # generated tokens, the end-of-turn token included when the model stopped


Scorer = Callable[[Sequence[Sample]], list[float]]


@dataclass(frozen=True)
class Reward:
    """A built-in: its name, whether it needs a reference answer, its options with their defaults, which
    of them must be given, and how it is built from them."""

    name: str
    summary: str
    needs_reference: bool
    options: dict[str, Any]
    build: Callable[[dict[str, Any]], Scorer]
    required: tuple[str, ...] = ()


@dataclass(frozen=True)
class BoundReward:
    """A configured reward: its log name, weight and scorer."""

    label: str
    weight: float
    scorer: Scorer
    needs_reference: bool = False

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        if self.needs_reference:
            missing = sum(s.reference is None for s in samples)
            if missing:
                raise TunelabError(f"reward {self.label} compares with a reference answer, but {missing} prompt(s) "
                                   "have none (chat records must end with the expected assistant reply)")
        try:
            values = self.scorer(samples)
        except TunelabError:
            raise
        except Exception as exc:  # the user's (or a library's) error, named after the reward that raised it
            raise TunelabError(f"reward {self.label} raised {type(exc).__name__}: {exc}") from exc
        return [_number(self.label, v) for v in values]


def _number(label: str, value: Any) -> float:
    # numbers.Real: numpy and torch scalars are numbers too; a bool is not a score
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TunelabError(f"reward {label} returned {value!r} ({type(value).__name__}); a reward must return "
                           "a finite number")
    return float(value)


# -- built-ins ------------------------------------------------------------------------------------------


def _per_sample(fn: Callable[[Sample], float]) -> Scorer:
    return lambda samples: [fn(s) for s in samples]


def _exact_match(_options: dict[str, Any]) -> Scorer:
    from ..evaluate.metrics.text import exact_match_score

    return _per_sample(lambda s: exact_match_score(s.completion, s.reference or ""))


def _rouge_l(_options: dict[str, Any]) -> Scorer:
    from ..evaluate.metrics.base import MetricInputs
    from ..evaluate.metrics.text import rougeL

    def score(samples: Sequence[Sample]) -> list[float]:
        inputs = MetricInputs([s.completion for s in samples], [s.reference or "" for s in samples])
        return list(rougeL(inputs).per_example)

    return score


def _regex(options: dict[str, Any]) -> Scorer:
    try:
        pattern = re.compile(str(options["pattern"]), re.DOTALL)
    except re.error as exc:
        raise TunelabError(f"reward regex: pattern {options['pattern']!r} is not a regular expression: {exc}") from None
    if options["mode"] not in ("search", "fullmatch"):
        raise TunelabError(f"reward regex: mode must be search or fullmatch, not {options['mode']!r}")
    match = pattern.search if options["mode"] == "search" else pattern.fullmatch
    return _per_sample(lambda s: float(match(s.completion) is not None))


_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}
# The JSON-schema keywords the json reward checks; a schema using any other is refused when training
# starts rather than half-checked (annotations such as title and description are fine).
_SCHEMA_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const",
                    "minItems", "maxItems", "minLength", "maxLength", "minimum", "maximum",
                    "title", "description", "$schema"}


def _check_schema(node: Any, where: str = "schema") -> None:
    if not isinstance(node, dict):
        raise TunelabError(f"reward json: {where} must be a JSON-schema object, not {type(node).__name__}")
    odd = sorted(set(node) - _SCHEMA_KEYWORDS)
    if odd:
        raise TunelabError(f"reward json: {where} uses {', '.join(odd)}, which this reward does not check; it "
                           f"checks {', '.join(sorted(_SCHEMA_KEYWORDS))}")
    types = node.get("type", [])
    for t in [types] if isinstance(types, str) else types:
        if t not in _JSON_TYPES:
            raise TunelabError(f"reward json: {where}.type {t!r} is not a JSON type")
    for key, sub in (node.get("properties") or {}).items():
        _check_schema(sub, f"{where}.properties.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _check_schema(node[key], f"{where}.{key}")


def json_valid(value: Any, schema: dict[str, Any]) -> bool:
    """Whether a parsed JSON value satisfies the schema (the keywords _SCHEMA_KEYWORDS names)."""
    types = schema.get("type")
    if types is not None and not any(_JSON_TYPES[t](value) for t in ([types] if isinstance(types, str) else types)):
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(k not in value for k in schema.get("required", [])):
            return False
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = props.get(key, extra)
            if sub is False or (isinstance(sub, dict) and not json_valid(item, sub)):
                return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", math.inf):
            return False
        if isinstance(schema.get("items"), dict) and not all(json_valid(v, schema["items"]) for v in value):
            return False
    if isinstance(value, str) and not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", math.inf):
        return False
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    return not numeric or schema.get("minimum", -math.inf) <= value <= schema.get("maximum", math.inf)


def _json(options: dict[str, Any]) -> Scorer:
    schema = options["schema"]
    if schema is not None:
        _check_schema(schema)

    def score(s: Sample) -> float:
        try:
            value = json.loads(s.completion)
        except ValueError:
            return 0.0
        return float(schema is None or json_valid(value, schema))

    return _per_sample(score)


def _length(options: dict[str, Any]) -> Scorer:
    target = options["target"]
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise TunelabError(f"reward length: target must be a whole number of tokens >= 1, not {target!r}")
    return _per_sample(lambda s: max(0.0, 1.0 - abs(s.n_tokens - target) / target))


def _label(_options: dict[str, Any]) -> Scorer:
    return _per_sample(lambda s: float(s.completion.strip().casefold() == (s.reference or "").strip().casefold()))


def _judge(options: dict[str, Any]) -> Scorer:
    from ..config import JudgeConfig
    from ..evaluate.judge import judge_backend, judge_predictions

    try:
        cfg = JudgeConfig(**options)
    except ValueError as exc:
        raise TunelabError(f"reward judge: bad options: {exc}") from None
    backend = judge_backend(cfg)

    def score(samples: Sequence[Sample]) -> list[float]:
        rows = [{"prompt": s.prompt, "prediction": s.completion, "reference": s.reference or ""} for s in samples]
        result = judge_predictions(rows, backend, metrics=["judge_accuracy"], retries=cfg.parse_retries)
        return [0.0 if r.value is None else (float(r.value) - 1.0) / 4.0 for r in result.scores["judge_accuracy"]]

    return score


REWARDS: dict[str, Reward] = {r.name: r for r in (
    Reward("exact_match", "1 if the completion equals the reference (normalised)", True, {}, _exact_match),
    Reward("rougeL", "ROUGE-L F-measure against the reference", True, {}, _rouge_l),
    Reward("regex", "1 if the pattern matches", False, {"pattern": None, "mode": "search"}, _regex, ("pattern",)),
    Reward("json", "1 if the completion is JSON (valid under schema, if given)", False, {"schema": None}, _json),
    Reward("length", "1 at target tokens, linearly less away from it", False, {"target": None}, _length,
           ("target",)),
    Reward("label", "1 if the completion is exactly the label", True, {}, _label),
    # the judge's options are eval.judge's (config.JudgeConfig), checked by its own validation
    Reward("judge", "an LLM judge's accuracy rating, 0-1", True, {}, _judge, ("spec",)),
)}


def _builtin_options(reward: Reward, given: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in reward.required if given.get(k) is None]
    if missing:
        raise TunelabError(f"reward {reward.name}: options.{missing[0]} is required")
    if reward.name == "judge":
        return dict(given)
    unknown = sorted(set(given) - set(reward.options))
    if unknown:
        known = ", ".join(reward.options) or "none"
        raise TunelabError(f"reward {reward.name}: unknown option(s) {', '.join(unknown)}; its options: {known}")
    return {**reward.options, **given}


# -- user functions -------------------------------------------------------------------------------------


def import_function(path: str) -> Callable[..., Any]:
    """The function `package.module:function` names; a TunelabError naming the path when it cannot be had."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TunelabError(f"reward function {path}: cannot import module {module_name!r} "
                           f"({type(exc).__name__}: {exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TunelabError(f"reward function {path}: module {module_name!r} has no function {attr!r}")
    return fn


def reward_code_digest(rewards: Sequence[Any]) -> str | None:
    """The digest of the source files of the user functions among `rewards` (None when there are none),
    found without importing them: a run trained on a reward is not the same run once its code changes."""
    import importlib.util

    from ..digest import paths_digest

    paths = []
    for reward in rewards:
        if getattr(reward, "function", None):
            module_name = reward.function.partition(":")[0]
            try:
                spec = importlib.util.find_spec(module_name)
            except (ImportError, ValueError):
                spec = None
            # a module that cannot be found is keyed by its name; training then says it cannot import it
            paths.append(spec.origin if spec is not None and spec.origin else f"<missing {module_name}>")
    return paths_digest(paths) if paths else None


def _user(path: str, options: dict[str, Any]) -> Scorer:
    fn = import_function(path)
    return _per_sample(lambda s: fn(s.completion, prompt=s.prompt, reference=s.reference, **options))


def build_rewards(configs: Sequence[RewardConfig]) -> list[BoundReward]:
    """The configured rewards, each named for the logs (a name used twice gets its position appended)."""
    if not configs:
        raise TunelabError("the grpo objective needs at least one reward in train.rewards")
    labels = [c.label for c in configs]
    out = []
    for i, cfg in enumerate(configs):
        label = cfg.label if labels.count(cfg.label) == 1 else f"{cfg.label}#{i}"
        if cfg.function is not None:
            out.append(BoundReward(label, cfg.weight, _user(cfg.function, cfg.options)))
            continue
        reward = REWARDS[str(cfg.name)]
        out.append(BoundReward(label, cfg.weight, reward.build(_builtin_options(reward, cfg.options)),
                               reward.needs_reference))
    return out


def score(rewards: Sequence[BoundReward], samples: Sequence[Sample]) -> tuple[list[float], dict[str, list[float]]]:
    """(weighted total per sample, each reward's own values by label)."""
    per = {r.label: r(samples) for r in rewards}
    totals = [sum(r.weight * per[r.label][i] for r in rewards) for i in range(len(samples))]
    return totals, per
