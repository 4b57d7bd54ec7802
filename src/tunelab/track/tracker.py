"""The Tracker: one MLflow run per pipeline stage, with the config, lineage, metrics and artifacts.

MLflow is imported only when a run starts (the import costs seconds), and not at all when tracking is
off. Every value passes through the redactor (track.redact) before it reaches the store. A store that
cannot be used (bad URI, unreachable server, a file that is not a database) is a TunelabError naming
the URI, never a traceback. See track/__init__.py for the API in use.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ..errors import TunelabError
from . import lineage
from .redact import Redactor, redact_text, secrets_in

if TYPE_CHECKING:
    from ..config import ExperimentConfig

log = logging.getLogger("tunelab.track")

# MLflow's limits (mlflow.utils.validation), fixed here so that checking them needs no mlflow import.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
TRUNCATED = "...[truncated]"
# Files the tracker redacts on the way into the store; anything else (weights, images) is copied as is.
TEXT_SUFFIXES = frozenset({
    ".json", ".jsonl", ".yaml", ".yml", ".txt", ".md", ".html", ".htm", ".csv", ".tsv", ".log", ".jinja",
    ".toml", ".ini", ".cfg", ".xml", ".py", ".sh", ".env",
})
HTTP_PROBE_TIMEOUT_S = 5.0


# -- keys and values ------------------------------------------------------------------------------

def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}; empty dicts and non-dict values are leaves."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def stringify(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return str(value)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(TRUNCATED)] + TRUNCATED


def clean_key(key: str) -> str:
    """A name MLflow accepts: its character set, no path tricks (`a//b`, `../x`), at most 250 chars."""
    key = re.sub(r"[^/\w.\- :]", "_", str(key))
    parts = [p for p in key.split("/") if p not in ("", ".")]
    key = "/".join("_" if p == ".." else p for p in parts) or "_"
    if len(key) > MAX_KEY:
        import hashlib

        key = key[: MAX_KEY - 9] + "~" + hashlib.sha1(key.encode()).hexdigest()[:8]
    return key


def _number(value: Any) -> float | None:
    """A metric value: Python, numpy and 0-d torch numbers; None for NaN and anything else."""
    if value is None or isinstance(value, str | bytes):
        return None
    if not isinstance(value, int | float) and not hasattr(value, "item"):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor with more than one element
        return None
    return None if math.isnan(number) else number


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the store ------------------------------------------------------------------------------------

def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI (relative paths against the working directory)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///"):]).expanduser().resolve()


def safe_uri(uri: str) -> str:
    return redact_text(uri)


def default_store(workdir: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the default store: <workdir>/mlflow.db, <workdir>/mlartifacts."""
    root = Path(workdir).expanduser().resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def ui_command(uri: str) -> str:
    """How to look at a store in the MLflow UI."""
    scheme = urlparse(uri).scheme
    if scheme in ("http", "https"):
        return f"open {safe_uri(uri)} in a browser (an MLflow server)"
    return f"mlflow ui --backend-store-uri {safe_uri(uri)}"


@contextlib.contextmanager
def _quiet_store_logs() -> Iterator[None]:
    """MLflow logs schema creation at INFO on stderr; tunelab's commands keep stderr for their own output."""
    names = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "alembic", "alembic.runtime.migration")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Store:
    """A lazily opened MlflowClient for one URI, with every failure turned into a TunelabError."""

    def __init__(self, uri: str, *, create: bool = True):
        self.uri = uri
        self.create = create
        self._client = None

    def error(self, what: str, exc: BaseException) -> TunelabError:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return TunelabError(
            f"tracking store {safe_uri(self.uri)}: {what} failed: {redact_text(first)[:400]}\n"
            "  point tracking.uri at a working MLflow store, or set tracking.enabled: false"
        )

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except TunelabError:
            raise
        except Exception as exc:  # MlflowException, SQLAlchemy and OS errors alike
            raise self.error(what, exc) from None

    def _probe(self) -> None:
        """Fail in seconds on a server that is not there (MLflow's own retries take minutes)."""
        import httpx

        try:
            httpx.get(self.uri.rstrip("/") + "/health", timeout=HTTP_PROBE_TIMEOUT_S)
        except httpx.HTTPError as exc:
            raise self.error("connecting", exc) from None

    @property
    def client(self):
        if self._client is None:
            scheme = urlparse(self.uri).scheme
            path = sqlite_path(self.uri)
            if path is not None:
                if not self.create and not path.is_file():
                    raise TunelabError(f"no MLflow store at {path} (nothing has been tracked there yet)")
                path.parent.mkdir(parents=True, exist_ok=True)
            elif scheme in ("http", "https"):
                self._probe()
            with self.guard("opening"), _quiet_store_logs():
                from mlflow import MlflowClient

                client = MlflowClient(tracking_uri=self.uri)
                client.search_experiments(max_results=1)  # opens (and on first use creates) the store now
            self._client = client
        return self._client

    def experiment_id(self, name: str, artifact_location: str | None) -> str:
        client = self.client
        with self.guard(f"opening experiment '{name}'"):
            exp = client.get_experiment_by_name(name)
            if exp is None:
                try:
                    return client.create_experiment(name, artifact_location=artifact_location)
                except Exception:
                    exp = client.get_experiment_by_name(name)  # another process created it meanwhile
                    if exp is None:
                        raise
        if exp.lifecycle_stage == "deleted":
            raise TunelabError(
                f"tracking store {safe_uri(self.uri)}: experiment '{name}' was deleted; restore it "
                f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set tracking.experiment"
            )
        return exp.experiment_id


# -- runs -----------------------------------------------------------------------------------------

class NullRun:
    """What a disabled tracker yields: the Run API, doing nothing."""

    enabled = False
    id: str | None = None
    artifact_uri: str | None = None
    status: str | None = None

    def __init__(self, stage: str = "", name: str | None = None):
        self.stage, self.name = stage, name

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def log_text(self, text: str, artifact_file: str) -> None: ...
    def log_dict(self, obj: Any, artifact_file: str) -> None: ...


class Run:
    """One MLflow run, open inside `Tracker.run(...)`. Set `status` ("KILLED", ...) to end it otherwise
    than FINISHED."""

    enabled = True

    def __init__(self, store: Store, run_id: str, stage: str, name: str, artifact_uri: str, redactor: Redactor,
                 copy_artifacts: bool = True):
        self._store = store
        self._copy_artifacts = copy_artifacts
        self.id = run_id
        self.stage = stage
        self.name = name
        self.artifact_uri = artifact_uri
        self.status: str | None = None
        self._redactor = redactor
        self._step_loggers: list[Any] = []

    @property
    def _client(self):
        return self._store.client

    # params, tags, metrics
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested dicts become dotted keys; values are redacted, stringified and cut to MLflow's limit."""
        from mlflow.entities import Param

        flat = flatten(self._redactor.value(dict(params)))
        entities = [Param(clean_key(k), _truncate(stringify(v), MAX_PARAM_VALUE)) for k, v in flat.items()]
        if entities:
            with self._store.guard(f"logging params of run {self.id}"):
                self._client.log_batch(self.id, params=entities, synchronous=True)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        entities = [RunTag(clean_key(k), _truncate(self._redactor.text(stringify(v)), MAX_TAG_VALUE))
                    for k, v in lineage.canonical(dict(tags)).items() if v is not None]
        if entities:
            with self._store.guard(f"setting tags of run {self.id}"):
                self._client.log_batch(self.id, tags=entities, synchronous=True)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numbers only: nested dicts become dotted keys; None, NaN and non-numbers are skipped."""
        now = _now_ms()
        rows = [(k, v, now, step or 0) for k, v in flatten(dict(metrics)).items()]
        self._log_metric_rows(rows)

    def _log_metric_rows(self, rows: list[tuple[str, Any, int, int]]) -> int:
        """Write (key, value, timestamp ms, step) rows in one batch; returns the number of points."""
        from mlflow.entities import Metric

        entities = []
        for key, value, timestamp, step in rows:
            number = _number(value)
            if number is not None:
                entities.append(Metric(clean_key(key), number, timestamp, int(step)))
        if entities:
            with self._store.guard(f"logging metrics of run {self.id}"):
                self._client.log_batch(self.id, metrics=entities, synchronous=True)
        return len(entities)

    # artifacts
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts (text files redacted on the way)."""
        file = Path(path)
        if not file.is_file():
            raise TunelabError(f"cannot log artifact {file}: not a file")
        if not self._copy_artifacts:
            self._record_path(file, "/".join(p for p in (artifact_path, file.name) if p))
            return
        with tempfile.TemporaryDirectory(prefix="tunelab-artifact-") as staging:
            self._log_file(file, artifact_path, Path(staging))

    def log_artifacts(self, directory: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a directory tree (hidden files and temporaries, named .*, left out) into the artifacts."""
        root = Path(directory)
        if not root.is_dir():
            raise TunelabError(f"cannot log artifacts from {root}: not a directory")
        if not self._copy_artifacts:
            self._record_path(root, artifact_path or root.name)
            return
        with tempfile.TemporaryDirectory(prefix="tunelab-artifacts-") as staging:
            for i, file in enumerate(sorted(root.rglob("*"))):
                rel = file.relative_to(root)
                if not file.is_file() or any(part.startswith(".") for part in rel.parts):
                    continue
                parts = [p for p in (artifact_path, rel.parent.as_posix()) if p and p != "."]
                self._log_file(file, "/".join(parts) or None, Path(staging) / str(i))

    def _record_path(self, path: Path, name: str) -> None:
        """tracking.artifacts false: the output stays where it is; the run says where."""
        self.set_tags({lineage.ARTIFACT + name: str(path.resolve())})

    def _log_file(self, file: Path, artifact_path: str | None, staging: Path) -> None:
        source = file
        if file.suffix.lower() in TEXT_SUFFIXES:
            staging.mkdir(parents=True, exist_ok=True)
            source = staging / file.name
            self._redactor.file(file, source)
        with self._store.guard(f"logging artifact {file.name} of run {self.id}"):
            self._client.log_artifact(self.id, str(source), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        with self._store.guard(f"logging {artifact_file} of run {self.id}"):
            self._client.log_text(self.id, self._redactor.text(text), artifact_file)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """A dict as JSON, or YAML when artifact_file ends in .yaml/.yml; redacted."""
        clean = json.loads(json.dumps(self._redactor.value(obj), default=str))
        if artifact_file.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(clean, sort_keys=False, allow_unicode=True)
        else:
            text = json.dumps(clean, indent=2, ensure_ascii=False) + "\n"
        self.log_text(text, artifact_file)

    # lifecycle
    def _end(self, status: str, error: BaseException | None = None) -> None:
        for logger in self._step_loggers:
            logger.flush()
        if error is not None:
            self.set_tags({lineage.ERROR: f"{type(error).__name__}: {error}"[:2000]})
        with self._store.guard(f"ending run {self.id}"):
            self._client.set_terminated(self.id, status=status, end_time=_now_ms())


# -- the tracker ----------------------------------------------------------------------------------

class Tracker:
    """Runs for one experiment in one MLflow store. Build with `Tracker.from_config(config)`."""

    def __init__(self, uri: str | None = None, experiment: str = "tunelab", *, enabled: bool = True,
                 artifact_location: str | None = None, config: ExperimentConfig | None = None,
                 cwd: str | Path | None = None):
        if enabled and not uri:
            raise TunelabError("a tracker needs a tracking URI (Tracker.from_config picks the default store)")
        self.enabled = enabled
        self.uri = uri or ""
        self.experiment = experiment
        self.config = config
        self.cwd = Path(cwd) if cwd else Path.cwd()
        if artifact_location is None and (db := sqlite_path(self.uri)) is not None:
            artifact_location = (db.parent / "mlartifacts").as_uri()  # next to the database, not in cwd
        self.artifact_location = artifact_location
        self._store = Store(self.uri) if enabled else None
        self._experiment_id: str | None = None
        self._git: dict[str, str] | None = None

    @classmethod
    def from_config(cls, config: ExperimentConfig, *, cwd: str | Path | None = None) -> Tracker:
        """The default store is <workdir>/mlflow.db; tracking.uri overrides it, tracking.experiment the
        experiment name (default: config.name); tracking.enabled false gives a tracker that does nothing."""
        tc = config.tracking
        experiment = tc.experiment or config.name
        if not tc.enabled:
            return cls(None, experiment, enabled=False, config=config, cwd=cwd)
        if tc.uri:
            return cls(tc.uri, experiment, config=config, cwd=cwd)
        uri, artifacts = default_store(config.workdir)
        return cls(uri, experiment, artifact_location=artifacts, config=config, cwd=cwd)

    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None, enabled=False)

    @property
    def ui_command(self) -> str | None:
        return ui_command(self.uri) if self.enabled else None

    @property
    def experiment_id(self) -> str:
        if self._store is None:
            raise TunelabError("tracking is off (tracking.enabled: false)")
        if self._experiment_id is None:
            self._experiment_id = self._store.experiment_id(self.experiment, self.artifact_location)
        return self._experiment_id

    def _base_tags(self, stage: str, parent: str | None) -> dict[str, str]:
        from .. import __version__

        if self._git is None:
            self._git = lineage.git_state(self.cwd)
        tags = {lineage.STAGE: stage, lineage.VERSION: __version__, lineage.MLFLOW_SOURCE_NAME: f"tunelab {stage}",
                **self._git}
        with contextlib.suppress(Exception):
            tags[lineage.MLFLOW_USER] = getpass.getuser()
        if self.config is not None:
            tags[lineage.CONFIG_NAME] = self.config.name
            tags[lineage.CONFIG_HASH] = self.config.fingerprint()
            tags[lineage.BASE_MODEL] = self.config.model.name
            tags[lineage.METHOD] = self.config.method.name
        if parent:
            tags[lineage.MLFLOW_PARENT] = parent
        return tags

    def _redactor(self) -> Redactor:
        from .redact import known_secrets

        known = known_secrets()
        if self.config is not None:
            known += secrets_in(self.config.resolved())
        return Redactor(known)

    @contextlib.contextmanager
    def run(self, stage: str, name: str | None = None, params: Mapping[str, Any] | None = None,
            tags: Mapping[str, Any] | None = None, parent: str | None = None, *,
            log_config: bool = True) -> Iterator[Run | NullRun]:
        """One run of `stage` (prepare, synth, train, eval, compare, or a parent's own name).

        Logged at the start: the base tags (stage, tunelab version, git commit and dirty flag, config
        name and hash, base model, method), `tags`, and, with log_config, the resolved config as params
        and as the artifact config.resolved.yaml; then `params`. `parent` is a run id: this run nests
        under it in the MLflow UI. An exception in the block ends the run FAILED (KILLED for Ctrl-C)
        and propagates."""
        if not self.enabled or self._store is None:
            yield NullRun(stage, name)
            return
        if not stage or not isinstance(stage, str):
            raise TunelabError("a tracked run needs a stage name")
        redactor = self._redactor()
        run_name = name or stage
        given = {k: v for k, v in lineage.canonical(dict(tags or {})).items() if v is not None}
        given.pop(lineage.STAGE, None)  # the stage argument names the stage
        all_tags = {**self._base_tags(stage, parent), **given}
        clean_tags = {clean_key(k): _truncate(redactor.text(stringify(v)), MAX_TAG_VALUE) for k, v in all_tags.items()}
        experiment_id = self.experiment_id
        with self._store.guard(f"starting a {stage} run"):
            info = self._store.client.create_run(experiment_id, start_time=_now_ms(), tags=clean_tags,
                                                 run_name=run_name).info
        run = Run(self._store, info.run_id, stage, run_name, info.artifact_uri, redactor,
                  copy_artifacts=self.config.tracking.artifacts if self.config is not None else True)
        try:
            if log_config and self.config is not None:
                resolved = self.config.resolved()
                run.log_params(resolved)
                run.log_dict(resolved, "config.resolved.yaml")
            if params:
                run.log_params(params)
            yield run
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            try:
                run._end(status, exc)
            except Exception as end_exc:  # the block's own error matters more than a failed bookkeeping call
                log.warning("could not mark run %s %s: %s", run.id, status, end_exc)
            raise
        run._end(run.status or "FINISHED")
