"""Content digests for cache and reuse keys: what a file, a directory or a set of inputs holds, never
its name or modification time.

    file_digest(path)            # sha256 of the bytes (hex)
    path_digest(path)            # a file's digest, or a directory's: every file's relative path and digest
    paths_digest([a, b, ...])    # several inputs at once, in order
    text_digest(text)            # a string's sha256 (a chat template, a prompt)

Every key that decides whether a result may be reused is built from these (the pipeline's training key,
each variant's eval cache key, the forgetting check, the prepared dataset, GGUF conversions, the RAG
embedder, LLM calls), so an edited input is never answered from a stale cache.

Reading gigabytes of weights on every run would cost seconds, so a file's digest is remembered under
its identity on disk: absolute path, size, inode, mtime_ns and ctime_ns. The identity only says when
the bytes must be read again; the key holds the sha256 of the bytes. ctime is in it because no user
tool can set it: an edit that restores the old mtime (cp -p, rsync -t, touch -d) still changes ctime.
Digests are remembered in this process and, for files of 16 MiB and more, in small files under
`<tunelab home>/digests/` so the next run does not read the weights again. A file changed in the last
few seconds is not remembered (git's "racy clean" rule): file times tick in steps of milliseconds, so a
second edit within the same step would leave the identity unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path

SIDECAR_MIN_BYTES = 16 << 20  # smaller files are read faster than a sidecar is looked up
RACY_NS = 2_000_000_000  # a file whose ctime is this recent is read again next time, not remembered
_BLOCK = 1 << 20

_memo: dict[tuple, str] = {}
_lock = threading.Lock()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _identity(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _sidecar(identity: tuple) -> Path:
    from .paths import tunelab_home

    name = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
    return tunelab_home() / "digests" / name[:2] / f"{name}.json"


def _read_sidecar(identity: tuple) -> str | None:
    try:
        data = json.loads(_sidecar(identity).read_text(encoding="utf-8"))
        return data["sha256"] if data.get("identity") == list(identity) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing or damaged: the file is read again


def _write_sidecar(identity: tuple, digest: str) -> None:
    from .io import write_json

    try:
        write_json(_sidecar(identity), {"identity": list(identity), "sha256": digest})
    except OSError:
        pass  # a read-only home only costs reading the file again next time


def file_digest(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file's bytes, remembered by the file's identity on disk (module docstring)."""
    path = Path(path)
    identity = _identity(path)
    with _lock:
        known = _memo.get(identity)
    if known is not None:
        return known
    big = identity[1] >= SIDECAR_MIN_BYTES
    digest = _read_sidecar(identity) if big else None
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(_BLOCK), b""):
                h.update(block)
        digest = h.hexdigest()
        settled = time.time_ns() - identity[4] > RACY_NS
        if not (settled and _identity(path) == identity):  # changed lately, or while it was read
            return digest
        if big:
            _write_sidecar(identity, digest)
    with _lock:
        _memo[identity] = digest
    return digest


def _listing(directory: Path, skip: Iterable[str]) -> list[Path]:
    skipped = set(skip)
    out = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory).as_posix()
        if any(part.startswith(".") for part in rel.split("/")) or path.name in skipped or "__pycache__" in rel:
            continue
        if path.is_file():
            out.append(path)
    return out


def path_digest(path: str | os.PathLike, skip: Iterable[str] = ()) -> str:
    """A file's digest, or a directory's: the relative path and digest of every file under it, hidden
    files and `skip` names left out (notes tunelab writes beside the content, such as a creation time)."""
    path = Path(path)
    if not path.is_dir():
        return file_digest(path)
    h = hashlib.sha256()
    for file in _listing(path, skip):
        h.update(f"{file.relative_to(path).as_posix()}\0{file_digest(file)}\n".encode())
    return h.hexdigest()


def paths_digest(paths: Iterable[str | os.PathLike | None]) -> str:
    """One digest for several inputs in order; a missing path counts as missing (the step that reads it
    then says so), so the digest is defined for every configuration."""
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            continue
        path = Path(p)
        h.update(f"{path.name}\0{path_digest(path) if path.exists() else 'missing'}\n".encode())
    return h.hexdigest()
