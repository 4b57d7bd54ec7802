"""The names a server gives its models: the base's public name, and each adapter's name, which is a name.

A client picks a model by name, and the server looks that name up among these and nothing else. So an
adapter name must look like a name (letters, digits, '.', '_', '-', not starting with '.' or '-'): a
name such as `../run` or `/tmp/x` is refused when the server starts, and no request's `model` is ever
opened as a path.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import TunelabError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def served_base_name(model: str) -> str:
    """The base's name in /v1/models: a local directory (or file) is served under its own name, never its
    path; a bundled name or a hub id (org/name) as given."""
    path = Path(model)
    return path.resolve().name if path.exists() else model


def check_adapters(base_name: str, adapters: dict[str, Path]) -> None:
    """Refuse adapter names that are not plain names, that repeat the base's name, or whose run is missing."""
    seen: dict[str, str] = {}
    for name, run in adapters.items():
        if not _NAME.match(name) or ".." in name:
            raise TunelabError(f"adapter name '{name}': give a plain name (letters, digits, '.', '_', '-', at most "
                               "64, not a path), e.g. --adapter support-v2=runs/exp/train")
        if name == base_name:
            raise TunelabError(f"adapter name '{name}' is the base model's served name; pick another")
        if name.lower() in seen:
            raise TunelabError(f"adapter names '{seen[name.lower()]}' and '{name}' differ only in case; "
                               "pick names a client cannot confuse")
        seen[name.lower()] = name
        if not Path(run).exists():
            raise TunelabError(f"--adapter {name}={run}: no such run or adapter directory")
