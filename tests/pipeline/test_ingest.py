"""`python -m pipeline.ingest` as DVC runs it: from the project directory, with a params file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
import yaml

from tests.conftest import REPO_ROOT, make_pairs, write_csv

SMALL_SPLIT = {"split": {"val": 0.2, "test": 0.2}}
STAGE_ARGUMENTS = ["--raw-dir", "data/raw", "--out-dir", "data/ingested", "--stats", "metrics/ingest.json"]


def run_stage(project: Path, *arguments: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.ingest", *arguments],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def write_params(project: Path, ingest: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump({"ingest": ingest}), encoding="utf-8")


def test_help_describes_the_options(tmp_path: Path) -> None:
    result = run_stage(tmp_path, "--help")

    assert result.returncode == 0
    for option in (
        "--params",
        "--raw-dir",
        "--debian-snapshot",
        "--stats",
        "corpora/debian",
        "metrics/ingest.json",
    ):
        assert option in result.stdout


def test_stage_writes_outputs_and_reports_progress(tmp_path: Path) -> None:
    write_csv(tmp_path / "data/external/tiny.csv", make_pairs(80))
    write_params(
        tmp_path, {"source": "file", "path": "data/external/tiny.csv", "split": {"val": 0.2, "test": 0.2}}
    )

    result = run_stage(tmp_path, "--params", "params.yaml", *STAGE_ARGUMENTS)

    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "metrics/ingest.json").read_text(encoding="utf-8"))
    assert stats["input_records"] == 80 and sum(stats["splits"].values()) == 80
    for split in ("train", "val", "test"):
        lines = (tmp_path / f"data/ingested/{split}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) == stats["splits"][split] > 0
        assert set(json.loads(lines[0])) == {"id", "text", "summary", "group"}
    source = json.loads((tmp_path / "data/raw/SOURCE.json").read_text(encoding="utf-8"))
    assert source["path"] == "data/external/tiny.csv" and source["records"] == 80
    assert (
        "ingest: filtered: kept 80 of 80 records" in result.stderr and "ingest: split: train" in result.stderr
    )


def test_bad_input_exits_1_with_one_message_and_no_outputs(tmp_path: Path) -> None:
    corpus = tmp_path / "data/external/bad.jsonl"
    corpus.parent.mkdir(parents=True)
    corpus.write_text(
        '{"text": "fine text", "summary": "ok"}\n{"text": 3, "summary": "ok"}\n', encoding="utf-8"
    )
    write_params(tmp_path, {"source": "file", "path": "data/external/bad.jsonl"})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ingest: error: data/external/bad.jsonl: line 2: field 'text' must be a string, got a number 3"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/ingested").exists() and not (tmp_path / "data/raw").exists()
    assert not (tmp_path / "metrics").exists()
    assert sorted(path.name for path in (tmp_path / "data").iterdir()) == ["external"]


def test_missing_file_exits_1_before_creating_anything(tmp_path: Path) -> None:
    write_params(tmp_path, {"source": "file", "path": "data/external/absent.csv"})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 1
    assert "ingest: error: data/external/absent.csv: file not found" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["params.yaml"]


def test_invalid_params_exit_2_naming_the_key(tmp_path: Path) -> None:
    write_params(tmp_path, {"source": "file", "path": "x.csv", "min_text_words": 0})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 2
    assert result.stderr.startswith(
        "ingest: error: params.yaml: ingest.min_text_words: expected an integer >= 1"
    )
    assert "Traceback" not in result.stderr


def test_default_params_read_the_pinned_snapshot_and_say_so(tmp_path: Path) -> None:
    """The shipped snapshot through the real stage (a 500-record sample keeps it quick): no apt involved."""
    shutil.copytree(REPO_ROOT / "corpora/debian", tmp_path / "corpora/debian")
    write_params(tmp_path, {"max_records": 500})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "corpora/debian/SNAPSHOT.json").read_text(encoding="utf-8"))
    source = json.loads((tmp_path / "data/raw/SOURCE.json").read_text(encoding="utf-8"))
    assert (
        source["source"] == "debian" and source["pinned_snapshot"] == "corpora/debian/Translation-en.txt.xz"
    )
    assert {key: source[key] for key in ("sha256", "xz_sha256", "fetched_at", "suites")} == {
        key: manifest[key] for key in ("sha256", "xz_sha256", "fetched_at", "suites")
    }
    raw = (tmp_path / "data/raw/Translation-en.txt").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == manifest["sha256"]
    stats = json.loads((tmp_path / "metrics/ingest.json").read_text(encoding="utf-8"))
    assert stats["input_records"] == 500 and stats["sample"]["from_records"] == manifest["packages"]
    assert "reading the pinned Debian snapshot corpora/debian/Translation-en.txt.xz" in result.stderr
    assert "fetching" not in result.stderr


# Input that users hand us --------------------------------------------------------------------------------


def test_parquet_nulls_are_empty_fields_dropped_and_counted(tmp_path: Path) -> None:
    pairs = make_pairs(80)
    texts = [text for text, _ in pairs] + [None, "a text whose summary is null " * 3]
    summaries = [summary for _, summary in pairs] + ["a summary whose text is null", None]
    corpus = tmp_path / "data/external/articles.parquet"
    corpus.parent.mkdir(parents=True)
    pyarrow.parquet.write_table(pyarrow.table({"text": texts, "summary": summaries}), corpus)
    write_params(tmp_path, {"source": "file", "path": "data/external/articles.parquet", **SMALL_SPLIT})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "metrics/ingest.json").read_text(encoding="utf-8"))
    assert stats["input_records"] == 82 and stats["records"] == 80
    assert (stats["dropped"]["empty_text"], stats["dropped"]["empty_summary"]) == (1, 1)
    assert "dropped empty_text 1, empty_summary 1" in result.stderr


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_a_semicolon_or_tab_separated_csv_is_read_with_the_default_params(
    tmp_path: Path, delimiter: str
) -> None:
    corpus = tmp_path / "data/external/articles.csv"
    write_csv(corpus, make_pairs(80), columns=("body", "headline"), delimiter=delimiter)
    settings = {"text_column": "body", "summary_column": "headline", **SMALL_SPLIT}
    write_params(tmp_path, {"source": "file", "path": "data/external/articles.csv", **settings})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 0, result.stderr
    source = json.loads((tmp_path / "data/raw/SOURCE.json").read_text(encoding="utf-8"))
    assert source["delimiter"] == delimiter
    assert f"(csv, delimiter {delimiter!r}," in result.stderr
    assert json.loads((tmp_path / "metrics/ingest.json").read_text(encoding="utf-8"))["records"] == 80


def test_an_explicit_delimiter_the_header_does_not_use_fails_naming_the_right_one(tmp_path: Path) -> None:
    write_csv(tmp_path / "data/external/articles.csv", make_pairs(20), ("body", "headline"), delimiter=";")
    settings = {"text_column": "body", "summary_column": "headline", "delimiter": ","}
    write_params(tmp_path, {"source": "file", "path": "data/external/articles.csv", **settings})

    result = run_stage(tmp_path, *STAGE_ARGUMENTS)

    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ingest: error: data/external/articles.csv: missing column(s) 'body'")
    assert message.endswith(
        "columns found: body;headline; the header looks semicolon-separated (body, headline on ';'), not "
        "comma-separated: set ingest.delimiter to ';' or auto"
    )
    assert not (tmp_path / "data/ingested").exists()
