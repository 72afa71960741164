"""The ingested splits, ``data/ingested/{train,val,test}.jsonl``: the contract between ingest and the rest.

One JSON object a line, ``{"id": str, "text": str, "summary": str, "group": str}``; ``text`` and ``summary``
normalized (:mod:`summarizer.text`). This module names the splits and fields, writes the files and reads them;
the tokenize and evaluate stages read pairs through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summarizer.io import jsonl_text, read_jsonl

SPLITS = ("train", "val", "test")
FIELDS = ("id", "text", "summary", "group")


@dataclass(frozen=True)
class Pair:
    """One record of an ingested split; ``line`` is 1-based, for error messages."""

    line: int
    text: str
    summary: str
    id: str = ""


def split_path(directory: str | Path, split: str) -> Path:
    return Path(directory) / f"{split}.jsonl"


def split_paths(directory: str | Path) -> dict[str, Path]:
    """The three split files of ``directory``.

    Raises:
        FileNotFoundError: a split is missing (the message names the file).
    """
    paths = {split: split_path(directory, split) for split in SPLITS}
    for split, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"input split '{split}' not found: {path} (run the ingest stage first)")
    return paths


def write_splits(directory: str | Path, rows: Iterable[tuple[str, dict[str, Any]]]) -> None:
    """Write ``(split, record)`` rows, each record holding :data:`FIELDS`, into the three split files."""
    with contextlib.ExitStack() as stack:
        handles = {
            split: stack.enter_context(split_path(directory, split).open("w", encoding="utf-8"))
            for split in SPLITS
        }
        for split, record in rows:
            handles[split].write(jsonl_text([{name: record[name] for name in FIELDS}]))


def _field(record: dict[str, Any], name: str, location: str) -> str:
    value = record.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{location}: field '{name}' must be a string, got {value!r}")
    if not value.strip():
        raise ValueError(f"{location}: field '{name}' is empty")
    return value


def read_pairs(path: str | Path, lines: set[int] | None = None) -> Iterator[Pair]:
    """Stream the pairs of an ingested split one line at a time (blank lines are skipped).

    Args:
        lines: if given, only these 1-based line numbers are parsed.

    Raises:
        FileNotFoundError: no such file. ValueError: a line is not a JSON object with non-empty string
            fields ``text`` and ``summary`` (the message names the file, line and field).
    """
    for line_number, record in read_jsonl(path, lines):
        location = f"{path}: line {line_number}"
        record_id = record.get("id")
        yield Pair(
            line_number,
            _field(record, "text", location),
            _field(record, "summary", location),
            str(record_id) if record_id is not None else f"line-{line_number}",
        )


__all__ = ["FIELDS", "SPLITS", "Pair", "read_pairs", "split_path", "split_paths", "write_splits"]
