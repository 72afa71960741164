"""TFRecord shards: exact ids on disk, statistics, the tf.data reader, rank sharding, the tokenize stage."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from summarizer.config import TokenizeConfig
from summarizer.records import (
    FEATURES,
    Buckets,
    SplitStats,
    example_lengths,
    full_batches,
    list_shards,
    make_example,
    read_dataset,
    token_buckets,
    tokenize_splits,
    write_split,
)
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, read_pairs, train_tokenizer
from tests.conftest import make_pairs
from tests.helpers import RECORDS_TRAIN_EXAMPLES as TRAIN_EXAMPLES
from tests.helpers import write_ingested

# Caps near the corpus' median lengths (source ~50, target ~13 pieces), so some examples are cut and some not.
CONFIG = TokenizeConfig(vocab_size=200, max_source_tokens=50, max_target_tokens=13, num_shards=3)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ingested(tmp_path_factory.mktemp("ingested"))


@pytest.fixture(scope="module")
def tokenizer(ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    return train_tokenizer(ingested / "train.jsonl", tmp_path_factory.mktemp("spm") / "spm", CONFIG)


def expected_examples(path: Path, tokenizer: Tokenizer, config: TokenizeConfig) -> list[tuple[list, list]]:
    return [
        (
            tokenizer.encode(pair.text)[: config.max_source_tokens],
            [*tokenizer.encode(pair.summary), EOS_ID][: config.max_target_tokens],
        )
        for pair in read_pairs(path)
    ]


def shard_contents(path: str) -> list[tuple[list, list]]:
    examples = []
    for serialized in tf.data.TFRecordDataset(path):
        parsed = tf.io.parse_single_example(serialized, FEATURES)
        examples.append(
            (
                tf.sparse.to_dense(parsed["source_ids"]).numpy().tolist(),
                tf.sparse.to_dense(parsed["target_ids"]).numpy().tolist(),
            )
        )
    return examples


def written_train(directory: Path, ingested: Path, tokenizer: Tokenizer, num_shards: int) -> list[str]:
    write_split(
        ingested / "train.jsonl",
        directory,
        "train",
        tokenizer,
        dataclasses.replace(CONFIG, num_shards=num_shards),
    )
    return list_shards(directory, "train")


def batches_as_examples(dataset: tf.data.Dataset) -> list[tuple[tuple, tuple]]:
    """(source, target) per example, padding stripped (targets never contain PAD)."""
    examples = []
    for batch in dataset:
        for source, target in zip(batch["source_ids"].numpy(), batch["target_out"].numpy(), strict=True):
            examples.append(
                (tuple(int(i) for i in source if i != PAD_ID), tuple(int(i) for i in target if i != PAD_ID))
            )
    return examples


def test_shards_hold_exactly_the_encoded_ids_round_robin(
    ingested: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=3)

    assert [Path(name).name for name in files] == [
        f"train-0000{index}-of-00003.tfrecord" for index in range(3)
    ]
    shards = [shard_contents(name) for name in files]
    assert [len(shard) for shard in shards] == [54, 53, 53]
    expected = expected_examples(ingested / "train.jsonl", tokenizer, CONFIG)
    assert len(expected) == TRAIN_EXAMPLES
    for index, example in enumerate(expected):
        assert shards[index % 3][index // 3] == example, index
    targets = [target for _, target in expected]
    assert any(target[-1] == EOS_ID for target in targets) and any(target[-1] != EOS_ID for target in targets)


def test_an_example_serializes_to_the_same_bytes_whatever_the_process_hash_seed() -> None:
    """Protobuf map order follows Python's string hashing unless serialization is deterministic."""
    probe = (
        "import sys; from summarizer.records import make_example; "
        "sys.stdout.write(make_example([5, 6, 7], [8, 3]).hex())"
    )
    outputs = set()
    for seed in ("0", "1", "4"):  # 0 and 1 ordered the map differently before the fix
        environment = {**os.environ, "PYTHONHASHSEED": seed, "TF_CPP_MIN_LOG_LEVEL": "3"}
        result = subprocess.run(
            [sys.executable, "-c", probe],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        outputs.add(result.stdout)
    assert outputs == {make_example([5, 6, 7], [8, 3]).hex()}


def test_split_statistics_count_truncation_before_capping(
    ingested: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    stats = write_split(ingested / "train.jsonl", tmp_path, "train", tokenizer, CONFIG).to_dict()

    pairs = list(read_pairs(ingested / "train.jsonl"))
    sources = sorted(len(tokenizer.encode(pair.text)) for pair in pairs)
    targets = sorted(len(tokenizer.encode(pair.summary)) + 1 for pair in pairs)
    truncated_sources = sum(length > CONFIG.max_source_tokens for length in sources)
    truncated_targets = sum(length > CONFIG.max_target_tokens for length in targets)
    assert 0 < truncated_sources < TRAIN_EXAMPLES and 0 < truncated_targets < TRAIN_EXAMPLES
    assert stats["examples"] == TRAIN_EXAMPLES
    assert stats["truncated_sources"] == truncated_sources
    assert stats["truncated_targets"] == truncated_targets
    assert stats["truncated_targets_fraction"] == round(truncated_targets / TRAIN_EXAMPLES, 6)
    for name, lengths in (("source_tokens", sources), ("target_tokens", targets)):
        assert stats[name]["max"] == lengths[-1]
        for quantile in (50, 90, 99):
            assert stats[name][f"p{quantile}"] == lengths[math.ceil(quantile / 100 * TRAIN_EXAMPLES) - 1]


def test_split_statistics_by_hand() -> None:
    stats = SplitStats()
    config = TokenizeConfig(max_source_tokens=4, max_target_tokens=3)
    stats.add([5, UNK_ID, 6], [UNK_ID, 7], config)  # target length 3: fits
    stats.add([5, 6, 7, 8, 9], [7, 8, 9], config)  # source 5 > 4 and target 4 > 3: both cut
    stats.add([5, 6, 7, 8], [7], config)
    stats.add([5], [7, 8, 9, 10, 11], config)

    result = stats.to_dict()
    assert result["source_tokens"] == {"p50": 3, "p90": 5, "p99": 5, "max": 5}
    assert result["target_tokens"] == {"p50": 3, "p90": 6, "p99": 6, "max": 6}
    assert (result["truncated_sources"], result["truncated_targets"]) == (1, 2)
    assert result["truncated_targets_fraction"] == 0.5
    assert result["unknown_token_rate"] == round(2 / 24, 6)
    assert SplitStats().to_dict()["source_tokens"] == {"p50": 0, "p90": 0, "p99": 0, "max": 0}


def test_reader_pads_and_shifts_the_target(ingested: Path, tokenizer: Tokenizer, tmp_path: Path) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=3)
    batches = list(read_dataset(files, 32, shuffle=False))

    assert [int(batch["source_ids"].shape[0]) for batch in batches] == [32, 32, 32, 32, 32]
    for batch in batches:
        assert {tensor.dtype for tensor in batch.values()} == {tf.int32}
        source, target_in, target_out = (
            batch[name].numpy() for name in ("source_ids", "target_in", "target_out")
        )
        assert source.shape[1] == max(int(np.count_nonzero(row)) for row in source)
        assert target_in.shape == target_out.shape
        for row_in, row_out in zip(target_in, target_out, strict=True):
            length = int(np.count_nonzero(row_out))
            assert row_in[0] == BOS_ID
            assert row_in[1:length].tolist() == row_out[: length - 1].tolist()
            assert not row_in[length:].any() and not row_out[length:].any()
    expected = expected_examples(ingested / "train.jsonl", tokenizer, CONFIG)
    assert Counter(batches_as_examples(batches)) == Counter((tuple(s), tuple(t)) for s, t in expected)


@pytest.mark.parametrize("num_files", [4, 3, 1], ids=["files-per-rank", "uneven-files", "one-file"])
def test_two_ranks_partition_the_examples(
    num_files: int, ingested: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=num_files)

    ranks = [
        Counter(batches_as_examples(read_dataset(files, 16, shuffle=True, num_shards=2, shard_index=index)))
        for index in (0, 1)
    ]
    everything = Counter(batches_as_examples(read_dataset(files, 16, shuffle=False)))
    assert len(everything) == TRAIN_EXAMPLES  # every example is distinct, so overlap would show
    assert not ranks[0].keys() & ranks[1].keys()
    assert ranks[0] + ranks[1] == everything
    assert sorted(sum(rank.values()) for rank in ranks) == [80, 80]


def test_shuffle_is_seeded_and_repeat_and_drop_remainder_work(
    ingested: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=2)
    in_order = batches_as_examples(read_dataset(files, 50, shuffle=False))
    first = batches_as_examples(read_dataset(files, 50, shuffle=True, seed=7))
    assert first == batches_as_examples(read_dataset(files, 50, shuffle=True, seed=7))
    assert first != in_order and sorted(first) == sorted(in_order)

    dropped = list(read_dataset(files, 50, shuffle=False, drop_remainder=True))
    assert [int(batch["source_ids"].shape[0]) for batch in dropped] == [50, 50, 50]
    repeated = list(read_dataset(files, 50, shuffle=True, seed=1, repeat=True, drop_remainder=True).take(7))
    assert len(repeated) == 7


def test_bucketing_batches_similar_lengths_and_keeps_every_example(
    ingested: Path, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=2)
    dataset = read_dataset(files, 16, shuffle=True, seed=3, bucket_boundaries=[48])
    batches = list(dataset)

    for batch in batches:
        lengths = np.count_nonzero(batch["source_ids"].numpy(), axis=1)
        assert (lengths < 48).all() or (lengths >= 48).all()
    assert Counter(batches_as_examples(batches)) == Counter(
        batches_as_examples(read_dataset(files, 16, shuffle=False))
    )


def test_token_buckets_keep_a_batch_within_its_budget_of_source_tokens() -> None:
    buckets = token_buckets(budget=100, max_length=40, width=8)
    assert buckets.boundaries == (9, 17, 25, 33)  # longest sources 8, 16, 24, 32 and 40
    assert buckets.batch_sizes == (12, 6, 4, 3, 2)
    assert [buckets.index(length) for length in (1, 8, 9, 16, 17, 33, 40, 55)] == [0, 0, 1, 1, 2, 4, 4, 4]
    assert token_buckets(40, 40, 64).boundaries == () and token_buckets(40, 40, 64).batch_sizes == (1,)
    with pytest.raises(ValueError, match="max_length 40, budget 30"):
        token_buckets(30, 40, 8)
    lengths = [(3, 1)] * 12 + [(12, 5)] * 7 + [(40, 9)] * 5
    assert full_batches(lengths, buckets) == 1 + 1 + 2  # 12 // 12, 7 // 6, 5 // 2
    assert full_batches([(3, 1)] * 7, None, batch_size=3) == 2


def test_target_buckets_split_each_source_bucket_within_a_budget_of_target_tokens() -> None:
    buckets = token_buckets(budget=100, max_length=40, width=8, max_target_length=10, target_width=5)
    assert buckets.boundaries == (9, 17, 25, 33) and buckets.target_boundaries == (6,)
    # at most 100 source tokens and 100 * 10 // 40 = 25 target tokens (targets up to 5, then up to 10)
    assert buckets.batch_sizes == (5, 2, 5, 2, 4, 2, 3, 2, 2, 2)
    assert [buckets.index(*pair) for pair in ((8, 5), (8, 6), (9, 1), (40, 10), (55, 30))] == [0, 1, 2, 9, 9]
    assert token_buckets(100, 40, 8, max_target_length=10, target_width=10).target_boundaries == ()
    lengths = [(3, 2)] * 11 + [(3, 9)] * 4 + [(40, 9)] * 3
    assert full_batches(lengths, buckets) == 11 // 5 + 4 // 2 + 3 // 2
    with pytest.raises(ValueError, match="batch sizes >= 1"):
        Buckets(boundaries=(9,), batch_sizes=(1, 2), target_boundaries=(3,))


@pytest.mark.parametrize("target_width", [0, 3], ids=["source-buckets", "source-and-target-buckets"])
def test_token_batches_hold_one_bucket_within_budget_and_their_count_is_known_before_reading(
    ingested: Path, tokenizer: Tokenizer, tmp_path: Path, target_width: int
) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=2)
    shards = [shard_contents(path) for path in files]
    assert example_lengths(files) == [
        (len(source), len(target)) for shard in shards for source, target in shard
    ]
    for rank in (0, 1):
        assert example_lengths(files, num_shards=2, shard_index=rank) == [
            (len(source), len(target)) for source, target in shards[rank]
        ]
    lengths = example_lengths(files)
    buckets = token_buckets(150, CONFIG.max_source_tokens, 4, CONFIG.max_target_tokens, target_width)
    assert bool(buckets.target_boundaries) == (target_width > 0)
    target_budget = 150 * CONFIG.max_target_tokens // CONFIG.max_source_tokens if target_width else 10**9
    counts = set()
    for seed in (1, 2, 3):
        batches = list(read_dataset(files, 1, shuffle=True, seed=seed, drop_remainder=True, buckets=buckets))
        counts.add(len(batches))
        for batch in batches:
            source, target = batch["source_ids"].numpy(), batch["target_out"].numpy()
            assert source.size <= 150 and target.size <= target_budget
            pairs = zip(np.count_nonzero(source, axis=1), np.count_nonzero(target, axis=1), strict=True)
            assert (
                len({buckets.index(int(length), int(target_length)) for length, target_length in pairs}) == 1
            )
    assert counts == {full_batches(lengths, buckets)}  # whatever the shuffle
    everything = list(read_dataset(files, 1, shuffle=True, seed=1, buckets=buckets))  # remainders too
    assert Counter(batches_as_examples(everything)) == Counter(
        batches_as_examples(read_dataset(files, 16, shuffle=False))
    )


def test_reader_rejects_bad_arguments(ingested: Path, tokenizer: Tokenizer, tmp_path: Path) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=2)
    with pytest.raises(ValueError, match=r"shard_index must be in 0\.\.1, got 2"):
        read_dataset(files, 8, shuffle=False, num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="no TFRecord files"):
        read_dataset([], 8, shuffle=False)


def test_list_shards_is_sorted_and_complete(ingested: Path, tokenizer: Tokenizer, tmp_path: Path) -> None:
    files = written_train(tmp_path, ingested, tokenizer, num_shards=3)
    assert files == sorted(files) and len(files) == 3
    with pytest.raises(FileNotFoundError, match=r"no val shards .* run the tokenize stage"):
        list_shards(tmp_path, "val")
    Path(files[1]).unlink()
    with pytest.raises(FileNotFoundError, match="incomplete train shards"):
        list_shards(tmp_path, "train")


def test_run_tokenize_writes_model_shards_and_numeric_stats(ingested: Path, tmp_path: Path) -> None:
    stats = tokenize_splits(ingested, tmp_path, CONFIG)

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["spm.model", "spm.vocab"]
        + [
            f"{split}-0000{index}-of-00003.tfrecord"
            for split in ("train", "val", "test")
            for index in range(3)
        ]
    )
    assert (stats["train"]["examples"], stats["val"]["examples"], stats["test"]["examples"]) == (160, 30, 30)
    assert (stats["vocab_size"], stats["num_shards"]) == (200, 3)
    assert stats["encode_megabytes_per_second"] > 0 and stats["input_megabytes"] > 0.05

    def leaves(value):
        return (
            [leaf for item in value.values() for leaf in leaves(item)] if isinstance(value, dict) else [value]
        )

    assert all(isinstance(leaf, int | float) and not isinstance(leaf, bool) for leaf in leaves(stats))
    encoded_val = shard_contents(list_shards(tmp_path, "val")[0])
    assert encoded_val[0][0] == Tokenizer.load(tmp_path / "spm.model").encode(make_pairs(220)[160][0])[:50]


def test_run_tokenize_names_a_missing_split_before_any_work(tmp_path: Path) -> None:
    ingested = write_ingested(tmp_path / "in")
    (ingested / "val.jsonl").unlink()
    (tmp_path / "out").mkdir()
    with pytest.raises(FileNotFoundError, match=r"input split 'val' not found: .*in/val\.jsonl"):
        tokenize_splits(ingested, tmp_path / "out", CONFIG)
    assert not any((tmp_path / "out").iterdir())


def test_run_tokenize_names_a_malformed_record(tmp_path: Path) -> None:
    ingested = write_ingested(tmp_path / "in")
    with (ingested / "test.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"text": "a package", "summary": 3}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl: line 31: field 'summary' must be a string, got 3"):
        tokenize_splits(ingested, tmp_path, CONFIG)
