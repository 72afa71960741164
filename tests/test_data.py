"""Ingest library: bad input, drops, dedupe, grouping and the leak-free split."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from summarizer.config import IngestConfig, SplitConfig
from summarizer.data import (
    DROP_REASONS,
    clean_records,
    count_leaks,
    group_records,
    run_ingest,
    sample_records,
    split_of,
)
from summarizer.readers import IngestError, SourceRecord
from tests.conftest import make_pairs, write_csv, write_jsonl
from tests.helpers import write_pinned

BOILERPLATE = "This package contains the development files needed to build programs that use the library."


def ingest_config(path: Path | str = "", **overrides: object) -> IngestConfig:
    values = {"source": "file", "path": str(path), "min_text_words": 3, "min_summary_words": 1}
    values.update(overrides)
    return IngestConfig(**values)


def read_split(directory: Path, split: str) -> list[dict[str, str]]:
    with (directory / f"{split}.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_missing_file_fails_before_any_output_is_created(tmp_path: Path) -> None:
    config = ingest_config(tmp_path / "nowhere.csv")
    with pytest.raises(IngestError, match=r"nowhere\.csv: file not found"):
        run_ingest(config, tmp_path / "out/raw", tmp_path / "out/ingested", tmp_path / "out/ingest.json")
    assert not (tmp_path / "out").exists()


def test_empty_corpus_after_filtering_gives_the_drop_counts(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "short.csv", [("too short", "a summary"), ("", "x")])
    with pytest.raises(IngestError, match=r"no records left after filtering 2 input records") as caught:
        run_ingest(
            ingest_config(path, min_text_words=5),
            tmp_path / "raw",
            tmp_path / "ingested",
            tmp_path / "s.json",
        )
    assert "empty_text 1" in str(caught.value) and "short_text 1" in str(caught.value)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "ingested").exists()
    assert not (tmp_path / "s.json").exists()


# Cleaning ---------------------------------------------------------------------------------------------------


def test_each_drop_reason_is_counted() -> None:
    config = ingest_config(min_text_words=3, max_text_words=5, min_summary_words=2, max_summary_words=3)
    pairs = [
        ("one two three", "a summary"),  # kept
        ("  \n ", "a summary"),  # empty_text
        ("one two three", " "),  # empty_summary
        ("one two", "a summary"),  # short_text
        ("one two three four five six", "a summary"),  # long_text
        ("one two three", "single"),  # short_summary
        ("one two three", "a b c d"),  # long_summary
        ("four five six", "two words"),  # kept
    ]
    records = [SourceRecord(str(index), text, summary) for index, (text, summary) in enumerate(pairs)]

    result = clean_records(records, config)

    assert result.input_records == 8
    assert result.dropped == dict.fromkeys(DROP_REASONS, 1)
    assert [record.id for record in result.records] == ["0", "7"]


def test_exact_duplicate_texts_after_normalization_are_removed_and_counted() -> None:
    records = [
        SourceRecord("a", "one two  three", "first"),
        SourceRecord("b", "one two three", "second"),
        SourceRecord("c", "one two three!", "third"),
        SourceRecord("d", "one\u00a0two three", "fourth"),
    ]

    result = clean_records(records, ingest_config())

    assert result.duplicates == 2
    assert [(record.id, record.text, record.summary) for record in result.records] == [
        ("a", "one two three", "first"),
        ("c", "one two three!", "third"),
    ]


# Grouping and splitting -------------------------------------------------------------------------------------


def random_words(rng: random.Random, count: int) -> str:
    return " ".join(
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 8))) for _ in range(count)
    )


def make_families(count: int, seed: int = 0) -> dict[str, list[SourceRecord]]:
    """Debian-like near-duplicate families, each linked by one key type only, plus shared boilerplate.

    foo: the intro; foo-dev: the intro with its last sentence changed plus a boilerplate paragraph (same
    first words); foo-doc: its own first paragraph, then the intro (same paragraph); libfoo1: unrelated
    words, related only by the package name.
    """
    rng = random.Random(seed)
    families = {}
    for index in range(count):
        name = f"{random_words(rng, 1)}{index}"
        first, second, third = (random_words(rng, 10) for _ in range(3))
        intro = f"{name} {first}. {second}. {third}."
        changed = f"{name} {first}. {second}. {random_words(rng, 10)}."
        families[name] = [
            SourceRecord(name, intro, f"{name} tool", package=name),
            SourceRecord(
                f"{name}-dev", f"{changed}\n{BOILERPLATE}", f"{name} headers", package=f"{name}-dev"
            ),
            SourceRecord(f"{name}-doc", f"{random_words(rng, 14)}\n{intro}", "docs", package=f"{name}-doc"),
            SourceRecord(f"lib{name}1", random_words(rng, 25), f"{name} library", package=f"lib{name}1"),
        ]
    return families


def test_near_duplicate_families_form_one_group_each_and_boilerplate_does_not_join_them() -> None:
    families = make_families(30)
    records = [record for family in families.values() for record in family]

    grouping = group_records(records, group_words=12, max_key_records=20)

    group_of = dict(zip((record.id for record in records), grouping.group_ids, strict=True))
    for name, family in families.items():
        assert {group_of[record.id] for record in family} == {name}
    assert grouping.num_groups == 30 and grouping.largest_group == 4
    assert grouping.boilerplate_keys == 1  # the development-files paragraph, held by 30 records


def test_a_key_under_the_cap_joins_everything_that_shares_it() -> None:
    records = [record for family in make_families(30).values() for record in family]

    grouping = group_records(records, group_words=12, max_key_records=30)

    assert grouping.num_groups == 1 and grouping.largest_group == 120 and grouping.boilerplate_keys == 0


def test_group_column_values_always_group_whatever_their_count() -> None:
    rng = random.Random(3)
    records = [SourceRecord(str(index), random_words(rng, 20), "s", group_value="doc") for index in range(6)]
    records.append(SourceRecord("other", random_words(rng, 20), "s", group_value="elsewhere"))

    grouping = group_records(records, group_words=12, max_key_records=2)

    assert grouping.group_ids == ["0"] * 6 + ["other"]


def test_split_of_is_deterministic_salted_and_roughly_proportional() -> None:
    split = SplitConfig(val=0.1, test=0.2)
    ids = [f"group-{index}" for index in range(20_000)]

    first = [split_of(group_id, 13, split) for group_id in ids]

    assert first == [split_of(group_id, 13, split) for group_id in ids]
    assert (
        abs(first.count("val") / len(ids) - 0.1) < 0.01 and abs(first.count("test") / len(ids) - 0.2) < 0.01
    )
    salted = [split_of(group_id, 14, split) for group_id in ids]
    assert sum(a != b for a, b in zip(first, salted, strict=True)) > 5000


def test_count_leaks_counts_val_and_test_records_whose_first_20_words_appear_in_train() -> None:
    lead = " ".join(f"w{index}" for index in range(20))
    records = [
        SourceRecord("1", f"{lead} train ending", "s"),
        SourceRecord("2", f"{lead.upper()}, with another ending", "s"),  # same key after lowercasing
        SourceRecord("3", f"w0 {lead} shifted", "s"),
        SourceRecord("4", f"{lead} test ending", "s"),
    ]

    assert count_leaks(records, ["train", "val", "val", "test"]) == {"val": 1, "test": 1}


# The whole stage --------------------------------------------------------------------------------------------


def write_family_corpus(path: Path, families: dict[str, list[SourceRecord]]) -> Path:
    rows = [
        {"text": record.text, "summary": record.summary}
        for family in families.values()
        for record in family[:3]
    ]
    return write_jsonl(path, rows)


def run_families(tmp_path: Path, name: str, seed: int = 13) -> tuple[Path, dict]:
    corpus = write_family_corpus(tmp_path / "families.jsonl", make_families(40))
    config = ingest_config(corpus, max_group_key_records=20, split=SplitConfig(val=0.2, test=0.2), seed=seed)
    out_dir = tmp_path / name / "ingested"
    stats = run_ingest(config, tmp_path / name / "raw", out_dir, tmp_path / name / "ingest.json")
    return out_dir, stats


def test_no_family_crosses_splits_and_the_split_is_reproducible(tmp_path: Path) -> None:
    out_dir, stats = run_families(tmp_path, "first")

    split_of_family: dict[int, set[str]] = defaultdict(set)
    split_of_group: dict[str, set[str]] = defaultdict(set)
    for split in ("train", "val", "test"):
        for record in read_split(out_dir, split):
            split_of_family[(int(record["id"]) - 1) // 3].add(split)  # 3 rows a family, in order
            split_of_group[record["group"]].add(split)
    assert len(split_of_family) == 40 and all(len(splits) == 1 for splits in split_of_family.values())
    assert len(split_of_group) == 40 and all(len(splits) == 1 for splits in split_of_group.values())
    assert all(stats["splits"][split] > 0 for split in ("train", "val", "test"))
    assert stats["groups"] == 40 and stats["largest_group"] == 3 and stats["boilerplate_keys"] == 1
    assert stats["leakage_first_20_words"] == {"val": 0, "test": 0}

    again_dir, again_stats = run_families(tmp_path, "second")
    for split in ("train", "val", "test"):
        assert (again_dir / f"{split}.jsonl").read_bytes() == (out_dir / f"{split}.jsonl").read_bytes()
    resalted_dir, _ = run_families(tmp_path, "resalted", seed=14)
    assert (resalted_dir / "train.jsonl").read_bytes() != (out_dir / "train.jsonl").read_bytes()


def test_run_ingest_writes_splits_snapshot_provenance_and_stats(tmp_path: Path) -> None:
    pairs = make_pairs(120)
    pairs += [pairs[0], ("too short", "x y"), ("", "x y")]
    corpus = write_csv(tmp_path / "corpus.csv", pairs)
    config = ingest_config(corpus, min_text_words=5, split=SplitConfig(val=0.2, test=0.2))

    stats = run_ingest(config, tmp_path / "raw", tmp_path / "ingested", tmp_path / "metrics/ingest.json")

    assert stats == json.loads((tmp_path / "metrics/ingest.json").read_text(encoding="utf-8"))
    assert stats["input_records"] == 123 and stats["records"] == 120 and stats["duplicates_removed"] == 1
    assert stats["dropped"] == {**dict.fromkeys(DROP_REASONS, 0), "empty_text": 1, "short_text": 1}
    assert stats["dropped_total"] == 2
    written = {split: read_split(tmp_path / "ingested", split) for split in ("train", "val", "test")}
    assert {split: len(rows) for split, rows in written.items()} == stats["splits"]
    assert sum(stats["splits"].values()) == 120 and stats["groups"] == 120 and stats["largest_group"] == 1
    first = next(row for rows in written.values() for row in rows if row["id"] == "1")
    assert first == {"id": "1", "text": pairs[0][0], "summary": pairs[0][1], "group": "1"}
    expected_sha = hashlib.sha256(corpus.read_bytes()).hexdigest()
    source = json.loads((tmp_path / "raw/SOURCE.json").read_text(encoding="utf-8"))
    assert source == {
        "source": "file",
        "path": str(corpus),
        "format": "csv",
        "delimiter": ",",
        "sha256": expected_sha,
        "bytes": corpus.stat().st_size,
        "records": 123,
    }
    assert stats["raw"] == {"sha256": expected_sha, "records": 123}
    text_words = sorted(len(text.split()) for text, _ in pairs[:120])
    assert stats["text_words"]["p50"] == text_words[59] and stats["summary_words"]["p99"] <= 8


def test_a_failing_run_leaves_the_previous_outputs_untouched(tmp_path: Path) -> None:
    corpus = write_csv(tmp_path / "corpus.csv", make_pairs(60))
    config = ingest_config(corpus, split=SplitConfig(val=0.2, test=0.2))
    outputs = (tmp_path / "data/raw", tmp_path / "data/ingested", tmp_path / "metrics/ingest.json")
    run_ingest(config, *outputs)
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path != corpus}

    with corpus.open("ab") as handle:
        handle.write(b"caf\xe9 text goes here,summary\n")  # fails only after the good rows were processed
    with pytest.raises(IngestError, match=r"corpus\.csv: line 62: not valid UTF-8"):
        run_ingest(config, *outputs)

    after = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file() and path != corpus}
    assert after == before
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["ingested", "raw"]


# The pinned Debian snapshot and sampling -------------------------------------------------------------------


def debian_stanzas(count: int) -> str:
    """Translation-en stanzas of the synthetic pairs, one package each (its name: the text's first word)."""
    return "".join(
        f"Package: {text.split()[0]}\nDescription-en: {summary}\n {text}\n\n"
        for text, summary in make_pairs(count)
    )


def test_the_default_source_reads_the_pinned_snapshot_and_records_its_provenance(tmp_path: Path) -> None:
    pinned = write_pinned(tmp_path / "pinned", debian_stanzas(90))
    manifest = json.loads((pinned / "SNAPSHOT.json").read_text())
    config = IngestConfig(split=SplitConfig(val=0.2, test=0.2))  # source: debian, the default

    runs = [
        run_ingest(
            config, tmp_path / name / "raw", tmp_path / name / "ingested", tmp_path / name / "s.json", pinned
        )
        for name in ("first", "second")
    ]

    assert runs[0] == runs[1] and runs[0]["input_records"] == 90
    for name in ("raw/SOURCE.json", "raw/Translation-en.txt", "ingested/train.jsonl", "ingested/test.jsonl"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name
    assert (tmp_path / "first/raw/Translation-en.txt").read_text() == debian_stanzas(90)
    source = json.loads((tmp_path / "first/raw/SOURCE.json").read_text())
    assert source == {
        "source": "debian",
        "pinned_snapshot": str(pinned / "Translation-en.txt.xz"),
        "xz_sha256": manifest["xz_sha256"],
        "sha256": manifest["sha256"],
        "bytes": manifest["bytes"],
        "fetched_at": "2026-11-30T03:07:08+00:00",
        "suites": ["bookworm"],
        "apt_releases": manifest["apt_releases"],
        "apt_index_files": manifest["apt_index_files"],
        "snapshot": "Translation-en.txt",
        "records": 90,
        "packages": 90,
    }


def test_a_missing_pinned_snapshot_fails_before_any_output(tmp_path: Path) -> None:
    with pytest.raises(IngestError, match=r"pinned Debian snapshot is missing"):
        run_ingest(IngestConfig(), tmp_path / "raw", tmp_path / "ingested", tmp_path / "s.json", tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_sample_records_is_seeded_uniform_and_keeps_input_order() -> None:
    records = [SourceRecord(str(index), f"text {index}", "summary") for index in range(1000)]

    sample, total = sample_records(iter(records), 100, seed=13)

    assert total == 1000 and len(sample) == 100
    assert [int(record.id) for record in sample] == sorted(int(record.id) for record in sample)
    assert sample == sample_records(iter(records), 100, seed=13)[0]
    assert sample != sample_records(iter(records), 100, seed=14)[0]
    assert 300 < sum(int(record.id) for record in sample) / 100 < 700  # spread over the whole input
    assert sample_records(iter(records[:50]), 100, seed=13) == (records[:50], 50)


def test_max_records_ingests_a_sample_and_says_so_in_the_stats(tmp_path: Path) -> None:
    corpus = write_csv(tmp_path / "corpus.csv", make_pairs(400))
    config = ingest_config(corpus, max_records=120, split=SplitConfig(val=0.2, test=0.2))

    stats = run_ingest(config, tmp_path / "raw", tmp_path / "ingested", tmp_path / "ingest.json")

    assert stats["input_records"] == 120 and stats["sample"] == {"max_records": 120, "from_records": 400}
    assert json.loads((tmp_path / "raw/SOURCE.json").read_text())["records"] == 400
