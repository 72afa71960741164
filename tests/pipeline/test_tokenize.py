"""The tokenize stage entry point: a real subprocess run, atomic failure, params errors and --help."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline import tokenize as stage
from summarizer.records import list_shards, read_dataset
from summarizer.tokenization import Tokenizer
from tests.conftest import REPO_ROOT
from tests.helpers import write_ingested

TINY_PARAMS = {
    "tokenize": {"vocab_size": 200, "max_source_tokens": 48, "max_target_tokens": 12, "num_shards": 2}
}


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def stage_arguments(tmp_path: Path) -> list[str]:
    return [
        "--params",
        str(tmp_path / "params.yaml"),
        "--in-dir",
        str(tmp_path / "ingested"),
        "--out-dir",
        str(tmp_path / "data" / "tokenized"),
        "--stats",
        str(tmp_path / "metrics" / "tokenize.json"),
        "--timings",
        str(tmp_path / "metrics" / "timings" / "tokenize.json"),
    ]


def test_stage_run_as_a_subprocess_writes_model_shards_and_metrics(tmp_path: Path) -> None:
    write_ingested(tmp_path / "ingested")
    write_params(tmp_path / "params.yaml", TINY_PARAMS)

    result = subprocess.run(
        [sys.executable, "-m", "pipeline.tokenize", *stage_arguments(tmp_path)],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    for line in (
        "tokenize: training tokenizer on",
        "tokenize: encoded train: 160 examples into 2 shards",
        "tokenize: encoded test: 30 examples into 2 shards",
        "tokenize: written",
    ):
        assert line in result.stderr
    out_dir = tmp_path / "data" / "tokenized"
    assert sorted(path.name for path in out_dir.iterdir()) == sorted(
        ["spm.model", "spm.vocab"]
        + [
            f"{split}-0000{index}-of-00002.tfrecord"
            for split in ("train", "val", "test")
            for index in range(2)
        ]
    )
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["tokenized"]  # no temporary left behind
    metrics = json.loads((tmp_path / "metrics" / "tokenize.json").read_text(encoding="utf-8"))
    assert metrics["vocab_size"] == Tokenizer.load(out_dir / "spm.model").vocab_size == 200
    assert [metrics[split]["examples"] for split in ("train", "val", "test")] == [160, 30, 30]
    assert metrics["train"]["source_tokens"]["max"] > 48 and metrics["train"]["truncated_sources"] > 0
    timings = json.loads((tmp_path / "metrics" / "timings" / "tokenize.json").read_text(encoding="utf-8"))
    assert set(timings) == {"tokenizer_seconds", "encode_seconds", "encode_megabytes_per_second"}
    assert not set(timings) & set(metrics)  # timings apart: a rerun moves only them
    batches = list(read_dataset(list_shards(out_dir, "val"), 64, shuffle=False))
    assert batches[0]["source_ids"].shape == (30, 48)


def test_missing_split_names_the_file_and_leaves_no_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_ingested(tmp_path / "ingested")
    (tmp_path / "ingested" / "test.jsonl").unlink()
    write_params(tmp_path / "params.yaml", TINY_PARAMS)

    assert stage.main(stage_arguments(tmp_path)) == 1

    assert f"tokenize: error: input split 'test' not found: {tmp_path / 'ingested' / 'test.jsonl'}" in (
        capsys.readouterr().err
    )
    assert list((tmp_path / "data").iterdir()) == []  # neither data/tokenized nor its temporary
    assert not (tmp_path / "metrics").exists()


def test_malformed_record_fails_without_replacing_the_previous_output(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_ingested(tmp_path / "ingested")
    write_params(tmp_path / "params.yaml", TINY_PARAMS)
    previous = tmp_path / "data" / "tokenized"
    previous.mkdir(parents=True)
    (previous / "spm.model").write_text("previous run", encoding="utf-8")
    with (tmp_path / "ingested" / "val.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("not json\n")

    assert stage.main(stage_arguments(tmp_path)) == 1

    assert (
        "tokenize: error: " in (error := capsys.readouterr().err)
        and "val.jsonl: line 31: malformed JSON" in error
    )
    assert [path.name for path in previous.parent.iterdir()] == ["tokenized"]
    assert [path.name for path in previous.iterdir()] == ["spm.model"]
    assert (previous / "spm.model").read_text(encoding="utf-8") == "previous run"


def test_invalid_params_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_ingested(tmp_path / "ingested")
    write_params(tmp_path / "params.yaml", {"tokenize": {"vocab_size": 10}})

    assert stage.main(stage_arguments(tmp_path)) == 2

    assert "tokenize: error: " in (error := capsys.readouterr().err) and "tokenize.vocab_size" in error
    assert not (tmp_path / "data").exists()


def test_help_describes_every_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        stage.main(["--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for option in ("--params", "--in-dir", "--out-dir", "--stats", "data/ingested", "metrics/tokenize.json"):
        assert option in help_text


# The libraries' start-up lines (see summarizer.quiet), as a new user's shell shows them. oneDNN is forced on
# so that its port.cc line prints on CPUs without AVX-512 too (it is on by default on CPUs with AVX-512).
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "cpu_feature_guard.cc",
)


def new_user_environment() -> dict[str, str]:
    environment = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    for name in ("TF_CPP_MIN_LOG_LEVEL", "SUMMARIZER_VERBOSE", "MLFLOW_LOGGING_LEVEL"):
        environment.pop(name, None)
    return environment


def test_stage_prints_no_library_startup_lines_unless_verbose(tmp_path: Path) -> None:
    write_ingested(tmp_path / "ingested")
    write_params(tmp_path / "params.yaml", TINY_PARAMS)

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipeline.tokenize", *stage_arguments(tmp_path), *extra],
            cwd=REPO_ROOT,
            env=new_user_environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    quiet, verbose = run(), run("--verbose")

    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert [line for line in quiet.stderr.splitlines() if not line.startswith("tokenize: ")] == []
    assert "tokenize: written" in quiet.stderr and "tokenize: written" in verbose.stderr
    for noise in STARTUP_NOISE:
        assert noise in verbose.stderr, f"--verbose should show {noise!r}:\n{verbose.stderr}"
