"""Lineage: the tag names every tunelab run carries, and how they are filled in.

A run's tags answer "what made this result": which stage, which tunelab, which commit of the code (and
whether the tree had uncommitted changes), which config (name and hash), which dataset (the prepared
data's hash), which base model and method, and which earlier runs it used (`tunelab.upstream.<stage>` =
run id: an eval run points at the train run whose adapter it scored). `tunelab runs show` prints them;
the MLflow UI can filter on them (`tags."tunelab.stage" = "train"`).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

STAGE = "tunelab.stage"
VERSION = "tunelab.version"
CONFIG_NAME = "tunelab.config_name"
CONFIG_HASH = "tunelab.config_hash"
DATASET_HASH = "tunelab.dataset_hash"
BASE_MODEL = "tunelab.base_model"
METHOD = "tunelab.method"
GIT_COMMIT = "tunelab.git.commit"
GIT_DIRTY = "tunelab.git.dirty"
ERROR = "tunelab.error"
UPSTREAM = "tunelab.upstream."
ARTIFACT = "tunelab.artifact."  # with tracking.artifacts false: where an output was left, instead of a copy
# MLflow's own tag names, which its UI shows (source commit, parent run for nesting, run name, user).
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_PARENT = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_USER = "mlflow.user"

# The stages the pipeline tracks; any other name is accepted (a pipeline's parent run, a sweep).
STAGES = ("prepare", "synth", "train", "eval", "compare")


# Short names callers may use for the lineage tags; they are stored under the tunelab.* names, so that
# every run answers the same query (`tags."tunelab.base_model" = ...`) however it was tagged.
ALIASES = {"dataset_hash": DATASET_HASH, "base_model": BASE_MODEL, "method": METHOD}


def canonical(tags: dict[str, Any]) -> dict[str, Any]:
    """Tags with the short lineage names (dataset_hash, base_model, method) under their tunelab.* keys."""
    return {ALIASES.get(k, k): v for k, v in tags.items()}


def lineage_tags(*, dataset_hash: str | None = None, base_model: str | None = None, method: str | None = None,
                 upstream: dict[str, str] | None = None) -> dict[str, str]:
    """Tags for the inputs of a run; None values are left out.

    upstream maps a stage to the id of the run whose output this one used, e.g. {"train": train_run.id}.
    """
    tags = {DATASET_HASH: dataset_hash, BASE_MODEL: base_model, METHOD: method}
    out = {k: str(v) for k, v in tags.items() if v is not None}
    for stage, run_id in (upstream or {}).items():
        if run_id:
            out[UPSTREAM + stage] = str(run_id)
    return out


def upstream_of(tags: dict[str, Any]) -> dict[str, str]:
    """{stage: run id} of the runs a run says it used."""
    return {k[len(UPSTREAM):]: str(v) for k, v in tags.items() if k.startswith(UPSTREAM)}


def _git(cwd: Path, *args: str, timeout: float) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None  # no git, no such directory, or a hung repository: the tag is left out, never guessed
    return proc.stdout if proc.returncode == 0 else None


def git_state(cwd: str | Path | None = None, timeout: float = 5.0) -> dict[str, str]:
    """{GIT_COMMIT, GIT_DIRTY, MLFLOW_GIT_COMMIT} for the repository holding cwd; {} when it is not one.

    Dirty means tracked files differ from the commit (untracked files are ignored: run outputs often sit
    inside the repository and would make every tree dirty)."""
    cwd = Path(cwd or Path.cwd())
    commit = _git(cwd, "rev-parse", "HEAD", timeout=timeout)
    if not commit or not commit.strip():
        return {}
    commit = commit.strip()
    tags = {GIT_COMMIT: commit, MLFLOW_GIT_COMMIT: commit}
    status = _git(cwd, "status", "--porcelain", "--untracked-files=no", timeout=timeout)
    if status is not None:
        tags[GIT_DIRTY] = "true" if status.strip() else "false"
    return tags
