"""The review app's fixture: a small workdir as `tunelab run` leaves it (support/review_workdir.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from review_workdir import build_workdir


@pytest.fixture
def workdir(tmp_path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    build_workdir(root)
    return root
