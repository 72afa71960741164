"""Shared fixtures: a small synthetic corpus written into tmp_path, and tiny params."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import mlflow
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

_NAMES = [
    "zorblat",
    "quintex",
    "mervyn",
    "paxolite",
    "drumlin",
    "fennec",
    "gorsemark",
    "halcyon",
    "isobar",
    "jettison",
    "kestrel",
    "lumen",
    "moraine",
    "nimbus",
    "oxbow",
    "pylon",
    "quasar",
    "rivulet",
]
_KINDS = ["library", "tool", "daemon", "plugin", "toolkit", "server", "client", "module"]
_TOPICS = [
    "image processing",
    "network monitoring",
    "text editing",
    "audio mixing",
    "package building",
    "disk encryption",
    "font rendering",
    "data compression",
    "email filtering",
    "map projection",
]
_FILLER_TEXT = (
    "it is written in portable code and ships with documentation examples and a test suite that "
    "covers the common cases users meet when they deploy it on servers and desktops alike"
)
_FILLER = _FILLER_TEXT.split(" ")


def make_pairs(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """Synthetic (text, summary) pairs whose summary copies rare words from the text, like Debian synopses."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        name = f"{rng.choice(_NAMES)}{index}"
        kind, topic = rng.choice(_KINDS), rng.choice(_TOPICS)
        filler = " ".join(rng.sample(_FILLER, k=18))
        text = f"{name} is a {kind} for {topic}. {filler}. the {name} {kind} is maintained upstream."
        pairs.append((text, f"{kind} for {topic} {name}"))
    return pairs


def write_csv(
    path: Path,
    pairs: list[tuple[str, str]],
    columns: tuple[str, str] = ("text", "summary"),
    delimiter: str = ",",
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(columns)
        writer.writerows(pairs)
    return path


@pytest.fixture
def tiny_corpus_csv(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "corpus.csv", make_pairs(240))


@pytest.fixture(autouse=True)
def isolated_mlflow_tracking_uri():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which overrides params: no test may leak it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(before)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture
def server(tmp_path: Path):
    """A real ``mlflow server`` on loopback, with its own store in ``tmp_path``; stopped after the test."""
    from tests.helpers import LoopbackMlflowServer

    running = LoopbackMlflowServer(tmp_path / "server")
    running.start()
    yield running
    running.stop()
