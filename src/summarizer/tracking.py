"""MLflow tracking: store URI, experiment, run creation and resume, params, metrics, artifacts, run status.

Only the chief (Horovod rank 0) calls this module; it never imports Horovod. Everything goes through an
explicit :class:`mlflow.MlflowClient`, never the fluent global-state API, so a run can be created in the
train stage, resumed by id after an interruption and read again by the evaluate stage.

A run whose process dies without running Python cleanup (SIGKILL, power loss) stays RUNNING; the train
stage resumes it by run id, so no sweep marking stale runs is needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from summarizer.config import TrackingConfig

logger = logging.getLogger(__name__)

END_STATUSES = ("FINISHED", "FAILED", "KILLED")
ARTIFACT_DIRECTORY = "mlartifacts"  # beside a sqlite database, as `mlflow server` names it
ERROR_TAG = "summarizer.error"
STORE_ERRORS = (MlflowException, sqlalchemy.exc.SQLAlchemyError, OSError)
# MLflow's system metrics: one sample every this many seconds (MLflow's own
# MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it; the tests set it to a fraction of a second).
SYSTEM_METRICS_INTERVAL_SECONDS = 10.0
# How long stopping the monitor may take (its last flush); past it, the last samples are dropped.
SYSTEM_METRICS_STOP_SECONDS = 5.0
_SERVER_HINT = (
    "Start it with `mlflow server --host 127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`"
)
_SETTING_HINT = "set tracking.tracking_uri in params.yaml or MLFLOW_TRACKING_URI"


class TrackingError(ValueError):
    """The tracking store is misconfigured or unreachable, or a run cannot be found."""


class RunTerminated(SystemExit):
    """The run was stopped from outside (SIGTERM, Ctrl-C, a lost rank): it ends KILLED, not FAILED."""


def project_root() -> Path:
    """The repository root: ``DVC_ROOT`` if set, else the current directory.

    DVC sets ``DVC_ROOT`` for every stage command, to the parent repository even in ``dvc exp run --temp``.
    """
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def resolve_tracking_uri(config: TrackingConfig, root: Path) -> str:
    """The tracking URI to use: ``MLFLOW_TRACKING_URI`` if set, else ``tracking.tracking_uri``.

    A relative sqlite path is made absolute against ``root`` so every stage and experiment shares one file.

    Raises:
        TrackingError: a file store (deprecated in MLflow 3), an in-memory or malformed sqlite URI.
    """
    environment_uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    uri, source = (
        (environment_uri, "MLFLOW_TRACKING_URI")
        if environment_uri
        else (config.tracking_uri, "tracking.tracking_uri")
    )
    parts = urlsplit(uri)
    if parts.scheme in ("", "file") or len(parts.scheme) == 1:  # one letter: a Windows drive
        raise TrackingError(
            f"{source}: {uri!r} is an MLflow file store, which is deprecated in MLflow 3; "
            "use sqlite:///mlflow.db (a database file in the repository root) or an http(s):// server"
        )
    if parts.scheme != "sqlite":
        return uri
    database = parts.path[1:]  # sqlite:///relative.db -> relative.db; sqlite:////abs.db -> /abs.db
    if parts.netloc or not database or database == ":memory:":
        raise TrackingError(
            f"{source}: {uri!r} is not a sqlite database file; expected sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (an in-memory database is not shared between stages)"
        )
    absolute = (Path(root) / database).resolve()
    query = f"?{parts.query}" if parts.query else ""
    return f"sqlite:///{absolute.as_posix()}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an absolute sqlite URI, or None for other stores."""
    parts = urlsplit(uri)
    return Path(parts.path[1:]) if parts.scheme == "sqlite" else None


def _unreachable(uri: str, reason: object) -> TrackingError:
    fix = f"Fix the path or {_SETTING_HINT}" if sqlite_path(uri) else f"{_SERVER_HINT} or {_SETTING_HINT}"
    return TrackingError(f"cannot reach the MLflow tracking store at {uri}: {reason}. {fix}")


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the block (MLflow reads its HTTP settings from them per request)."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_sqlite_file(uri: str, path: Path, timeout_seconds: float) -> None:
    """Open the database with sqlite3 first: MLflow retries a file it cannot open for about 100 s."""
    if not path.parent.is_dir():
        raise _unreachable(uri, f"directory {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise _unreachable(uri, f"directory {path.parent} is not writable")
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=timeout_seconds)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.Error as error:
        raise _unreachable(uri, f"{path}: {error}") from None


def check_tracking_store(uri: str, timeout_seconds: float = 10) -> None:
    """Fail fast, before any training, when the tracking store cannot be used.

    Raises:
        TrackingError: naming the URI, the reason and how to fix it.
    """
    database = sqlite_path(uri)
    if database is not None:
        _check_sqlite_file(uri, database, timeout_seconds)
    # One attempt with a short timeout: MLflow's defaults (7 retries, 120 s) wait for minutes.
    http_limits = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(timeout_seconds)),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    try:
        with environment(http_limits):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except STORE_ERRORS as error:
        raise _unreachable(uri, str(error).splitlines()[0] if str(error) else type(error).__name__) from None


def _truncate(value: str, limit: int, key: str) -> str:
    if len(value) <= limit:
        return value
    note = f"... [truncated from {len(value)} characters]"
    logger.warning("MLflow value of %s is %d characters long; truncated to %d", key, len(value), limit)
    return value[: limit - len(note)] + note


def param_value(value: Any) -> str:
    """A parameter as MLflow stores it: None -> "", booleans as in YAML, lists and mappings as JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple | Mapping):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _default_artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database, not into the current directory's ``mlruns/``."""
    database = sqlite_path(uri)
    return (database.parent / ARTIFACT_DIRECTORY).as_uri() if database is not None else None


class RunTracker:
    """One MLflow run, created or resumed by :meth:`start`, logged through an explicit client."""

    def __init__(self, tracking_uri: str, artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._artifact_location = artifact_location or _default_artifact_location(tracking_uri)
        self._run_id: str | None = None

    @property
    def started(self) -> bool:
        return self._run_id is not None

    @property
    def run_id(self) -> str:
        if self._run_id is None:
            raise TrackingError("no MLflow run started: call RunTracker.start() first")
        return self._run_id

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_location)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another process created it meanwhile
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {name!r} in {self.tracking_uri} is deleted: restore it with `mlflow "
                f"experiments restore --experiment-id {experiment.experiment_id}` or set tracking.experiment"
            )
        return experiment.experiment_id

    def _resumable_run(self, run_id: str, experiment_id: str, experiment: str) -> Run:
        try:
            run = self.client.get_run(run_id)
        except MlflowException as error:
            raise TrackingError(
                f"cannot resume MLflow run {run_id} from {self.tracking_uri}: {error}"
            ) from None
        if run.info.lifecycle_stage != "active":
            raise TrackingError(f"cannot resume MLflow run {run_id}: it is deleted in {self.tracking_uri}")
        if run.info.experiment_id != experiment_id:
            raise TrackingError(
                f"cannot resume MLflow run {run_id}: it belongs to experiment id {run.info.experiment_id}, "
                f"not to {experiment!r} (id {experiment_id})"
            )
        return run

    def start(
        self, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> str:
        """Create the experiment if needed and a new run, or resume ``run_id`` (its status back to RUNNING).

        Returns:
            The run id.
        """
        experiment_id = self._experiment_id(experiment)
        tags = {key: param_value(value) for key, value in (tags or {}).items()}
        if run_id is None:
            run = self.client.create_run(experiment_id, tags=tags, run_name=run_name)
            self._run_id = run.info.run_id
            return self._run_id
        self._resumable_run(run_id, experiment_id, experiment)
        self.client.update_run(run_id, status="RUNNING")
        self._run_id = run_id
        self.set_tags(tags)
        return run_id

    def attach(self, run_id: str) -> None:
        """Log to the existing run ``run_id`` without changing its status (to replay records into it)."""
        self._run_id = run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log flat params (dotted keys); values become strings (see :func:`param_value`), batched by 100.

        MLflow params are immutable: logging a key again with a different value raises MlflowException.
        """
        entries = [
            Param(key, _truncate(param_value(value), MAX_PARAM_VAL_LENGTH, key))
            for key, value in params.items()
        ]
        for batch in _batches(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None:
        """Log metrics at ``step``; ``timestamp`` (ms since the epoch) defaults to now."""
        timestamp = int(time.time() * 1000) if timestamp is None else timestamp
        entries = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()]
        for batch in _batches(entries, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [
            RunTag(key, _truncate(param_value(value), MAX_TAG_VAL_LENGTH, key)) for key, value in tags.items()
        ]
        for batch in _batches(entries, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file")
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"cannot log artifacts from {directory}: no such directory")
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dict(dictionary), artifact_file)

    def end(self, status: str = "FINISHED", end_time: int | None = None) -> None:
        """End the run with ``status``; ``end_time`` (ms since the epoch) defaults to now."""
        if status not in END_STATUSES:
            raise ValueError(f"run status: expected one of {', '.join(END_STATUSES)}, got {status!r}")
        self.client.set_terminated(self.run_id, status, end_time)


def run_status(error: BaseException | None) -> str:
    """The final status of a run whose block ended with ``error`` (None: it returned normally)."""
    if error is None:
        return "FINISHED"
    if isinstance(error, KeyboardInterrupt | RunTerminated):
        return "KILLED"
    if isinstance(error, SystemExit) and error.code in (0, None):
        return "FINISHED"
    return "FAILED"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise RunTerminated(128 + signum)  # the exit status a shell reports for a signal


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`RunTerminated` in the main thread; restore the previous handler after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class _TrackedRun:
    def __init__(self, tracker: RunTracker, start_arguments: dict[str, Any], handle_sigterm: bool) -> None:
        self.tracker = tracker
        self.start_arguments = start_arguments
        self.signals = sigterm_raises() if handle_sigterm else contextlib.nullcontext()

    def __enter__(self) -> RunTracker:
        self.tracker.start(**self.start_arguments)
        self.signals.__enter__()
        return self.tracker

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.signals.__exit__(None, None, None)
        status = run_status(error)
        try:
            if status == "FAILED":
                self.tracker.set_tags({ERROR_TAG: f"{type(error).__name__}: {error}"})
            self.tracker.end(status)
        except STORE_ERRORS as store_error:
            if error is None:
                raise
            logger.warning("could not mark MLflow run %s %s: %s", self.tracker.run_id, status, store_error)


def tracked_run(
    tracker: RunTracker,
    experiment: str,
    run_name: str,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
    handle_sigterm: bool = True,
) -> contextlib.AbstractContextManager[RunTracker]:
    """Start (or resume) a run and end it FINISHED, FAILED (the block raised) or KILLED (Ctrl-C, SIGTERM).

    With ``handle_sigterm`` (main thread only) SIGTERM raises :class:`RunTerminated` (exit status 143)
    inside the block. SIGKILL cannot be caught: the run stays RUNNING until resumed by id.
    """
    arguments = {"experiment": experiment, "run_name": run_name, "tags": tags, "run_id": run_id}
    return _TrackedRun(tracker, arguments, handle_sigterm)


@contextlib.contextmanager
def system_metrics(run_id: str, tracking_uri: str, resume: bool = False) -> Iterator[None]:
    """Log MLflow's system metrics to the run while the block runs, from a daemon thread.

    ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes`` (and ``_percentage``),
    disk and network figures of the whole machine (psutil), and ``system/gpu_*`` where ``pynvml`` finds a
    GPU (optional: without it MLflow logs one INFO line and skips GPU figures), every
    :data:`SYSTEM_METRICS_INTERVAL_SECONDS`. ``resume`` continues the steps of a resumed run.

    Monitoring never stops or slows the block: a monitor that cannot start is a warning; a store outage
    ends the monitoring (MLflow's monitor returns on its first failed request, in its own thread); stopping
    waits at most :data:`SYSTEM_METRICS_STOP_SECONDS` for the last flush. A SIGKILL takes the thread along.
    """
    monitor = _start_system_metrics(run_id, tracking_uri, resume)
    try:
        yield
    finally:
        if monitor is not None:
            _stop_system_metrics(monitor)


def _start_system_metrics(run_id: str, tracking_uri: str, resume: bool) -> Any:
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging reads the run's last step: one short attempt, never MLflow's minutes of retries.
        with environment({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}):
            monitor = SystemMetricsMonitor(
                run_id,
                sampling_interval=SYSTEM_METRICS_INTERVAL_SECONDS,
                resume_logging=resume,
                tracking_uri=tracking_uri,
            )
        monitor.start()
    except (*STORE_ERRORS, ImportError, RuntimeError) as error:
        logger.warning("system metrics of run %s not logged: %s", run_id, error)
        return None
    return monitor


def _stop_system_metrics(monitor: Any) -> None:
    """``monitor.finish()`` (join its thread, flush) in a daemon thread, given a bounded time."""
    stopper = threading.Thread(target=monitor.finish, name="system-metrics-stop", daemon=True)
    stopper.start()
    stopper.join(SYSTEM_METRICS_STOP_SECONDS)
    if stopper.is_alive():
        logger.warning(
            "system metrics: the MLflow store did not take the last samples within %.0f s; dropped",
            SYSTEM_METRICS_STOP_SECONDS,
        )


def _git_commit(root: Path) -> str | None:
    try:
        completed = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def default_tags(root: Path | None = None) -> dict[str, str]:
    """Source, git commit and DVC context (``DVC_EXP_NAME``, ``DVC_EXP_BASELINE_REV``, ``DVC_STAGE``)."""
    root = root or project_root()
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": Path(sys.argv[0]).name or "python"}
    commit = _git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    for variable, tag in (
        ("DVC_EXP_NAME", "dvc.exp_name"),
        ("DVC_EXP_BASELINE_REV", "dvc.exp_baseline_rev"),
        ("DVC_STAGE", "dvc.stage"),
    ):
        if os.environ.get(variable):
            tags[tag] = os.environ[variable]
    return tags


def run_name(cell: str, precision: str, workers: int, extra: str = "") -> str:
    """A readable run name such as ``gru-float32-2w`` (``extra`` appended after a dash)."""
    name = f"{cell}-{precision}-{workers}w"
    return f"{name}-{extra}" if extra else name


@dataclass(frozen=True)
class RunRecord:
    """What the compare command and tests need from a run; metrics hold each key's latest value."""

    run_id: str
    run_name: str
    experiment_id: str
    status: str
    start_time: int
    end_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    artifact_uri: str

    @classmethod
    def from_run(cls, run: Run) -> RunRecord:
        info, data = run.info, run.data
        return cls(
            info.run_id,
            info.run_name,
            info.experiment_id,
            info.status,
            info.start_time,
            info.end_time,
            dict(data.params),
            dict(data.metrics),
            dict(data.tags),
            info.artifact_uri,
        )


def find_run(uri: str, run_id: str) -> RunRecord:
    try:
        return RunRecord.from_run(MlflowClient(tracking_uri=uri).get_run(run_id))
    except MlflowException as error:
        raise TrackingError(f"MLflow run {run_id} not found in {uri}: {error}") from None


def list_runs(uri: str, experiment: str) -> list[RunRecord]:
    """Active runs of ``experiment``, oldest first.

    Raises:
        TrackingError: the experiment does not exist (the message lists those that do).
    """
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(item.name for item in client.search_experiments(view_type=ViewType.ALL))
        raise TrackingError(
            f"MLflow experiment {experiment!r} not found in {uri}; experiments: {', '.join(names)}"
        )
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs(
            [found.experiment_id],
            order_by=["attributes.start_time ASC"],
            max_results=1000,
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return [RunRecord.from_run(run) for run in runs]
