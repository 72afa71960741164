"""The training loop: exact loss weighting, LR schedule, checkpoints, MLflow, 2-worker runs (horovodrun)."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from summarizer import records, training
from summarizer.config import TrainConfig
from summarizer.distribution import LocalDistribution
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID
from tests.helpers import tiny_batch, tiny_trainer
from tests.workers.launch import check, horovodrun
from tests.workers.tiny_data import TOKENIZE, write_tokenized

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
# Gradient accumulation and token batches (one process)

# (source, target) rows of unequal lengths; targets end with EOS. Ids < 30, tiny_trainer's vocabulary.
ROWS = (
    ([5, 6, 7], [8, 9, EOS_ID]),
    ([10, 11, 12, 13, 14, 15], [16, EOS_ID]),
    ([17, 18], [19, 20, 21, 22, EOS_ID]),
    ([23, 24, 25, 26, 27], [28, EOS_ID]),
    ([4, 29, 5, 6, 7, 8, 9], [10, 11, 12, EOS_ID]),
)


def batch_of(rows, source_time: int = 0, target_time: int = 0) -> dict[str, tf.Tensor]:
    """Right-padded teacher-forcing batch of ``rows``, padded to at least the given lengths."""
    source_time = max(source_time, *(len(source) for source, _ in rows))
    target_time = max(target_time, *(len(target) for _, target in rows))
    source = np.full((len(rows), source_time), PAD_ID, np.int32)
    target = np.full((len(rows), target_time), PAD_ID, np.int32)
    target_in = np.full((len(rows), target_time), PAD_ID, np.int32)
    for row, (source_ids, target_ids) in enumerate(rows):
        source[row, : len(source_ids)] = source_ids
        target[row, : len(target_ids)] = target_ids
        target_in[row, : len(target_ids)] = [BOS_ID, *target_ids[:-1]]
    return {name: tf.constant(value) for name, value in (
        ("source_ids", source), ("target_in", target_in), ("target_out", target)
    )}  # fmt: skip


ACCUMULATING = TrainConfig(
    units=16, embedding_dim=8, dropout=0.0, coverage_weight=0.5, label_smoothing=0.1, accumulate_steps=2
)


@pytest.mark.parametrize("own_padding", [False, True], ids=["same-padding", "own-padding"])
def test_accumulated_gradient_of_two_micro_batches_equals_the_gradient_of_the_whole_batch(
    own_padding: bool,
) -> None:
    keras.utils.set_random_seed(3)
    trainer = tiny_trainer(ACCUMULATING)
    whole = batch_of(ROWS)
    times = (0, 0) if own_padding else (whole["source_ids"].shape[1], whole["target_out"].shape[1])
    micro_batches = [batch_of(ROWS[:2], *times), batch_of(ROWS[2:], *times)]
    expected, whole_loss, whole_tokens = trainer.gradients(whole)
    accumulated, loss_sum, tokens = trainer.accumulated_gradients(micro_batches)
    assert tokens == float(whole_tokens) == 16.0
    assert loss_sum == pytest.approx(float(whole_loss), rel=1e-5)
    assert len(accumulated) == len(expected) > 10
    for got, want in zip(accumulated, expected, strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    assert max(float(np.abs(np.asarray(gradient)).max()) for gradient in expected) > 1e-2
    again, _, _ = trainer.accumulated_gradients(micro_batches)  # the accumulators start from zero again
    for first, second in zip(accumulated, again, strict=True):
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))


def test_an_accumulated_step_is_one_optimizer_step_and_one_micro_batch_is_the_plain_step() -> None:
    keras.utils.set_random_seed(3)
    accumulating = tiny_trainer(ACCUMULATING)
    accumulating.optimizer_step([batch_of(ROWS[:2]), batch_of(ROWS[2:])], 0.01)
    assert int(accumulating.optimizer.iterations) == 1

    config = TrainConfig(units=16, embedding_dim=8, dropout=0.0)
    keras.utils.set_random_seed(3)
    plain = tiny_trainer(config)
    keras.utils.set_random_seed(3)
    single = tiny_trainer(config)
    for _ in range(2):
        assert plain.train_step(batch_of(ROWS), 0.01) == single.optimizer_step([batch_of(ROWS)], 0.01)
    assert not single._accumulators  # the one-batch path, never the accumulators
    for left, right in zip(plain.model.get_weights(), single.model.get_weights(), strict=True):
        np.testing.assert_array_equal(left, right)


def test_an_accumulated_mixed_float16_step_scales_the_loss_and_updates_the_weights() -> None:
    config = dataclasses.replace(ACCUMULATING, precision="mixed_float16")
    trainer = tiny_trainer(config)
    before = [np.asarray(variable).copy() for variable in trainer.model.trainable_variables]
    for _ in range(3):  # the first steps may overflow at the initial loss scale and be skipped
        loss_sum, tokens = trainer.optimizer_step([batch_of(ROWS[:2]), batch_of(ROWS[2:])], 0.01)
        assert math.isfinite(loss_sum) and loss_sum > 0 and tokens == 16.0
    assert any(
        not np.array_equal(old, np.asarray(new))
        for old, new in zip(before, trainer.model.trainable_variables, strict=True)
    )


def test_optimizer_steps_group_micro_batches() -> None:
    assert list(training.optimizer_steps(range(6), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(training.optimizer_steps(range(2), 1)) == [[0], [1]]
    with pytest.raises(ValueError, match="not a multiple of 2"):
        list(training.optimizer_steps(range(3), 2))


@pytest.fixture(scope="module")
def train_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return records.list_shards(write_tokenized(tmp_path_factory.mktemp("data")), "train")


def as_arrays(batches) -> list[tuple[np.ndarray, ...]]:
    return [
        tuple(batch[name].numpy() for name in ("source_ids", "target_in", "target_out")) for batch in batches
    ]


def first_rows(batches) -> list[tuple[int, ...]]:
    return [tuple(batch["source_ids"].numpy()[0].tolist()) for batch in batches]


def assert_same_batches(first, second) -> None:
    assert len(first) == len(second)
    for left, right in zip(as_arrays(first), as_arrays(second), strict=True):
        for one, other in zip(left, right, strict=True):
            np.testing.assert_array_equal(one, other)


@pytest.mark.parametrize("batch_type", ["examples", "tokens"])
def test_an_epoch_is_seeded_and_a_resume_sees_the_rest_of_its_micro_batches(
    train_files: list[str], batch_type: str
) -> None:
    config = TrainConfig(batch_type=batch_type, batch_size=16 if batch_type == "examples" else 80, seed=5)
    config = dataclasses.replace(config, accumulate_steps=2)
    buckets = training.batch_buckets(config, TOKENIZE.max_source_tokens, TOKENIZE.max_target_tokens)
    assert (buckets is None) == (batch_type == "examples")
    assert buckets is None or buckets.target_boundaries  # the default target_bucket_width splits them
    local = LocalDistribution()
    steps = training.steps_per_epoch(train_files, config, local, buckets)
    lengths = records.example_lengths(train_files)
    assert steps == records.full_batches(lengths, buckets, config.batch_size) // 2 >= 3
    epoch = list(training.train_dataset(train_files, config, 2, steps, local, buckets=buckets))
    assert len(epoch) == 2 * steps
    assert_same_batches(
        epoch, list(training.train_dataset(train_files, config, 2, steps, local, buckets=buckets))
    )
    resumed = list(training.train_dataset(train_files, config, 2, steps, local, skip=2, buckets=buckets))
    assert_same_batches(resumed, epoch[4:])  # two optimizer steps of two micro-batches skipped
    other_epoch = list(training.train_dataset(train_files, config, 3, steps, local, buckets=buckets))
    assert first_rows(other_epoch) != first_rows(epoch)  # another epoch, another order
    if buckets is not None:
        for batch in epoch:  # within the budget, one bucket per batch
            source = batch["source_ids"].numpy()
            assert source.size <= config.batch_size
            assert len({buckets.index(int(length)) for length in np.count_nonzero(source, axis=1)}) == 1


# ----------------------------------------------------------------------------------------------------------
# Two workers under horovodrun


@pytest.mark.slow
@pytest.mark.parametrize(
    "modes", [(), ("accumulate",), ("overlap",)], ids=["one-batch", "accumulated", "overlapped-allreduce"]
)
def test_two_worker_gradient_on_split_batch_equals_one_worker_gradient_on_whole_batch(
    tmp_path: Path, modes: tuple[str, ...]
) -> None:
    """Each rank's half as one batch, or as two accumulated micro-batches of one example each; averaged by one
    grouped allreduce, or by one allreduce per tensor (``overlap``)."""
    check(horovodrun([str(WORKERS / "gradient_worker.py"), str(tmp_path), *modes]))
    chief, other = np.load(tmp_path / "rank0.npz"), np.load(tmp_path / "rank1.npz")
    assert (float(chief["tokens"]), float(other["tokens"])) == (5.0, 13.0)  # unequal halves
    count = len([name for name in chief.files if name.startswith("split_")])
    assert count > 10
    for index in range(count):
        whole = chief[f"whole_{index}"]
        np.testing.assert_allclose(chief[f"split_{index}"], whole, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(other[f"split_{index}"], chief[f"split_{index}"])
    assert max(np.abs(chief[f"whole_{index}"]).max() for index in range(count)) > 1e-2  # not trivially zero
    # the chief's Horovod timeline: one grouped allreduce of every gradient (tensors named "<name>_KofN"), or
    # one allreduce per tensor
    grouped = re.search(r'_\d+of\d+"', (tmp_path / "timeline.json").read_text(encoding="utf-8")) is not None
    assert grouped == ("overlap" not in modes)
