"""Resume checkpoints: keyed by params and data, and a save/load round trip restores everything."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from summarizer import checkpoints, training
from summarizer.config import TrainConfig
from tests.helpers import tiny_batch, tiny_trainer
from tests.workers.tiny_data import tiny_train_params, write_params


def test_checkpoint_directory_depends_on_train_params_and_data(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-00000-of-00001.tfrecord").write_bytes(b"abc")
    params = write_params(tmp_path / "p.yaml", tiny_train_params(), "sqlite:///mlflow.db")
    first = checkpoints.checkpoint_directory(tmp_path, params, data)
    assert first.parent == tmp_path / ".checkpoints" and first.name.startswith("train-")
    assert checkpoints.checkpoint_directory(tmp_path, params, data) == first
    other_params = write_params(tmp_path / "q.yaml", tiny_train_params(units=32), "sqlite:///mlflow.db")
    assert checkpoints.checkpoint_directory(tmp_path, other_params, data) != first
    evaluate_only = write_params(
        tmp_path / "r.yaml", {**tiny_train_params(), "evaluate": {"beam_width": 2}}, "sqlite:///mlflow.db"
    )
    assert checkpoints.checkpoint_directory(tmp_path, evaluate_only, data) == first
    (data / "train-00000-of-00001.tfrecord").write_bytes(b"abd")
    assert checkpoints.checkpoint_directory(tmp_path, params, data) != first


def test_checkpoint_round_trip_restores_weights_optimizer_state_and_random_state(tmp_path: Path) -> None:
    config = TrainConfig(units=8, embedding_dim=4, dropout=0.0)
    trainer = tiny_trainer(config)
    trainer.train_step(tiny_batch(), 0.01)
    state = training.TrainingState(
        epoch=2, step=7, best_val_loss=1.25, lr_scale=0.5, run_id="abc", history=[{"x": 1}]
    )
    random.seed(5)
    np.random.seed(5)
    best = [np.full_like(weight, 3.0) for weight in trainer.model.get_weights()]
    checkpoints.save_checkpoint(tmp_path / "checkpoint", trainer.variables, dataclasses.asdict(state), best)
    expected_next = (random.random(), float(np.random.rand()))

    restored_trainer = tiny_trainer(config)
    saved, restored_best = checkpoints.load_checkpoint(tmp_path / "checkpoint", restored_trainer.variables)

    assert training.TrainingState(**saved) == state
    assert checkpoints.read_state(tmp_path / "checkpoint")["run_id"] == "abc"
    assert (random.random(), float(np.random.rand())) == expected_next
    assert int(restored_trainer.optimizer.iterations.numpy()) == 1
    for saved, loaded in zip(trainer.variables, restored_trainer.variables, strict=True):
        assert np.array_equal(np.asarray(saved), np.asarray(loaded))
    assert all(np.all(weights == 3.0) for weights in restored_best)


def test_a_checkpoint_of_another_model_is_refused_naming_the_directory(tmp_path: Path) -> None:
    small = tiny_trainer(TrainConfig(units=8, embedding_dim=4))
    checkpoints.save_checkpoint(tmp_path / "checkpoint", small.variables[:3], {}, [])
    with pytest.raises(ValueError, match=r"holds 3 variables.*delete .*checkpoint to start afresh"):
        checkpoints.load_checkpoint(tmp_path / "checkpoint", small.variables)
