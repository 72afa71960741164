"""The train stage's run: MLflow run lifecycle, failures, kill and resume under horovodrun, outputs."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from summarizer import runner, tracking
from summarizer.config import CPU_CYCLE_TIME_MS
from summarizer.distribution import LocalDistribution
from tests.workers.launch import check, horovodrun
from tests.workers.tiny_data import tiny_train_params, write_params, write_tokenized


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenized(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def float32_policy() -> None:
    """Runs set the global mixed-precision policy; leave it as other tests expect."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def paths_in(root: Path, data_dir: Path) -> runner.TrainingPaths:
    return runner.TrainingPaths(
        data_dir=data_dir,
        out_dir=root / "models/summarizer",
        metrics=root / "metrics/train.json",
        history=root / "plots/train_history.csv",
        root=root,
        timings=root / "metrics/timings/train.json",
    )


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def only_run(uri: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [run.info.run_name for run in runs]
    return runs[0]


# ----------------------------------------------------------------------------------------------------------
# MLflow around a run (one process)


def test_unreachable_tracking_uri_fails_before_training(tmp_path: Path, tokenized: Path) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_train_params(), "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match="127.0.0.1:9"):
        runner.run_training(params, LocalDistribution(), paths_in(tmp_path, tokenized))
    assert time.perf_counter() - started < 30
    assert not (tmp_path / ".checkpoints").exists() and not (tmp_path / "models").exists()


def test_run_that_raises_is_marked_failed(tmp_path: Path, tokenized: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tokenized.iterdir():
        data = path.read_bytes()
        (broken / path.name).write_bytes(data[: len(data) // 2] if path.name.startswith("train-") else data)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = write_params(tmp_path / "params.yaml", tiny_train_params(), uri)
    with pytest.raises(tf.errors.DataLossError):
        runner.run_training(params, LocalDistribution(), paths_in(tmp_path, broken))
    run = only_run(uri)
    assert run.info.status == "FAILED"
    assert "DataLossError" in run.data.tags[tracking.ERROR_TAG]
    assert run.data.params["train.units"] == "16"
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_two_worker_training_resumes_after_kill_in_the_same_mlflow_run(
    tmp_path: Path, tokenized: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    values = tiny_train_params(epochs=3)
    values["train"]["horovod"] = {"timeline": "timeline.json"}  # relative to the checkpoint root
    write_params(tmp_path / "params.yaml", values, uri)
    command = [
        "-m", "pipeline.train", "--params", str(tmp_path / "params.yaml"), "--data-dir", str(tokenized),
        "--out-dir", str(tmp_path / "models/summarizer"), "--metrics", str(tmp_path / "metrics/train.json"),
        "--history", str(tmp_path / "plots/train_history.csv"), "--root", str(tmp_path),
        "--timings", str(tmp_path / "metrics/timings/train.json"),
    ]  # fmt: skip

    killed = horovodrun(command, environment={runner.STOP_AFTER_EPOCHS_VARIABLE: "1"})
    assert killed.returncode != 0
    (checkpoint,) = (tmp_path / ".checkpoints").iterdir()
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    first_run = only_run(uri)
    assert first_run.info.status == "KILLED" and first_run.info.run_id == saved["run_id"]
    assert not (tmp_path / "models").exists()

    resumed = check(
        horovodrun(command, environment={runner.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "weights")})
    )
    assert "resuming from" in resumed.stdout and "after epoch 1" in resumed.stdout
    history = read_history(tmp_path / "plots/train_history.csv")
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    assert list(history[0]) == list(runner.HISTORY_COLUMNS)
    assert float(history[0]["train_loss"]) == pytest.approx(saved["history"][0]["train_loss"])
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert float(history[-1]["val_loss"]) < float(history[0]["val_loss"])
    assert not checkpoint.exists()

    chief, other = (
        np.load(tmp_path / "weights/weights-rank0.npz"),
        np.load(tmp_path / "weights/weights-rank1.npz"),
    )
    assert len(chief.files) == len(other.files) > 10
    for name in chief.files:
        np.testing.assert_array_equal(chief[name], other[name])

    run = only_run(uri)  # the same run, resumed
    assert run.info.run_id == first_run.info.run_id and run.info.status == "FINISHED"
    assert json.loads((tmp_path / "models/summarizer/run.json").read_text())["run_id"] == run.info.run_id
    assert run.data.params["train.units"] == "16" and run.data.params["evaluate.beam_width"] == "4"
    assert run.data.tags["workers"] == "2" and run.data.tags["dvc_stage"] == "train"
    # train.horovod.cycle_time_ms: auto, as it came to on these CPU ranks
    assert run.data.params["train.horovod.cycle_time_ms"] == "auto"
    assert run.data.tags["horovod_cycle_time_ms"] == f"{CPU_CYCLE_TIME_MS:g}"
    client = mlflow.MlflowClient(uri)
    val_losses = client.get_metric_history(run.info.run_id, "val_loss")
    assert sorted(metric.step for metric in val_losses if metric.step <= 3) == [1, 2, 3]
    assert run.data.metrics["workers"] == 2 and run.data.metrics["best_val_loss"] > 0
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.keras", "model/spm.model", "model/config.json", "model/run.json"} <= artifacts
    assert {"train_history.csv", "timeline.json"} <= {
        item.path for item in client.list_artifacts(run.info.run_id)
    }
    assert "ALLREDUCE" in (tmp_path / "timeline.json").read_text()
    assert run.data.metrics["overall_samples_per_second"] > 0
    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    timings = json.loads((tmp_path / "metrics/timings/train.json").read_text())
    assert metrics["epochs"] == 3 and metrics["workers"] == 2 and timings["samples_per_second"] > 0
