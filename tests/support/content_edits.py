"""Edits that change a file's content but not its name, size class or modification time: what a cache
key must notice (a key built from names or mtimes would not)."""

from __future__ import annotations

import os
from pathlib import Path


def rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Replace a file's bytes in place and put its old times back, as cp -p or rsync -t would."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def nudge_weights(model_dir: Path, file: str = "model.safetensors") -> None:
    """Change one weight of a saved model in place (same file name and size, old mtime put back)."""
    from safetensors.torch import load_file, save_file

    path = Path(model_dir) / file
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1e-3
    st = path.stat()
    save_file(tensors, path, metadata={"format": "pt"})
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
