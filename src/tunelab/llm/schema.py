"""JSON schemas a reply is decoded under: bounded copies of a reply model's schema, their token budget,
and the short description of their shape that prompts and re-asks show a model.

    schema = reply_schema(QAReply)                       # pydantic's schema with every $ref inlined
    schema["properties"]["pairs"]["maxItems"] = 3        # a caller narrows it to what it asked for
    bounded = bound_schema(schema, max_tokens=768)       # closed objects, item counts, string lengths
    token_budget(bounded)                                # tokens a compact reply can need at most
    shape(bounded)                                       # '{"pairs": [{"question": "...", "answer": "..."}]}'

Why bounds: a grammar makes every reply parse, but a small model decoded under `{"type": "string"}`
can write one string until the token limit. With every object closed (additionalProperties false),
every array given a maxItems and every string a maxLength, a reply's longest compact form is known,
and the local engine stops there. Strings without a maxLength share what `max_tokens` leaves after
the JSON's own punctuation and keys, capped at `max_string` characters each.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

from pydantic import BaseModel

from ..errors import TunelabError

DEFAULT_MAX_ITEMS = 8
DEFAULT_MAX_STRING = 400
MIN_STRING = 16  # never squeeze a free string below this, whatever max_tokens says
_NUMBER_CHARS = 24  # a JSON number without bounds: sign, 17 significant digits, exponent


def reply_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema (by alias) with every `$ref` replaced by its definition, so a caller can
    narrow nested fields in place. Recursive models cannot be bounded and are refused."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    return _inline(schema, defs, ())


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(x, defs, seen) for x in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.split("/")[-1]
        if name in seen:
            raise TunelabError(f"reply schema: {name} refers to itself; a recursive reply cannot be bounded")
        target = _inline(defs[name], defs, (*seen, name))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**target, **_inline(rest, defs, seen)}
    return {k: _inline(v, defs, seen) for k, v in node.items()}


def bound_schema(schema: dict[str, Any], max_tokens: int, *, max_string: int = DEFAULT_MAX_STRING,
                 max_items: int = DEFAULT_MAX_ITEMS) -> dict[str, Any]:
    """A copy of `schema` whose every reply has a known longest form (see the module docstring)."""
    out = copy.deepcopy(schema)
    free: list[dict[str, Any]] = []
    _close(out, max_items, free)
    if free:
        for node in free:
            node["maxLength"] = 0
        fixed = _chars(out)
        slots = sum(_multiplicity(out, node) for node in free)
        room = int(max_tokens / _TOKEN_SLACK) - fixed
        length = max(MIN_STRING, min(max_string, room // max(1, slots)))
        for node in free:
            node["maxLength"] = max(length, int(node.get("minLength", 0)))
    return out


def _close(node: Any, max_items: int, free: list[dict[str, Any]]) -> None:
    """Close objects, give arrays an item limit, and collect the strings that have no length limit."""
    if isinstance(node, list):
        for x in node:
            _close(x, max_items, free)
        return
    if not isinstance(node, dict):
        return
    types = _types(node)
    if "object" in types and "additionalProperties" not in node:
        node["additionalProperties"] = False
    if "array" in types and "maxItems" not in node:
        node["maxItems"] = max(max_items, int(node.get("minItems", 0)))
    if "string" in types and "maxLength" not in node and "enum" not in node and "const" not in node:
        free.append(node)
    for key in ("properties", "$defs"):
        for child in (node.get(key) or {}).values():
            _close(child, max_items, free)
    for key in ("items", "anyOf", "oneOf", "allOf"):
        if key in node:
            _close(node[key], max_items, free)


def _types(node: dict[str, Any]) -> set[str]:
    t = node.get("type")
    if isinstance(t, list):
        return set(t)
    if isinstance(t, str):
        return {t}
    if "properties" in node:
        return {"object"}
    return set()


# Tokens per character of compact JSON, with room to spare: a byte-level BPE token covers at least one
# character of ASCII text; escapes and characters split across tokens cost a little more.
_TOKEN_SLACK = 1.15


def token_budget(schema: dict[str, Any]) -> int | None:
    """Most tokens a compact reply under `schema` can take (None when the schema does not bound it)."""
    try:
        return math.ceil(_chars(schema) * _TOKEN_SLACK) + 8
    except _Unbounded:
        return None


class _Unbounded(Exception):
    pass


def _chars(node: Any) -> int:
    """Longest compact JSON text that `node` admits, in characters."""
    if not isinstance(node, dict):
        raise _Unbounded
    if "const" in node:
        return len(json.dumps(node["const"]))
    if "enum" in node:
        return max(len(json.dumps(v)) for v in node["enum"])
    for key in ("anyOf", "oneOf"):
        if key in node:
            return max(_chars(branch) for branch in node[key])
    types = _types(node)
    if not types:
        raise _Unbounded
    return max(_chars_of_type(node, t) for t in types)


def _chars_of_type(node: dict[str, Any], t: str) -> int:
    if t == "object":
        if node.get("additionalProperties", True) is not False:
            raise _Unbounded
        props = node.get("properties") or {}
        inner = sum(len(json.dumps(k)) + 1 + _chars(v) for k, v in props.items())
        return 2 + inner + max(0, len(props) - 1)
    if t == "array":
        if "maxItems" not in node:
            raise _Unbounded
        n = int(node["maxItems"])
        item = _chars(node.get("items", {})) if n else 0
        return 2 + n * item + max(0, n - 1)
    if t == "string":
        if "maxLength" not in node:
            raise _Unbounded
        return 2 + int(node["maxLength"])
    if t == "integer" and "minimum" in node and "maximum" in node:
        return max(len(str(int(node["minimum"]))), len(str(int(node["maximum"]))))
    if t in ("integer", "number"):
        return _NUMBER_CHARS
    if t == "boolean":
        return 5
    if t == "null":
        return 4
    raise _Unbounded


def _multiplicity(root: dict[str, Any], target: dict[str, Any]) -> int:
    """How many times `target` can occur in one reply: the product of maxItems of the arrays above it."""
    def walk(node: Any, times: int) -> int:
        if node is target:
            return times
        if not isinstance(node, dict):
            return 0
        found = 0
        for child in (node.get("properties") or {}).values():
            found = max(found, walk(child, times))
        if isinstance(node.get("items"), dict):
            found = max(found, walk(node["items"], times * int(node.get("maxItems", 1))))
        for key in ("anyOf", "oneOf"):
            for branch in node.get(key) or []:
                found = max(found, walk(branch, times))
        return found

    return walk(root, 1)


def shape(schema: dict[str, Any]) -> str:
    """A one-line picture of the reply a schema asks for, written for small models rather than as the
    schema itself: '{"reason": "...", "score": 1}'. Small models given a raw JSON schema copy it back."""
    return _shape(schema)


def _shape(node: Any) -> str:
    if not isinstance(node, dict):
        return '"..."'
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " or ".join(json.dumps(v) for v in node["enum"][:6])
    for key in ("anyOf", "oneOf"):
        if key in node:
            branches = [b for b in node[key] if _types(b) != {"null"}]
            return _shape(branches[0] if branches else node[key][0])
    types = _types(node)
    if "object" in types:
        props = node.get("properties") or {}
        return "{" + ", ".join(f"{json.dumps(k)}: {_shape(v)}" for k, v in props.items()) + "}"
    if "array" in types:
        return "[" + _shape(node.get("items", {})) + "]"
    if "boolean" in types:
        return "true or false"
    if "integer" in types:
        if "minimum" in node and "maximum" in node:
            return f"{node['minimum']} to {node['maximum']}"
        return "0"
    if "number" in types:
        return "0.0"
    return '"..."'
