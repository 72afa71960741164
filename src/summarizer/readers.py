"""Readers of the user's corpus files (CSV, JSONL, Parquet), yielding :class:`SourceRecord` objects.

Every error is an :class:`IngestError` naming the file, the line (or row) and the field, and what to do.
A null text or summary (JSONL ``null``, a Parquet null) reads as an empty string: the ingest stage drops it
and counts it by reason, as it does an empty CSV field. A CSV file's delimiter is ``,``, ``;``, tab or ``|``
(``ingest.delimiter``); ``auto`` takes the one that splits the header into the required columns.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.parquet

from summarizer.io import json_type
from summarizer.io import read_jsonl as read_json_lines

FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH_ROWS = 4096
CSV_FIELD_LIMIT = 1 << 30
DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


class IngestError(ValueError):
    """The corpus cannot be read or leaves nothing to train on; the message names the file, line and field."""


@dataclass(frozen=True, slots=True)
class SourceRecord:
    id: str
    text: str
    summary: str
    group_value: str = ""  # the group_column value: records sharing it share a split
    package: str = ""  # Debian package name: its stem groups foo, foo-dev, libfoo1


@dataclass(frozen=True)
class Columns:
    text: str
    summary: str
    group: str = ""

    @property
    def required(self) -> tuple[str, ...]:
        return (self.text, self.summary, self.group) if self.group else (self.text, self.summary)


def resolve_format(path: Path, file_format: str) -> str:
    if file_format != "auto":
        return file_format
    suffix = path.suffix.lower()
    if suffix not in FORMATS_BY_SUFFIX:
        supported = ", ".join(f"{ending} ({name})" for ending, name in FORMATS_BY_SUFFIX.items())
        raise IngestError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; supported: "
            f"{supported}. Rename the file or set ingest.format to csv, jsonl or parquet."
        )
    return FORMATS_BY_SUFFIX[suffix]


def read_records(
    path: Path, file_format: str, columns: Columns, delimiter: str = "auto"
) -> Iterator[SourceRecord]:
    """The records of a CSV, JSONL or Parquet file (``file_format`` and ``delimiter`` may be "auto")."""
    file_format = resolve_format(path, file_format)
    if file_format == "csv":
        return read_csv(path, columns, resolve_delimiter(path, delimiter, columns))
    return {"jsonl": read_jsonl, "parquet": read_parquet}[file_format](path, columns)


def _header_line(path: Path) -> str:
    """The first line of a text file, for delimiter detection ("" if the file is empty or unreadable)."""
    try:
        with path.open("rb") as handle:
            return handle.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    except OSError:
        return ""  # read_csv reports it, naming the file


def _split_header(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def resolve_delimiter(path: Path, delimiter: str, columns: Columns) -> str:
    """``delimiter`` itself, or for "auto" the first of , ; tab | that splits the header into the required
    columns; failing that, the one that splits it into the most fields (the missing columns are reported
    when the file is read), else a comma.
    """
    if delimiter != "auto":
        return delimiter
    line = _header_line(path)
    splits = {candidate: _split_header(line, candidate) for candidate in DELIMITER_NAMES}
    for candidate, fields in splits.items():
        if all(name in fields for name in columns.required):
            return candidate
    widest = max(splits, key=lambda candidate: len(splits[candidate]))
    return widest if len(splits[widest]) > 1 else ","


def _delimiter_hint(path: Path, delimiter: str, columns: Columns) -> str:
    """When the header splits into the required columns on another delimiter, say which and how to set it."""
    line = _header_line(path)
    for candidate, name in DELIMITER_NAMES.items():
        fields = _split_header(line, candidate)
        if candidate != delimiter and all(column in fields for column in columns.required):
            return (
                f"; the header looks {name}-separated ({', '.join(fields)} on {candidate!r}), not "
                f"{DELIMITER_NAMES[delimiter]}-separated: set ingest.delimiter to {candidate!r} or auto"
            )
    return f" (split on {DELIMITER_NAMES[delimiter]}s, ingest.delimiter)"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Physical lines with their 1-based numbers, so a non-UTF-8 byte is reported on its own line."""
    try:
        handle = path.open("rb")
    except OSError as error:
        raise IngestError(f"{path}: cannot open: {error.strerror}") from None
    with handle:
        for line_number, raw_line in enumerate(handle, start=1):
            try:
                yield line_number, raw_line.decode("utf-8-sig" if line_number == 1 else "utf-8")
            except UnicodeDecodeError as error:
                raise IngestError(
                    f"{path}: line {line_number}: not valid UTF-8 (byte 0x{raw_line[error.start]:02x} at "
                    f"column {error.start + 1}); re-encode the file as UTF-8"
                ) from None


def _check_columns(path: Path, found: list[str], columns: Columns, delimiter: str | None = None) -> None:
    settings = {columns.text: "text_column", columns.summary: "summary_column", columns.group: "group_column"}
    missing = [f"{name!r} (ingest.{settings[name]})" for name in columns.required if name not in found]
    if missing:
        hint = _delimiter_hint(path, delimiter, columns) if delimiter else ""
        raise IngestError(
            f"{path}: missing column(s) {', '.join(missing)}; columns found: {', '.join(found) or 'none'}"
            f"{hint}"
        )


def read_csv(path: Path, columns: Columns, delimiter: str = ",") -> Iterator[SourceRecord]:
    """Rows of a CSV file with a header row, fields split on ``delimiter``; the id is the data row number."""
    # Long articles exceed csv's default 128 KiB field limit; the word limits drop them later, with a count.
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.reader((line for _, line in _decoded_lines(path)), delimiter=delimiter)
    try:
        header = next(reader, None)
        if header is None:
            raise IngestError(
                f"{path}: empty file; expected a header row naming the columns {', '.join(columns.required)}"
            )
        _check_columns(path, header, columns, delimiter)
        positions = {name: header.index(name) for name in columns.required}
        for row_number, row in enumerate(reader, start=1):
            if not row:
                continue
            location = f"{path}: line {reader.line_num} (row {row_number})"
            for name, position in positions.items():
                if position >= len(row):
                    raise IngestError(
                        f"{location}: field {name!r} is missing: the row has {len(row)} of "
                        f"{len(header)} columns"
                    )
            yield _record(
                str(row_number),
                {name: row[position] for name, position in positions.items()},
                location,
                columns,
            )
    except csv.Error as error:
        raise IngestError(f"{path}: line {reader.line_num}: malformed CSV: {error}") from None


def read_jsonl(path: Path, columns: Columns) -> Iterator[SourceRecord]:
    """One JSON object a line (:func:`summarizer.io.read_jsonl`); the record id is the line number."""
    try:
        for line_number, value in read_json_lines(path):
            location = f"{path}: line {line_number}"
            missing = [name for name in columns.required if name not in value]
            if missing:
                raise IngestError(
                    f"{location}: missing field(s) {', '.join(map(repr, missing))}; fields found: "
                    f"{', '.join(value) or 'none'}"
                )
            yield _record(str(line_number), value, location, columns)
    except OSError as error:
        raise IngestError(f"{path}: cannot open: {error.strerror}") from None
    except ValueError as error:  # the JSONL parser's own message (file, line, problem)
        raise IngestError(str(error)) from None


def read_parquet(path: Path, columns: Columns) -> Iterator[SourceRecord]:
    """Rows of a Parquet file, read in batches; the record id is the row number."""
    try:
        parquet_file = pyarrow.parquet.ParquetFile(path)
    except (pyarrow.ArrowInvalid, OSError) as error:
        raise IngestError(f"{path}: not a readable Parquet file: {error}") from None
    schema = parquet_file.schema_arrow
    _check_columns(path, schema.names, columns)
    for name in (columns.text, columns.summary):
        column_type = schema.field(name).type
        if not (pyarrow.types.is_string(column_type) or pyarrow.types.is_large_string(column_type)):
            raise IngestError(f"{path}: column {name!r} has type {column_type}; expected strings")
    row_number = 0
    try:
        for batch in parquet_file.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=list(columns.required)):
            values = {name: batch.column(name).to_pylist() for name in columns.required}
            for row_values in zip(*values.values(), strict=True):
                row_number += 1
                yield _record(
                    str(row_number),
                    dict(zip(values, row_values, strict=True)),
                    f"{path}: row {row_number}",
                    columns,
                )
    except pyarrow.ArrowInvalid as error:
        raise IngestError(f"{path}: after row {row_number}: cannot read Parquet data: {error}") from None


def _record(record_id: str, values: Mapping[str, Any], location: str, columns: Columns) -> SourceRecord:
    """A record of ``values``; a null text or summary is an empty one (dropped and counted by the caller)."""
    values = {
        **values,
        **{name: "" for name in (columns.text, columns.summary) if values[name] is None},
    }
    for name in (columns.text, columns.summary):
        if not isinstance(values[name], str):
            preview = json.dumps(values[name], default=str)[:40]
            raise IngestError(
                f"{location}: field {name!r} must be a string, got {json_type(values[name])} {preview}"
            )
    group = values[columns.group] if columns.group else None
    group_value = (
        "" if group is None else group if isinstance(group, str) else json.dumps(group, sort_keys=True)
    )
    return SourceRecord(record_id, values[columns.text], values[columns.summary], group_value)


__all__ = [
    "FORMATS_BY_SUFFIX",
    "Columns",
    "DELIMITER_NAMES",
    "IngestError",
    "SourceRecord",
    "read_csv",
    "read_jsonl",
    "read_parquet",
    "read_records",
    "resolve_delimiter",
    "resolve_format",
]
