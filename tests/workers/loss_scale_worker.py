"""Under ``horovodrun -np 2``: mixed_float16 training steps where rank 1's gradients overflow at one step.

Rank 1 adds inf to one of its own gradients at step ``OVERFLOW_STEP``, before the allreduce (as a float16
overflow on one GPU would); rank 0's gradients stay finite. Dynamic loss scaling must then skip that step on
*both* ranks and halve both loss scales: the decision has to be taken on the averaged gradients.

Each rank writes ``rank<N>.json`` (per step: loss scale after it, optimizer iterations, whether any weight
changed) and ``rank<N>.npz`` (the final weights).

Usage: python loss_scale_worker.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from summarizer import distribution
from summarizer.config import TrainConfig
from summarizer.model import build_model
from summarizer.training import Trainer
from tests.workers.gradient_worker import VOCAB_SIZE, fixed_batch

STEPS = 5
OVERFLOW_STEP = 2
OVERFLOWING_RANK = 1
# Small enough that no step overflows by itself at this model size: only the injected one may.
INITIAL_LOSS_SCALE = 128.0


class OverflowInjection:
    """The run's distribution, except that one rank's gradients turn inf while ``overflow`` is set."""

    def __init__(self, inner: distribution.Distribution) -> None:
        self._inner = inner
        self.overflow = tf.Variable(False, trainable=False)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def average_gradients(
        self, gradients: Sequence[Any], compression_fp16: bool = False, overlap: bool = False
    ) -> list[tf.Tensor]:
        gradients = list(gradients)
        if self._inner.rank == OVERFLOWING_RANK:
            last = tf.convert_to_tensor(gradients[-1])
            gradients[-1] = last + tf.where(
                self.overflow, tf.constant(np.inf, last.dtype), tf.zeros((), last.dtype)
            )
        return self._inner.average_gradients(gradients, compression_fp16, overlap)


def main(out_dir: Path) -> None:
    run = OverflowInjection(distribution.init())
    config = TrainConfig(units=16, embedding_dim=8, dropout=0.0, precision="mixed_float16")
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(run.rank)  # different weights per rank until the broadcast
    trainer = Trainer(build_model(config, VOCAB_SIZE), config, run)
    trainer.build()
    trainer.optimizer.dynamic_scale.assign(INITIAL_LOSS_SCALE)
    run.broadcast_variables(trainer.variables)  # the loss scale is an optimizer variable: the chief's holds
    batch = fixed_batch()
    half = {name: tensor[2 * run.rank : 2 * run.rank + 2] for name, tensor in batch.items()}
    steps = []
    for step in range(STEPS):
        run.overflow.assign(step == OVERFLOW_STEP)
        before = trainer.model.get_weights()
        trainer.train_step(half, learning_rate=0.01)
        after = trainer.model.get_weights()
        steps.append(
            {
                "loss_scale": float(trainer.optimizer.dynamic_scale.numpy()),
                "iterations": int(trainer.optimizer.iterations.numpy()),
                "weights_changed": any(not np.array_equal(b, a) for b, a in zip(before, after, strict=True)),
            }
        )
    record = {"rank": run.rank, "steps": steps, "policy": keras.mixed_precision.dtype_policy().name}
    (out_dir / f"rank{run.rank}.json").write_text(json.dumps(record), encoding="utf-8")
    np.savez(out_dir / f"rank{run.rank}.npz", *trainer.model.get_weights())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
