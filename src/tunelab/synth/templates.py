"""Prompt templates of the synth stage: versioned text files, overridable by the user.

    template = load_template("qa")                       # tunelab's prompts/qa.txt
    template = load_template("qa", "my-prompts/")       # my-prompts/qa.txt when it exists, else tunelab's
    conversation = template.render(text=chunk.text, source=chunk.source, n=3)

A template file (the same layout as the judge's prompt files):

    version: qa/1
    about: one line saying what the prompt is for
    [system]
    ...
    [example_user]          optional: a worked example, sent as a user turn ...
    ...
    [example_assistant]     ... and the reply it should get, before the real request
    ...
    [user]
    ... $text ... $n ...    string.Template placeholders; $$ is a literal dollar

`version` is what every generated record carries; `sha256` (of the file) is recorded next to it in the
manifest, so an edited file whose version was not bumped is still told apart. Placeholders a template
must use are checked when it is loaded: a teacher that never sees the chunk cannot ground anything.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..llm.spec import Conversation

PROMPT_DIR = Path(__file__).parent / "prompts"
_SECTIONS = ("system", "example_user", "example_assistant", "user")


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    about: str
    system: str
    user: str
    example_user: str | None
    example_assistant: str | None
    path: Path
    sha256: str
    bundled: bool

    def render(self, **values: Any) -> Conversation:
        """system, the worked example (if any), then the user request with `values` filled in."""
        try:
            user = string.Template(self.user).substitute({k: str(v) for k, v in values.items()})
        except KeyError as exc:
            raise TunelabError(f"prompt {self.path}: no value for placeholder ${exc.args[0]} "
                               f"(this prompt is given: {', '.join(sorted(values))})") from None
        except ValueError as exc:  # a lone $ or a malformed ${...}
            raise TunelabError(f"prompt {self.path}: {exc} (write $$ for a literal dollar)") from None
        conv: Conversation = [{"role": "system", "content": self.system}]
        if self.example_user and self.example_assistant:
            conv += [{"role": "user", "content": self.example_user},
                     {"role": "assistant", "content": self.example_assistant}]
        conv.append({"role": "user", "content": user})
        return conv

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the prompt."""
        return {"version": self.version, "sha256": self.sha256,
                "file": "bundled" if self.bundled else str(self.path)}


def parse_template(text: str, path: Path, name: str, bundled: bool = False) -> PromptTemplate:
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line_no, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("[") and stripped.endswith("]") and stripped[1:-1] in _SECTIONS:
            if stripped[1:-1] in sections:
                raise TunelabError(f"{path}:{line_no}: section {stripped} appears twice")
            current = sections.setdefault(stripped[1:-1], [])
        elif current is not None:
            current.append(line)
        elif stripped and not stripped.startswith("#"):
            key, sep, value = stripped.partition(":")
            if not sep:
                raise TunelabError(f"{path}:{line_no}: expected 'key: value' (version:, about:) before "
                                   f"the first section; sections are {', '.join(f'[{s}]' for s in _SECTIONS)}")
            header[key.strip()] = value.strip()
    missing = [f"[{s}]" for s in ("system", "user") if s not in sections]
    if not header.get("version"):
        missing.append("a 'version:' line")
    if missing:
        raise TunelabError(f"prompt {path}: missing {', '.join(missing)}")
    body = {k: "\n".join(v).strip() for k, v in sections.items()}
    if ("example_user" in body) != ("example_assistant" in body):
        raise TunelabError(f"prompt {path}: [example_user] and [example_assistant] go together; give both or neither")
    return PromptTemplate(
        name=name, version=header["version"], about=header.get("about", ""), system=body["system"],
        user=body["user"], example_user=body.get("example_user"), example_assistant=body.get("example_assistant"),
        path=path, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), bundled=bundled,
    )


def load_template(name: str, override_dir: str | Path | None = None,
                  required: Sequence[str] = ()) -> PromptTemplate:
    """`<override_dir>/<name>.txt` if it exists, else tunelab's; `required` placeholders must appear in
    its [user] section."""
    path, bundled = PROMPT_DIR / f"{name}.txt", True
    if override_dir is not None:
        directory = Path(override_dir).expanduser()
        if not directory.is_dir():
            raise TunelabError(f"prompt directory {directory} not found (synth.prompts / --prompts)")
        if (directory / f"{name}.txt").is_file():
            path, bundled = directory / f"{name}.txt", False
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TunelabError(f"prompt {path}: cannot read it ({exc})") from None
    template = parse_template(text, path, name, bundled)
    placeholders = _placeholders(template)
    absent = [p for p in required if p not in placeholders]
    if absent:
        raise TunelabError(f"prompt {path}: its [user] section must use {', '.join('$' + p for p in absent)}")
    return template


def _placeholders(template: PromptTemplate) -> set[str]:
    found = set()
    for match in string.Template.pattern.finditer(template.user):
        name = match.group("named") or match.group("braced")
        if name:
            found.add(name)
    return found


def bundled_names() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))
