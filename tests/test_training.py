"""The training loop: exact loss weighting, LR schedule, checkpoints, MLflow, 2-worker runs (horovodrun)."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from summarizer import tracking, training
from summarizer.config import TrainConfig
from summarizer.distribution import LocalDistribution
from summarizer.model import build_model
from tests.workers.launch import check, horovodrun
from tests.workers.tiny_data import tiny_train_params, write_params, write_tokenized

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tokenized(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def float32_policy() -> None:
    """Runs set the global mixed-precision policy; leave it as other tests expect."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def paths_in(root: Path, data_dir: Path) -> training.TrainingPaths:
    return training.TrainingPaths(
        data_dir=data_dir,
        out_dir=root / "models/summarizer",
        metrics=root / "metrics/train.json",
        history=root / "plots/train_history.csv",
        root=root,
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
# Loss


def test_token_losses_mask_padding_and_add_smoothing_and_coverage() -> None:
    probabilities = np.array([[[0.5, 0.2, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]])
    log_probs = tf.constant(np.log(probabilities), tf.float32)  # (1, 3, 4)
    target_out = tf.constant([[2, 1, 0]])  # the last position is PAD
    coverage = tf.constant([[0.5, 1.5, 100.0]])
    outputs = {"log_probs": log_probs, "coverage_loss": coverage}

    objective, nll, tokens = training.token_losses(outputs, target_out)
    expected_nll = -math.log(0.2) - math.log(0.6)
    assert float(tokens) == 2.0
    assert float(nll) == pytest.approx(expected_nll, rel=1e-6)
    assert float(objective) == pytest.approx(expected_nll, rel=1e-6)

    objective, nll, _ = training.token_losses(outputs, target_out, label_smoothing=0.1, coverage_weight=2.0)
    uniform = -np.log(probabilities[0, :2]).mean(axis=-1).sum()  # mean over the vocabulary of -log p
    assert float(objective) == pytest.approx(0.9 * expected_nll + 0.1 * uniform + 2.0 * (0.5 + 1.5), rel=1e-6)
    assert float(nll) == pytest.approx(expected_nll, rel=1e-6)

    scored = {"target_log_probs": tf.constant([[math.log(0.2), math.log(0.6), 0.0]])}
    assert float(training.token_losses(scored, target_out)[0]) == pytest.approx(expected_nll, rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Learning rate, plateau, early stopping


def test_learning_rate_warms_up_linearly_to_lr_times_size() -> None:
    config = TrainConfig(learning_rate=0.001, warmup_steps=10)
    assert training.learning_rate_at(config, 4, 0) == pytest.approx(0.001)
    assert training.learning_rate_at(config, 4, 5) == pytest.approx(0.0025)
    assert training.learning_rate_at(config, 4, 10) == pytest.approx(0.004)
    assert training.learning_rate_at(config, 4, 500, lr_scale=0.5) == pytest.approx(0.002)
    assert training.learning_rate_at(TrainConfig(warmup_steps=0, learning_rate=0.001), 2, 0) == pytest.approx(
        0.002
    )


def test_plateau_reduces_learning_rate_to_its_floor_then_stops_early() -> None:
    config = TrainConfig(
        epochs=20,
        learning_rate=0.001,
        min_learning_rate=0.0003,
        lr_reduce_patience=1,
        lr_reduce_factor=0.5,
        early_stopping_patience=3,
    )
    state = training.TrainingState()
    scales, reasons = [], []
    for epoch, val_loss in enumerate([3.0, 2.0, 2.5, 2.4, 1.5, 1.6, 1.7, 1.8], start=1):
        state.epoch = epoch
        training.update_after_epoch(state, config, val_loss)
        scales.append(state.lr_scale)
        reasons.append(state.stop_reason)
    # Epochs 3 and 4 do not improve: 0.5, then 0.25 floored at 0.3; epoch 5 improves; 6-8 do not.
    assert scales == pytest.approx([1.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3])
    assert (state.best_val_loss, state.best_epoch) == (1.5, 5)
    assert reasons[:7] == [""] * 7 and reasons[7].startswith("early stopping")


def test_wall_clock_budget_and_epoch_count_stop_training() -> None:
    config = TrainConfig(epochs=3, max_wall_minutes=1.0)
    state = training.TrainingState(epoch=1, elapsed_seconds=61.0)
    training.update_after_epoch(state, config, 1.0)
    assert state.stop_reason.startswith("wall-clock budget")
    state = training.TrainingState(epoch=3, elapsed_seconds=1.0)
    training.update_after_epoch(state, config, 1.0)
    assert state.stop_reason == "completed 3 epochs"


def test_wall_clock_budget_stops_before_an_epoch_that_would_overrun_it() -> None:
    config = TrainConfig(epochs=10, max_wall_minutes=1.0)
    overrun = training.TrainingState(epoch=1, elapsed_seconds=35.0, history=[{"seconds": 35.0}])
    training.update_after_epoch(overrun, config, 1.0)
    assert "would not fit" in overrun.stop_reason
    fits = training.TrainingState(epoch=1, elapsed_seconds=25.0, history=[{"seconds": 25.0}])
    training.update_after_epoch(fits, config, 1.0)
    assert fits.stop_reason == ""


# ----------------------------------------------------------------------------------------------------------
# Steps


def _tiny_trainer(config: TrainConfig) -> training.Trainer:
    keras.mixed_precision.set_dtype_policy(config.precision)
    trainer = training.Trainer(build_model(config, 30), config, LocalDistribution())
    trainer.build()
    return trainer


def _batch() -> dict[str, tf.Tensor]:
    return {
        "source_ids": tf.constant([[5, 6, 7, 8], [9, 10, 0, 0]]),
        "target_in": tf.constant([[2, 6, 8], [2, 10, 0]]),
        "target_out": tf.constant([[6, 8, 3], [10, 3, 0]]),
    }


def test_mixed_float16_step_gives_finite_loss_with_loss_scaling() -> None:
    trainer = _tiny_trainer(TrainConfig(units=8, embedding_dim=4, precision="mixed_float16", dropout=0.0))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.embedding.compute_dtype == "float16"
    assert all(variable.dtype == "float32" for variable in trainer.model.trainable_variables)
    before = [np.asarray(variable).copy() for variable in trainer.model.trainable_variables]
    losses = [trainer.train_step(_batch(), 0.01) for _ in range(3)]
    assert all(math.isfinite(loss) and loss > 0 for loss, _ in losses)
    assert all(tokens == 5.0 for _, tokens in losses)
    changed = [
        not np.array_equal(old, np.asarray(new))
        for old, new in zip(before, trainer.model.trainable_variables, strict=True)
    ]
    assert any(changed)


# ----------------------------------------------------------------------------------------------------------
# MLflow around a run (one process)


def test_unreachable_tracking_uri_fails_before_training(tmp_path: Path, tokenized: Path) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_train_params(), "http://127.0.0.1:9")
    started = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match="127.0.0.1:9"):
        training.run_training(params, LocalDistribution(), paths_in(tmp_path, tokenized))
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
        training.run_training(params, LocalDistribution(), paths_in(tmp_path, broken))
    run = only_run(uri)
    assert run.info.status == "FAILED"
    assert "DataLossError" in run.data.tags[tracking.ERROR_TAG]
    assert run.data.params["train.units"] == "16"
    assert not (tmp_path / "models").exists()


# ----------------------------------------------------------------------------------------------------------
# Two workers under horovodrun


@pytest.mark.slow
def test_two_worker_gradient_on_split_batch_equals_one_worker_gradient_on_whole_batch(tmp_path: Path) -> None:
    check(horovodrun([str(WORKERS / "gradient_worker.py"), str(tmp_path)]))
    chief, other = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert (float(chief["tokens"]), float(other["tokens"])) == (5.0, 13.0)  # unequal halves
    count = len([name for name in chief.files if name.startswith("split_")])
    assert count > 10
    for index in range(count):
        whole = chief[f"whole_{index}"]
        np.testing.assert_allclose(chief[f"split_{index}"], whole, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(other[f"split_{index}"], chief[f"split_{index}"])
    assert max(np.abs(chief[f"whole_{index}"]).max() for index in range(count)) > 1e-2  # not trivially zero


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
        "--history", str(tmp_path / "plots/train_history.csv"), "--checkpoint-root", str(tmp_path),
    ]  # fmt: skip

    killed = horovodrun(command, environment={training.STOP_AFTER_EPOCHS_VARIABLE: "1"})
    assert killed.returncode != 0
    (checkpoint,) = (tmp_path / ".checkpoints").iterdir()
    saved = json.loads((checkpoint / "state.json").read_text())
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    first_run = only_run(uri)
    assert first_run.info.status == "KILLED" and first_run.info.run_id == saved["run_id"]
    assert not (tmp_path / "models").exists()

    resumed = check(
        horovodrun(command, environment={training.DUMP_WEIGHTS_VARIABLE: str(tmp_path / "weights")})
    )
    assert "resuming from" in resumed.stdout and "after epoch 1" in resumed.stdout
    history = read_history(tmp_path / "plots/train_history.csv")
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    assert list(history[0]) == list(training.HISTORY_COLUMNS)
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
    assert metrics["epochs"] == 3 and metrics["workers"] == 2 and metrics["samples_per_second"] > 0
