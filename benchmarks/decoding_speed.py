"""Decoding throughput: the classic one-``predict``-per-token loop vs batched greedy and beam search.

Random weights emit EOS at random steps, which would flatter whichever system stops first; so every system
generates exactly ``max_length`` tokens (``min_length = max_length``: EOS is banned until then).

Ours is ``summarizer.inference.SummarizerPipeline.decoder``, the traced search ``summarize`` and the evaluate
stage run; only text normalization and sentencepiece (not model work) are left out, as the inputs are ids.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from benchmarks import classic
from benchmarks.common import Shapes, summary_of, synthetic_batch, timed_rates
from summarizer.config import EvaluateConfig
from summarizer.inference import SummarizerPipeline
from summarizer.model_directory import ModelSettings


def forced_length(decoding: EvaluateConfig, length: int) -> EvaluateConfig:
    """``decoding`` with ``min_length = max_length = length``: every summary has exactly ``length`` tokens."""
    return replace(decoding, min_length=length, max_length=length)


def source_texts(shapes: Shapes, count: int, seed: int) -> np.ndarray:
    """Random source ids (count, source_length), right-padded, as the tokenized test split would be."""
    rng = np.random.default_rng(seed)
    return synthetic_batch(replace(shapes, batch_size=count), rng)["source_ids"]


def our_decoder(model: keras.Model, decoding: EvaluateConfig, source_length: int):
    """``SummarizerPipeline.decoder``: source ids (batch_size, source_length) -> generated ids and lengths.

    Ids in, ids out: the pipeline's tokenizer is never used on this path, so none is given.
    """
    settings = ModelSettings(max_source_tokens=source_length, max_target_tokens=decoding.max_length)
    return SummarizerPipeline(model, None, settings, decoding).decoder(decoding.batch_size)


def measure_our_decoding(
    model: keras.Model, decoding: EvaluateConfig, sources: np.ndarray, repetitions: int
) -> dict[str, Any]:
    """Summaries/s over ``sources`` (a multiple of ``decoding.batch_size`` rows), after one warm-up batch."""
    size = decoding.batch_size
    if len(sources) % size:
        raise ValueError(f"{len(sources)} texts is not a multiple of the decoding batch size {size}")
    decoder = our_decoder(model, decoding, sources.shape[1])
    batches = [tf.constant(sources[start : start + size]) for start in range(0, len(sources), size)]
    _, lengths = decoder(batches[0])
    if int(tf.reduce_min(lengths)) != decoding.max_length:
        raise RuntimeError(
            f"decoding did not generate {decoding.max_length} tokens for every text: {lengths}"
        )

    def run_once() -> float:
        for batch in batches:
            decoder(batch)[1].numpy()  # .numpy() waits for the result
        return len(sources)

    summary = summary_of(timed_rates(run_once, repetitions))
    return {
        "summaries_per_second": summary["median"],
        "repetitions": summary["repetitions"],
        "texts": len(sources),
    }


def measure_classic_decoding(
    models: classic.ClassicModels, sources: np.ndarray, length: int, chunks: int
) -> dict[str, Any]:
    """Summaries/s of the classic loop over ``sources`` split into ``chunks`` timed repetitions."""
    first = classic.summarize_one(
        models, sources[0], length, length
    )  # warm-up: traces both predict functions
    if len(first) != length:
        raise RuntimeError(f"the classic loop generated {len(first)} tokens, expected {length}")
    parts = np.array_split(sources, chunks)
    remaining = iter(parts)

    def run_once() -> float:
        part = next(remaining)
        classic.summarize(models, part, length, length)
        return len(part)

    summary = summary_of(timed_rates(run_once, len(parts)))
    return {
        "summaries_per_second": summary["median"],
        "repetitions": summary["repetitions"],
        "texts": len(sources),
    }


__all__ = [
    "forced_length",
    "measure_classic_decoding",
    "measure_our_decoding",
    "our_decoder",
    "source_texts",
]
