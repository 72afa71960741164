"""Corpus readers: CSV, JSONL and Parquet give the same records; bad input names file, line and field."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest

from summarizer.readers import Columns, IngestError, SourceRecord, read_records, resolve_delimiter
from tests.conftest import write_jsonl

COLUMNS = Columns("text", "summary", "source")
ROWS = [
    {"text": 'First line, with "quotes"\nand a second line', "summary": "quoted text", "source": "a"},
    {"text": "Ünïcödé text, ﬁne", "summary": "unicode", "source": "b"},
    {"text": "plain", "summary": "", "source": "a"},
]


def write_rows_csv(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    pyarrow.parquet.write_table(pyarrow.table(columns), path)
    return path


# Readers ----------------------------------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_readers_yield_the_same_records(tmp_path: Path) -> None:
    csv_path = write_rows_csv(tmp_path / "rows.csv", ROWS)
    jsonl_path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    parquet_path = write_parquet(
        tmp_path / "rows.parquet", {name: [row[name] for row in ROWS] for name in ROWS[0]}
    )
    expected = [
        SourceRecord(str(number), row["text"], row["summary"], row["source"])
        for number, row in enumerate(ROWS, 1)
    ]

    for path in (csv_path, jsonl_path, parquet_path):
        assert list(read_records(path, "auto", COLUMNS)) == expected, path.suffix


def test_parquet_reader_streams_many_batches(tmp_path: Path) -> None:
    count = 10_000  # more than one PARQUET_BATCH_ROWS batch
    path = write_parquet(
        tmp_path / "big.parquet", {"text": [f"t{i}" for i in range(count)], "summary": ["s"] * count}
    )

    records = list(read_records(path, "parquet", Columns("text", "summary")))

    assert len(records) == count and records[-1] == SourceRecord(str(count), f"t{count - 1}", "s")


def test_csv_reader_accepts_a_byte_order_mark_and_custom_columns(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("\ufeffbody,title\nsome body,a title\n", encoding="utf-8")

    records = list(read_records(path, "csv", Columns("body", "title")))

    assert records == [SourceRecord("1", "some body", "a title")]


def test_jsonl_reader_takes_non_string_group_values_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text(
        '{"text": "t", "summary": "s", "source": 7}\n\n{"text": "u", "summary": "v", "source": null}\n'
    )

    records = list(read_records(path, "jsonl", COLUMNS))

    assert records == [SourceRecord("1", "t", "s", "7"), SourceRecord("3", "u", "v", "")]


# Bad input --------------------------------------------------------------------------------------------------


def expect_read_error(path: Path, pattern: str, columns: Columns = COLUMNS, file_format: str = "auto") -> str:
    with pytest.raises(IngestError, match=pattern) as caught:
        list(read_records(path, file_format, columns))
    assert str(path) in str(caught.value)
    return str(caught.value)


def test_csv_missing_columns_are_named_with_the_columns_found(tmp_path: Path) -> None:
    path = write_rows_csv(tmp_path / "rows.csv", [{"body": "x", "title": "y"}])
    message = expect_read_error(
        path,
        r"missing column\(s\) 'text' \(ingest.text_column\), 'summary' \(ingest.summary_column\), "
        r"'source' \(ingest.group_column\)",
    )
    assert "columns found: body, title" in message


def test_parquet_missing_columns_are_named_with_the_columns_found(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "rows.parquet", {"text": ["x"], "abstract": ["y"]})
    expect_read_error(
        path,
        r"missing column\(s\) 'summary' \(ingest.summary_column\); columns found: text, abstract",
        Columns("text", "summary"),
    )


def test_csv_non_utf8_byte_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"text,summary\nfine,ok\ncaf\xe9 au lait,drink\n")
    expect_read_error(path, r"line 3: not valid UTF-8 \(byte 0xe9 at column 4\)", Columns("text", "summary"))


def test_jsonl_non_utf8_byte_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "a", "summary": "b"}\n{"text": "caf\xe9", "summary": "b"}\n')
    expect_read_error(path, r"line 2: not valid UTF-8", Columns("text", "summary"))


def test_jsonl_malformed_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "summary": "b"}\n{"text": "a", "summary": }\n', encoding="utf-8")
    expect_read_error(
        path, r"line 2: malformed JSON: Expecting value at column 26", Columns("text", "summary")
    )


def test_jsonl_line_that_is_not_an_object_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "array.jsonl", [["text", "summary"]])
    expect_read_error(
        path,
        r"line 1: expected a JSON object, got an array",
        Columns("text", "summary"),
    )


def test_jsonl_missing_field_is_named_with_the_fields_found(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a", "summary": "b"}, {"text": "a", "title": "b"}])
    expect_read_error(
        path, r"line 2: missing field\(s\) 'summary'; fields found: text, title", Columns("text", "summary")
    )


def test_jsonl_text_that_is_not_a_string_is_named(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "rows.jsonl", [{"text": 42, "summary": "b"}])
    expect_read_error(
        path, r"line 1: field 'text' must be a string, got a number 42", Columns("text", "summary")
    )


def test_a_null_text_or_summary_reads_as_empty_in_parquet_and_jsonl(tmp_path: Path) -> None:
    columns = Columns("text", "summary")
    nulls = write_parquet(tmp_path / "nulls.parquet", {"text": ["a", None, "c"], "summary": ["s", "t", None]})
    lines = write_jsonl(
        tmp_path / "nulls.jsonl", [{"text": None, "summary": "s"}, {"text": "b", "summary": None}]
    )

    assert list(read_records(nulls, "auto", columns)) == [
        SourceRecord("1", "a", "s"),
        SourceRecord("2", "", "t"),
        SourceRecord("3", "c", ""),
    ]
    assert list(read_records(lines, "auto", columns)) == [
        SourceRecord("1", "", "s"),
        SourceRecord("2", "b", ""),
    ]


def test_a_non_string_parquet_column_is_named(tmp_path: Path) -> None:
    numbers = write_parquet(tmp_path / "numbers.parquet", {"text": [1, 2], "summary": ["s", "t"]})
    expect_read_error(numbers, r"column 'text' has type int64; expected strings", Columns("text", "summary"))


def test_file_that_is_not_parquet_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("text,summary\n", encoding="utf-8")
    expect_read_error(path, r"not a readable Parquet file", Columns("text", "summary"))


def test_csv_short_row_names_line_row_and_field(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text('text,summary\n"two\nlines",ok\nonly text\n', encoding="utf-8")
    expect_read_error(
        path,
        r"line 4 \(row 2\): field 'summary' is missing: the row has 1 of 2 columns",
        Columns("text", "summary"),
    )


def test_unknown_extension_lists_supported_formats(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("x", encoding="utf-8")
    message = expect_read_error(path, r"cannot tell the format from the extension '\.txt'", Columns("t", "s"))
    assert ".csv (csv)" in message and ".jsonl (jsonl)" in message and ".parquet (parquet)" in message


# CSV delimiters --------------------------------------------------------------------------------------------


def write_delimited(path: Path, delimiter: str, rows: list[list[str]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


@pytest.mark.parametrize(
    ("delimiter", "suffix"), [(";", ".csv"), ("\t", ".tsv"), ("|", ".csv"), (",", ".csv")]
)
def test_auto_delimiter_takes_the_one_that_splits_the_header_into_the_columns(
    tmp_path: Path, delimiter: str, suffix: str
) -> None:
    # Commas and semicolons inside the fields must not fool the detection, which reads the header only.
    rows = [["body", "headline"], ["A text, with commas; and semicolons.", "a headline, short"]]
    path = write_delimited(tmp_path / f"rows{suffix}", delimiter, rows)
    columns = Columns("body", "headline")

    assert resolve_delimiter(path, "auto", columns) == delimiter
    assert list(read_records(path, "auto", columns)) == [SourceRecord("1", *rows[1])]


def test_a_header_split_on_another_delimiter_is_named_in_the_error(tmp_path: Path) -> None:
    path = write_delimited(tmp_path / "rows.csv", ";", [["body", "headline"], ["text", "summary"]])
    columns = Columns("body", "headline")

    with pytest.raises(IngestError) as caught:
        list(read_records(path, "csv", columns, delimiter=","))

    assert str(caught.value) == (
        f"{path}: missing column(s) 'body' (ingest.text_column), 'headline' (ingest.summary_column); "
        "columns found: body;headline; the header looks semicolon-separated (body, headline on ';'), not "
        "comma-separated: set ingest.delimiter to ';' or auto"
    )


def test_auto_delimiter_with_misnamed_columns_reports_the_columns_it_split(tmp_path: Path) -> None:
    path = write_delimited(tmp_path / "rows.csv", ";", [["article", "title"], ["text", "summary"]])

    with pytest.raises(IngestError) as caught:
        list(read_records(path, "auto", Columns("text", "summary")))

    assert str(caught.value).endswith("columns found: article, title (split on semicolons, ingest.delimiter)")
