"""Console scripts: `summarize` (the same summaries as the pyfunc model), `summarizer-compare`."""

from __future__ import annotations

import csv
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from summarizer.cli import compare_main, read_texts, summarize_main
from summarizer.pyfunc import log_pyfunc_model
from summarizer.tracking import RunTracker
from tests.helpers import GREEDY, RegisteredModel, TinyModel, build_model_directory, register_tiny_model

VENV_BIN = Path(sys.executable).parent
GREEDY_OPTIONS = [
    "--search",
    "greedy",
    "--max-length",
    "10",
    "--min-length",
    "1",
    "--no-repeat-ngram-size",
    "0",
    "--batch-size",
    "4",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def registered(tiny: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    """The tiny model as version 1 of ``summarizer``, alias ``champion``, logged with greedy decoding."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    return register_tiny_model(uri, tiny.model_dir, GREEDY)


def run_script(
    name: str, *arguments: str, stdin: str = "", cwd: Path | None = None, **variables: str
) -> subprocess.CompletedProcess:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **variables}
    if variables.get("MLFLOW_TRACKING_URI") == "":  # unset: the URI comes from the params
        environment.pop("MLFLOW_TRACKING_URI")
    return subprocess.run(
        [str(VENV_BIN / name), *arguments],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )


def test_summarize_help_explains_inputs_and_options() -> None:
    completed = run_script("summarize", "--help")
    assert completed.returncode == 0
    for option in ("--model-dir", "--one-per-line", "--search", "--beam-width", "stdin"):
        assert option in completed.stdout


def test_missing_model_directory_names_the_expected_files(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    status = summarize_main(["--model-dir", str(tmp_path / "absent")], stdin=io.StringIO("a tool for mail"))
    assert status == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "absent") in error and "model.keras, spm.model, config.json" in error


def test_out_of_range_decoding_option_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        summarize_main(["--beam-width", "0"], stdin=io.StringIO("text"))
    assert exit_info.value.code == 2
    assert "evaluate.beam_width" in capsys.readouterr().err


def test_read_texts_one_per_file_one_per_line_and_stdin(tmp_path: Path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text("paragraph one\nparagraph two\n", encoding="utf-8")
    second.write_text("line a\n\n  \nline b", encoding="utf-8")
    assert read_texts([str(first), str(second)], False, io.StringIO()) == [
        "paragraph one\nparagraph two\n",
        "line a\n\n  \nline b",
    ]
    assert read_texts([str(second), "-"], True, io.StringIO("from stdin\n")) == [
        "line a",
        "line b",
        "from stdin",
    ]
    assert read_texts([], False, io.StringIO("only stdin")) == ["only stdin"]


def test_read_texts_errors_name_the_input(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.txt: empty"):
        read_texts([str(empty)], False, io.StringIO())
    with pytest.raises(FileNotFoundError, match="absent.txt: no such input file"):
        read_texts([str(tmp_path / "absent.txt")], False, io.StringIO())
    with pytest.raises(ValueError, match="only blank lines"):
        read_texts(["-"], True, io.StringIO("\n \n"))


@pytest.mark.slow
def test_summarize_command_and_pyfunc_model_give_the_same_summaries(tiny: TinyModel, tmp_path: Path) -> None:
    texts = [text for text, _ in tiny.test_pairs()[:5]]
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    single = tmp_path / "single.txt"
    single.write_text(texts[0].replace(". ", ".\n"), encoding="utf-8")  # one text over several lines

    by_line = run_script(
        "summarize", "--model-dir", str(tiny.model_dir), *GREEDY_OPTIONS, "--one-per-line", str(lines)
    )
    by_file = run_script("summarize", "--model-dir", str(tiny.model_dir), *GREEDY_OPTIONS, str(single))
    from_stdin = run_script("summarize", "--model-dir", str(tiny.model_dir), *GREEDY_OPTIONS, stdin=texts[1])

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri)
    tracker.start("summarizer", "cli-test")
    model_uri = log_pyfunc_model(tracker, tiny.model_dir, GREEDY)
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        expected = (
            mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"text": texts}))["summary"].tolist()
        )
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert by_line.returncode == 0, by_line.stderr[-2000:]
    assert by_line.stdout.splitlines() == expected
    assert by_file.stdout.splitlines() == expected[:1]  # line breaks are paragraph breaks, as in ingest
    assert from_stdin.stdout.splitlines() == expected[1:2]


def test_summarize_help_says_where_model_uris_are_looked_up() -> None:
    completed = run_script("summarize", "--help", COLUMNS="200")
    assert completed.returncode == 0
    for words in ("models:/summarizer@champion", "models:/summarizer/3", "runs:/", "MLFLOW_TRACKING_URI"):
        assert words in completed.stdout
    assert "tracking.tracking_uri of --params" in completed.stdout


@pytest.mark.slow
def test_summarize_model_uris_give_the_summaries_of_the_model_directory(
    tiny: TinyModel, registered: RegisteredModel, tmp_path: Path
) -> None:
    texts = [text for text, _ in tiny.test_pairs()[:4]]
    lines = tmp_path / "texts.txt"
    lines.write_text("\n".join(texts) + "\n", encoding="utf-8")
    from_directory = run_script(
        "summarize", "--model", str(tiny.model_dir), *GREEDY_OPTIONS, "--one-per-line", str(lines)
    )
    assert from_directory.returncode == 0, from_directory.stderr[-2000:]
    # The alias, through MLFLOW_TRACKING_URI; decoding as the model was logged (GREEDY), no options.
    by_alias = run_script(
        "summarize", "--model", "models:/summarizer@champion", "--one-per-line", str(lines),
        MLFLOW_TRACKING_URI=registered.uri,
    )  # fmt: skip
    # A version and a run, through tracking.tracking_uri of ./params.yaml (no MLFLOW_TRACKING_URI).
    (tmp_path / "params.yaml").write_text(f"tracking:\n  tracking_uri: {registered.uri}\n", encoding="utf-8")
    by_version = run_script(
        "summarize", "--model", f"models:/summarizer/{registered.version}", "--one-per-line", str(lines),
        cwd=tmp_path, MLFLOW_TRACKING_URI="",
    )  # fmt: skip
    by_run = run_script(
        "summarize", "--model", f"runs:/{registered.run_id}/summarizer", *GREEDY_OPTIONS, "--one-per-line",
        str(lines),
        cwd=tmp_path, MLFLOW_TRACKING_URI="",
    )  # fmt: skip
    for completed in (by_alias, by_version, by_run):
        assert completed.returncode == 0, completed.stderr[-2000:]
    assert by_alias.stdout == by_version.stdout == by_run.stdout == from_directory.stdout
    assert len(from_directory.stdout.splitlines()) == len(texts)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "named"),
    [
        ("models:/summarizer@nosuch", "nosuch"),
        ("models:/summarizer/7", "7"),
        ("models:/absent@champion", "absent"),
    ],
)
def test_summarize_unknown_alias_or_version_is_named_without_traceback(
    registered: RegisteredModel,
    model: str,
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered.uri)
    status = summarize_main(["--model", model], stdin=io.StringIO("a tool for mail"))
    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith(f"summarize: error: cannot load {model} from the MLflow store {registered.uri}: ")
    assert named in error.split(": ", 3)[-1] and "Traceback" not in error


def test_summarize_model_uri_with_a_store_that_is_down_fails_in_seconds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    status = summarize_main(["--model", "models:/summarizer@champion"], stdin=io.StringIO("a tool for mail"))
    assert status == 1 and time.monotonic() - started < 30
    assert "summarize: error:" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed once the probe is


def log_run(tracker: RunTracker, name: str, cell: str, metrics: dict[str, float]) -> str:
    run_id = tracker.start("compare", name)
    tracker.log_params({"train.cell": cell, "train.precision": "float32", "train.workers": 2})
    tracker.log_metrics(metrics)
    tracker.end("FINISHED")
    return run_id


@pytest.fixture
def runs_store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri)
    log_run(
        tracker,
        "gru-float32-2w",
        "gru",
        {
            "test_rouge1": 30.5,
            "test_rouge2": 10.25,
            "test_rougeL": 28.0,
            "test_lead_rougeL": 20.0,
            "test_lead_best_words": 8,
            "test_perplexity": 15.123,
            "samples_per_second": 250.0,
            "wall_seconds": 3725,
        },
    )
    log_run(
        tracker,
        "lstm-float32-2w",
        "lstm",
        {
            "test_rouge1": 33.0,
            "test_rouge2": 12.0,
            "test_rougeL": 31.5,
            "test_lead_rougeL": 20.0,
            "test_lead_best_words": 8,
            "test_perplexity": 12.0,
            "samples_per_second": 200.0,
            "wall_seconds": 60,
        },
    )
    log_run(tracker, "not-evaluated", "gru", {"samples_per_second": 100.0, "workers": 1})
    return uri


def test_compare_ranks_evaluated_runs_best_first(runs_store: str) -> None:
    output = io.StringIO()
    assert compare_main(["--tracking-uri", runs_store, "--experiment", "compare"], stdout=output) == 0
    lines = output.getvalue().splitlines()
    assert lines[0].split()[:4] == ["run", "cell", "precision", "workers"]
    assert [line.split()[0] for line in lines[2:]] == ["lstm-float32-2w", "gru-float32-2w", "not-evaluated"]
    assert lines[3].split() == [
        "gru-float32-2w",
        "gru",
        "float32",
        "2",
        "30.50",
        "10.25",
        "28.00",
        "20.00",
        "(8w)",
        "15.12",
        "250.0",
        "1:02:05",
        "FINISHED",
    ]
    assert lines[4].split()[:4] == ["not-evaluated", "gru", "float32", "1"]  # workers from the run's metric


def test_compare_markdown_and_csv(runs_store: str) -> None:
    markdown, table_csv = io.StringIO(), io.StringIO()
    compare_main(
        ["--tracking-uri", runs_store, "--experiment", "compare", "--format", "markdown", "--limit", "1"],
        stdout=markdown,
    )
    compare_main(
        ["--tracking-uri", runs_store, "--experiment", "compare", "--format", "csv"], stdout=table_csv
    )
    rows = markdown.getvalue().splitlines()
    assert (
        len(rows) == 3 and rows[0].startswith("| run | cell |") and rows[2].startswith("| lstm-float32-2w |")
    )
    records = list(csv.DictReader(io.StringIO(table_csv.getvalue())))
    assert [record["run"] for record in records] == ["lstm-float32-2w", "gru-float32-2w", "not-evaluated"]
    assert float(records[1]["perplexity"]) == 15.123 and float(records[1]["wall time"]) == 3725
    assert len(records[0]["run_id"]) == 32


def test_compare_errors_name_the_store_and_experiment(
    runs_store: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert compare_main(["--tracking-uri", runs_store, "--experiment", "nope"]) == 1
    assert "'nope' not found" in capsys.readouterr().err
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    assert compare_main(["--tracking-uri", missing]) == 1
    assert "absent.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "absent.db").exists()


def test_compare_console_script_runs(runs_store: str) -> None:
    completed = run_script(
        "summarizer-compare", "--tracking-uri", runs_store, "--experiment", "compare", "--format", "csv"
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[1].split(",")[1] == "lstm-float32-2w"


def test_summarize_prints_only_summaries_unless_verbose(tiny: TinyModel) -> None:
    """oneDNN forced on: its load-time lines and its ERROR-level `DT_BOOL` line (decoding) print here too."""
    environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "SUMMARIZER_VERBOSE", "MLFLOW_LOGGING_LEVEL"):
        environment.pop(name, None)

    def summarize(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "summarize"), "--model-dir", str(tiny.model_dir), *GREEDY_OPTIONS, *extra],
            input="a tool for reading mail with many options and a small window\n",
            capture_output=True,
            text=True,
            env=environment,
            timeout=600,
            check=False,
        )

    quiet, verbose = summarize(), summarize("--verbose")

    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert quiet.stderr == "" and len(quiet.stdout.splitlines()) == 1
    assert verbose.stdout == quiet.stdout
    for noise in ("oneDNN custom operations are on", "cpu_feature_guard.cc", "absl::InitializeLog()"):
        assert noise in verbose.stderr, f"--verbose should show {noise!r}:\n{verbose.stderr}"
