"""Record formats: recognise what a dataset row is, validate it, and turn it into a canonical Record.

Supported formats (fields in brackets are optional):

- alpaca:            instruction, output, [input], [system]            -> chat record
- chat:              messages = [{role, content}, ...]                  -> chat record
- sharegpt:          conversations = [{from, value}, ...], [system]     -> chat record
- prompt_completion: prompt, completion (each a string or a message list, as in TRL) -> chat record
- text:              text                                               -> text record
- label:             text, label (a string or an integer)               -> label record
- preference:        [prompt], chosen, rejected (each a string or a message list, as in TRL; without a
                     prompt, chosen and rejected are whole conversations sharing it) -> preference record
- qna:               question, answer, [context] (InstructLab qna, SQuAD-style exports, FAQ dumps) -> chat record

A qna row becomes one user turn and one assistant turn (the answer). The context, when a row has one,
comes first in the user turn, then a blank line, then the question: the passage is read before the
question it is about, as in reading-comprehension prompts, and the answer is trained after both.

Detection (`detect_format`) looks at which fields a row has (null values count as absent) and takes
the first match in this order:

    1. preference         chosen and rejected
    2. chat               messages
    3. sharegpt           conversations
    4. alpaca             instruction
    5. prompt_completion  prompt and completion
    6. label              text and label
    7. text               text
    8. qna                question and answer

so a preference row with a prompt is never taken for prompt/completion, and text with a label is a
classification row; qna comes last, so a row that was one of the older formats before qna existed
still is (a row with text, question and answer is a text row with the other two kept in meta). `read_records` detects the format once per file from its first readable row
(or takes the one forced by the caller) and holds every later row of the file to it.

Validation rules beyond types: text fields must not be blank; roles are matched case-insensitively
(ShareGPT's human/gpt/model are mapped to user/assistant); a conversation needs a user turn, may
have a system turn only first, and (for chat data) must end with an assistant turn, while a
preference prompt must end with a user turn and chosen/rejected must be one different assistant
reply each. Repeated roles in a row are allowed. Messages keep only role and content.

Every problem names file, line, field (a dotted path for nested fields, e.g. `messages[2].role`) and a
short reason code used for skip counts; see REASONS. Rows whose fields have other names are read
through a field mapping (`fields`, see fieldmap.py), whose problems name the user's own field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, Problem, TunelabError
from .fieldmap import FieldMap
from .readers import RawRow, iter_rows, type_name
from .records import Record

FORMATS = ("alpaca", "chat", "sharegpt", "prompt_completion", "text", "label", "preference", "qna")

REASONS = {
    "invalid_json": "the line (or file) is not valid JSON",
    "not_object": "the row is valid JSON but not an object",
    "non_utf8": "the line has bytes that are not UTF-8",
    "line_too_long": "the line is longer than max_line_bytes and was not parsed",
    "invalid_csv": "a CSV/TSV record that cannot be parsed or has more values than columns",
    "missing_field": "a required field is absent or null",
    "empty_field": "a required text field is empty or only whitespace",
    "wrong_type": "a field has the wrong JSON type",
    "unknown_role": "a message role that is not system, user, assistant or tool (or a ShareGPT alias)",
    "bad_conversation": "the turns do not make a trainable conversation",
    "format_mismatch": "the row has none of the fields of the file's format",
}

_DETECT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("preference", ("chosen", "rejected")),
    ("chat", ("messages",)),
    ("sharegpt", ("conversations",)),
    ("alpaca", ("instruction",)),
    ("prompt_completion", ("prompt", "completion")),
    ("label", ("text", "label")),
    ("text", ("text",)),
    ("qna", ("question", "answer")),
)

# The fields each format reads (everything else in a row goes to record.meta) ...
_USED = {
    "alpaca": frozenset({"instruction", "input", "output", "system"}),
    "chat": frozenset({"messages"}),
    "sharegpt": frozenset({"conversations", "system"}),
    "prompt_completion": frozenset({"prompt", "completion"}),
    "text": frozenset({"text"}),
    "label": frozenset({"text", "label"}),
    "preference": frozenset({"prompt", "chosen", "rejected"}),
    "qna": frozenset({"question", "answer", "context"}),
}
# ... and the ones a row must have at least one of to be that format at all (else format_mismatch).
_REQUIRED = {
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
    "label": ("text", "label"),
    "preference": ("chosen", "rejected"),
    "qna": ("question", "answer"),
}
_HELP = {
    "alpaca": "instruction, output",
    "chat": "messages",
    "sharegpt": "conversations",
    "prompt_completion": "prompt, completion",
    "text": "text",
    "label": "text, label",
    "preference": "prompt, chosen, rejected",
    "qna": "question, answer, [context]",
}

CHAT_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
}


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row looks like, by the fields it has (see the module docstring), or None."""
    for fmt, keys in _DETECT:
        if all(row.get(k) is not None for k in keys):
            return fmt
    return None


def supported_formats() -> str:
    """One line listing every format with the fields it needs, for error messages."""
    return "; ".join(f"{fmt} ({_HELP[fmt]})" for fmt in FORMATS)


# -- validation --------------------------------------------------------------------------------------
def _a(word: str) -> str:
    # Only the role names reach here; of those, only "assistant" takes "an" ("a user", "a tool").
    return f"an {word}" if word == "assistant" else f"a {word}"


class _Check:
    """Problems found in one row so far; every helper reports with the row's file and line."""

    __slots__ = ("file", "line", "problems")

    def __init__(self, file: str, line: int | None):
        self.file = file
        self.line = line
        self.problems: list[Problem] = []

    def add(self, path: str | None, message: str, reason: str) -> None:
        self.problems.append(Problem(self.file, self.line, path, message, reason))

    def text(
        self, obj: dict, key: str, path: str, *, required: bool = True, expected: str = "a string"
    ) -> str | None:
        """obj[key] as a non-blank string; None (with a problem when required) otherwise."""
        value = obj.get(key)
        if value is None:
            if required:
                self.add(path, "is null" if key in obj else "missing required field", "missing_field")
            return None
        if type(value) is not str:
            self.add(path, f"expected {expected}, got {type_name(value)}", "wrong_type")
            return None
        if not value.strip():
            if required:
                self.add(path, "is empty", "empty_field")
            return None
        return value

    def messages(
        self, obj: dict, key: str, role_key: str, content_key: str, roles: dict[str, str]
    ) -> list[dict[str, str]] | None:
        """obj[key] as a list of {role, content} with canonical roles; None if any turn is invalid."""
        value = obj.get(key)
        if value is None:
            self.add(key, "is null" if key in obj else "missing required field", "missing_field")
            return None
        if type(value) is not list:
            self.add(key, f"expected an array of messages, got {type_name(value)}", "wrong_type")
            return None
        if not value:
            self.add(key, "has no messages", "empty_field")
            return None
        # Fast path for the common all-valid case (this runs once per turn of every row); any
        # irregularity falls through to the turn-by-turn check that names the exact problem.
        try:
            out = [{"role": roles[m[role_key]], "content": m[content_key]} for m in value]
            if all(type(t["content"]) is str and t["content"].strip() for t in out):
                return out
        except (TypeError, KeyError):
            pass
        out = []
        for i, msg in enumerate(value):
            turn = self._turn(msg, f"{key}[{i}]", role_key, content_key, roles)
            if turn is not None:
                out.append(turn)
        return out if len(out) == len(value) else None

    def _turn(
        self, msg: Any, path: str, role_key: str, content_key: str, roles: dict[str, str]
    ) -> dict[str, str] | None:
        if type(msg) is not dict:
            self.add(
                path,
                f"expected an object with '{role_key}' and '{content_key}', got {type_name(msg)}",
                "wrong_type",
            )
            return None
        raw = msg.get(role_key)
        role = None
        if raw is None:
            self.add(f"{path}.{role_key}", "missing required field", "missing_field")
        elif type(raw) is not str:
            self.add(f"{path}.{role_key}", f"expected a string, got {type_name(raw)}", "wrong_type")
        else:
            role = roles.get(raw) or roles.get(raw.strip().lower())
            if role is None:
                self.add(
                    f"{path}.{role_key}",
                    f"unknown role '{raw}'; expected one of: {', '.join(roles)}",
                    "unknown_role",
                )
        content = self.text(msg, content_key, f"{path}.{content_key}")
        if role is None or content is None:
            return None
        return {"role": role, "content": content}

    def turns(self, obj: dict, key: str, default_role: str) -> list[dict[str, str]] | None:
        """A field that is either one string (a turn by `default_role`) or a list of chat messages."""
        if type(obj.get(key)) is list:
            return self.messages(obj, key, "role", "content", CHAT_ROLES)
        text = self.text(obj, key, key, expected="a string or an array of messages")
        return None if text is None else [{"role": default_role, "content": text}]

    def conversation(
        self,
        msgs: list[dict[str, str]],
        path_of: Callable[[int], str],
        user_field: str,
        end_field: str,
        end: str,
    ) -> None:
        """Structural checks: system only first, a user turn, and the right role last."""
        roles = [m["role"] for m in msgs]
        for i, role in enumerate(roles):
            if role == "system" and i > 0:
                self.add(path_of(i), "a system message is only allowed as the first turn", "bad_conversation")
        if "user" not in roles:
            self.add(user_field, "the conversation has no user turn", "bad_conversation")
        if end == "assistant" and "assistant" not in roles:
            self.add(
                end_field,
                "the conversation has no assistant turn; there is nothing to train on",
                "bad_conversation",
            )
        elif roles[-1] != end:
            self.add(
                path_of(len(msgs) - 1),
                f"the conversation ends with {_a(roles[-1])} turn; the last turn must be the {end}'s",
                "bad_conversation",
            )


# -- one converter per format ------------------------------------------------------------------------
def _indexed(key: str, start: int = 0) -> Callable[[int], str]:
    """The path of turn i of list field `key` (whose first turn is turn `start` of the conversation)."""
    return lambda i: f"{key}[{i - start}]"


def _alpaca(row: dict, c: _Check) -> Record | None:
    instruction = c.text(row, "instruction", "instruction")
    extra = c.text(row, "input", "input", required=False)
    output = c.text(row, "output", "output")
    system = c.text(row, "system", "system", required=False)
    if instruction is None or output is None or c.problems:
        return None
    user = f"{instruction}\n\n{extra}" if extra else instruction
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return Record(kind="chat", messages=msgs)


def _chat(row: dict, c: _Check) -> Record | None:
    msgs = c.messages(row, "messages", "role", "content", CHAT_ROLES)
    if msgs is None:
        return None
    c.conversation(msgs, _indexed("messages"), "messages", "messages", "assistant")
    return None if c.problems else Record(kind="chat", messages=msgs)


def _sharegpt(row: dict, c: _Check) -> Record | None:
    system = c.text(row, "system", "system", required=False)
    msgs = c.messages(row, "conversations", "from", "value", SHAREGPT_ROLES)
    if msgs is None:
        return None
    c.conversation(msgs, _indexed("conversations"), "conversations", "conversations", "assistant")
    if system and msgs[0]["role"] == "system":
        c.add(
            "system", "both a 'system' field and a system turn in conversations; keep one", "bad_conversation"
        )
    if c.problems:
        return None
    if system:
        msgs = [{"role": "system", "content": system}, *msgs]
    return Record(kind="chat", messages=msgs)


def _prompt_completion(row: dict, c: _Check) -> Record | None:
    prompt = c.turns(row, "prompt", "user")
    completion = c.turns(row, "completion", "assistant")
    if prompt is None or completion is None:
        return None
    n = len(prompt)
    prompt_path, completion_path = _field_path(row, "prompt"), _field_path(row, "completion", n)
    c.conversation(
        prompt + completion,
        lambda i: prompt_path(i) if i < n else completion_path(i),
        "prompt",
        "completion",
        "assistant",
    )
    return None if c.problems else Record(kind="chat", messages=prompt + completion)


def _field_path(row: dict, key: str, start: int = 0) -> Callable[[int], str]:
    # A string field is one turn whose path is the field itself; a list field has one path per message.
    return _indexed(key, start) if type(row.get(key)) is list else (lambda _i: key)


def _text(row: dict, c: _Check) -> Record | None:
    text = c.text(row, "text", "text")
    return None if text is None else Record(kind="text", text=text)


def _label(row: dict, c: _Check) -> Record | None:
    text = c.text(row, "text", "text")
    value = row.get("label")
    label = None
    if type(value) is int:
        label = str(value)
    elif value is None or type(value) is str:
        # Class names are compared exactly downstream (stratified splits, accuracy), so trim them.
        label = c.text(row, "label", "label")
        label = label.strip() if label is not None else None
    else:
        c.add("label", f"expected a string or an integer, got {type_name(value)}", "wrong_type")
    if text is None or label is None:
        return None
    return Record(kind="label", text=text, label=label)


def _preference(row: dict, c: _Check) -> Record | None:
    has_prompt = row.get("prompt") is not None
    prompt = c.turns(row, "prompt", "user") if has_prompt else []
    chosen = c.turns(row, "chosen", "assistant")
    rejected = c.turns(row, "rejected", "assistant")
    if prompt is None or chosen is None or rejected is None:
        return None
    prompt_path = _field_path(row, "prompt")
    if not has_prompt:
        if type(row["chosen"]) is not list or type(row["rejected"]) is not list:
            c.add(
                "prompt",
                "missing required field (it may be left out only when chosen and rejected are whole "
                "conversations that share the prompt)",
                "missing_field",
            )
            return None
        # TRL's implicit-prompt form: the shared leading turns are the prompt.
        k = _common_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
        prompt_path = _indexed("chosen")
        if not prompt:
            c.add(
                "chosen",
                "chosen and rejected share no prompt turns and there is no 'prompt' field",
                "bad_conversation",
            )
            return None
    c.conversation(prompt, prompt_path, "prompt", "prompt", "user")
    for name, reply in (("chosen", chosen), ("rejected", rejected)):
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            roles = ", ".join(m["role"] for m in reply) or "none"
            c.add(
                name,
                f"must be exactly one assistant reply after the prompt; got turns: {roles}",
                "bad_conversation",
            )
    if not c.problems and chosen[0]["content"] == rejected[0]["content"]:
        c.add("rejected", "is the same reply as chosen; the pair teaches nothing", "bad_conversation")
    if c.problems:
        return None
    return Record(
        kind="preference", messages=prompt, chosen=chosen[0]["content"], rejected=rejected[0]["content"]
    )


def _qna(row: dict, c: _Check) -> Record | None:
    question = c.text(row, "question", "question")
    answer = c.text(row, "answer", "answer")
    context = c.text(row, "context", "context", required=False)
    if question is None or answer is None or c.problems:
        return None
    user = f"{context}\n\n{question}" if context else question
    return Record(kind="chat", messages=[{"role": "user", "content": user}, {"role": "assistant", "content": answer}])


def _common_prefix(a: list[dict[str, str]], b: list[dict[str, str]]) -> int:
    # Never the whole of either list: each side keeps at least its last turn as the reply.
    limit = min(len(a), len(b)) - 1
    k = 0
    while k < limit and a[k] == b[k]:
        k += 1
    return k


_CONVERTERS = {
    "alpaca": _alpaca,
    "chat": _chat,
    "sharegpt": _sharegpt,
    "prompt_completion": _prompt_completion,
    "text": _text,
    "label": _label,
    "preference": _preference,
    "qna": _qna,
}


def to_record(
    row: dict[str, Any], fmt: str, file: str, line: int | None
) -> tuple[Record | None, list[Problem]]:
    """Validate `row` as format `fmt` and convert it: (record, []) or (None, problems).

    Fields the format does not use are kept in record.meta (a "meta" object is merged into it),
    with meta["file"], meta["line"] and meta["format"] added for provenance.
    """
    if fmt not in _CONVERTERS:
        raise TunelabError(f"unknown data format '{fmt}'; supported: {', '.join(FORMATS)}")
    if not any(row.get(k) is not None for k in _REQUIRED[fmt]):
        keys = ", ".join(k for k, v in row.items() if v is not None) or "none"
        msg = f"expected {fmt} fields ({_HELP[fmt]}); got keys: {keys}"
        return None, [Problem(file, line, None, msg, "format_mismatch")]
    check = _Check(file, line)
    record = _CONVERTERS[fmt](row, check)
    if record is None or check.problems:
        return None, check.problems
    used = _USED[fmt]
    meta: dict[str, Any] = {}
    for key, value in row.items():
        if key in used or value is None:
            continue
        if key == "meta" and type(value) is dict:
            meta.update(value)
        else:
            meta[key] = value
    meta["file"], meta["line"], meta["format"] = file, line, fmt
    record.meta = meta
    return record, []


# -- reading whole inputs ----------------------------------------------------------------------------
@dataclass
class ReadResult:
    records: list[Record]
    rows_in: int = 0  # rows seen (blank lines are not rows), valid or not
    skipped: dict[str, int] = field(default_factory=dict)  # bad rows by the reason of their first problem
    problems: list[Problem] = field(default_factory=list)  # the first max_errors problems
    formats: dict[str, str] = field(default_factory=dict)  # file -> detected (or forced) format
    problem_count: int = 0  # every problem found, kept or not


class _Collector:
    """Keeps the first `cap` problems and counts all of them, and bad rows by reason."""

    def __init__(self, result: ReadResult, cap: int):
        self.result = result
        self.cap = cap

    def bad_row(self, problems: list[Problem], unit: str) -> None:
        res = self.result
        reason = problems[0].reason
        res.skipped[reason] = res.skipped.get(reason, 0) + 1
        res.problem_count += len(problems)
        room = self.cap - len(res.problems)
        if room > 0:
            if unit != "line":
                # Problem prints "file:N"; for tables N is a row number, so the message says so.
                problems = [dataclasses.replace(p, message=f"{unit} {p.line}: {p.message}") for p in problems]
            res.problems.extend(problems[:room])


def read_records(
    paths: Sequence[str | Path],
    fmt: str = "auto",
    *,
    skip_invalid: bool = False,
    max_line_bytes: int = 1_000_000,
    max_errors: int = 50,
    split: str | None = None,
    fields: dict[str, str] | None = None,
) -> ReadResult:
    """Read, validate and convert every row of `paths` into Records.

    `fields` ({format field: source field}) renames each row's fields first (fieldmap.py).
    The format is detected per file from its first readable row unless `fmt` forces one. By default
    any problem in any file raises InputError (listing the first `max_errors`, counting all) after
    every file has been checked; with skip_invalid=True bad rows are dropped and counted by reason.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise TunelabError(f"unknown data format '{fmt}'; use auto or one of: {', '.join(FORMATS)}")
    if not paths:
        raise TunelabError("no input files given")
    fieldmap = FieldMap(fields) if fields else None
    result = ReadResult(records=[])
    collector = _Collector(result, max_errors)
    with _gc_paused():
        for path in paths:
            _read_file(Path(path), fmt, result, collector, max_line_bytes, split, fieldmap)
    bad_rows = sum(result.skipped.values())
    if bad_rows and not skip_invalid:
        raise InputError(
            result.problems,
            total=result.problem_count,
            header=(
                f"{bad_rows} of {result.rows_in} row(s) are invalid ({result.problem_count} problem(s)); "
                "nothing was read. Fix them, or skip bad rows with skip_invalid (--skip-invalid):"
            ),
        )
    if not result.records:
        raise InputError(
            result.problems,
            total=result.problem_count,
            header=f"all {result.rows_in} row(s) of {', '.join(map(str, paths))} are invalid; nothing to use:",
        )
    return result


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Reading allocates millions of small dicts and strings that form no reference cycles; the
    # cyclic collector rescans them all many times over for nothing (about a third of the time).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_file(
    path: Path,
    fmt: str,
    result: ReadResult,
    collector: _Collector,
    max_line_bytes: int,
    split: str | None,
    fieldmap: FieldMap | None,
) -> None:
    file = str(path)
    file_fmt = None if fmt == "auto" else fmt
    if file_fmt is not None:
        result.formats[file] = file_fmt
    records = result.records
    for raw in iter_rows(path, max_line_bytes=max_line_bytes, split=split):
        result.rows_in += 1
        if raw.problem is not None:
            collector.bad_row([raw.problem], raw.unit)
            continue
        row = raw.row
        if fieldmap is not None:
            row, problems = fieldmap.apply(row, file, raw.line)
            if problems:
                collector.bad_row(problems, raw.unit)
                continue
        if file_fmt is None:
            file_fmt = detect_format(row)
            if file_fmt is None:
                raise TunelabError(_no_format(raw, row))
            result.formats[file] = file_fmt
        record, problems = to_record(row, file_fmt, file, raw.line)
        if record is None:
            collector.bad_row(fieldmap.relabel(problems) if fieldmap else problems, raw.unit)
        else:
            records.append(record)


def _no_format(raw: RawRow, row: dict[str, Any]) -> str:
    keys = ", ".join(k for k, v in row.items() if v is not None) or "none"
    return (
        f"{raw.file}: {raw.unit} {raw.line}: cannot tell the data format from the first row (keys: {keys}). "
        f"Supported formats and their fields: {supported_formats()}. Map your fields to a format's "
        "(data.fields, or --field prompt=q --field completion=a), or name the format explicitly if the "
        "fields are there."
    )
