"""The MLflow spool against a real loopback ``mlflow server`` that is really stopped and started again."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from summarizer.spool import SPOOL_DIRECTORY, SpooledTracker, replay
from summarizer.tracking import RunTracker
from tests.helpers import LoopbackMlflowServer


def test_records_spooled_during_an_outage_land_in_order_with_their_steps_and_timestamps(
    server: LoopbackMlflowServer, tmp_path: Path
) -> None:
    tracker = SpooledTracker(RunTracker(server.uri), tmp_path)
    run_id = tracker.start("spool", "train")
    tracker.log_params({"train.units": 16})
    tracker.log_metrics({"val_loss": 3.0}, step=1)
    server.stop()

    started = time.monotonic()
    tracker.log_metrics({"val_loss": 2.0}, step=2)  # one short failed attempt, then the spool
    (tmp_path / "history.csv").write_text("epoch\n1\n2\n", encoding="utf-8")
    tracker.log_artifact(tmp_path / "history.csv")
    tracker.log_metrics({"val_loss": 1.5}, step=3)
    tracker.end("FINISHED")
    assert time.monotonic() - started < 30
    assert tracker.pending == 4
    (tmp_path / "history.csv").write_text("changed after spooling\n", encoding="utf-8")

    server.start()
    assert replay(tmp_path) == {run_id: 0}
    assert not (tmp_path / SPOOL_DIRECTORY / run_id).exists()
    client = mlflow.MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.units"] == "16"
    history = sorted(client.get_metric_history(run_id, "val_loss"), key=lambda metric: metric.step)
    assert [(metric.step, metric.value) for metric in history] == [(1, 3.0), (2, 2.0), (3, 1.5)]
    assert history[1].timestamp < run.info.end_time  # logged when it happened, not when replayed
    local = client.download_artifacts(run_id, "history.csv", str(tmp_path / "downloaded"))
    assert Path(local).read_text(encoding="utf-8") == "epoch\n1\n2\n"  # the file as it was when logged


def test_the_next_stage_replays_before_it_resumes_the_run(
    server: LoopbackMlflowServer, tmp_path: Path
) -> None:
    train = SpooledTracker(RunTracker(server.uri), tmp_path)
    run_id = train.start("spool", "train")
    server.stop()
    train.log_metrics({"val_loss": 2.0}, step=1)
    train.end("FINISHED")
    server.start()

    evaluate = SpooledTracker(RunTracker(server.uri), tmp_path)
    evaluate.start("spool", "evaluate", run_id=run_id)
    client = mlflow.MlflowClient(server.uri)
    assert client.get_run(run_id).info.status == "RUNNING"  # resumed after the train stage's FINISHED
    assert [metric.step for metric in client.get_metric_history(run_id, "val_loss")] == [1]
    evaluate.log_metrics({"test_rougeL": 30.0})
    evaluate.end("FINISHED")
    assert client.get_run(run_id).info.status == "FINISHED" and evaluate.pending == 0


def test_a_bad_request_is_a_bug_and_raises_instead_of_spooling(
    server: LoopbackMlflowServer, tmp_path: Path
) -> None:
    tracker = SpooledTracker(RunTracker(server.uri), tmp_path)
    tracker.start("spool", "train")
    tracker.log_params({"train.units": 16})
    with pytest.raises(MlflowException):
        tracker.log_params({"train.units": 32})  # MLflow params are immutable: HTTP 400
    assert tracker.pending == 0
