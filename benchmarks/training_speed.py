"""Training throughput: the classic recipe's ``model.fit`` and the project's real train step.

"Ours" is ``summarizer.model.build_model`` trained by ``summarizer.training.Trainer.train_step`` (the step
the train stage runs) with a one-process ``LocalDistribution``, on synthetic batches of fixed seed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks.classic import ClassicConfig, build_classic
from benchmarks.common import Shapes, summary_of, synthetic_batches, target_tokens, timed_rates
from summarizer.config import TrainConfig
from summarizer.distribution import Distribution, LocalDistribution
from summarizer.model import build_model
from summarizer.training import Trainer

DISTINCT_BATCHES = 4  # cycled through, so a step never sees the very same tensors twice in a row


@dataclass(frozen=True)
class Timing:
    """How long to measure: untimed warm-up steps (tracing), then repetitions of timed steps."""

    warmup_steps: int
    steps: int
    repetitions: int


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Set the global Keras dtype policy for the block (the train stage sets it the same way)."""
    previous = keras.mixed_precision.dtype_policy().name
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _rates_result(
    rates: list[float], tokens_per_sample: float, timing: Timing, batch_size: int
) -> dict[str, Any]:
    summary = summary_of(rates)
    return {
        "samples_per_second": summary["median"],
        "target_tokens_per_second": summary["median"] * tokens_per_sample,
        "step_milliseconds": 1000.0 * batch_size / summary["median"],
        "repetitions": summary["repetitions"],
        "steps_per_repetition": timing.steps,
    }


def measure_classic_training(
    config: ClassicConfig, shapes: Shapes, timing: Timing, seed: int
) -> dict[str, Any]:
    """Samples/s of ``model.fit`` on the classic recipe (one ``fit`` call per repetition, as users run it)."""
    keras.utils.set_random_seed(seed)
    models = build_classic(config)
    batches = synthetic_batches(shapes, DISTINCT_BATCHES, seed)
    stacked = {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]}
    dataset = (
        tf.data.Dataset.from_tensor_slices(
            ((stacked["source_ids"], stacked["target_in"]), stacked["target_out"])
        )
        .batch(shapes.batch_size, drop_remainder=True)
        .repeat()
        .prefetch(2)
    )
    models.training.fit(dataset, epochs=1, steps_per_epoch=timing.warmup_steps, shuffle=False, verbose=0)

    def run_once() -> float:
        models.training.fit(dataset, epochs=1, steps_per_epoch=timing.steps, shuffle=False, verbose=0)
        return timing.steps * shapes.batch_size

    rates = timed_rates(run_once, timing.repetitions)
    tokens_per_sample = sum(target_tokens(batch) for batch in batches) / (len(batches) * shapes.batch_size)
    return {
        **_rates_result(rates, tokens_per_sample, timing, shapes.batch_size),
        "parameters": int(models.training.count_params()),
    }


def make_trainer(
    config: TrainConfig, vocab_size: int, seed: int, distribution: Distribution | None = None
) -> Trainer:
    """The product's trainer (model, AdamW, loss, step), by default for one process; set the policy first."""
    keras.utils.set_random_seed(seed)
    trainer = Trainer(build_model(config, vocab_size), config, distribution or LocalDistribution())
    trainer.build()
    return trainer


def measure_our_training(config: TrainConfig, shapes: Shapes, timing: Timing, seed: int) -> dict[str, Any]:
    """Samples/s of ``Trainer.train_step`` under ``config.precision``, one local process."""
    config = replace(config, batch_size=shapes.batch_size)
    batches = synthetic_batches(shapes, DISTINCT_BATCHES, seed)
    tensors = [{name: tf.constant(value) for name, value in batch.items()} for batch in batches]
    with dtype_policy(config.precision):
        trainer = make_trainer(config, shapes.vocab_size, seed)
        for step in range(timing.warmup_steps):
            trainer.train_step(tensors[step % len(tensors)], config.learning_rate)

        def run_once() -> float:
            for step in range(timing.steps):
                trainer.train_step(tensors[step % len(tensors)], config.learning_rate)
            return timing.steps * shapes.batch_size

        rates = timed_rates(run_once, timing.repetitions)
        parameters = int(trainer.model.count_params())
    tokens_per_sample = sum(target_tokens(batch) for batch in batches) / (len(batches) * shapes.batch_size)
    return {**_rates_result(rates, tokens_per_sample, timing, shapes.batch_size), "parameters": parameters}


def recurrent_parameters(model: keras.Model) -> int:
    """Weights of the GRU/LSTM layers alone (both directions of a bidirectional layer)."""
    return sum(int(layer.count_params()) for layer in model.recurrent_layers())


def parameter_counts(config: TrainConfig, vocab_size: int) -> dict[str, dict[str, int]]:
    """Whole-model and recurrent-layer parameter counts of our model with a GRU and with an LSTM cell."""
    counts = {}
    for cell in ("gru", "lstm"):
        with dtype_policy("float32"):
            model = build_model(replace(config, cell=cell), vocab_size)
        counts[cell] = {"total": int(model.count_params()), "recurrent": recurrent_parameters(model)}
    return counts


__all__ = [
    "Timing",
    "dtype_policy",
    "make_trainer",
    "measure_classic_training",
    "measure_our_training",
    "parameter_counts",
    "recurrent_parameters",
]
