"""Faults a cluster inflicts on the train stage, with real processes: kill -9, SIGTERM, lost rank, no MLflow.

Each test runs the real ``horovodrun -np 2`` (or ``dvc repro``) on tiny params and checks what the runner's
contract promises (``summarizer/runner.py``): the work lost, the time from fault to exit, the MLflow run's
final state, and that resuming ends with the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from summarizer import runner
from summarizer.spool import SPOOL_DIRECTORY
from tests.helpers import LoopbackMlflowServer
from tests.pipeline.dvc_project import VENV_BIN, DvcProject, tiny_params
from tests.workers.launch import (
    CHECKPOINT_LINE,
    EVERY_STEP,
    Watched,
    check,
    horovod_environment,
    horovodrun,
    horovodrun_command,
    train_command,
)
from tests.workers.tiny_data import tiny_train_params, write_params, write_tokenized

pytestmark = pytest.mark.slow

EPOCHS = 3


def write_run_params(directory: Path, uri: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    values = tiny_train_params(epochs=EPOCHS, checkpoint_every_minutes=0.00001)
    write_params(directory / "params.yaml", values, uri)


def weights(root: Path, rank: int = 0, directory: str = "weights") -> list[np.ndarray]:
    """The final weights a rank dumped (``SUMMARIZER_DUMP_WEIGHTS_DIR``)."""
    with np.load(root / directory / f"weights-rank{rank}.npz") as arrays:
        return [arrays[f"arr_{index}"] for index in range(len(arrays.files))]


def assert_same_weights(first: list[np.ndarray], second: list[np.ndarray]) -> None:
    assert len(first) == len(second) > 10
    for left, right in zip(first, second, strict=True):
        np.testing.assert_array_equal(left, right)


def runs(uri: str, experiment: str = "tests") -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def saved_state(directory: Path) -> dict:
    (checkpoint,) = (directory / ".checkpoints").glob("train-*")
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenized(tmp_path_factory.mktemp("data"), train_examples=640)  # 20 steps an epoch


@pytest.fixture(scope="module")
def uninterrupted(tokenized: Path, tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """The final weights of the same run without any fault."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    write_run_params(directory, f"sqlite:///{directory / 'mlflow.db'}")
    dump = {runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights"), **EVERY_STEP}
    check(horovodrun(train_command(directory, tokenized), cwd=directory, environment=dump))
    return weights(directory)


def resume(directory: Path, tokenized: Path) -> str:
    """Rerun the stage to its end; returns its output."""
    dump = {runner.DUMP_WEIGHTS_VARIABLE: str(directory / "weights"), **EVERY_STEP}
    return check(horovodrun(train_command(directory, tokenized), cwd=directory, environment=dump)).stdout


def test_sigterm_to_the_launcher_checkpoints_the_step_and_ends_the_run_killed(
    tokenized: Path, uninterrupted: list[np.ndarray], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_run_params(tmp_path, uri)
    command = horovodrun_command(train_command(tmp_path, tokenized))
    job = Watched(command, tmp_path, horovod_environment(EVERY_STEP))
    reached = int(job.wait_for(CHECKPOINT_LINE).group(1))

    signalled = time.monotonic()
    job.process.send_signal(signal.SIGTERM)  # what Kubernetes sends before it preempts the pod
    status = job.finish(timeout=60)
    seconds_to_exit = time.monotonic() - signalled

    assert status != 0 and seconds_to_exit < 30, (status, seconds_to_exit, job.output)
    assert "SIGTERM received: stopping after the current step" in job.output
    state = saved_state(tmp_path)
    assert state["epoch"] == 1 and reached <= state["epoch_step"] < 20  # inside epoch 2, nothing lost
    assert len(state["epoch_partials"]) == 2  # both ranks' partial sums
    (run,) = runs(uri)
    assert run.info.status == "KILLED"
    assert f"stopped by SIGTERM at epoch 2, step {state['epoch_step']}" in run.data.tags[runner.STOP_TAG]

    output = resume(tmp_path, tokenized)
    assert f"at step {state['epoch_step']} of epoch 2" in output
    assert_same_weights(weights(tmp_path), uninterrupted)
    (run,) = runs(uri)  # the same run, resumed and finished
    assert run.info.status == "FINISHED"
    steps = [
        metric.step for metric in mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val_loss")
    ]
    assert steps == [1, 2, 3]
    assert not list((tmp_path / ".checkpoints").glob("train-*"))  # removed once the stage has finished


def test_a_killed_rank_ends_the_job_names_the_rank_and_resume_works(
    tokenized: Path, uninterrupted: list[np.ndarray], tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_run_params(tmp_path, uri)
    job = Watched(
        horovodrun_command(train_command(tmp_path, tokenized)), tmp_path, horovod_environment(EVERY_STEP)
    )
    job.wait_for(CHECKPOINT_LINE)

    killed = time.monotonic()
    job.rank_process(1).send_signal(signal.SIGKILL)  # out of memory, or its node is gone
    status = job.finish(timeout=90)
    seconds_to_exit = time.monotonic() - killed

    assert status != 0 and seconds_to_exit < 60, (seconds_to_exit, job.output)
    assert "Process name: 1" in job.output  # horovodrun names the rank that died first
    assert "lost a rank" in job.output
    (run,) = runs(uri)
    assert run.info.status == "KILLED" and "lost a rank" in run.data.tags[runner.STOP_TAG]
    state = saved_state(tmp_path)
    assert (state["epoch"], state["epoch_step"] > 0) == (1, True)

    output = resume(tmp_path, tokenized)
    assert "of epoch 2" in output
    assert_same_weights(weights(tmp_path), uninterrupted)
    assert runs(uri)[0].info.status == "FINISHED"


def test_a_tracking_outage_never_stops_training_and_replay_lands_every_epoch(
    tokenized: Path, tmp_path: Path
) -> None:
    server = LoopbackMlflowServer(tmp_path / "server")
    server.start()
    try:
        write_params(tmp_path / "params.yaml", tiny_train_params(epochs=4), server.uri)
        job = Watched(horovodrun_command(train_command(tmp_path, tokenized)), tmp_path, horovod_environment())
        job.wait_for(r"^\[0\]<stdout>:epoch 1/4 ")
        server.stop()  # the shared server restarts after epoch 1
        status = job.finish(timeout=240)
        assert status == 0, job.output
        for output in ("models/summarizer/model.keras", "metrics/train.json", "plots/train_history.csv"):
            assert (tmp_path / output).is_file(), output
        assert "record(s) of run" in job.output and "summarizer-replay" in job.output
        (spool,) = (tmp_path / SPOOL_DIRECTORY).iterdir()

        server.start()
        replay = [str(VENV_BIN / "summarizer-replay"), "--root", str(tmp_path)]
        replayed = check(subprocess.run(replay, capture_output=True, text=True, timeout=300))
        assert f"run {spool.name}: replayed" in replayed.stdout
        assert not spool.exists()
        (run,) = runs(server.uri)
        assert run.info.run_id == spool.name and run.info.status == "FINISHED"
        client = mlflow.MlflowClient(server.uri)
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(metric.step for metric in history) == [1, 2, 3, 4]
        assert len({metric.timestamp for metric in history}) == 4  # original timestamps, not the replay's
        assert run.data.metrics["best_val_loss"] > 0
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
        assert "model/model.keras" in artifacts
    finally:
        server.stop()


def test_kill_9_of_the_whole_stage_then_dvc_repro_resumes_at_the_checkpointed_step(tmp_path: Path) -> None:
    params = tiny_params(workers=2)
    params["train"] |= {"epochs": EPOCHS, "checkpoint_every_minutes": 0.00001}
    # The uninterrupted run, for the weights, in its own copy: in the same copy its dvc.lock entry and cached
    # outputs would let the second `dvc repro` check them out ("cached - skipping run") instead of resuming.
    reference = DvcProject(tmp_path / "reference-repo", params, pairs=900)
    reference.env |= EVERY_STEP | {runner.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "reference")}
    reference.dvc("repro", "train")
    project = DvcProject(tmp_path / "repo", params, pairs=900)
    project.env |= EVERY_STEP | {runner.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "resumed")}

    job = Watched([str(VENV_BIN / "dvc"), "repro", "train"], project.path, project.env)
    reached = int(job.wait_for(CHECKPOINT_LINE).group(1))
    job.kill_all()  # kill -9 of dvc, horovodrun and both ranks at once
    job.finish(timeout=60)

    state = saved_state(project.path)
    assert state["epoch"] == 1 and state["epoch_step"] >= reached
    resumed = project.dvc("repro", "train")
    assert f"at step {state['epoch_step']} of epoch 2" in resumed.stdout + resumed.stderr
    assert_same_weights(weights(tmp_path, directory="resumed"), weights(tmp_path, directory="reference"))
    (run,) = runs(f"sqlite:///{project.path / 'mlflow.db'}", "summarizer")
    assert run.info.status == "FINISHED"
    assert not list((project.path / ".checkpoints").glob("train-*"))
