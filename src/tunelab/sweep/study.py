"""Creating or loading a sweep's Optuna study: its storage, TPE sampler and pruner.

Storage is where trials are coordinated, which is what lets several processes or machines work on one
study with no trial repeated or lost (Optuna hands out trial numbers through it):
- a database URL: `sqlite:///path.db` (the default, `<run_dir>/sweep/optuna.db`: processes on one
  machine), or any SQLAlchemy URL (`postgresql://user@host/db`, `mysql+pymysql://...`: machines);
- `journal:PATH`: Optuna's JournalStorage with a file backend, for machines that share a file system
  but no database server.

SQLite allows one writer at a time; processes that share a file wait for the lock (a 60 s busy timeout)
instead of failing with "database is locked".

A worker that dies mid-trial (killed, the machine lost) would leave its trial RUNNING for ever, and its
settings never measured. Database storages therefore carry a heartbeat: each running trial is stamped every
HEARTBEAT_S seconds; when a worker starts a trial it first marks any trial silent for GRACE_S as failed, and
the failed trial's settings are queued again once (Optuna's RetryFailedTrialCallback), so the next free
worker measures them: no trial is lost. Optuna's journal storage has no heartbeat: there a killed worker's
trial stays RUNNING (the report shows it) and is not retried.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig, SweepConfig
from ..errors import TunelabError
from ..io import file_lock

SQLITE_TIMEOUT_S = 60
HEARTBEAT_S = 30
# long enough that a trial busy in one long step (a big evaluation) is never taken for dead
GRACE_S = 300


def default_storage(config: ExperimentConfig) -> str:
    return f"sqlite:///{(Path(config.run_dir) / 'sweep' / 'optuna.db').resolve()}"


def open_storage(url: str) -> Any:
    """An Optuna storage for `url` (see the module docstring)."""
    import optuna

    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    lock: Any = contextlib.nullcontext  # a factory: each try takes the lock anew
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
        lock = lambda: file_lock(db.with_name(db.name + ".lock"))  # noqa: E731
    # Workers started together all find an empty database and create Optuna's tables at once; the
    # losers fail with "table ... already exists" or a UNIQUE constraint on alembic_version. SQLite
    # files get a lock around the creation; any database gets a few tries, the next one finding the
    # tables made.
    for attempt in range(OPEN_TRIES):
        try:
            with lock(), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1))
        except Exception as exc:  # SQLAlchemy / driver errors: say which storage, never a traceback
            if attempt + 1 < OPEN_TRIES and _creation_race(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            from ..secrets import redact_text

            raise TunelabError(f"sweep storage {redact_text(url)} cannot be opened: "
                               f"{redact_text(str(exc))}") from None
    raise AssertionError("unreachable")


OPEN_TRIES = 4


def _creation_race(exc: Exception) -> bool:
    text = str(exc).lower()
    return "already exists" in text or "unique constraint" in text or "duplicate" in text



def make_sampler(sweep: SweepConfig) -> Any:
    import optuna

    # constant_liar: trials running at the same time (other processes) count as pending, so parallel
    # workers do not all sample the same promising point
    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=sweep.startup_trials, constant_liar=True)


def make_pruner(sweep: SweepConfig) -> Any:
    import optuna

    if sweep.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials, n_warmup_steps=0)
    if sweep.pruner == "hyperband":
        # resources are optimizer steps, the unit intermediate values are reported in
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto")
    return optuna.pruners.NopPruner()


def open_study(sweep: SweepConfig, *, storage: str, name: str, direction: str, resume: bool) -> Any:
    """The study `name` in `storage`: created, or with resume loaded (created when it does not exist yet,
    so every worker of a distributed sweep can be started the same way). Without resume an existing study
    is an error, so a second sweep never silently adds to the first."""
    import optuna

    backend = open_storage(storage)
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(backend, include_best_trial=False)}
    if exists and not resume:
        raise TunelabError(f"study '{name}' already exists in the sweep storage: pass --resume to continue it, or "
                           "--study NAME to start another")
    study = optuna.create_study(storage=backend, sampler=make_sampler(sweep), pruner=make_pruner(sweep),
                                study_name=name, direction=direction, load_if_exists=True)
    stored = study.direction.name.lower()
    if stored != direction:
        raise TunelabError(f"study '{name}' was created to {stored} its objective, this sweep would {direction} it; "
                           "use another --study")
    return study
