"""Atomic outputs and the one JSONL parser: errors name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from summarizer.io import atomic_directory, jsonl_text, read_jsonl, write_json, write_metrics


def test_jsonl_round_trip_keeps_line_numbers_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(jsonl_text([{"a": 1}]) + "\n" + jsonl_text([{"b": "ä"}]), encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": "ä"})]
    assert list(read_jsonl(path, lines={3})) == [(3, {"b": "ä"})]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"a": 1}\n{"a": \n', r"rows\.jsonl: line 2: malformed JSON: Expecting value"),
        (b'{"a": 1}\n[1, 2]\n', r"rows\.jsonl: line 2: expected a JSON object, got an array"),
        (b'{"a": "caf\xe9"}\n', r"rows\.jsonl: line 1: not valid UTF-8 \(byte 0xe9 at column 11\)"),
    ],
)
def test_read_jsonl_errors_name_file_line_and_problem(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        list(read_jsonl(path))


def test_a_failed_atomic_directory_leaves_the_previous_one(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        write_json(staging / "new.json", {"x": 1})
        raise RuntimeError("the work failed half-way")
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
    assert [path.name for path in target.iterdir()] == ["old.txt"]


def test_write_metrics_puts_timings_in_their_own_file(tmp_path: Path) -> None:
    values = {"rougeL": 38.0, "lead": {"rougeL": 28.0}, "decode_seconds": 9.9, "summaries_per_second": 297.0}

    write_metrics(
        values, ("decode_seconds", "summaries_per_second"), tmp_path / "m.json", tmp_path / "t/t.json"
    )

    assert json.loads((tmp_path / "m.json").read_text()) == {"rougeL": 38.0, "lead": {"rougeL": 28.0}}
    assert json.loads((tmp_path / "t/t.json").read_text()) == {
        "decode_seconds": 9.9,
        "summaries_per_second": 297.0,
    }
