"""Atomic file writes.

A crash or Ctrl-C never leaves a half-written output: every file is written to a temporary file in
the same directory and renamed over the target (rename is atomic on POSIX). Whole output directories
are built in a temporary sibling and renamed into place, so a reader sees the old directory or the
new one, never a mix.

A command replaces or writes into a directory only when it is empty, missing, or tunelab's own output of
the same kind: every output directory carries a small marker, `.tunelab-output.json` ({"kind": ...}),
and `check_output_dir` refuses anything else, so `--out` naming a user's folder (or the folder holding
the command's own input) fails with an error and touches nothing.

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


OUTPUT_MARKER = ".tunelab-output.json"


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of tunelab output a directory holds (its marker's "kind"), None when it has no valid marker."""
    try:
        marker = json.loads((Path(path) / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = marker.get("kind") if isinstance(marker, dict) else None
    return kind if isinstance(kind, str) else None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Raise TunelabError unless `path` may be replaced by (or written into as) an output of `kind`: it is
    missing, an empty directory, or a directory whose marker says it is a `kind` output. None of `inputs`
    (the command's input files or directories) may lie inside it, since replacing it would delete them."""
    from .errors import TunelabError

    target = Path(path)
    resolved = target.resolve()
    for item in inputs:
        if _inside(Path(item).resolve(), resolved):
            raise TunelabError(f"the input {item} lies inside the output directory {target}, which this command "
                               "replaces or writes into: write the output somewhere else (nothing was changed)")
    if not target.exists():
        return
    if not target.is_dir():
        raise TunelabError(f"the output {target} exists and is not a directory; choose another output path "
                           "(nothing was changed)")
    if not any(target.iterdir()):
        return
    found = output_kind(target)
    if found == kind:
        return
    if found is None:
        raise TunelabError(f"the output directory {target} holds files tunelab did not write (it has no "
                           f"{OUTPUT_MARKER}), so it is not replaced: choose another output directory, or "
                           "move its files away (nothing was changed)")
    raise TunelabError(f"the output directory {target} holds tunelab output of another kind ({found}, not "
                       f"{kind}), so it is not replaced: choose another output directory (nothing was changed)")


def mark_output_dir(directory: str | os.PathLike, kind: str) -> None:
    """Mark a directory as tunelab's own `kind` output. Only for one known to be ours (atomic_dir and
    claim_output_dir mark what they write; a cache written before markers existed is adopted this way)."""
    write_json(Path(directory) / OUTPUT_MARKER, {"kind": kind, "written_by": "tunelab"})


def claim_output_dir(path: str | os.PathLike, kind: str, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """For a directory a command writes into over time (a training run, `eval --out`): check it as
    check_output_dir does, create it and mark it as a `kind` output. Returns the directory."""
    target = Path(path)
    check_output_dir(target, kind, inputs)
    target.mkdir(parents=True, exist_ok=True)
    if output_kind(target) != kind:
        mark_output_dir(target, kind)
    return target


@contextlib.contextmanager
def claimed_output_dir(path: str | os.PathLike, kind: str,
                       inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """claim_output_dir for the length of a block; if the block fails and the directory did not exist
    before, it is removed again when it holds nothing but the marker (a failed command leaves nothing)."""
    target = Path(path)
    existed = target.exists()
    claim_output_dir(target, kind, inputs)
    try:
        yield target
    except BaseException:
        if not existed and [p.name for p in target.iterdir()] == [OUTPUT_MARKER]:
            shutil.rmtree(target, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike] = (),
               overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` when the block succeeds.

    An existing `path` is kept untouched until the new one is complete, and is replaced only when
    check_output_dir allows it for `kind` (checked before the block and again before the swap); the new
    directory is marked as a `kind` output. With overwrite=False any existing non-empty directory is an
    error instead.
    """
    from .errors import TunelabError

    target = Path(path)
    inputs = list(inputs)
    check_output_dir(target, kind, inputs)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise TunelabError(f"{target} already exists and is not empty; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        mark_output_dir(tmp, kind)
        check_output_dir(target, kind, inputs)  # it may have changed while the block ran
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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `path` (created, with its folder, if missing) between processes on this
    machine: for work two tunelab processes must not do at once (converting a model into the cache,
    preparing a sweep's data, creating a study's tables). POSIX fcntl; elsewhere it does not lock."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: callers keep their own retries for the rare race
        yield
        return
    with open(target, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
