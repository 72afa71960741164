"""The ingested splits contract: the fields written, pairs read back, errors naming file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from summarizer.ingested import FIELDS, SPLITS, read_pairs, split_paths, write_splits


def test_written_splits_read_back_as_pairs_with_their_ids(tmp_path: Path) -> None:
    rows = [
        ("train", {"id": "7", "text": "a text", "summary": "a summary", "group": "g1", "extra": "dropped"}),
        ("test", {"id": "9", "text": "another", "summary": "other", "group": "g2"}),
    ]
    write_splits(tmp_path, rows)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(f"{split}.jsonl" for split in SPLITS)
    (line,) = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert tuple(json.loads(line)) == FIELDS
    assert [
        (pair.line, pair.id, pair.text, pair.summary) for pair in read_pairs(tmp_path / "test.jsonl")
    ] == [(1, "9", "another", "other")]
    assert (tmp_path / "val.jsonl").read_text(encoding="utf-8") == ""
    assert set(split_paths(tmp_path)) == set(SPLITS)


def test_a_missing_split_is_named(tmp_path: Path) -> None:
    write_splits(tmp_path, [])
    (tmp_path / "val.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=r"input split 'val' not found: .*val\.jsonl"):
        split_paths(tmp_path)


def test_a_record_without_an_id_is_named_by_its_line(tmp_path: Path) -> None:
    path = tmp_path / "test.jsonl"
    path.write_text('{"text": "t", "summary": "s"}\n', encoding="utf-8")
    assert [pair.id for pair in read_pairs(path)] == ["line-1"]
