"""A tracking outage never stops a stage: MLflow records spooled to disk, replayed in order into the run.

Once a run exists, :class:`SpooledTracker` sends each record (params, metrics with their step and timestamp,
tags, artifacts, the pyfunc model, the final status) at once. When the store fails (server down, network
error, HTTP 5xx, a locked database) the record, and every record after it, goes to the run's spool,
``<root>/.checkpoints/mlflow-spool/<run_id>/`` (``records.jsonl``, a ``sent`` counter, copies of the files
to upload), and training goes on. A later send (at most every :data:`RETRY_SECONDS`), the end of the stage,
the next stage (evaluate replays before it starts) or ``summarizer-replay`` flushes the spool in order; the
records land in the same run with their original steps and timestamps. An HTTP 4xx answer is a bug, not an
outage: it raises as before. Each attempt is one request with a short timeout, never MLflow's minutes of
retries.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from summarizer.io import atomic_write_text, jsonl_text, read_json, read_jsonl, write_json
from summarizer.tracking import STORE_ERRORS, RunTracker, environment

logger = logging.getLogger(__name__)

SPOOL_DIRECTORY = Path(".checkpoints") / "mlflow-spool"
RECORDS_FILE = "records.jsonl"
SENT_FILE = "sent"
META_FILE = "meta.json"
RETRY_SECONDS = 30.0
ATTEMPT_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


def spool_directory(root: str | Path, run_id: str) -> Path:
    return Path(root) / SPOOL_DIRECTORY / run_id


def is_outage(error: BaseException) -> bool:
    """A store failure worth retrying later; an HTTP 4xx (a bad request) is not one."""
    if isinstance(error, MlflowException):
        return error.get_http_status_code() >= 500
    return isinstance(error, STORE_ERRORS)


def _now_ms() -> int:
    return int(time.time() * 1000)


def send(tracker: RunTracker, record: Mapping[str, Any]) -> None:
    """Send one record to ``tracker``'s run (one attempt, short timeout)."""
    kind = record["kind"]
    with environment(ATTEMPT_LIMITS):
        if kind == "params":
            tracker.log_params(record["params"])
        elif kind == "metrics":
            tracker.log_metrics(record["metrics"], step=record["step"], timestamp=record["timestamp"])
        elif kind == "tags":
            tracker.set_tags(record["tags"])
        elif kind == "artifact":
            tracker.log_artifact(record["path"], record["artifact_path"])
        elif kind == "artifacts":
            tracker.log_artifacts(record["path"], record["artifact_path"])
        elif kind == "text":
            tracker.log_text(record["text"], record["artifact_file"])
        elif kind == "pyfunc":
            from summarizer.pyfunc import log_pyfunc_model  # TensorFlow and the model code, only when needed

            log_pyfunc_model(tracker, record["path"], record["decoding"], example_texts=record["examples"])
        elif kind == "end":
            tracker.end(record["status"], end_time=record["end_time"])
        else:
            raise ValueError(f"unknown spool record kind {kind!r}")


class Spool:
    """The records of one run not yet sent, on disk, in order."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def records_path(self) -> Path:
        return self.directory / RECORDS_FILE

    def _sent(self) -> int:
        path = self.directory / SENT_FILE
        return int(path.read_text(encoding="utf-8")) if path.is_file() else 0

    def pending(self) -> list[dict[str, Any]]:
        if not self.records_path.is_file():
            return []
        records = [record for _, record in read_jsonl(self.records_path)]
        return records[self._sent() :]

    def append(self, record: dict[str, Any], tracking_uri: str) -> None:
        """Append ``record``, copying the files it names into the spool (they may change before replay)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if not (self.directory / META_FILE).is_file():
            write_json(self.directory / META_FILE, {"tracking_uri": tracking_uri})
        if "path" in record:
            source = Path(record["path"])
            # One directory per record keeps the file's own name, which becomes the artifact's name.
            copy = self.directory / "files" / f"{len(self.pending()) + self._sent():05d}" / source.name
            copy.parent.mkdir(parents=True)
            if source.is_dir():
                shutil.copytree(source, copy)
            else:
                shutil.copyfile(source, copy)
            record = {**record, "path": str(copy)}
        with self.records_path.open("a", encoding="utf-8") as handle:
            handle.write(jsonl_text([record]))

    def flush(self, tracker: RunTracker) -> int:
        """Send pending records in order until one fails; returns how many are still pending.

        Raises:
            MlflowException: the store refused a record (HTTP 4xx): replaying it again would not help.
        """
        pending = self.pending()
        for index, record in enumerate(pending):
            try:
                send(tracker, record)
            except Exception as error:
                if not is_outage(error):
                    raise
                return len(pending) - index
            atomic_write_text(self.directory / SENT_FILE, str(self._sent() + 1))
        shutil.rmtree(self.directory, ignore_errors=True)
        return 0


class SpooledTracker:
    """A started :class:`RunTracker` whose records go to a :class:`Spool` while the store is away."""

    def __init__(self, tracker: RunTracker, root: str | Path) -> None:
        self.tracker = tracker
        self.root = Path(root)
        self._spool: Spool | None = None
        self._last_attempt = 0.0

    @property
    def run_id(self) -> str:
        return self.tracker.run_id

    @property
    def tracking_uri(self) -> str:
        return self.tracker.tracking_uri

    @property
    def spool(self) -> Spool:
        if self._spool is None:
            self._spool = Spool(spool_directory(self.root, self.run_id))
        return self._spool

    @property
    def pending(self) -> int:
        return len(self.spool.pending())

    def start(
        self, experiment: str, run_name: str, tags: Mapping[str, Any] | None = None, run_id: str | None = None
    ) -> str:
        """Create or resume the run (never spooled: a store unreachable at start fails fast).

        A resumed run first gets what an earlier stage spooled for it (its final status included), so this
        stage's records come after them and its own status is the last word.
        """
        if run_id is not None:
            self.tracker.attach(run_id)
            self.flush()
        return self.tracker.start(experiment, run_name, tags, run_id)

    def flush(self) -> int:
        """Try to send what is pending now; returns how many records are still pending."""
        self._last_attempt = time.monotonic()
        return self.spool.flush(self.tracker) if self.spool.records_path.is_file() else 0

    def _submit(self, record: dict[str, Any]) -> None:
        if self.pending and time.monotonic() - self._last_attempt >= RETRY_SECONDS:
            self.flush()
        if not self.pending:
            try:
                send(self.tracker, record)
                return
            except Exception as error:
                if not is_outage(error):
                    raise
                self._last_attempt = time.monotonic()
                logger.warning(
                    "MLflow store %s unreachable (%s): spooling to %s; training goes on and the records are "
                    "replayed when it answers",
                    self.tracking_uri,
                    str(error).splitlines()[0][:200] if str(error) else type(error).__name__,
                    self.spool.directory,
                )
        self.spool.append(record, self.tracking_uri)

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._submit({"kind": "params", "params": {key: str(value) for key, value in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        values = {key: float(value) for key, value in metrics.items()}
        self._submit({"kind": "metrics", "metrics": values, "step": step or 0, "timestamp": _now_ms()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._submit({"kind": "tags", "tags": {key: str(value) for key, value in tags.items()}})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"cannot log artifact {path}: no such file")
        self._submit({"kind": "artifact", "path": str(path), "artifact_path": artifact_path})

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"cannot log artifacts from {directory}: no such directory")
        self._submit({"kind": "artifacts", "path": str(directory), "artifact_path": artifact_path})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._submit({"kind": "text", "text": text, "artifact_file": artifact_file})

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        self.log_text(json.dumps(dict(dictionary), indent=2, sort_keys=True), artifact_file)

    def log_pyfunc(self, model_dir: str | Path, decoding: Mapping[str, Any], examples: list[str]) -> None:
        """The summarizer as a pyfunc model in the run (see :func:`summarizer.pyfunc.log_pyfunc_model`)."""
        record = {"kind": "pyfunc", "path": str(model_dir), "decoding": dict(decoding), "examples": examples}
        self._submit(record)

    def end(self, status: str = "FINISHED") -> None:
        self._submit({"kind": "end", "status": status, "end_time": _now_ms()})

    def report_pending(self, program: str) -> int:
        """A last flush; if the store is still away, one warning saying what is pending and how to replay."""
        if not self.tracker.started:  # nothing was spooled
            return 0
        pending = self.flush()
        if pending:
            print(
                f"{program}: warning: the MLflow store {self.tracking_uri} did not answer: {pending} "
                f"record(s) of run {self.run_id} are pending in {self.spool.directory}. The stage's outputs "
                "are written; the next stage replays the records when it starts, or run `summarizer-replay` "
                "once the store is back.",
                file=sys.stderr,
                flush=True,
            )
        return pending


def replay(root: str | Path) -> dict[str, int]:
    """Flush every spool under ``root``; returns, per run id, how many records are still pending.

    Raises:
        MlflowException: the store refused a record (named by the message).
    """
    remaining = {}
    spools = Path(root) / SPOOL_DIRECTORY
    for directory in sorted(path for path in spools.glob("*") if (path / META_FILE).is_file()):
        tracker = RunTracker(read_json(directory / META_FILE)["tracking_uri"])
        tracker.attach(directory.name)  # records are only ever spooled for a run that exists
        remaining[directory.name] = Spool(directory).flush(tracker)
    return remaining


__all__ = ["SPOOL_DIRECTORY", "Spool", "SpooledTracker", "is_outage", "replay", "send", "spool_directory"]
