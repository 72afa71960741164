"""The ingest stage's work: read a corpus, normalize, filter, dedupe, group near-duplicates, split by a hash.

Near-duplicates (foo, foo-dev, libfoo1 repeating one description with a sentence changed) are joined by
union-find over several keys, and the split is a hash of the resulting group, so one family never lands in
two splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summarizer import debian, sources
from summarizer.config import IngestConfig, SplitConfig
from summarizer.ingested import SPLITS, write_splits
from summarizer.io import atomic_directory, write_json
from summarizer.readers import IngestError, SourceRecord
from summarizer.stats import length_percentiles
from summarizer.text import normalize_summary, normalize_text

LOG = logging.getLogger(__name__)

DROP_REASONS = ("empty_text", "empty_summary", "short_text", "long_text", "short_summary", "long_summary")
LEAKAGE_WORDS = 20
_KEY_WORD = re.compile(r"\w+")


@dataclass
class CleanResult:
    records: list[SourceRecord]
    input_records: int
    dropped: dict[str, int]
    duplicates: int


@dataclass(frozen=True)
class Grouping:
    group_ids: list[str]  # one per record: the id of the group's first record
    num_groups: int
    largest_group: int
    boilerplate_keys: int  # keys shared by more than max_group_key_records records, not used


# Keys, cleaning, grouping, splitting -----------------------------------------------------------------------


def word_key(text: str, num_words: int) -> str:
    """The first ``num_words`` words, lowercased and stripped of punctuation."""
    return " ".join(_KEY_WORD.findall(text.lower())[:num_words])


def drop_reason(text: str, summary: str, config: IngestConfig) -> str | None:
    """Why a normalized pair is dropped (one of DROP_REASONS), or None to keep it."""
    if not text:
        return "empty_text"
    if not summary:
        return "empty_summary"
    text_words, summary_words = len(text.split()), len(summary.split())
    if text_words < config.min_text_words:
        return "short_text"
    if text_words > config.max_text_words:
        return "long_text"
    if summary_words < config.min_summary_words:
        return "short_summary"
    if summary_words > config.max_summary_words:
        return "long_summary"
    return None


def clean_records(records: Iterable[SourceRecord], config: IngestConfig) -> CleanResult:
    """Normalize, drop (counted by reason) and remove exact duplicate texts, keeping the first."""
    result = CleanResult([], 0, dict.fromkeys(DROP_REASONS, 0), 0)
    seen_texts: set[str] = set()
    for record in records:
        result.input_records += 1
        text, summary = normalize_text(record.text), normalize_summary(record.summary)
        reason = drop_reason(text, summary, config)
        if reason is not None:
            result.dropped[reason] += 1
        elif text in seen_texts:
            result.duplicates += 1
        else:
            seen_texts.add(text)
            result.records.append(dataclasses.replace(record, text=text, summary=summary))
    return result


def grouping_keys(record: SourceRecord, group_words: int) -> set[str]:
    """Keys that make two records near-copies: the text's first words, each paragraph's, the package stem.

    The ``lead:`` key (the text's first words) always groups, however many records share it: texts that open
    with the same words are the near-copies a split must keep together. The other keys are capped, since a
    paragraph or stem shared by many records is boilerplate that would chain unrelated families together.
    """
    keys = set()
    if lead := word_key(record.text, group_words):
        keys.add(f"lead:{lead}")
    for paragraph in record.text.split("\n"):
        words = _KEY_WORD.findall(paragraph.lower())
        if len(words) >= group_words:
            keys.add(f"words:{' '.join(words[:group_words])}")
    if record.package and (stem := debian.package_stem(record.package)):
        keys.add(f"package:{stem}")
    return keys


class _UnionFind:
    def __init__(self, size: int) -> None:
        self.parents = list(range(size))

    def find(self, item: int) -> int:
        while self.parents[item] != item:
            self.parents[item] = self.parents[self.parents[item]]
            item = self.parents[item]
        return item

    def union(self, first: int, second: int) -> None:
        first_root, second_root = self.find(first), self.find(second)
        if first_root != second_root:
            self.parents[max(first_root, second_root)] = min(first_root, second_root)


def group_records(records: list[SourceRecord], group_words: int, max_key_records: int) -> Grouping:
    """Join records sharing a key into components; a capped key held by over ``max_key_records`` is ignored.

    Lead keys and group_column values always group (see :func:`grouping_keys`), whatever their count.
    """
    keys_per_record = [grouping_keys(record, group_words) for record in records]
    key_counts = Counter(key for keys in keys_per_record for key in keys)
    forest = _UnionFind(len(records))
    first_holder: dict[str, int] = {}
    for index, (record, keys) in enumerate(zip(records, keys_per_record, strict=True)):
        usable = {key for key in keys if key.startswith("lead:") or key_counts[key] <= max_key_records}
        if record.group_value:
            usable.add(f"column:{record.group_value}")
        for key in usable:
            forest.union(index, first_holder.setdefault(key, index))
    # Roots are the smallest index of each component (union keeps the minimum), i.e. its first record.
    roots = [forest.find(index) for index in range(len(records))]
    sizes = Counter(roots)
    return Grouping(
        group_ids=[records[root].id for root in roots],
        num_groups=len(sizes),
        largest_group=max(sizes.values(), default=0),
        boilerplate_keys=sum(
            1 for key, count in key_counts.items() if count > max_key_records and not key.startswith("lead:")
        ),
    )


def split_of(group_id: str, seed: int, split: SplitConfig) -> str:
    """The split of a whole group: a salted hash mapped to [0, 1)."""
    digest = hashlib.sha256(f"{seed}\0{group_id}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    if fraction < split.val:
        return "val"
    if fraction < split.val + split.test:
        return "test"
    return "train"


def count_leaks(
    records: list[SourceRecord], splits: list[str], num_words: int = LEAKAGE_WORDS
) -> dict[str, int]:
    """How many val/test records share their first ``num_words`` words with a train record."""
    keys = [word_key(record.text, num_words) for record in records]
    train_keys = {key for key, split in zip(keys, splits, strict=True) if split == "train"}
    return {
        name: sum(1 for key, split in zip(keys, splits, strict=True) if split == name and key in train_keys)
        for name in ("val", "test")
    }


# The stage ------------------------------------------------------------------------------------------------


def run_ingest(
    config: IngestConfig,
    raw_dir: str | Path,
    out_dir: str | Path,
    stats_path: str | Path,
    debian_snapshot: str | Path = sources.DEBIAN_SNAPSHOT_DIR,
) -> dict:
    """Read the configured corpus and write the raw snapshot, the three splits and the stats, atomically.

    Args:
        debian_snapshot: the directory of the pinned Debian snapshot, read when ``config.source`` is debian.

    Returns:
        The stats written to ``stats_path``.

    Raises:
        IngestError: bad input (named by file, line and field), apt missing or failing, or nothing left.
    """
    debian_snapshot = Path(debian_snapshot)
    sources.check_source_ready(config, debian_snapshot)
    with atomic_directory(raw_dir) as raw_staging, atomic_directory(out_dir) as out_staging:
        source_info, records = sources.open_source(config, raw_staging, debian_snapshot)
        sample = None
        if config.max_records:
            records, total = sample_records(records, config.max_records, config.seed)
            sample = {"max_records": config.max_records, "from_records": total}
            LOG.info("sampled %d of %d records (ingest.max_records)", len(records), total)
        cleaned = clean_records(records, config)
        source_info.setdefault("records", sample["from_records"] if sample else cleaned.input_records)
        write_json(raw_staging / "SOURCE.json", source_info)
        LOG.info(
            "filtered: kept %d of %d records (dropped %s; %d exact duplicate texts)",
            len(cleaned.records),
            cleaned.input_records,
            _format_counts(cleaned.dropped),
            cleaned.duplicates,
        )
        _require_records(cleaned)
        grouping = group_records(cleaned.records, config.group_words, config.max_group_key_records)
        splits = [split_of(group_id, config.seed, config.split) for group_id in grouping.group_ids]
        split_counts = _split_counts(splits, grouping)
        LOG.info(
            "split: %s (%d groups, largest %d records)",
            _format_counts(split_counts),
            grouping.num_groups,
            grouping.largest_group,
        )
        _write_splits(out_staging, cleaned.records, grouping.group_ids, splits)
        stats = _stats(source_info, cleaned, grouping, splits, split_counts)
        if sample:
            stats["sample"] = sample
        write_json(stats_path, stats)
    LOG.info("written: %s/{train,val,test}.jsonl, %s/SOURCE.json, %s", out_dir, raw_dir, stats_path)
    return stats


def sample_records(
    records: Iterable[SourceRecord], max_records: int, seed: int
) -> tuple[list[SourceRecord], int]:
    """A seeded uniform sample of at most ``max_records`` records, in input order, and how many were read.

    Reservoir sampling: one pass, memory bounded by the sample, whatever the file size.
    """
    generator = random.Random(seed)
    reservoir: list[tuple[int, SourceRecord]] = []
    total = 0
    for index, record in enumerate(records):
        total += 1
        if len(reservoir) < max_records:
            reservoir.append((index, record))
        elif (slot := generator.randrange(index + 1)) < max_records:
            reservoir[slot] = (index, record)
    return [record for _, record in sorted(reservoir, key=lambda item: item[0])], total


def _require_records(cleaned: CleanResult) -> None:
    if not cleaned.records:
        raise IngestError(
            f"no records left after filtering {cleaned.input_records} input records (dropped: "
            f"{_format_counts(cleaned.dropped)}; exact duplicates: {cleaned.duplicates}); "
            "check the column names and the ingest.min_/max_ word limits"
        )


def _split_counts(splits: list[str], grouping: Grouping) -> dict[str, int]:
    counts = {name: splits.count(name) for name in SPLITS}
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise IngestError(
            f"split(s) {', '.join(empty)} would be empty: {len(splits)} records fall into only "
            f"{grouping.num_groups} groups; use more data or larger ingest.split fractions"
        )
    return counts


def _write_splits(
    out_dir: Path, records: list[SourceRecord], group_ids: list[str], splits: list[str]
) -> None:
    write_splits(
        out_dir,
        (
            (split, {"id": record.id, "text": record.text, "summary": record.summary, "group": group_id})
            for record, group_id, split in zip(records, group_ids, splits, strict=True)
        ),
    )


def _stats(
    source_info: dict[str, Any],
    cleaned: CleanResult,
    grouping: Grouping,
    splits: list[str],
    split_counts: dict[str, int],
) -> dict[str, Any]:
    return {
        "input_records": cleaned.input_records,
        "dropped": dict(cleaned.dropped),
        "dropped_total": sum(cleaned.dropped.values()),
        "duplicates_removed": cleaned.duplicates,
        "records": len(cleaned.records),
        "splits": split_counts,
        "groups": grouping.num_groups,
        "largest_group": grouping.largest_group,
        "boilerplate_keys": grouping.boilerplate_keys,
        "leakage_first_20_words": count_leaks(cleaned.records, splits),
        "text_words": length_percentiles(len(record.text.split()) for record in cleaned.records),
        "summary_words": length_percentiles(len(record.summary.split()) for record in cleaned.records),
        "raw": {"sha256": source_info["sha256"], "records": source_info["records"]},
    }


def _format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())
