"""The custom training loop: loss, mixed precision, AdamW, warmup, LR reduction, early stopping, checkpoints.

It receives a :class:`~summarizer.distribution.Distribution` and never imports Horovod. Each step follows
Horovod's ``tensorflow2_mnist.py`` with the Keras 3 changes of DEVELOPERS.md: gradients are taken w.r.t.
``[v.value for v in model.trainable_variables]``, averaged across ranks, clipped and applied by the optimizer.

Exact loss weighting across ranks: each rank computes the *sum* of its per-token losses and scales it by
``size / global_tokens`` (``global_tokens`` = all ranks' non-PAD target tokens, from an allreduce). The
average of the ranks' gradients is then the gradient of the token-weighted mean loss over the global batch,
whatever the number of tokens each rank holds: the gradient one process would get on the whole batch.

Mixed precision: ``float16`` wraps AdamW in a dynamic ``keras.optimizers.LossScaleOptimizer``. Gradients of
the scaled loss are averaged *before* the optimizer unscales them and checks them for inf/NaN, so every rank
sees the same averaged gradients and skips an overflowing step together (loss scales stay equal).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import inspect
import io as text_io
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from summarizer import checkpoints, records, tracking
from summarizer.config import Params, TrainConfig
from summarizer.distribution import Distribution
from summarizer.io import atomic_directory, atomic_write_text, write_json
from summarizer.model import build_model
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

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
_BATCH_SPEC = {
    name: tf.TensorSpec([None, None], tf.int32) for name in ("source_ids", "target_in", "target_out")
}


def token_losses(
    outputs: dict[str, tf.Tensor],
    target_out: tf.Tensor,
    label_smoothing: float = 0.0,
    coverage_weight: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Sums over non-PAD target tokens, in float32: (objective, negative log-likelihood, token count).

    ``outputs`` holds the model's final (copy-mixed) ``log_probs`` (batch, time, vocab) or, from
    ``Summarizer.score``, only the targets' ``target_log_probs`` (batch, time); label smoothing needs the
    former. Per token the objective is ``(1 - eps) * nll + eps * mean_v(-log p_v) + coverage_weight *
    coverage_loss``; the NLL alone gives perplexity.
    """
    mask = tf.cast(tf.not_equal(target_out, PAD_ID), tf.float32)  # (batch, time)
    if "target_log_probs" in outputs:
        nll = -tf.cast(outputs["target_log_probs"], tf.float32)  # (batch, time)
    else:
        nll = -tf.gather(tf.cast(outputs["log_probs"], tf.float32), target_out, axis=-1, batch_dims=2)
    objective = nll
    if label_smoothing > 0:
        mean_log_prob = tf.reduce_mean(tf.cast(outputs["log_probs"], tf.float32), axis=-1)  # (batch, time)
        objective = (1.0 - label_smoothing) * nll - label_smoothing * mean_log_prob
    if coverage_weight > 0:
        objective += coverage_weight * tf.cast(outputs["coverage_loss"], tf.float32)
    return tf.reduce_sum(objective * mask), tf.reduce_sum(nll * mask), tf.reduce_sum(mask)


@dataclass
class TrainingState:
    """Everything the loop decides from, saved in checkpoints and broadcast from the chief each epoch."""

    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps (drives warmup)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    lr_scale: float = 1.0  # product of plateau reductions
    epochs_without_improvement: int = 0  # early stopping counter
    epochs_since_lr_change: int = 0  # ReduceLROnPlateau counter
    elapsed_seconds: float = 0.0  # wall time of all epochs, across resumes
    run_id: str | None = None
    stop_reason: str = ""
    history: list[dict[str, float]] = field(default_factory=list)


def learning_rate_at(config: TrainConfig, size: int, step: int, lr_scale: float = 1.0) -> float:
    """Linear warmup from ``lr`` to ``lr * size`` (Goyal et al.), times the plateau reductions so far."""
    warmup = 1.0 if config.warmup_steps == 0 else min(1.0, step / config.warmup_steps)
    return config.learning_rate * (1.0 + (size - 1) * warmup) * lr_scale


def _last_epoch_seconds(state: TrainingState) -> float:
    return state.history[-1]["seconds"] if state.history else 0.0


def update_after_epoch(state: TrainingState, config: TrainConfig, val_loss: float) -> None:
    """Track the best val loss, reduce the LR on plateaus (floor ``min_learning_rate * size``), stop."""
    if val_loss < state.best_val_loss:
        state.best_val_loss, state.best_epoch = val_loss, state.epoch
        state.epochs_without_improvement = state.epochs_since_lr_change = 0
    else:
        state.epochs_without_improvement += 1
        state.epochs_since_lr_change += 1
        if state.epochs_since_lr_change >= config.lr_reduce_patience:
            floor = config.min_learning_rate / config.learning_rate
            state.lr_scale = max(state.lr_scale * config.lr_reduce_factor, floor)
            state.epochs_since_lr_change = 0
    if state.epochs_without_improvement >= config.early_stopping_patience:
        state.stop_reason = (
            f"early stopping: no val loss improvement for {state.epochs_without_improvement} epochs"
        )
    elif state.elapsed_seconds + _last_epoch_seconds(state) > config.max_wall_minutes * 60:
        budget = config.max_wall_minutes
        state.stop_reason = f"wall-clock budget of {budget:g} minutes: another epoch would not fit in it"
    elif state.epoch >= config.epochs:
        state.stop_reason = f"completed {config.epochs} epochs"


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """AdamW with per-tensor ``clipnorm`` (applied to the averaged gradients); loss scaling under float16."""
    optimizer = keras.optimizers.AdamW(
        learning_rate=config.learning_rate, weight_decay=config.weight_decay, clipnorm=config.clipnorm
    )
    if config.precision == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


class Trainer:
    """One model and optimizer replicated on every rank; steps and evaluation in ``tf.function``."""

    def __init__(self, model: keras.Model, config: TrainConfig, distribution: Distribution) -> None:
        self.model = model
        self.config = config
        self.distribution = distribution
        self.optimizer = make_optimizer(config)
        self._loss_scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
        self._train_step = tf.function(self._step, input_signature=[_BATCH_SPEC])
        self._evaluate_step = tf.function(self._evaluate, input_signature=[_BATCH_SPEC])

    def build(self) -> None:
        """Create the optimizer's variables (the model's exist) before restoring or broadcasting them."""
        self.optimizer.build(self.model.trainable_variables)

    @property
    def variables(self) -> list[Any]:
        """Every model and optimizer variable: what checkpoints save and the chief broadcasts."""
        return list(self.model.variables) + list(self.optimizer.variables)

    def gradients(self, batch: dict[str, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
        """Averaged gradients of the global token-weighted mean loss; this rank's loss sum and token count.

        Under float16 the gradients are those of the scaled loss (the optimizer unscales them).
        """
        tokens = tf.reduce_sum(tf.cast(tf.not_equal(batch["target_out"], PAD_ID), tf.float32))
        global_tokens = tf.maximum(self.distribution.sum(tokens), 1.0)
        with tf.GradientTape() as tape:
            outputs = self._forward(batch, training=True)
            loss_sum, _, _ = token_losses(
                outputs, batch["target_out"], self.config.label_smoothing, self.config.coverage_weight
            )
            loss = loss_sum * (self.distribution.size / global_tokens)
            if self._loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(loss, [variable.value for variable in self.model.trainable_variables])
        averaged = self.distribution.average_gradients(gradients, self.config.horovod.fp16_allreduce)
        return averaged, loss_sum, tokens

    def _forward(self, batch: dict[str, tf.Tensor], training: bool) -> dict[str, tf.Tensor]:
        """The full distribution when label smoothing needs it, else only the targets' log-probabilities."""
        if self.config.label_smoothing > 0:
            return self.model(_inputs(batch), training=training)
        return self.model.score(batch, training=training)

    def _step(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        gradients, loss_sum, tokens = self.gradients(batch)
        self.optimizer.apply(gradients, self.model.trainable_variables)
        return loss_sum, tokens

    def train_step(self, batch: dict[str, tf.Tensor], learning_rate: float) -> tuple[float, float]:
        self.optimizer.learning_rate = learning_rate
        loss_sum, tokens = self._train_step(batch)
        return float(loss_sum), float(tokens)

    def _evaluate(self, batch: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        outputs = self.model.score(batch, training=False)
        _, nll_sum, tokens = token_losses(outputs, batch["target_out"])
        return nll_sum, tokens

    def evaluate(self, dataset: tf.data.Dataset) -> float:
        """Token-weighted NLL over every rank's shard (no label smoothing or coverage term)."""
        nll_sum = tokens = 0.0
        for batch in dataset:  # ranks may hold different numbers of batches: no collective inside
            batch_nll, batch_tokens = self._evaluate_step(batch)
            nll_sum, tokens = nll_sum + float(batch_nll), tokens + float(batch_tokens)
        totals = self.distribution.average({"nll": nll_sum, "tokens": tokens})
        if totals["tokens"] == 0:
            raise ValueError("the val split has no target tokens: the tokenize stage wrote no val examples")
        return totals["nll"] / totals["tokens"]


def _inputs(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"source_ids": batch["source_ids"], "target_in": batch["target_in"]}


# ----------------------------------------------------------------------------------------------------------
# Data


def steps_per_epoch(files: Sequence[str], batch_size: int, distribution: Distribution) -> int:
    """Steps every rank runs per epoch: its smallest shard's examples // batch size (at least one).

    Every rank must run the same number of steps, or the next gradient allreduce waits forever.
    """
    dataset = records.read_dataset(
        files, 512, shuffle=False, num_shards=distribution.num_shards, shard_index=distribution.shard_index
    )
    examples = sum(int(batch["target_out"].shape[0]) for batch in dataset)
    fewest = distribution.minimum(examples)
    if fewest == 0:
        raise ValueError(
            f"a rank holds no training examples: {len(files)} train shard(s) for "
            f"{distribution.size} workers; write more shards or use fewer workers"
        )
    return max(1, fewest // batch_size)


def train_dataset(
    files: Sequence[str], config: TrainConfig, epoch: int, steps: int, distribution: Distribution
) -> tf.data.Dataset:
    """This rank's batches for ``epoch``, shuffled by ``seed + epoch``: a resumed run sees the same order."""
    dataset = records.read_dataset(
        files,
        config.batch_size,
        shuffle=True,
        seed=config.seed + epoch,
        repeat=True,
        num_shards=distribution.num_shards,
        shard_index=distribution.shard_index,
        drop_remainder=True,
    )
    return dataset.take(steps)


# ----------------------------------------------------------------------------------------------------------
# Progress and outputs


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:{seconds:02d}"


def epoch_line(row: dict[str, float], config: TrainConfig, state: TrainingState) -> str:
    remaining = min(config.epochs - state.epoch, config.max_wall_minutes * 60 / max(row["seconds"], 1e-9))
    eta = max(0.0, min(remaining * row["seconds"], config.max_wall_minutes * 60 - state.elapsed_seconds))
    return (
        f"epoch {int(row['epoch'])}/{config.epochs} loss {row['train_loss']:.4f} "
        f"val_loss {row['val_loss']:.4f} val_perplexity {row['val_perplexity']:.2f} "
        f"lr {row['learning_rate']:.2e} {row['samples_per_second']:.1f} samples/s "
        f"elapsed {_duration(state.elapsed_seconds)} eta {_duration(eta)}"
    )


def history_csv(history: list[dict[str, float]]) -> str:
    buffer = text_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def inference_config(params: Params, model: keras.Model) -> dict[str, Any]:
    """What inference needs besides the weights: ``Summarizer(**config["model"])``, lengths, special ids."""
    constructor = inspect.signature(type(model).__init__).parameters
    return {
        "model": {key: value for key, value in model.get_config().items() if key in constructor},
        "precision": params.train.precision,
        "max_source_tokens": params.tokenize.max_source_tokens,
        "max_target_tokens": params.tokenize.max_target_tokens,
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "tokenizer": "spm.model",
    }


def write_model_directory(
    out_dir: Path, model: keras.Model, data_dir: Path, config: dict[str, Any], run: dict[str, Any]
) -> None:
    with atomic_directory(out_dir) as temporary:
        model.save(temporary / "model.keras")
        shutil.copyfile(data_dir / "spm.model", temporary / "spm.model")
        write_json(temporary / "config.json", config)
        write_json(temporary / "run.json", run)


# ----------------------------------------------------------------------------------------------------------
# The whole training run


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


class EpochProgress:
    """Progress within an epoch on the chief: a bar on a terminal, else a line every ``interval`` seconds.

    Under horovodrun the output is piped (never a terminal), so periodic lines are what users see there.
    """

    def __init__(self, epoch: int, steps: int, interval: float = 60.0) -> None:
        self.epoch, self.steps, self.interval = epoch, steps, interval
        self.is_terminal = sys.stderr.isatty()
        self.started = self.last_report = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if self.is_terminal and step % max(1, self.steps // 50) == 0:
            print(f"\r  epoch {self.epoch} step {step}/{self.steps} loss {loss:.4f}", end="", file=sys.stderr)
        elif not self.is_terminal and now - self.last_report >= self.interval:
            self.last_report = now
            eta = (now - self.started) / step * (self.steps - step)
            print(
                f"  epoch {self.epoch} step {step}/{self.steps} loss {loss:.4f} epoch eta {_duration(eta)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.is_terminal:
            print(file=sys.stderr, flush=True)


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
        "val_perplexity": math.exp(min(val_loss, 700.0)),
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
    run = {
        "run_id": tracker.run_id,
        "experiment": params.tracking.experiment,
        "tracking_uri": tracker.tracking_uri,
    }
    write_model_directory(paths.out_dir, model, paths.data_dir, inference_config(params, model), run)
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


__all__ = [
    "HISTORY_COLUMNS",
    "Trainer",
    "TrainingPaths",
    "TrainingState",
    "learning_rate_at",
    "make_optimizer",
    "run_training",
    "token_losses",
    "update_after_epoch",
]
