"""``summarizer results``: the end of a pipeline run in a dozen lines a person reads at a glance.

Reads what the stages wrote (no TensorFlow, no MLflow): ``metrics.json`` (evaluate: ROUGE, perplexity, the
best lead baseline and, under ``"registry"``, the registry decision ``{"model", "version", "alias",
"reason"}``), ``metrics/train.json`` (epochs, why training stopped, workers) and
``metrics/timings/{tokenize,train,evaluate}.json`` (seconds, samples/s; optional).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from summarizer.progress import format_duration

EVALUATE_METRICS = Path("metrics.json")
TRAIN_METRICS = Path("metrics/train.json")
TIMINGS_DIRECTORY = Path("metrics/timings")
STAGES = ("tokenize", "train", "evaluate")

DESCRIPTION = (
    "Print the last pipeline run's results as a short table: test ROUGE-1/2/L and perplexity of the model "
    "beside the best lead baseline (the first N words of each text), the epochs trained and why training "
    "stopped, training samples/s, each stage's seconds (metrics/timings/) and the model registry's decision "
    f"(the `registry` key of {EVALUATE_METRICS}; 'not registered' without it). Reads {EVALUATE_METRICS} and "
    f"{TRAIN_METRICS} under --root; exits 1 naming the file when one is missing or not JSON. "
    "`dvc metrics show` has every figure; `dvc metrics show metrics/ingest.json metrics/tokenize.json` the "
    "data statistics."
)


class ResultsError(Exception):
    """A results file is missing or unreadable; the message names it and says what to run."""


@dataclass(frozen=True)
class Results:
    evaluate: dict[str, Any]
    train: dict[str, Any]
    timings: dict[str, dict[str, Any]]


def _read(root: Path, relative: Path, required: bool) -> dict[str, Any] | None:
    path = root / relative
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not required:
            return None
        raise ResultsError(f"{path} not found: run `dvc repro` first") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultsError(f"{path}: not JSON (line {error.lineno}: {error.msg}); run `dvc repro`") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_results(root: Path) -> Results:
    """The stages' metrics under ``root``.

    Raises:
        ResultsError: ``metrics.json`` or ``metrics/train.json`` is missing or not a JSON object, or a timings
            file is not JSON (a missing timings file is left out).
    """
    evaluate = _read(root, EVALUATE_METRICS, required=True)
    train = _read(root, TRAIN_METRICS, required=True)
    timings = {stage: _read(root, TIMINGS_DIRECTORY / f"{stage}.json", required=False) for stage in STAGES}
    return Results(evaluate, train, {stage: value for stage, value in timings.items() if value is not None})


def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _stage_seconds(stage: str, timings: dict[str, Any]) -> float | None:
    """A stage's measured seconds: the train stage's wall time; the data stages' sum of their parts."""
    if "wall_seconds" in timings:
        return timings["wall_seconds"]
    parts = {
        "tokenize": ("tokenizer_seconds", "encode_seconds"),
        "evaluate": ("decode_seconds",),
    }.get(stage, ())
    values = [timings[key] for key in parts if isinstance(timings.get(key), int | float)]
    return sum(values) if values else None


def _registry_line(evaluate: dict[str, Any]) -> str:
    registry = evaluate.get("registry")
    if not registry:
        return "not registered"
    name, version = registry.get("model", "?"), registry.get("version", "?")
    alias = registry.get("alias")
    decision = f"alias {alias}" if alias else "no alias"
    reason = registry.get("reason")
    return f"{name} version {version}: {decision}" + (f" ({reason})" if reason else "")


def _quality_rows(evaluate: dict[str, Any]) -> list[list[str]]:
    lead = evaluate.get("lead") or {}
    words = lead.get("best_words")
    lead_title = f"best lead (first {words} words)" if words is not None else "best lead"
    rows = [["", "model", lead_title]]
    for title, key in (("ROUGE-1", "rouge1"), ("ROUGE-2", "rouge2"), ("ROUGE-L", "rougeL")):
        rows.append([title, _number(evaluate.get(key)), _number(lead.get(key))])
    rows.append(["perplexity", _number(evaluate.get("test_perplexity")), "-"])
    return rows


def _training_line(results: Results) -> str:
    train = results.train
    speed = results.timings.get("train", {}).get("samples_per_second", train.get("samples_per_second"))
    epochs = train.get("epochs", "?")
    parts = [f"{epochs} epoch{'' if epochs == 1 else 's'}"]
    if train.get("workers"):
        parts[0] += f" on {train['workers']} worker{'' if train['workers'] == 1 else 's'}"
    if isinstance(speed, int | float):
        parts.append(f"{speed:.1f} samples/s")
    stop = train.get("stop_reason")
    return ", ".join(parts) + (f"; stopped: {stop}" if stop else "")


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else format_duration(seconds)


def _time_line(timings: dict[str, dict[str, Any]]) -> str | None:
    seconds = {stage: _stage_seconds(stage, values) for stage, values in timings.items()}
    known = {stage: value for stage, value in seconds.items() if value is not None}
    if not known:
        return None
    parts = [f"{stage} {_duration(value)}" for stage, value in known.items()]
    return ", ".join(parts) + (
        f" (measured total {_duration(sum(known.values()))})" if len(known) > 1 else ""
    )


def format_results(results: Results) -> str:
    """The table: quality beside the best lead, then one line each for training, time and the registry."""
    quality = _quality_rows(results.evaluate)
    widths = [max(len(row[index]) for row in quality) for index in range(3)]
    lines = [
        "  ".join(
            cell.rjust(width) if index else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in quality
    ]
    beats = results.evaluate.get("beats_lead_rougeL")
    if isinstance(beats, int | float):
        lines[3] += f"  ({beats:+.2f} ROUGE-L vs the best lead)"
    lines.append("")
    lines.append(f"training  {_training_line(results)}")
    time_line = _time_line(results.timings)
    if time_line:
        lines.append(f"time      {time_line}")
    lines.append(f"registry  {_registry_line(results.evaluate)}")
    return "\n".join(lines) + "\n"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help=f"repository root holding {EVALUATE_METRICS} and metrics/ (default: the current directory)",
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    """``summarizer results``: print the table; 1 (with a one-line message) when a file is missing."""
    try:
        results = read_results(arguments.root)
    except ResultsError as error:
        print(f"summarizer results: error: {error}", file=sys.stderr)
        return 1
    sys.stdout.write(format_results(results))
    return 0
