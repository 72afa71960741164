"""The train stage's run: MLflow run, resume, the epoch loop, checkpoints, faults and the outputs it leaves.

:func:`run_training` drives a :class:`~summarizer.training.Trainer` on every rank; only the chief opens the
MLflow run, checkpoints (outside the DVC outs, :mod:`summarizer.checkpoints`), prints progress and writes the
model directory (:mod:`summarizer.model_directory`), the metrics and the history.

What a fault leaves behind (each proved by a test with real processes, signals and servers):

* **Checkpoints**: after every epoch, and inside an epoch every ``train.checkpoint_every_minutes`` (the
  chief's clock, agreed at a control collective, always between two optimizer steps): weights, optimizer,
  loop state, the position in the epoch (optimizer steps of ``train.accumulate_steps`` micro-batches) and
  every rank's partial sums. Rerunning the stage with the same params and data resumes at that step
  with the same batches, in the same MLflow run, and ends with the weights of an uninterrupted run.
* **SIGTERM / Ctrl-C** to any rank or to the launcher (:mod:`summarizer.preemption`): all ranks stop after
  the same step (within about a second), the chief checkpoints, the run ends KILLED tagged with the step it
  reached, and the stage exits 143 (130 for Ctrl-C) within a few seconds: inside horovodrun's 5 s grace.
* **A lost rank** (killed, out of memory, a lost node): Horovod shuts down on the other ranks; the chief ends
  the run KILLED, tagged as a lost rank, and exits; the launcher names the rank. The rerun resumes from the
  last checkpoint.
* **A tracking outage** after the run started (:mod:`summarizer.spool`): records are spooled and replayed;
  training goes on, the outputs are written, and a warning says how many records are pending.
* Anything else raises: the run ends FAILED with the error as a tag; the last checkpoint stays.

While the run is open the chief also logs the machine's CPU, memory (and GPU) use as MLflow system metrics
(:func:`summarizer.tracking.system_metrics`): started after the run starts, stopped before it ends on every
path above, never blocking: a store outage only ends the monitoring, and stopping it waits at most 5 s.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io as text_io
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from summarizer import checkpoints, records, tracking
from summarizer.config import Params
from summarizer.distribution import Distribution
from summarizer.io import atomic_write_text, write_metrics
from summarizer.metrics import perplexity
from summarizer.model import build_model
from summarizer.model_directory import ModelSettings, RunInfo, write_model_directory
from summarizer.preemption import StepControl, StopRequest
from summarizer.progress import EpochProgress, epoch_line
from summarizer.spool import SpooledTracker
from summarizer.tokenization import Tokenizer
from summarizer.training import (
    Trainer,
    TrainingState,
    batch_buckets,
    learning_rate_at,
    optimizer_steps,
    steps_per_epoch,
    train_dataset,
    update_after_epoch,
)

# plots/train_history.csv: what a rerun reproduces. The epochs' timings go to the timings file.
HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_perplexity", "learning_rate")
# Logged to MLflow after each epoch; a final metric of the same name is logged as overall_<name>.
EPOCH_METRICS = ("train_loss", "val_loss", "val_perplexity", "learning_rate", "samples_per_second")
# metrics/timings/train.json (apart from metrics/train.json, as timings move on every run).
TIMING_KEYS = ("samples_per_second", "target_tokens_per_second", "wall_seconds", "per_epoch")
# Debug option: once the checkpoint of epoch N is written, every rank sends itself SIGTERM, exactly as if the
# job were killed there. Tests use it to exercise resume deterministically (a timed kill would be racy).
STOP_AFTER_EPOCHS_VARIABLE = "SUMMARIZER_STOP_AFTER_EPOCHS"
# Debug option: each rank writes its final weights to ``<dir>/weights-rank<N>.npz`` (tests compare ranks).
DUMP_WEIGHTS_VARIABLE = "SUMMARIZER_DUMP_WEIGHTS_DIR"
# Debug option: the control collective (stop? checkpoint?) every N steps instead of about every second, so a
# test on a tiny model gets checkpoints inside its short epochs.
CONTROL_EVERY_STEPS_VARIABLE = "SUMMARIZER_CONTROL_EVERY_STEPS"
STOP_TAG = "summarizer.stopped"


@dataclass(frozen=True)
class TrainingPaths:
    """A run's inputs and outputs; ``root`` holds ``.checkpoints/`` and anchors relative MLflow URIs."""

    data_dir: Path
    out_dir: Path
    metrics: Path
    history: Path
    root: Path
    timings: Path


def run_training(params: Params, distribution: Distribution, paths: TrainingPaths) -> dict[str, Any]:
    """Train on every rank; the chief checkpoints, logs to MLflow and writes the outputs.

    Returns:
        The final metrics on the chief, ``{}`` on the other ranks.

    Raises:
        tracking.TrackingError: the MLflow store is unreachable (checked before any training).
        tracking.RunTerminated: stopped by a signal or a lost rank (checkpoint kept, run KILLED).
    """
    tracking_uri = _checked_tracking_uri(params, distribution, paths.root)
    checkpoint = None
    if distribution.is_chief:
        checkpoint = checkpoints.checkpoint_directory(paths.root, params, paths.data_dir)
    run_id = checkpoints.read_state(checkpoint)["run_id"] if checkpoint and checkpoint.is_dir() else None
    tracker = SpooledTracker(tracking.RunTracker(tracking_uri), paths.root) if distribution.is_chief else None
    try:
        with StopRequest() as stop, _chief_run(params, distribution, tracker, run_id, paths.root):
            return _train(params, distribution, paths, checkpoint, tracker, stop)
    finally:
        if tracker is not None:
            tracker.report_pending("train")


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
    params: Params, distribution: Distribution, tracker: SpooledTracker | None, run_id: str | None, root: Path
) -> Iterator[None]:
    """The chief's MLflow run (new, or the checkpoint's run when resuming), ended FINISHED/FAILED/KILLED."""
    if tracker is None:
        yield
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
    if distribution.cycle_time_ms is not None:  # what train.horovod.cycle_time_ms (auto, or a number) came to
        tags["horovod_cycle_time_ms"] = f"{distribution.cycle_time_ms:g}"
    name = tracking.run_name(config.cell, config.precision, distribution.size)
    # Signals are StopRequest's: a SIGTERM must not interrupt a step or a checkpoint half-way.
    with tracking.tracked_run(tracker, params.tracking.experiment, name, tags, run_id, handle_sigterm=False):
        if run_id is None:
            tracker.log_params(params.to_flat_dict())
        # CPU, memory (GPU where present) of this machine, stopped before the run ends on every exit path.
        with tracking.system_metrics(tracker.run_id, tracker.tracking_uri, resume=run_id is not None):
            yield


@dataclass(frozen=True)
class _Data:
    """This rank's train shards and val batches, the batch buckets and the optimizer steps of an epoch."""

    train_files: Sequence[str]
    val_dataset: tf.data.Dataset
    buckets: records.Buckets | None  # None: batches of train.batch_size examples
    steps: int  # optimizer steps per epoch, the same on every rank


def _training_data(data_dir: Path, params: Params, distribution: Distribution) -> _Data:
    """This rank's train shards, its val batches and the number of steps per epoch all ranks run."""
    config = params.train
    buckets = batch_buckets(config, params.tokenize.max_source_tokens, params.tokenize.max_target_tokens)
    train_files = records.list_shards(data_dir, "train")
    val_dataset = records.read_dataset(
        records.list_shards(data_dir, "val"),
        config.batch_size,
        shuffle=False,
        num_shards=distribution.num_shards,
        shard_index=distribution.shard_index,
        buckets=buckets,
    )
    steps = steps_per_epoch(train_files, config, distribution, buckets)
    return _Data(train_files, val_dataset, buckets, steps)


@dataclass
class _Loop:
    """What the epoch loop works with on every rank (``checkpoint`` and ``tracker`` on the chief only)."""

    trainer: Trainer
    data: _Data
    checkpoint: Path | None
    tracker: SpooledTracker | None
    stop: StopRequest
    control: StepControl
    best_weights: list[np.ndarray]

    @property
    def distribution(self) -> Distribution:
        return self.trainer.distribution


def _train(
    params: Params,
    distribution: Distribution,
    paths: TrainingPaths,
    checkpoint: Path | None,
    tracker: SpooledTracker | None,
    stop: StopRequest,
) -> dict[str, Any]:
    config, started = params.train, time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    keras.mixed_precision.set_dtype_policy(config.precision)
    data = _training_data(paths.data_dir, params, distribution)
    vocab_size = Tokenizer.load(paths.data_dir / "spm.model").vocab_size
    trainer = Trainer(build_model(config, vocab_size), config, distribution)
    trainer.build()
    state, best_weights = _restore(trainer, checkpoint, distribution)
    if tracker is not None:
        state.run_id = tracker.run_id
    control = StepControl(distribution, stop, config.checkpoint_every_minutes, _control_every_steps())
    loop = _Loop(trainer, data, checkpoint, tracker, stop, control, best_weights)
    timeline = paths.root / config.horovod.timeline if config.horovod.timeline else None
    if timeline:
        distribution.start_timeline(timeline)
    try:
        while not state.stop_reason:
            state = _run_epoch(loop, state)
            _save(loop, state)
            _stop_if_requested(state.epoch, distribution)
            if not state.stop_reason and control.check().stop:  # a signal during validation
                _stop_now(loop, state, saved=True)
    except Exception as error:
        if distribution.is_peer_failure(error):
            _lost_rank(loop, state, error)
        raise
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
    trainer.model.set_weights(loop.best_weights)
    metrics = _final_metrics(state, trainer.model, distribution, time.perf_counter() - started)
    _write_outputs(params, paths, trainer.model, state, metrics, tracker, timeline)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return metrics


def _control_every_steps() -> int | None:
    """The SUMMARIZER_CONTROL_EVERY_STEPS debug option: a control collective every N steps, not every ~1 s."""
    value = os.environ.get(CONTROL_EVERY_STEPS_VARIABLE, "")
    return int(value) if value else None


def _restore(
    trainer: Trainer, checkpoint: Path | None, distribution: Distribution
) -> tuple[TrainingState, list[np.ndarray]]:
    """The chief resumes from its checkpoint if there is one; then every rank takes the chief's state."""
    state, best_weights = TrainingState(), trainer.model.get_weights()
    if checkpoint is not None and checkpoint.is_dir():
        saved, best_weights = checkpoints.load_checkpoint(checkpoint, trainer.variables)
        state = TrainingState(**saved)
        where = f"at step {state.epoch_step} of epoch {state.epoch + 1}" if state.epoch_step else ""
        print(f"resuming from {checkpoint} {where or f'after epoch {state.epoch}'}", flush=True)
    state = distribution.broadcast_object(state)
    # Broadcast the variables: ranks start identical, from random weights or from the checkpoint.
    distribution.broadcast_variables(trainer.variables)
    return state, best_weights


def _save(loop: _Loop, state: TrainingState) -> None:
    """The chief writes the checkpoint (atomically; the previous one stays until the new one is complete)."""
    if loop.checkpoint is not None:
        checkpoints.save_checkpoint(
            loop.checkpoint, loop.trainer.variables, dataclasses.asdict(state), loop.best_weights
        )
    loop.control.checkpointed()


def _stop_now(loop: _Loop, state: TrainingState, saved: bool) -> None:
    """Every rank: checkpoint (unless just ``saved``), wait for the chief to finish it, end the run KILLED."""
    loop.stop.draining = True  # further signals (horovodrun repeats SIGTERM) must not interrupt the save
    if not saved:
        _save(loop, state)
    loop.distribution.barrier()  # a rank that exits early would make the launcher kill the chief mid-save
    where = _position(state.epoch, state.epoch_step)
    if loop.tracker is not None:
        reason = f"stopped by {signal.Signals(loop.stop.signal_number or signal.SIGTERM).name} at {where}"
        loop.tracker.set_tags({STOP_TAG: f"{reason} (global step {state.step}); checkpoint written"})
        print(
            f"train: {reason}: checkpoint written to {loop.checkpoint}; rerun the stage (`dvc repro`) to "
            f"resume in MLflow run {loop.tracker.run_id}",
            file=sys.stderr,
            flush=True,
        )
    raise tracking.RunTerminated(loop.stop.exit_status())


def _position(epoch: int, epoch_step: int) -> str:
    """Where a run stands: ``epoch_step`` steps into epoch ``epoch + 1``, or at the end of ``epoch``."""
    return f"epoch {epoch + 1}, step {epoch_step}" if epoch_step else f"end of epoch {epoch}"


def _lost_rank(loop: _Loop, state: TrainingState, error: BaseException) -> None:
    """Another rank died: end the run KILLED (not RUNNING, not FAILED), saying where to resume from."""
    loop.stop.draining = True
    last = "none yet"
    if loop.checkpoint is not None and loop.checkpoint.is_dir():
        saved = checkpoints.read_state(loop.checkpoint)
        last = _position(saved["epoch"], saved["epoch_step"])
    message = (
        f"lost a rank at global step {state.step}: another process of the job died and Horovod shut down "
        f"(the launcher's message names the rank). Last checkpoint: {last}; rerun the stage to resume from it"
    )
    if loop.tracker is not None:
        loop.tracker.set_tags({STOP_TAG: message})
    print(f"train: error: {message}", file=sys.stderr, flush=True)
    raise tracking.RunTerminated(1) from error


def _train_epoch(loop: _Loop, state: TrainingState) -> tuple[dict[str, float], float, float]:
    """Run the epoch's remaining optimizer steps (advancing ``state``); checkpoint or stop where the control
    says (only between optimizer steps, so a resume never splits one).

    Returns:
        This rank's loss, target token and example sums over the whole epoch, the last LR, the train seconds.
    """
    trainer, distribution, data = loop.trainer, loop.distribution, loop.data
    config, epoch = trainer.config, state.epoch + 1
    partial = {"loss": 0.0, "tokens": 0.0, "examples": 0.0}
    if state.epoch_partials:
        partial |= state.epoch_partials[distribution.rank]
    learning_rate = state.epoch_learning_rate
    started, seconds_before = time.perf_counter(), state.epoch_train_seconds
    progress = EpochProgress(epoch, data.steps, state.epoch_step) if distribution.is_chief else None
    loop.control.restart_clock()
    batches = train_dataset(
        data.train_files, config, epoch, data.steps, distribution, skip=state.epoch_step, buckets=data.buckets
    )
    for micro_batches in optimizer_steps(batches, config.accumulate_steps):
        learning_rate = learning_rate_at(config, distribution.size, state.step, state.lr_scale)
        batch_loss, batch_tokens = trainer.optimizer_step(micro_batches, learning_rate)
        partial["loss"] += batch_loss
        partial["tokens"] += batch_tokens
        partial["examples"] += sum(int(batch["target_out"].shape[0]) for batch in micro_batches)
        state.step, state.epoch_step = state.step + 1, state.epoch_step + 1
        if progress is not None:
            progress.update(state.epoch_step, partial["loss"] / max(partial["tokens"], 1.0))
        decision = loop.control.after_step()
        if decision.checkpoint or decision.stop:
            # Allgather: every rank's partial sums, so the resumed epoch reports what this one would have.
            state.epoch_partials = distribution.allgather_object(dict(partial))
            state.epoch_train_seconds = seconds_before + time.perf_counter() - started
            state.epoch_learning_rate = learning_rate
            if decision.stop:
                _stop_now(loop, state, saved=False)
            _save(loop, state)
            if progress is not None:
                progress.checkpointed(state.epoch_step)
    if progress is not None:
        progress.close()
    return partial, learning_rate, seconds_before + time.perf_counter() - started


def _run_epoch(loop: _Loop, state: TrainingState) -> TrainingState:
    """One epoch of training and validation; returns the chief's updated state, as every rank must agree."""
    trainer, distribution = loop.trainer, loop.distribution
    config, start = trainer.config, time.perf_counter()
    seconds_before = state.epoch_train_seconds
    sums, learning_rate, train_seconds = _train_epoch(loop, state)
    totals = distribution.average(sums)
    val_loss = trainer.evaluate(loop.data.val_dataset)
    seconds = seconds_before + time.perf_counter() - start
    samples = round(totals["examples"] * distribution.size)  # all ranks' (token batches: unequal) examples
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
    state.epoch_step, state.epoch_partials, state.epoch_train_seconds = 0, [], 0.0
    state.history.append(row)
    update_after_epoch(state, config, val_loss)
    if state.best_epoch == state.epoch:
        loop.best_weights = trainer.model.get_weights()
    # Broadcast: the chief's clock and decisions (LR, stopping) hold on every rank.
    state = distribution.broadcast_object(state)
    if loop.tracker is not None:
        loop.tracker.log_metrics({name: row[name] for name in EPOCH_METRICS}, step=state.epoch)
        print(epoch_line(row, config, state), flush=True)
    return state


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
    """Quality figures and timings (:data:`TIMING_KEYS`), in one mapping.

    Throughputs are global (all workers) over the epochs after the first, whose time includes tracing.
    """
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
        "per_epoch": {
            str(int(row["epoch"])): {
                "samples_per_second": row["samples_per_second"],
                "seconds": row["seconds"],
            }
            for row in history
        },
        "workers": distribution.size,
        "stopped_by": state.stopped_by,
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
    write_metrics(metrics, TIMING_KEYS, paths.metrics, paths.timings)
    # Per-epoch names (samples_per_second) get an ``overall_`` prefix: the last epoch's value stays.
    final = {
        name if name not in EPOCH_METRICS else f"overall_{name}": value
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


__all__ = ["EPOCH_METRICS", "HISTORY_COLUMNS", "TIMING_KEYS", "TrainingPaths", "history_csv", "run_training"]
