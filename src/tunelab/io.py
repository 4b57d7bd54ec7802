"""Atomic file writes.

A crash or Ctrl-C never leaves a half-written output: every file is written to a temporary file in
the same directory and renamed over the target (rename is atomic on POSIX). Whole output directories
are built in a temporary sibling and renamed into place, so a reader sees the old directory or the
new one, never a mix.

Every file written through write_text / write_json / write_jsonl passes the secret redactor on the way
(tunelab.secrets): passwords in URLs, API keys and tokens (by shape, by key, and the values of the
environment variables and backends that hold them) become "***" at the one place where anything is
written, so no stage has to remember to mask what it writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .secrets import Redactor


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file next to `path`; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    # mkstemp makes 0600 files; outputs get the usual permissions, as a plain open() would give them
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _json_default(redactor: Redactor):
    # objects json cannot encode (datetimes, numpy scalars) are written as their text, masked like any text
    return lambda obj: redactor.text(str(obj))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` atomically, secrets masked."""
    clean = Redactor().text(text)
    with atomic_open(path) as fh:
        fh.write(clean)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as indented JSON atomically, secrets masked (by key, shape and known value)."""
    redactor = Redactor()
    clean = redactor.value(obj)
    with atomic_open(path) as fh:
        json.dump(clean, fh, indent=2, ensure_ascii=False, default=_json_default(redactor))
        fh.write("\n")
    return Path(path)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write one JSON object per line, secrets masked; returns the number of rows."""
    redactor = Redactor()
    default = _json_default(redactor)
    n = 0
    with atomic_open(path) as fh:
        for row in rows:
            fh.write(json.dumps(redactor.value(row), ensure_ascii=False, default=default))
            fh.write("\n")
            n += 1
    return n


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file written by tunelab (trusted input; user files go through data.readers)."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` when the block succeeds.

    An existing `path` is kept untouched until the new one is complete; with overwrite=False an
    existing non-empty directory is an error instead (nothing a user made is silently replaced).
    """
    from .errors import TunelabError

    target = Path(path)
    if target.exists() and not target.is_dir():
        raise TunelabError(f"{target} exists and is not a directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TunelabError(f"{target} already exists and is not empty; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
