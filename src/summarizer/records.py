"""TFRecord shards of token ids: schema, streaming sharded writer, the tokenize stage and a tf.data reader.

Schema: one ``tf.train.Example`` per pair with int64 list features

* ``source_ids``: the text's piece ids, at most ``max_source_tokens``, no BOS/EOS;
* ``target_ids``: the summary's piece ids + EOS, cut to ``max_target_tokens`` (a truncated target has no EOS).

Shards are ``{split}-{index:05d}-of-{count:05d}.tfrecord``; example ``i`` of a split goes to shard
``i % count``, so every shard holds an even slice of the split and rank-wise file sharding stays balanced.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import tensorflow as tf

from summarizer.config import TokenizeConfig
from summarizer.ingested import Pair, read_pairs, split_paths
from summarizer.io import atomic_directory, write_metrics
from summarizer.stats import length_percentiles
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, train_tokenizer

TOKENIZER_PREFIX = "spm"
ENCODE_CHUNK_RECORDS = 1024
PROGRESS_EVERY_RECORDS = 100_000
SHUFFLE_BUFFER = 10_000

FEATURES = {
    "source_ids": tf.io.VarLenFeature(tf.int64),
    "target_ids": tf.io.VarLenFeature(tf.int64),
}

logger = logging.getLogger(__name__)
# Timings, written apart from the stats (metrics/timings/tokenize.json): they move on every run.
TIMING_KEYS = ("tokenizer_seconds", "encode_seconds", "encode_megabytes_per_second")


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def make_example(source_ids: Sequence[int], target_ids: Sequence[int]) -> bytes:
    """A serialized ``tf.train.Example`` in this module's schema, the same bytes in every process.

    ``features`` is a protobuf map: without ``deterministic=True`` its entries are written in an order that
    follows Python's per-process string hashing, so the same example gave different shard bytes from one run
    to the next (and another ``data/tokenized`` hash in ``dvc.lock``).
    """
    features = {
        "source_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=source_ids)),
        "target_ids": tf.train.Feature(int64_list=tf.train.Int64List(value=target_ids)),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True)


class ShardedWriter:
    """Writes serialized examples round-robin into ``count`` shard files of one split (a context manager)."""

    def __init__(self, directory: str | Path, split: str, count: int) -> None:
        if count < 1:
            raise ValueError(f"the number of shards must be >= 1, got {count}")
        self.paths = [Path(directory) / shard_name(split, index, count) for index in range(count)]
        self._writers: list[tf.io.TFRecordWriter] = []
        self.examples = 0

    def __enter__(self) -> ShardedWriter:
        self._writers = [tf.io.TFRecordWriter(str(path)) for path in self.paths]
        return self

    def write(self, serialized: bytes) -> None:
        self._writers[self.examples % len(self._writers)].write(serialized)
        self.examples += 1

    def __exit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()


@dataclass
class SplitStats:
    """Length histograms and counts of one split, in memory proportional to the number of distinct lengths."""

    source_lengths: Counter[int] = field(default_factory=Counter)
    target_lengths: Counter[int] = field(default_factory=Counter)
    examples: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    tokens: int = 0
    unknown_tokens: int = 0

    def add(self, source_ids: list[int], summary_ids: list[int], config: TokenizeConfig) -> None:
        """Count one pair from its uncapped ids; its target is the summary + EOS."""
        target_length = len(summary_ids) + 1
        self.examples += 1
        self.source_lengths[len(source_ids)] += 1
        self.target_lengths[target_length] += 1
        self.truncated_sources += len(source_ids) > config.max_source_tokens
        self.truncated_targets += target_length > config.max_target_tokens
        self.tokens += len(source_ids) + len(summary_ids)
        self.unknown_tokens += source_ids.count(UNK_ID) + summary_ids.count(UNK_ID)

    def to_dict(self) -> dict[str, Any]:
        """The split's metrics; ``unknown_token_rate`` is UNK ids over all source and summary ids (no EOS)."""
        examples = max(self.examples, 1)
        return {
            "examples": self.examples,
            "source_tokens": length_percentiles(self.source_lengths),
            "target_tokens": length_percentiles(self.target_lengths),
            "truncated_sources": self.truncated_sources,
            "truncated_sources_fraction": round(self.truncated_sources / examples, 6),
            "truncated_targets": self.truncated_targets,
            "truncated_targets_fraction": round(self.truncated_targets / examples, 6),
            "unknown_token_rate": round(self.unknown_tokens / max(self.tokens, 1), 6),
        }


def _chunks(pairs: Iterable[Pair], size: int) -> Iterator[list[Pair]]:
    iterator = iter(pairs)
    while chunk := list(islice(iterator, size)):
        yield chunk


def write_split(
    jsonl_path: str | Path, directory: str | Path, split: str, tokenizer: Tokenizer, config: TokenizeConfig
) -> SplitStats:
    """Encode one ingested JSONL split into ``config.num_shards`` TFRecord shards in ``directory``.

    Streams: records are read, encoded and written ``ENCODE_CHUNK_RECORDS`` at a time, so memory does not grow
    with the file. Source and target token counts are taken before capping.

    Raises:
        ValueError: a record is malformed, or its text encodes to no tokens (file and line named).
    """
    jsonl_path = Path(jsonl_path)
    stats = SplitStats()
    with ShardedWriter(directory, split, config.num_shards) as writer:
        for chunk in _chunks(read_pairs(jsonl_path), ENCODE_CHUNK_RECORDS):
            sources = tokenizer.encode_batch([pair.text for pair in chunk])
            summaries = tokenizer.encode_batch([pair.summary for pair in chunk])
            for pair, source_ids, summary_ids in zip(chunk, sources, summaries, strict=True):
                if not source_ids:
                    raise ValueError(f"{jsonl_path}: line {pair.line}: field 'text' encodes to no tokens")
                stats.add(source_ids, summary_ids, config)
                target_ids = [*summary_ids, EOS_ID][: config.max_target_tokens]
                writer.write(make_example(source_ids[: config.max_source_tokens], target_ids))
                if writer.examples % PROGRESS_EVERY_RECORDS == 0:
                    logger.info("encoding %s: %d examples", split, writer.examples)
    logger.info("encoded %s: %d examples into %d shards", split, writer.examples, config.num_shards)
    return stats


def run_tokenize(
    config: TokenizeConfig,
    in_dir: str | Path,
    out_dir: str | Path,
    stats_path: str | Path,
    timings_path: str | Path,
) -> dict[str, Any]:
    """The tokenize stage: :func:`tokenize_splits` into ``out_dir``, its stats into ``stats_path`` and their
    timings (:data:`TIMING_KEYS`) into ``timings_path``.

    ``out_dir`` is built beside itself and replaces the old one only on success.

    Raises:
        FileNotFoundError, ValueError: as :func:`tokenize_splits`; nothing is written then.
    """
    with atomic_directory(out_dir) as staging:
        stats = tokenize_splits(in_dir, staging, config)
        write_metrics(stats, TIMING_KEYS, stats_path, timings_path)
    logger.info("written %s, %s and %s", out_dir, stats_path, timings_path)
    return stats


def tokenize_splits(in_dir: str | Path, out_dir: str | Path, config: TokenizeConfig) -> dict[str, Any]:
    """Train ``spm.model`` on the train split, then shard every split into the existing ``out_dir``.

    Returns:
        Stage metrics: per split the example count, token-length percentiles before capping,
        truncation counts and fractions and the unknown-token rate; the vocabulary size (and the setting
        it came from, a number or "auto"), shards per split,
        the input size, and the timings (:data:`TIMING_KEYS`): tokenizer and encode seconds, MB of JSONL
        encoded per second.

    Raises:
        FileNotFoundError: an input split is missing. ValueError: a malformed record, or a vocabulary size
            the corpus cannot fill.
    """
    inputs = split_paths(in_dir)
    started = time.perf_counter()
    logger.info("training tokenizer on %s (tokenize.vocab_size: %s)", inputs["train"], config.vocab_size)
    tokenizer = train_tokenizer(inputs["train"], Path(out_dir) / TOKENIZER_PREFIX, config)
    tokenizer_seconds = time.perf_counter() - started
    started = time.perf_counter()
    split_stats = {}
    for split, path in inputs.items():
        logger.info("encoding %s: %s", split, path)
        split_stats[split] = write_split(path, out_dir, split, tokenizer, config).to_dict()
    encode_seconds = time.perf_counter() - started
    input_megabytes = sum(path.stat().st_size for path in inputs.values()) / 1e6
    logger.info("encoded %.1f MB of JSONL in %.1f s", input_megabytes, encode_seconds)
    return {
        **split_stats,
        "vocab_size": tokenizer.vocab_size,  # the pieces trained: with "auto", perhaps fewer than asked
        "vocab_size_setting": config.vocab_size,  # tokenize.vocab_size as given: a number or "auto"
        "num_shards": config.num_shards,
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "encode_seconds": round(encode_seconds, 3),
        "input_megabytes": round(input_megabytes, 3),
        "encode_megabytes_per_second": round(input_megabytes / max(encode_seconds, 1e-9), 3),
    }


def list_shards(data_dir: str | Path, split: str) -> list[str]:
    """The sorted shard files of ``split`` in ``data_dir``.

    Raises:
        FileNotFoundError: there are none, or the set is incomplete (e.g. 3 files named ``-of-00004``).
    """
    data_dir = Path(data_dir)
    files = sorted(data_dir.glob(f"{split}-*-of-*.tfrecord"))
    if not files:
        raise FileNotFoundError(
            f"no {split} shards ({split}-NNNNN-of-NNNNN.tfrecord) in {data_dir}; run the tokenize stage first"
        )
    count = len(files)
    expected = [data_dir / shard_name(split, index, count) for index in range(count)]
    if files != expected:
        raise FileNotFoundError(
            f"incomplete {split} shards in {data_dir}: found {[path.name for path in files]}"
        )
    return [str(path) for path in files]


def _parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    source_ids = tf.cast(tf.sparse.to_dense(parsed["source_ids"]), tf.int32)  # (source_time,)
    target_ids = tf.cast(tf.sparse.to_dense(parsed["target_ids"]), tf.int32)  # (target_time,)
    target_in = tf.concat([tf.constant([BOS_ID], tf.int32), target_ids[:-1]], axis=0)
    return {"source_ids": source_ids, "target_in": target_in, "target_out": target_ids}


def _shard_files(files: Sequence[str], num_shards: int, shard_index: int) -> tuple[list[str], bool]:
    """This rank's files, and whether examples still need ``Dataset.shard`` (see :func:`read_dataset`)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in 0..{num_shards - 1}, got {shard_index}")
    if num_shards > 1 and len(files) % num_shards == 0:
        return list(files[shard_index::num_shards]), False
    return list(files), num_shards > 1


@dataclass(frozen=True)
class Buckets:
    """Length buckets, each with its own batch size: by source length, and within that by target length.

    Source bucket ``i`` holds sources of length ``boundaries[i-1] <= length < boundaries[i]`` (the first from
    0, the last without an upper end); target buckets split each of them the same way by ``target_boundaries``
    (none: by source length only). Bucket ``(i, j)`` is number ``i * (len(target_boundaries) + 1) + j`` and
    ``batch_sizes`` holds one batch size per bucket, in that order.
    """

    boundaries: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    target_boundaries: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        count = (len(self.boundaries) + 1) * (len(self.target_boundaries) + 1)
        if len(self.batch_sizes) != count or min(self.batch_sizes) < 1:
            raise ValueError(
                f"Buckets: need (len(boundaries) + 1) * (len(target_boundaries) + 1) batch sizes >= 1, got "
                f"{self.boundaries}, {self.target_boundaries}, {self.batch_sizes}"
            )

    def index(self, length: int, target_length: int = 0) -> int:
        """The bucket of an example with a source of ``length`` and a target of ``target_length`` tokens."""
        source = bisect.bisect_right(self.boundaries, length)
        return source * (len(self.target_boundaries) + 1) + bisect.bisect_right(
            self.target_boundaries, target_length
        )


def _uppers(max_length: int, width: int) -> list[int]:
    """The longest length of each bucket ``width`` wide: width, 2 * width, ..., max_length."""
    return [*range(width, max_length, width), max_length]


def token_buckets(
    budget: int, max_length: int, width: int, max_target_length: int = 0, target_width: int = 0
) -> Buckets:
    """Buckets ``width`` source tokens wide up to ``max_length``, each batch at most ``budget`` source tokens.

    The buckets' longest sources are ``width, 2 * width, ..., max_length``; a bucket whose longest source is
    ``upper`` takes ``budget // upper`` examples, so a batch padded to its longest source holds at most
    ``budget`` source tokens (sources longer than ``max_length`` share the last bucket).

    With ``target_width`` (and ``max_target_length``), each source bucket is split into target-length buckets
    ``target_width`` wide, and a batch also holds at most ``budget * max_target_length // max_length`` padded
    target tokens: the share of targets in a batch of examples at both caps. The decoder's work (above all the
    output projection) goes with target positions, so a batch of short targets holds more examples.
    """
    if not 1 <= max_length <= budget or width < 1:
        raise ValueError(
            "token_buckets: need 1 <= max_length <= budget and width >= 1, got "
            f"max_length {max_length}, budget {budget}, width {width}"
        )
    uppers = _uppers(max_length, width)
    boundaries = tuple(upper + 1 for upper in uppers[:-1])
    if target_width < 1 or max_target_length < 1:
        return Buckets(boundaries=boundaries, batch_sizes=tuple(budget // upper for upper in uppers))
    target_budget = budget * max_target_length // max_length
    target_uppers = _uppers(max_target_length, target_width)
    return Buckets(
        boundaries=boundaries,
        batch_sizes=tuple(
            min(budget // upper, target_budget // target_upper)
            for upper in uppers
            for target_upper in target_uppers
        ),
        target_boundaries=tuple(upper + 1 for upper in target_uppers[:-1]),
    )


def full_batches(lengths: Iterable[tuple[int, int]], buckets: Buckets | None, batch_size: int = 0) -> int:
    """Full batches (``drop_remainder``) one pass over examples of these (source, target) lengths makes, in
    any order.

    Without buckets: ``len(lengths) // batch_size``. With them, each bucket fills on its own, so the count
    is the sum over buckets of its examples // its batch size, whatever the shuffle.
    """
    if buckets is None:
        return sum(1 for _ in lengths) // batch_size
    counts = Counter(buckets.index(source, target) for source, target in lengths)
    return sum(count // buckets.batch_sizes[index] for index, count in counts.items())


def _batch(
    dataset: tf.data.Dataset,
    batch_size: int,
    drop_remainder: bool,
    bucket_boundaries: Sequence[int] | None,
    buckets: Buckets | None,
) -> tf.data.Dataset:
    padding = {name: tf.constant(PAD_ID, tf.int32) for name in ("source_ids", "target_in", "target_out")}
    if buckets is None and bucket_boundaries:
        buckets = Buckets(tuple(bucket_boundaries), (batch_size,) * (len(bucket_boundaries) + 1))
    if buckets is not None and not buckets.boundaries:  # one bucket
        batch_size, buckets = buckets.batch_sizes[0], None
    if buckets is None:
        return dataset.padded_batch(batch_size, padding_values=padding, drop_remainder=drop_remainder)
    if buckets.target_boundaries:
        return _group_by_bucket(dataset, buckets, padding, drop_remainder)
    return dataset.bucket_by_sequence_length(
        element_length_func=lambda example: tf.shape(example["source_ids"])[0],
        bucket_boundaries=list(buckets.boundaries),
        bucket_batch_sizes=list(buckets.batch_sizes),
        padding_values=padding,
        drop_remainder=drop_remainder,
    )


def _group_by_bucket(
    dataset: tf.data.Dataset, buckets: Buckets, padding: dict[str, tf.Tensor], drop_remainder: bool
) -> tf.data.Dataset:
    """Batches of one (source, target) bucket each, padded to their own longest sequences: what
    ``bucket_by_sequence_length`` does on one length, here on two (:meth:`Buckets.index`)."""
    targets = len(buckets.target_boundaries) + 1
    source_boundaries = tf.constant(buckets.boundaries, tf.int32, shape=(len(buckets.boundaries),))
    target_boundaries = tf.constant(buckets.target_boundaries, tf.int32)
    batch_sizes = tf.constant(buckets.batch_sizes, tf.int64)

    def bucket(example: dict[str, tf.Tensor]) -> tf.Tensor:
        source = tf.shape(example["source_ids"])[0]
        target = tf.shape(example["target_out"])[0]
        source_index = tf.reduce_sum(tf.cast(source_boundaries <= source, tf.int64))
        return source_index * targets + tf.reduce_sum(tf.cast(target_boundaries <= target, tf.int64))

    def batch(key: tf.Tensor, window: tf.data.Dataset) -> tf.data.Dataset:
        return window.padded_batch(
            tf.gather(batch_sizes, key), padding_values=padding, drop_remainder=drop_remainder
        )

    return dataset.group_by_window(
        key_func=bucket, reduce_func=batch, window_size_func=lambda key: tf.gather(batch_sizes, key)
    )


def read_dataset(
    files: Sequence[str | Path],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None = None,
    repeat: bool = False,
    num_shards: int = 1,
    shard_index: int = 0,
    drop_remainder: bool = False,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    bucket_boundaries: Sequence[int] | None = None,
    buckets: Buckets | None = None,
) -> tf.data.Dataset:
    """Batches of ``source_ids``, ``target_in``, ``target_out``: int32 (batch, time), right-padded with PAD.

    ``target_in`` is BOS + target[:-1] (teacher forcing), ``target_out`` is the target.

    Sharding (one shard per Horovod rank): when the file count is a multiple of ``num_shards``, rank
    ``shard_index`` reads only ``files[shard_index::num_shards]`` (each file holds an even round-robin slice,
    so ranks get equal data). Otherwise, so that no rank gets twice the data of another, every rank reads all
    files in order and keeps every ``num_shards``-th example (``Dataset.shard``). Either way the shards are
    disjoint and cover every example, whatever ``seed`` is.

    Args:
        shuffle: shuffle examples (a ``shuffle_buffer`` window, reshuffled each epoch); ``seed`` fixes it.
        repeat: repeat forever (the caller counts steps).
        bucket_boundaries: if given, batch examples of similar source length together
            (``bucket_by_sequence_length``); batches are then padded to their own longest source.
        buckets: the same with a batch size per bucket (token batches, :func:`token_buckets`); ``batch_size``
            is then unused. A bucket emits a batch when it is full: which batches come out depends only on
            the order of the examples (so on ``seed``), and with ``drop_remainder`` one pass makes
            :func:`full_batches` of them.
    """
    if not files:
        raise ValueError("read_dataset: no TFRecord files given")
    if batch_size < 1:
        raise ValueError(f"read_dataset: batch_size must be >= 1, got {batch_size}")
    selected, shard_examples = _shard_files([str(path) for path in files], num_shards, shard_index)
    dataset = tf.data.TFRecordDataset(selected)
    if shard_examples:
        dataset = dataset.shard(num_shards, shard_index)
    if shuffle:
        dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = _batch(dataset, batch_size, drop_remainder, bucket_boundaries, buckets)
    return dataset.prefetch(tf.data.AUTOTUNE)


def example_lengths(
    files: Sequence[str | Path], num_shards: int = 1, shard_index: int = 0
) -> list[tuple[int, int]]:
    """(source, target) length of every example in this rank's shard (sharded as :func:`read_dataset`)."""
    if not files:
        raise ValueError("example_lengths: no TFRecord files given")
    selected, shard_examples = _shard_files([str(path) for path in files], num_shards, shard_index)
    dataset = tf.data.TFRecordDataset(selected)
    if shard_examples:
        dataset = dataset.shard(num_shards, shard_index)
    ragged = {name: tf.io.RaggedFeature(tf.int64) for name in ("source_ids", "target_ids")}

    def lengths(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, ragged)
        return parsed["source_ids"].row_lengths(), parsed["target_ids"].row_lengths()

    batches = dataset.batch(4096).map(lengths).as_numpy_iterator()
    return [
        (int(source), int(target))
        for sources, targets in batches
        for source, target in zip(sources, targets, strict=True)
    ]


__all__ = [
    "FEATURES",
    "Buckets",
    "example_lengths",
    "ShardedWriter",
    "SplitStats",
    "list_shards",
    "make_example",
    "full_batches",
    "read_dataset",
    "run_tokenize",
    "token_buckets",
    "tokenize_splits",
    "shard_name",
    "write_split",
]
