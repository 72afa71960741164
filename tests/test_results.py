"""``summarizer results``: the end-of-run table, on metrics files shaped as the stages write them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from summarizer.cli import summarizer_main

# The shapes of metrics.json, metrics/train.json and metrics/timings/*.json as the stages write them (a real
# default-params run's figures).
EVALUATE = {
    "batch_size": 128,
    "beam_width": 4,
    "beats_lead_rougeL": 9.98,
    "lead": {"best_words": 10, "rouge1": 31.48, "rouge2": 14.83, "rougeL": 28.02, "rougeLsum": 28.08},
    "rouge1": 42.22,
    "rouge2": 21.9,
    "rougeL": 38.0,
    "rougeLsum": 38.0,
    "search": "beam",
    "test_examples": 2746,
    "test_perplexity": 23.0025,
    "test_tokens": 29655,
}
TRAIN = {
    "best_val_loss": 3.2036,
    "best_val_perplexity": 24.6213,
    "epochs": 5,
    "final_val_loss": 3.2182,
    "parameter_count": 3837889,
    "stop_reason": "wall-clock budget of 18 minutes: another epoch would not fit in it",
    "stopped_by": "wall_clock",
    "workers": 2,
}
TIMINGS = {
    "tokenize": {"encode_megabytes_per_second": 6.085, "encode_seconds": 4.624, "tokenizer_seconds": 47.388},
    "train": {"per_epoch": {}, "samples_per_second": 250.388, "wall_seconds": 1030.376},
    "evaluate": {"decode_seconds": 9.961, "first_batch_seconds": 1.151, "summaries_per_second": 297.18},
}


def write_run(root: Path, evaluate: dict = EVALUATE, timings: dict = TIMINGS) -> Path:
    (root / "metrics/timings").mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps(evaluate), encoding="utf-8")
    (root / "metrics/train.json").write_text(json.dumps(TRAIN), encoding="utf-8")
    for stage, values in timings.items():
        (root / f"metrics/timings/{stage}.json").write_text(json.dumps(values), encoding="utf-8")
    return root


def results(root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = summarizer_main(["results", "--root", str(root)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_table_shows_model_beside_best_lead_training_times_and_no_registration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = results(write_run(tmp_path), capsys)

    assert status == 0 and err == ""
    assert out == (
        "            model  best lead (first 10 words)\n"
        "ROUGE-1     42.22                       31.48\n"
        "ROUGE-2     21.90                       14.83\n"
        "ROUGE-L     38.00                       28.02  (+9.98 ROUGE-L vs the best lead)\n"
        "perplexity  23.00                           -\n"
        "\n"
        "training  5 epochs on 2 workers, 250.4 samples/s; stopped: wall-clock budget of 18 minutes: another "
        "epoch would not fit in it\n"
        "time      tokenize 52.0 s, train 0:17:10, evaluate 10.0 s (measured total 0:18:12)\n"
        "registry  not registered\n"
    )


@pytest.mark.parametrize(
    ("alias", "expected"),
    [
        ("champion", "registry  summarizer version 3: alias champion (beats the best lead and version 2)\n"),
        (None, "registry  summarizer version 3: no alias (beats the best lead and version 2)\n"),
    ],
)
def test_registry_decision_from_metrics_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alias: str | None, expected: str
) -> None:
    registry = {
        "model": "summarizer",
        "version": 3,
        "alias": alias,
        "reason": "beats the best lead and version 2",
    }
    status, out, _ = results(write_run(tmp_path, {**EVALUATE, "registry": registry}), capsys)

    assert status == 0 and out.endswith(expected)


def test_challenger_and_missing_timings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = {"model": "summarizer", "version": 4, "alias": "challenger", "reason": "ROUGE-L 37.1 < 38.0"}
    status, out, _ = results(write_run(tmp_path, {**EVALUATE, "registry": registry}, timings={}), capsys)

    assert status == 0
    assert "time " not in out and "samples/s" not in out  # samples/s is in the train timings
    assert out.endswith("registry  summarizer version 4: alias challenger (ROUGE-L 37.1 < 38.0)\n")


@pytest.mark.parametrize("missing", ["metrics.json", "metrics/train.json"])
def test_a_missing_file_is_named_in_one_line_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    (write_run(tmp_path) / missing).unlink()

    status, out, err = results(tmp_path, capsys)

    assert status == 1 and out == ""
    assert err == f"summarizer results: error: {tmp_path / missing} not found: run `dvc repro` first\n"


def test_a_file_that_is_not_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (write_run(tmp_path) / "metrics/timings/train.json").write_text("{", encoding="utf-8")

    status, _, err = results(tmp_path, capsys)

    assert status == 1 and f"{tmp_path / 'metrics/timings/train.json'}: not JSON" in err


def test_help_explains_what_the_table_holds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        summarizer_main(["results", "--help"])

    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in (
        "best lead",
        "samples/s",
        "registry",
        "not registered",
        "dvc metrics show metrics/ingest.json",
    ):
        assert words in text
