"""Secret redaction: API keys, tokens and passwords never reach a file, a log, a message or the tracker.

This module sits below every stage (it imports nothing of tunelab), so everything that writes can use it:
tunelab.io's write_text / write_json / write_jsonl pass what they write through it, TunelabError masks its
message, the CLI masks what it prints, and the tracker masks params, tags and artifacts.

Three rules, applied together:

1. By key: a mapping key that names a secret (`api_key`, `token`, `hf_token`, `secret`, `password`,
   `authorization`, `credential(s)`, anything ending in `_key`; case, dashes and camelCase ignored; at
   any nesting) has its value replaced by "***". Keys that name *where* a secret lives are kept:
   `api_key_env: OPENAI_API_KEY` names an environment variable, and the name is fine to show (its value
   is not). If such a field holds something that is not a variable name, it is masked too.
2. By shape: values that look like credentials are masked wherever they appear, in any string: OpenAI /
   Anthropic (`sk-...`), Hugging Face (`hf_...`), GitHub, AWS, Slack and Google keys, JWTs,
   `Bearer ...` / `Basic ...` headers, passwords in URLs (`https://user:***@host`), and
   `name=value` / `name: value` / `"name": "value"` assignments whose name is a secret name (rule 1), as
   found in env files, YAML, JSON and query strings.
3. By value: the current values of environment variables whose names are secret names (OPENAI_API_KEY,
   HF_TOKEN, ...) are masked wherever they occur, whatever their shape; and so are the values registered
   with `register_secret` (a backend registers the API key it read from the variable its config names,
   whatever that name, and the password of its URL), so they are masked even where no shape gives them
   away (a server that echoes the key in an error reply, a password quoted outside its URL).

`redact(obj)` handles nested dicts/lists/strings; `redact_text(text)` free text; `redact_file(src, dst)`
streams a text file. Report writers call these on anything they write.
"""

from __future__ import annotations

import functools
import math
import os
import re
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

MASK = "***"

# Words that make a key a secret wherever they occur in it (api_secret, db_password, client_credentials).
_SECRET_WORDS = frozenset({
    "secret", "secrets", "password", "passwd", "passphrase", "authorization", "credential", "credentials",
    "apikey", "cookie",
})
# The key names the place a secret lives (an env var, a file), not the secret itself: keep its value.
_LOCATION_SUFFIXES = frozenset({"env", "var", "file", "path", "dir", "name", "names"})
# Tokenizer vocabulary entries (eos_token: "</s>") are not credentials.
_SPECIAL_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end", "stop", "im"})

# A `*_key` whose first words name what it looks up is not a credential: ARC's `answerKey`, `cache_key`,
# `sort_key`. Masking those would corrupt benchmark rows and data files, which pass the same redactor.
_LOOKUP_WORDS = frozenset({"answer", "cache", "sort", "lookup", "primary", "foreign", "partition", "group",
                           "join", "shard", "dict", "map", "index", "column", "field", "row"})

_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _words(key: str) -> list[str]:
    return [w.lower() for part in re.split(r"[^A-Za-z0-9]+", key) for w in _WORD.findall(part)]


def is_secret_key(key: Any) -> bool:
    """Whether a mapping key (or env var name) names a secret value. `eos_token`, `max_tokens`,
    `token_f1` and `api_key_env` do not; `api_key`, `HF_TOKEN`, `x-api-key`, `clientSecret` do."""
    return isinstance(key, str) and _secret_name(key)


# Cached: every row of every file written asks this of the same few field names.
@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    words = _words(key)
    if not words or words[-1] in _LOCATION_SUFFIXES:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    last = words[-1]
    if last == "key":
        # *_key; a bare "key" (or answer_key, cache_key) is a lookup key, not a credential
        return len(words) > 1 and not any(w in _LOOKUP_WORDS for w in words[:-1])
    if last == "token":
        return not (len(words) == 2 and words[0] in _SPECIAL_TOKENS)
    return False


def _high_entropy(value: str) -> bool:
    """A long random-looking string: mixed case and digits, many distinct characters."""
    if len(value) < 16:
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    if classes < 3:
        return False
    counts = Counter(value)
    entropy = -sum(c / len(value) * math.log2(c / len(value)) for c in counts.values())
    return entropy >= 3.5


@functools.lru_cache(maxsize=4096)
def _is_location_key(key: str) -> bool:
    words = _words(key)
    return len(words) > 1 and words[-1] in _LOCATION_SUFFIXES and is_secret_key("_".join(words[:-1]))


# -- patterns -------------------------------------------------------------------------------------

# Each shape with the literal text any match contains: a pattern runs only on text holding one of them. Every
# file tunelab writes passes these rules (datasets too), and most text holds none of the markers.
_SHAPES = [
    (re.compile(r"(?<![A-Za-z0-9])sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}"), ("sk-",)),  # OpenAI, Anthropic
    (re.compile(r"(?<![A-Za-z0-9])hf_[A-Za-z0-9]{20,}"), ("hf_",)),  # Hugging Face
    (re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"),  # GitHub
     ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    (re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Z0-9])"), ("AKIA", "ASIA")),  # AWS access key id
    (re.compile(r"(?<![A-Za-z0-9])xox[abposr]-[A-Za-z0-9\-]{10,}"), ("xox",)),  # Slack
    (re.compile(r"(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{35}"), ("AIza",)),  # Google API key
    (re.compile(r"(?<![A-Za-z0-9])eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"),  # JWT
     ("eyJ",)),
]
_AUTH_WORDS = ("bearer", "basic", "token")
# Every secret name (is_secret_key, _is_location_key) contains one of these, lowercased.
_SECRET_NAME_PARTS = ("key", "token", "secret", "pass", "auth", "credential", "cookie")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)(\s+)([A-Za-z0-9._~+/=\-]{8,})", re.IGNORECASE)
# Each pattern starts at a word boundary of its own (the lookbehinds), so a long run of letters is scanned
# once, not once per position (quadratic on a 7,000-character param).
_URL_PASSWORD = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]{0,30}://[^/\s:@]*):([^/\s@]+)@")
# name: value, name=value, "name": "value", 'name' = 'value' (YAML, JSON, env files, query strings); not
# `$NAME: ...`, which refers to a variable and says something about it ("the key is in $OPENAI_API_KEY: set")
_ASSIGNMENT = re.compile(
    r"(?<![A-Za-z0-9_.\-$])(?P<key>[\"']?(?P<name>[A-Za-z_][A-Za-z0-9_.\-]{0,127})[\"']?)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?:(?P<quote>[\"'])(?P<qvalue>[^\"'\n]*)(?P=quote)|(?P<value>[^\s\"',;&}\]\)]+))"
)
_EMPTY_VALUES = frozenset({"", "null", "none", "~", MASK, "''", '""'})


def _credential_like(value: str) -> bool:
    """Random-looking rather than a word: "basic understanding" is prose, "Basic dXNlcjpw..." is not."""
    return bool(re.search(r"[\d._~+/=\-]", value) or re.search(r"[A-Z]", value[1:]))


def _auth_header(m: re.Match) -> str:
    value = m.group(3).rstrip(".-")  # sentence punctuation after a word is not part of a token
    return f"{m.group(1)}{m.group(2)}{MASK}" if len(value) >= 8 and _credential_like(value) else m.group(0)


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names are secret names (longest first)."""
    environ = os.environ if environ is None else environ
    values = {v for k, v in environ.items() if is_secret_key(k) and len(v) >= 8 and v.lower() not in ("true", "false")}
    return sorted(values, key=len, reverse=True)


# Secret values this process has handled (see register_secret); masked by every default Redactor.
_REGISTERED: set[str] = set()
_REGISTERED_LOCK = threading.Lock()
# Shorter values would mask ordinary words wherever they occur; they are still masked by shape (in a URL,
# after Bearer), which is where a short password appears.
MIN_SECRET_LEN = 8


def register_secret(value: str | None) -> None:
    """Mask `value` from now on, wherever this process writes or prints it, whatever its shape."""
    if value and len(value) >= MIN_SECRET_LEN and value.lower() not in ("true", "false"):
        with _REGISTERED_LOCK:
            _REGISTERED.add(value)


def register_url_secrets(text: str | None) -> None:
    """Register the password of every URL in `text` (as written and percent-decoded)."""
    for m in _URL_PASSWORD.finditer(text or ""):
        register_secret(m.group(2))
        register_secret(urllib.parse.unquote(m.group(2)))


def known_secrets() -> list[str]:
    """The values a default Redactor masks: secret-named environment variables and registered secrets."""
    with _REGISTERED_LOCK:
        registered = set(_REGISTERED)
    return sorted(set(env_secrets()) | registered, key=len, reverse=True)


class Redactor:
    """The three rules with a fixed set of known secret values (default: known_secrets() now)."""

    def __init__(self, known: Iterable[str] | None = None):
        values = known_secrets() if known is None else known
        self.known = sorted({k for k in values if k}, key=len, reverse=True)

    def text(self, text: str) -> str:
        if not text:
            return text
        for secret in self.known:
            if secret in text:
                text = text.replace(secret, MASK)
        for pattern, markers in _SHAPES:
            if any(m in text for m in markers):
                text = pattern.sub(MASK, text)
        lower = text.lower()
        if any(w in lower for w in _AUTH_WORDS):
            text = _AUTH_SCHEME.sub(_auth_header, text)
        if "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)
        if ("=" in text or ":" in text) and any(w in lower for w in _SECRET_NAME_PARTS):
            text = _ASSIGNMENT.sub(self._assignment, text)
        return text

    @staticmethod
    def _assignment(m: re.Match) -> str:
        name = m.group("name")
        value = m.group("qvalue") if m.group("quote") else m.group("value")
        masked = False
        if is_secret_key(name.rsplit(".", 1)[-1]):
            masked = value.strip().lower() not in _EMPTY_VALUES
        elif _is_location_key(name.rsplit(".", 1)[-1]):
            masked = not _ENV_NAME.match(value) or _high_entropy(value)
        if not masked:
            return m.group(0)
        quote = m.group("quote") or ""
        return f"{m.group('key')}{m.group('sep')}{quote}{MASK}{quote}"

    def value(self, obj: Any, key: Any = None) -> Any:
        """Redact a nested structure; `key` is the mapping key `obj` sits under, if any."""
        if isinstance(key, str) and obj not in (None, "") and not isinstance(obj, bool):
            if is_secret_key(key):
                return MASK
            if _is_location_key(key) and isinstance(obj, str) and (not _ENV_NAME.match(obj) or _high_entropy(obj)):
                return MASK
        if isinstance(obj, Mapping):
            return {k: self.value(v, k) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.value(v) for v in obj]
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, Path):
            return self.text(str(obj))
        return obj

    def file(self, src: str | os.PathLike, dst: str | os.PathLike) -> bool:
        """Stream a text file into dst, redacted (bytes that are not UTF-8 pass through unchanged);
        returns whether anything was masked."""
        changed = False
        with open(src, encoding="utf-8", errors="surrogateescape", newline="") as fin, \
                open(dst, "w", encoding="utf-8", errors="surrogateescape", newline="") as fout:
            for line in fin:
                out = self.text(line)
                changed = changed or out != line
                fout.write(out)
        return changed


def secrets_in(obj: Any, environ: Mapping[str, str] | None = None) -> list[str]:
    """The secret values a structure holds or points at: strings under secret keys, and the values of
    the environment variables its `*_env` / `*_var` fields name. Masking these wherever they occur
    catches a secret in a shape the patterns do not know."""
    environ = os.environ if environ is None else environ
    found: set[str] = set()

    def walk(value: Any, key: Any = None) -> None:
        if isinstance(key, str) and isinstance(value, str):
            if is_secret_key(key) and len(value) >= 8 and value != MASK:
                found.add(value)
            elif _is_location_key(key) and _words(key)[-1] in ("env", "var"):
                secret = environ.get(value, "")
                if len(secret) >= 8:
                    found.add(secret)
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(v, k)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)

    walk(obj)
    return sorted(found, key=len, reverse=True)


def redact(obj: Any, known: Iterable[str] | None = None) -> Any:
    """A copy of `obj` (dicts, lists, strings, scalars) with every secret masked."""
    return Redactor(known).value(obj)


def redact_text(text: str, known: Iterable[str] | None = None) -> str:
    """`text` with every secret masked (shapes, secret assignments, known values)."""
    return Redactor(known).text(text)


def redact_file(src: str | os.PathLike, dst: str | os.PathLike, known: Iterable[str] | None = None) -> bool:
    """Stream a text file through the redactor into dst; returns whether anything was masked."""
    return Redactor(known).file(src, dst)
