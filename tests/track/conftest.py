"""A tracking store built once per session (MLflow's schema creation takes seconds) and copied per test.

`workdir` is a fresh directory holding a copy of that store as mlflow.db, so each test has a store of
its own (the secret scan reads every byte of it) at the cost of a file copy. `make_config` builds an
ExperimentConfig whose workdir is that directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    from tunelab.track.tracker import Store, default_store

    root = tmp_path_factory.mktemp("store-template")
    uri, _ = default_store(root)
    Store(uri).client  # noqa: B018  (opening creates the schema)
    return root / "mlflow.db"


@pytest.fixture
def workdir(tmp_path, store_template) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(store_template, work / "mlflow.db")
    return work


@pytest.fixture
def make_config(workdir):
    from tunelab.config import validate_data

    def make(**sections):
        return validate_data({"name": "demo", "workdir": str(workdir), **sections})

    return make
