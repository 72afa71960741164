"""One Horovod rank of the scaling benchmark (started by ``benchmarks.scaling`` under ``horovodrun``).

Each rank runs with one intra-op and one inter-op thread, trains our model with the product's
``Trainer`` and ``summarizer.distribution`` (gradients averaged by Horovod every step) on its own synthetic
batches, and the chief writes the global samples/s to the JSON file given as ``--out``. With
``"control": true`` in the settings every step is followed by the train stage's
:class:`~summarizer.preemption.StepControl` (its collective about every second, checkpoints every 10
minutes), and the chief times one save of a resume checkpoint of this model. With ``accumulate_steps`` N > 1
in the train settings each optimizer step takes N micro-batches (``Trainer.optimizer_step``: one gradient
allreduce per N batches); samples count every micro-batch.

Usage: python -m benchmarks.horovod_worker --settings JSON --out PATH
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import tensorflow as tf

from benchmarks.common import Shapes, summary_of, synthetic_batches, timed_rates
from benchmarks.training_speed import DISTINCT_BATCHES, Timing, make_trainer
from summarizer import checkpoints, distribution
from summarizer.config import HorovodConfig, TrainConfig
from summarizer.io import write_json
from summarizer.preemption import StepControl, StopRequest
from summarizer.training import Trainer


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.horovod_worker", description=__doc__)
    parser.add_argument(
        "--settings",
        required=True,
        help='JSON: {"train": {...}, "horovod": {...}, "shapes": {...}, "timing": {...}}',
    )
    parser.add_argument("--out", required=True, help="JSON file the chief writes")
    parser.add_argument("--seed", type=int, default=7)
    return parser.parse_args(argv)


def _train_config(values: dict, horovod: dict) -> TrainConfig:
    known = {field.name for field in fields(TrainConfig)} - {"horovod"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--settings: unknown train keys {unknown}")
    config = TrainConfig(**values, horovod=HorovodConfig(**horovod))
    config.validate("train")
    return config


def run(settings: dict, seed: int) -> dict:
    """Train on this rank; returns the global samples/s figures (the same on every rank)."""
    config = _train_config(settings["train"], settings["horovod"])
    shapes, timing = Shapes(**settings["shapes"]), Timing(**settings["timing"])
    dist = distribution.init(horovod=config.horovod)
    trainer = make_trainer(config, shapes.vocab_size, seed, dist)
    dist.broadcast_variables(trainer.variables)
    batches = synthetic_batches(shapes, DISTINCT_BATCHES, seed + dist.rank)  # each rank its own data
    tensors = [{name: tf.constant(value) for name, value in batch.items()} for batch in batches]
    accumulate = config.accumulate_steps

    def micro_batches(step: int) -> list[dict[str, tf.Tensor]]:
        return [tensors[(step * accumulate + index) % len(tensors)] for index in range(accumulate)]

    for step in range(timing.warmup_steps):
        trainer.optimizer_step(micro_batches(step), config.learning_rate)

    control = (
        StepControl(dist, StopRequest(), config.checkpoint_every_minutes) if settings.get("control") else None
    )

    def run_once() -> float:
        dist.barrier()  # every rank starts the clock together
        for step in range(timing.steps):
            trainer.optimizer_step(micro_batches(step), config.learning_rate)
            if control is not None:
                control.after_step()
        dist.barrier()  # and stops it when the slowest rank is done
        return timing.steps * accumulate * shapes.batch_size * dist.size

    summary = summary_of(timed_rates(run_once, timing.repetitions))
    checkpoint_seconds = _time_checkpoint(trainer) if control is not None and dist.is_chief else None
    return {
        "checkpoint_seconds": checkpoint_seconds,
        "workers": dist.size,
        "samples_per_second": summary["median"],
        "repetitions": summary["repetitions"],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "cycle_time_ms": dist.cycle_time_ms,  # train.horovod.cycle_time_ms as this rank resolved it
        "is_chief": dist.is_chief,
    }


def _time_checkpoint(trainer: Trainer) -> float:
    """Seconds to write one resume checkpoint (variables, best weights, state) of this model."""
    with tempfile.TemporaryDirectory(prefix="benchmark-checkpoint-") as directory:
        started = time.perf_counter()
        checkpoints.save_checkpoint(
            Path(directory) / "checkpoint", trainer.variables, {"epoch": 0}, trainer.model.get_weights()
        )
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    tf.config.threading.set_intra_op_parallelism_threads(1)  # before any op: one core per worker
    tf.config.threading.set_inter_op_parallelism_threads(1)
    result = run(json.loads(arguments.settings), arguments.seed)
    if result.pop("is_chief"):
        write_json(arguments.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
