"""Reproducible runs: seeds and TensorFlow's op determinism, turned on by every entry point that runs a model.

With op determinism on, an op run twice on the same inputs on the same machine gives the same bits: TensorFlow
picks deterministic kernels where it has a choice, forces ``tf.data`` to keep its order, and raises
``UnimplementedError`` for an op that has no deterministic kernel (none of ours on CPU). With the seeds set
(Python, NumPy, TensorFlow, Keras), the train stage gives the same weights on every rerun on one machine, and
decoding the same summaries, by construction rather than by observation.

What still varies across machines: oneDNN and Eigen pick kernels by the CPU's instruction set (AVX2, AVX-512,
AMX), whose different vector widths and fused multiply-adds round differently; so do other TensorFlow,
oneDNN or sentencepiece versions. The README's "Same clone, same numbers" section says what that means.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # the only reader of the flag (no public API)

DECODING_SEED = 0  # decoding draws no random numbers; the seed only pins whatever might


def make_deterministic(seed: int = DECODING_SEED) -> None:
    """Seed Python, NumPy, TensorFlow and Keras with ``seed`` and turn on TensorFlow's op determinism.

    Call it once, at the start of an entry point, before any model is built or function traced, but after
    ``distribution.init`` (seeding TensorFlow's global ``tf.random.Generator`` starts its runtime, after which
    thread counts are fixed). Under op determinism that generator must be set before anyone asks for it
    (resume checkpoints save its state).
    """
    keras.utils.set_random_seed(seed)
    tf.random.set_global_generator(tf.random.Generator.from_seed(seed))
    tf.config.experimental.enable_op_determinism()


def is_deterministic() -> bool:
    """Whether op determinism is on in this process."""
    return bool(tf_config.is_op_determinism_enabled())


__all__ = ["DECODING_SEED", "is_deterministic", "make_deterministic"]
