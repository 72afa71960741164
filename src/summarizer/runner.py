"""The train stage's run: MLflow run, resume, the epoch loop, checkpoints and the outputs it leaves.

:func:`run_training` drives a :class:`~summarizer.training.Trainer` on every rank; only the chief opens the
MLflow run, checkpoints (outside the DVC outs, :mod:`summarizer.checkpoints`), prints progress and writes the
model directory (:mod:`summarizer.model_directory`), the metrics and the history.

Faults: an exception or a signal (SIGTERM, Ctrl-C) ends the chief's MLflow run FAILED or KILLED
(:func:`summarizer.tracking.tracked_run`) and leaves the last checkpoint, so rerunning the stage with the same
params and data resumes it, in the same MLflow run. A lost rank makes Horovod abort every rank.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io as text_io
import os
import shutil
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from summarizer import checkpoints, records, tracking
from summarizer.config import Params, TrainConfig
from summarizer.distribution import Distribution
from summarizer.io import atomic_write_text, write_json
from summarizer.metrics import perplexity
from summarizer.model import build_model
from summarizer.model_directory import ModelSettings, RunInfo, write_model_directory
from summarizer.progress import EpochProgress, epoch_line
from summarizer.tokenization import Tokenizer
from summarizer.training import (
    Trainer,
    TrainingState,
    learning_rate_at,
    steps_per_epoch,
    train_dataset,
    update_after_epoch,
)

HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "val_perplexity",
    "learning_rate",
    "samples_per_second",
    "seconds",
)
# Debug option: once the checkpoint of epoch N is written, every rank sends itself SIGTERM, exactly as if the
# job were killed there. Tests use it to exercise resume deterministically (a timed kill would be racy).
STOP_AFTER_EPOCHS_VARIABLE = "SUMMARIZER_STOP_AFTER_EPOCHS"
# Debug option: each rank writes its final weights to ``<dir>/weights-rank<N>.npz`` (tests compare ranks).
DUMP_WEIGHTS_VARIABLE = "SUMMARIZER_DUMP_WEIGHTS_DIR"


@dataclass(frozen=True)
class TrainingPaths:
    """A run's inputs and outputs; ``root`` holds ``.checkpoints/`` and anchors relative MLflow URIs."""

    data_dir: Path
    out_dir: Path
    metrics: Path
    history: Path
    root: Path


def run_training(params: Params, distribution: Distribution, paths: TrainingPaths) -> dict[str, Any]:
    """Train on every rank; the chief checkpoints, logs to MLflow and writes the outputs.

    Returns:
        The final metrics on the chief, ``{}`` on the other ranks.

    Raises:
        tracking.TrackingError: the MLflow store is unreachable (checked before any training).
    """
    tracking_uri = _checked_tracking_uri(params, distribution, paths.root)
    checkpoint = None
    if distribution.is_chief:
        checkpoint = checkpoints.checkpoint_directory(paths.root, params, paths.data_dir)
    run_id = checkpoints.read_state(checkpoint)["run_id"] if checkpoint and checkpoint.is_dir() else None
    with _chief_run(params, distribution, tracking_uri, run_id, paths.root) as tracker:
        return _train(params, distribution, paths, checkpoint, tracker)


def _checked_tracking_uri(params: Params, distribution: Distribution, root: Path) -> str:
    """The chief checks the MLflow store in seconds; every rank raises if it is unreachable."""
    uri = tracking.resolve_tracking_uri(params.tracking, root)
    problem = None
    if distribution.is_chief:
        try:
            tracking.check_tracking_store(uri)
        except tracking.TrackingError as error:
            problem = str(error)
    problem = distribution.broadcast_object(problem)
    if problem:
        raise tracking.TrackingError(problem)
    return uri


@contextlib.contextmanager
def _chief_run(
    params: Params, distribution: Distribution, uri: str, run_id: str | None, root: Path
) -> Iterator[Any]:
    """The chief's MLflow run (new, or the checkpoint's run when resuming), marked FAILED/KILLED on errors."""
    if not distribution.is_chief:
        yield None
        return
    config = params.train
    tags = {
        **tracking.default_tags(root),
        "dvc_stage": "train",
        "workers": str(distribution.size),
        "precision": config.precision,
        "cell": config.cell,
        "copy_attention": str(config.copy_attention),
    }
    name = tracking.run_name(config.cell, config.precision, distribution.size)
    tracker = tracking.RunTracker(uri)
    with tracking.tracked_run(tracker, params.tracking.experiment, name, tags, run_id=run_id):
        if run_id is None:
            tracker.log_params(params.to_flat_dict())
        yield tracker


def _training_data(
    data_dir: Path, config: TrainConfig, distribution: Distribution
) -> tuple[Sequence[str], tf.data.Dataset, int]:
    """This rank's train shards, its val batches and the number of steps per epoch all ranks run."""
    train_files = records.list_shards(data_dir, "train")
    val_dataset = records.read_dataset(
        records.list_shards(data_dir, "val"),
        config.batch_size,
        shuffle=False,
        num_shards=distribution.num_shards,
        shard_index=distribution.shard_index,
    )
    return train_files, val_dataset, steps_per_epoch(train_files, config.batch_size, distribution)


def _train(
    params: Params, distribution: Distribution, paths: TrainingPaths, checkpoint: Path | None, tracker: Any
) -> dict[str, Any]:
    config, started = params.train, time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)
    data = _training_data(paths.data_dir, config, distribution)
    vocab_size = Tokenizer.load(paths.data_dir / "spm.model").vocab_size
    trainer = Trainer(build_model(config, vocab_size), config, distribution)
    trainer.build()
    state, best_weights = _restore(trainer, checkpoint, distribution)
    if tracker is not None:
        state.run_id = tracker.run_id
    timeline = paths.root / config.horovod.timeline if config.horovod.timeline else None
    if timeline:
        distribution.start_timeline(timeline)
    while not state.stop_reason:
        state, best_weights = _run_epoch(trainer, state, best_weights, data, tracker)
        if checkpoint is not None:
            checkpoints.save_checkpoint(
                checkpoint, trainer.variables, dataclasses.asdict(state), best_weights
            )
        _stop_if_requested(state.epoch, distribution)
    if timeline:
        distribution.stop_timeline()
    _dump_weights(trainer.model, distribution)
    if not distribution.is_chief:
        return {}
    print(
        f"training stopped: {state.stop_reason}; best val loss {state.best_val_loss:.4f} "
        f"at epoch {state.best_epoch}",
        flush=True,
    )
    trainer.model.set_weights(best_weights)
    metrics = _final_metrics(state, trainer.model, distribution, time.perf_counter() - started)
    _write_outputs(params, paths, trainer.model, state, metrics, tracker, timeline)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics


def _restore(
    trainer: Trainer, checkpoint: Path | None, distribution: Distribution
) -> tuple[TrainingState, list[np.ndarray]]:
    """The chief resumes from its checkpoint if there is one; then every rank takes the chief's state."""
    state, best_weights = TrainingState(), trainer.model.get_weights()
    if checkpoint is not None and checkpoint.is_dir():
        saved, best_weights = checkpoints.load_checkpoint(checkpoint, trainer.variables)
        state = TrainingState(**saved)
        print(f"resuming from {checkpoint} after epoch {state.epoch}", flush=True)
    state = distribution.broadcast_object(state)
    # Broadcast the variables: ranks start identical, from random weights or from the checkpoint.
    distribution.broadcast_variables(trainer.variables)
    return state, best_weights


def _train_epoch(
    trainer: Trainer, state: TrainingState, train_files: Sequence[str], steps: int
) -> tuple[float, float, float]:
    """Run ``steps`` steps (advancing ``state.step``); return the rank's loss sum, token count, last LR."""
    config, distribution = trainer.config, trainer.distribution
    epoch, loss_sum, tokens, learning_rate = state.epoch + 1, 0.0, 0.0, 0.0
    progress = EpochProgress(epoch, steps) if distribution.is_chief else None
    for index, batch in enumerate(train_dataset(train_files, config, epoch, steps, distribution)):
        learning_rate = learning_rate_at(config, distribution.size, state.step, state.lr_scale)
        batch_loss, batch_tokens = trainer.train_step(batch, learning_rate)
        loss_sum, tokens, state.step = loss_sum + batch_loss, tokens + batch_tokens, state.step + 1
        if progress is not None:
            progress.update(index + 1, loss_sum / max(tokens, 1.0))
    if progress is not None:
        progress.close()
    return loss_sum, tokens, learning_rate


def _run_epoch(
    trainer: Trainer,
    state: TrainingState,
    best_weights: list[np.ndarray],
    data: tuple[Sequence[str], tf.data.Dataset, int],
    tracker: Any,
) -> tuple[TrainingState, list[np.ndarray]]:
    """One epoch of training and validation; returns the chief's updated state, as every rank must agree."""
    (train_files, val_dataset, steps), config, distribution = data, trainer.config, trainer.distribution
    start = time.perf_counter()
    loss_sum, tokens, learning_rate = _train_epoch(trainer, state, train_files, steps)
    train_seconds = time.perf_counter() - start
    totals = distribution.average({"loss": loss_sum, "tokens": tokens})
    val_loss = trainer.evaluate(val_dataset)
    seconds = time.perf_counter() - start
    samples = steps * config.batch_size * distribution.size
    row = {
        "epoch": state.epoch + 1,
        "train_loss": totals["loss"] / max(totals["tokens"], 1.0),
        "val_loss": val_loss,
        "val_perplexity": perplexity(val_loss),
        "learning_rate": learning_rate,
        "samples_per_second": samples / train_seconds,
        "seconds": seconds,
        "samples": samples,
        "target_tokens": totals["tokens"] * distribution.size,
        "train_seconds": train_seconds,
    }
    state.epoch, state.elapsed_seconds = state.epoch + 1, state.elapsed_seconds + seconds
    state.history.append(row)
    update_after_epoch(state, config, val_loss)
    if state.best_epoch == state.epoch:
        best_weights = trainer.model.get_weights()
    # Broadcast: the chief's clock and decisions (LR, stopping) hold on every rank.
    state = distribution.broadcast_object(state)
    if tracker is not None:
        tracker.log_metrics({name: row[name] for name in HISTORY_COLUMNS[1:6]}, step=state.epoch)
        print(epoch_line(row, config, state), flush=True)
    return state, best_weights


def _stop_if_requested(epoch: int, distribution: Distribution) -> None:
    """The SUMMARIZER_STOP_AFTER_EPOCHS debug option: act as if killed after this epoch's checkpoint."""
    stop_after = os.environ.get(STOP_AFTER_EPOCHS_VARIABLE, "")
    if stop_after and epoch >= int(stop_after):
        distribution.barrier()  # the chief has finished writing its checkpoint
        os.kill(os.getpid(), signal.SIGTERM)


def _dump_weights(model: keras.Model, distribution: Distribution) -> None:
    """The SUMMARIZER_DUMP_WEIGHTS_DIR debug option: each rank saves its final weights for comparison."""
    directory = os.environ.get(DUMP_WEIGHTS_VARIABLE, "")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        np.savez(Path(directory) / f"weights-rank{distribution.rank}.npz", *model.get_weights())


def _final_metrics(
    state: TrainingState, model: keras.Model, distribution: Distribution, wall_seconds: float
) -> dict[str, Any]:
    """Throughputs are global (all workers) over the epochs after the first, whose time includes tracing."""
    history = state.history
    timed = history[1:] or history
    train_seconds = sum(row["train_seconds"] for row in timed)
    best = next(row for row in history if row["epoch"] == state.best_epoch)
    return {
        "best_val_loss": state.best_val_loss,
        "best_val_perplexity": best["val_perplexity"],
        "final_val_loss": history[-1]["val_loss"],
        "epochs": state.epoch,
        "samples_per_second": sum(row["samples"] for row in timed) / train_seconds,
        "target_tokens_per_second": sum(row["target_tokens"] for row in timed) / train_seconds,
        "parameter_count": int(model.count_params()),
        "wall_seconds": wall_seconds,
        "workers": distribution.size,
        "stop_reason": state.stop_reason,
    }


def _write_outputs(
    params: Params,
    paths: TrainingPaths,
    model: keras.Model,
    state: TrainingState,
    metrics: dict[str, Any],
    tracker: Any,
    timeline: Path | None,
) -> None:
    write_model_directory(
        paths.out_dir,
        model,
        paths.data_dir / "spm.model",
        ModelSettings(params.tokenize.max_source_tokens, params.tokenize.max_target_tokens),
        RunInfo(tracker.run_id, params.tracking.experiment, tracker.tracking_uri),
    )
    atomic_write_text(paths.history, history_csv(state.history))
    write_json(paths.metrics, metrics)
    # Per-epoch names (samples_per_second) get an ``overall_`` prefix: the last epoch's value stays.
    final = {
        name if name not in HISTORY_COLUMNS else f"overall_{name}": value
        for name, value in metrics.items()
        if isinstance(value, int | float)
    }
    tracker.log_metrics(final, step=state.epoch)
    tracker.log_artifacts(paths.out_dir, "model")
    tracker.log_artifact(paths.history)
    if timeline and timeline.is_file():
        tracker.log_artifact(timeline)


def history_csv(history: list[dict[str, float]]) -> str:
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


__all__ = ["HISTORY_COLUMNS", "TrainingPaths", "history_csv", "run_training"]
