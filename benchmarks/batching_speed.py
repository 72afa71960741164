"""Token batches vs example batches: the train step's samples/s, target tokens/s and padding on real lengths.

Both kinds of batch are made by the product's reader (``records.read_dataset``: examples padded to each
batch's longest source, or ``train.batch_type: tokens`` buckets from ``training.batch_buckets``) from the
default corpus' train shards (``data/tokenized``) when they are there, else from a synthetic corpus whose
lengths are shaped like it (:func:`write_synthetic_corpus`). The token budget is ``batch_size *
max_source_tokens``: an example batch's largest possible padded source, so both kinds do at most the same
encoder work per batch. The batches are read before the clock starts; only ``Trainer.train_step`` is timed.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks.common import FIRST_ORDINARY_ID, summary_of, timed_rates
from benchmarks.training_speed import Timing, dtype_policy, make_trainer
from summarizer import records, training
from summarizer.config import TrainConfig
from summarizer.tokenization import EOS_ID, PAD_ID, Tokenizer

# Shapes of the default corpus' train split (metrics/tokenize.json): 41% of sources reach the 80-token cap,
# the rest spread below it; targets have a median of 10 pieces and 7% reach the 16-piece cap.
CAPPED_SOURCE_FRACTION = 0.41
CAPPED_TARGET_FRACTION = 0.07
MEDIAN_TARGET = 10


def write_synthetic_corpus(
    directory: Path, examples: int, max_source: int, max_target: int, vocab_size: int, seed: int
) -> list[str]:
    """One train shard of random ids whose lengths are shaped like the default corpus'; its path."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    with records.ShardedWriter(directory, "train", 1) as writer:
        for _ in range(examples):
            source_length = max_source
            if rng.random() >= CAPPED_SOURCE_FRACTION:
                source_length = int(rng.integers(max(1, max_source // 4), max_source))
            target_length = max_target
            if rng.random() >= CAPPED_TARGET_FRACTION:
                spread = max(1, min(MEDIAN_TARGET, max_target) // 2)
                target_length = int(
                    np.clip(rng.normal(min(MEDIAN_TARGET, max_target), spread), 2, max_target)
                )
            source = rng.integers(FIRST_ORDINARY_ID, vocab_size, source_length).tolist()
            target = [*rng.integers(FIRST_ORDINARY_ID, vocab_size, target_length - 1).tolist(), EOS_ID]
            writer.write(records.make_example(source, target))
    return [str(path) for path in writer.paths]


def corpus(
    data_dir: Path | None, work_dir: Path, config: TrainConfig, max_source: int, max_target: int, vocab: int
) -> tuple[list[str], int, str]:
    """Train shards, their vocabulary size and where they come from (``data_dir`` if it holds shards)."""
    if data_dir is not None and (data_dir / "spm.model").is_file():
        try:
            files = records.list_shards(data_dir, "train")
        except FileNotFoundError:
            files = []
        if files:
            return files, Tokenizer.load(data_dir / "spm.model").vocab_size, str(data_dir)
    examples = 8000 if max_source >= 40 else 400
    files = write_synthetic_corpus(
        work_dir / "synthetic", examples, max_source, max_target, vocab, seed=config.seed
    )
    return files, vocab, "synthetic (lengths shaped like the default corpus)"


def padding_percent(batches: list[dict[str, tf.Tensor]], name: str) -> float:
    """PAD positions as a percentage of all positions of ``name`` over ``batches``."""
    cells = sum(int(np.prod(batch[name].shape)) for batch in batches)
    pads = sum(int(np.count_nonzero(batch[name].numpy() == PAD_ID)) for batch in batches)
    return 100.0 * pads / max(cells, 1)


def measure(
    config: TrainConfig,
    files: list[str],
    vocab_size: int,
    max_lengths: tuple[int, int],
    timing: Timing,
    seed: int,
) -> dict[str, Any]:
    """Samples/s and target tokens/s of ``Trainer.train_step`` on ``config``'s batches of ``files``, whose
    sources and targets are at most ``max_lengths`` tokens long."""
    buckets = training.batch_buckets(config, *max_lengths)
    needed = timing.warmup_steps + timing.steps * timing.repetitions
    dataset = records.read_dataset(
        files, config.batch_size, shuffle=True, seed=seed, repeat=True, drop_remainder=True, buckets=buckets
    )
    batches = list(dataset.take(needed))
    timed = batches[timing.warmup_steps :]
    with dtype_policy(config.precision):
        trainer = make_trainer(config, vocab_size, seed)
        for batch in batches[: timing.warmup_steps]:
            trainer.train_step(batch, config.learning_rate)
        chunks = iter([timed[index : index + timing.steps] for index in range(0, len(timed), timing.steps)])
        counts: list[tuple[int, float]] = []

        def run_once() -> float:
            examples = tokens = 0.0
            for batch in next(chunks):
                _, batch_tokens = trainer.train_step(batch, config.learning_rate)
                examples, tokens = examples + int(batch["target_out"].shape[0]), tokens + batch_tokens
            counts.append((int(examples), tokens))
            return examples

        rates = timed_rates(run_once, timing.repetitions)
    token_rates = [rate * tokens / examples for rate, (examples, tokens) in zip(rates, counts, strict=True)]
    return {
        "samples_per_second": summary_of(rates)["median"],
        "target_tokens_per_second": summary_of(token_rates)["median"],
        "repetitions": summary_of(rates)["repetitions"],
        "token_repetitions": summary_of(token_rates)["repetitions"],
        "examples_per_batch": sum(int(batch["target_out"].shape[0]) for batch in timed) / len(timed),
        "source_padding_percent": padding_percent(timed, "source_ids"),
        "target_padding_percent": padding_percent(timed, "target_out"),
    }


def compare(
    config: TrainConfig,
    data_dir: Path | None,
    max_source: int,
    max_target: int,
    vocab_size: int,
    timing: Timing,
    seed: int,
) -> dict[str, Any]:
    """``examples`` batches of ``config.batch_size`` vs ``tokens`` batches of ``batch_size * max_source``."""
    examples_config = dataclasses.replace(config, batch_type="examples", accumulate_steps=1)
    tokens_config = dataclasses.replace(
        examples_config, batch_type="tokens", batch_size=config.batch_size * max_source
    )
    with tempfile.TemporaryDirectory(prefix="benchmark-batching-") as directory:
        files, vocab, source = corpus(data_dir, Path(directory), config, max_source, max_target, vocab_size)
        results = {
            kind: measure(kind_config, files, vocab, (max_source, max_target), timing, seed)
            for kind, kind_config in (("examples", examples_config), ("tokens", tokens_config))
        }
    return {**results, "corpus": source, "token_budget": tokens_config.batch_size}


__all__ = ["compare", "measure", "padding_percent", "write_synthetic_corpus"]
