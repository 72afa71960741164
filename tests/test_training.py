"""The training loop: exact loss weighting, LR schedule, checkpoints, MLflow, 2-worker runs (horovodrun)."""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np
import pytest

from summarizer import training
from summarizer.config import TrainConfig
from tests.helpers import tiny_batch, tiny_trainer
from tests.workers.launch import check, horovodrun

WORKERS = Path(__file__).parent / "workers"


@pytest.fixture(autouse=True)
def float32_policy() -> None:
    """Steps set the global mixed-precision policy; leave it as other tests expect."""
    yield
    keras.mixed_precision.set_dtype_policy("float32")


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
    assert state.stopped_by == "wall_clock"
    assert state.stop_reason.startswith(
        "the wall-clock cap train.max_wall_minutes=1 cut training short after epoch 1 of 3"
    )
    state = training.TrainingState(epoch=3, elapsed_seconds=61.0)
    training.update_after_epoch(state, config, 1.0)
    assert (state.stopped_by, state.stop_reason) == ("epochs", "completed 3 epochs")


def test_wall_clock_budget_stops_before_an_epoch_that_would_overrun_it() -> None:
    config = TrainConfig(epochs=10, max_wall_minutes=1.0)
    overrun = training.TrainingState(epoch=1, elapsed_seconds=35.0, history=[{"seconds": 35.0}])
    training.update_after_epoch(overrun, config, 1.0)
    assert "would not fit" in overrun.stop_reason and overrun.stopped_by == "wall_clock"
    fits = training.TrainingState(epoch=1, elapsed_seconds=25.0, history=[{"seconds": 25.0}])
    training.update_after_epoch(fits, config, 1.0)
    assert fits.stop_reason == fits.stopped_by == ""


def test_no_wall_clock_cap_by_default_however_long_the_epochs() -> None:
    config = TrainConfig(epochs=5)
    assert config.max_wall_minutes == 0
    state = training.TrainingState(epoch=4, elapsed_seconds=1e7, history=[{"seconds": 1e7}])
    training.update_after_epoch(state, config, 1.0)
    assert state.stop_reason == state.stopped_by == ""
    state.epoch = 5
    training.update_after_epoch(state, config, 1.0)
    assert state.stopped_by == "epochs"


# ----------------------------------------------------------------------------------------------------------
# Steps


def test_mixed_float16_step_gives_finite_loss_with_loss_scaling() -> None:
    trainer = tiny_trainer(TrainConfig(units=8, embedding_dim=4, precision="mixed_float16", dropout=0.0))
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.model.embedding.compute_dtype == "float16"
    assert all(variable.dtype == "float32" for variable in trainer.model.trainable_variables)
    before = [np.asarray(variable).copy() for variable in trainer.model.trainable_variables]
    losses = [trainer.train_step(tiny_batch(), 0.01) for _ in range(3)]
    assert all(math.isfinite(loss) and loss > 0 for loss, _ in losses)
    assert all(tokens == 5.0 for _, tokens in losses)
    changed = [
        not np.array_equal(old, np.asarray(new))
        for old, new in zip(before, trainer.model.trainable_variables, strict=True)
    ]
    assert any(changed)


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
