"""Where tunelab keeps its caches: the tunelab home (default ~/.cache/tunelab, env TUNELAB_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home() -> Path:
    home = os.environ.get("TUNELAB_HOME")
    path = Path(home).expanduser() if home else Path.home() / ".cache" / "tunelab"
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_cache() -> Path:
    path = tunelab_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
