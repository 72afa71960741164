"""Under ``horovodrun -np 2``: each rank takes half of one batch (unequal target tokens); average gradients.

Rank 0 also computes the one-process gradient on the whole batch. Each rank writes ``rank<N>.npz`` with
``split_<i>`` (the averaged gradients) and, on rank 0, ``whole_<i>``. With ``accumulate``, each rank's half
is two micro-batches of one example whose gradients are accumulated (``Trainer.accumulated_gradients``).
With ``overlap``, the gradients are averaged one allreduce per tensor (``train.horovod.overlap_allreduce``).
The chief writes its Horovod timeline to ``timeline.json``.

Usage: python gradient_worker.py OUT_DIR [accumulate] [overlap]
"""

from __future__ import annotations

import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from summarizer import distribution
from summarizer.config import HorovodConfig, TrainConfig
from summarizer.model import build_model
from summarizer.training import Trainer

VOCAB_SIZE = 40
# Target lengths 2 + 3 = 5 tokens on rank 0 and 6 + 7 = 13 on rank 1: a plain mean of the ranks' mean losses
# would weight them equally and differ from the whole-batch token mean.
TARGET_LENGTHS = (2, 3, 6, 7)
SOURCE_LENGTHS = (5, 8, 6, 4)


def fixed_batch() -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(7)
    source = np.zeros((4, max(SOURCE_LENGTHS)), np.int32)
    target = np.zeros((4, max(TARGET_LENGTHS)), np.int32)
    for row, (source_length, target_length) in enumerate(zip(SOURCE_LENGTHS, TARGET_LENGTHS, strict=True)):
        source[row, :source_length] = rng.integers(4, VOCAB_SIZE, source_length)
        target[row, :target_length] = rng.integers(4, VOCAB_SIZE, target_length)
        target[row, target_length - 1] = 3  # EOS
    target_in = np.concatenate([np.full((4, 1), 2, np.int32), target[:, :-1]], axis=1)
    target_in[target == 0] = 0
    return {
        "source_ids": tf.constant(source),
        "target_in": tf.constant(target_in),
        "target_out": tf.constant(target),
    }


def main(out_dir: Path, accumulate: bool = False, overlap: bool = False) -> None:
    dist = distribution.init(dynamic_timeline=True)
    dist.start_timeline(out_dir / "timeline.json")  # the chief's: which allreduces ran
    config = TrainConfig(
        units=16,
        embedding_dim=8,
        dropout=0.0,
        coverage_weight=0.5,
        label_smoothing=0.1,
        horovod=HorovodConfig(overlap_allreduce=overlap),
    )
    keras.mixed_precision.set_dtype_policy("float32")
    keras.utils.set_random_seed(dist.rank)  # different weights per rank until the broadcast
    trainer = Trainer(build_model(config, VOCAB_SIZE), config, dist)
    trainer.build()
    dist.broadcast_variables(trainer.variables)
    batch = fixed_batch()
    half = {name: tensor[2 * dist.rank : 2 * dist.rank + 2] for name, tensor in batch.items()}
    if accumulate:
        micro_batches = [{name: tensor[row : row + 1] for name, tensor in half.items()} for row in (0, 1)]
        split, _, tokens = trainer.accumulated_gradients(micro_batches)
    else:
        split, _, tokens = trainer.gradients(half)
    dist.stop_timeline()
    arrays = {f"split_{index}": np.asarray(gradient) for index, gradient in enumerate(split)}
    arrays["tokens"] = np.asarray(tokens)
    if dist.is_chief:
        whole, _, _ = Trainer(trainer.model, config, distribution.LocalDistribution()).gradients(batch)
        arrays.update({f"whole_{index}": np.asarray(gradient) for index, gradient in enumerate(whole)})
    np.savez(out_dir / f"rank{dist.rank}.npz", **arrays)


if __name__ == "__main__":
    main(Path(sys.argv[1]), accumulate="accumulate" in sys.argv[2:], overlap="overlap" in sys.argv[2:])
