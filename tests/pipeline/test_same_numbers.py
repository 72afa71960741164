"""The promise: two fresh copies, the whole DAG (dvc repro), byte-identical data, identical quality figures.

Tiny params, but the real default source: a 400-record sample of the pinned Debian snapshot. The second copy's
metrics, laid over the first's committed ones, make ``dvc metrics diff`` show that only timings moved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.pipeline.dvc_project import DvcProject, merge, tiny_params

pytestmark = pytest.mark.slow

DATA_OUTPUTS = ("data/raw", "data/ingested", "data/tokenized")
DETERMINISTIC_OUTPUTS = (*DATA_OUTPUTS, "reports/predictions.jsonl", "plots/train_history.csv")
QUALITY_FILES = ("metrics/ingest.json", "metrics/tokenize.json", "metrics/train.json", "metrics.json")
TIMING_FILES = (
    "metrics/timings/tokenize.json",
    "metrics/timings/train.json",
    "metrics/timings/evaluate.json",
)


def pinned_sample_params() -> dict:
    """tiny_params on the default source: the pinned snapshot, sampled."""
    params = tiny_params(workers=2)
    ingest = {key: value for key, value in params["ingest"].items() if key not in ("source", "path")}
    return merge(params, {"ingest": {**ingest, "source": "debian", "path": "", "max_records": 400}})


def output_hashes(project: DvcProject) -> dict[str, str]:
    """Every out of dvc.lock with its hash (md5 of a file, of a directory's listing)."""
    lock = yaml.safe_load((project.path / "dvc.lock").read_text(encoding="utf-8"))
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def test_two_fresh_copies_reproduce_the_same_data_and_quality_figures(tmp_path: Path) -> None:
    params = pinned_sample_params()
    first, second = DvcProject(tmp_path / "first", params), DvcProject(tmp_path / "second", params)
    # Other string-hash seeds, as two runs get anyway: whatever follows hash order (a protobuf map) shows.
    first.env["PYTHONHASHSEED"], second.env["PYTHONHASHSEED"] = "0", "1"

    first.dvc("repro")
    second.dvc("repro")

    hashes = output_hashes(first), output_hashes(second)
    for path in DETERMINISTIC_OUTPUTS:
        assert hashes[0][path] == hashes[1][path], path
    for name in QUALITY_FILES:
        assert (first.path / name).read_text() == (second.path / name).read_text(), name
    source = json.loads((first.path / "data/raw/SOURCE.json").read_text())
    assert (
        source["source"] == "debian" and source["pinned_snapshot"] == "corpora/debian/Translation-en.txt.xz"
    )
    quality = json.loads((first.path / "metrics.json").read_text())
    assert {"rouge1", "rouge2", "rougeL", "test_perplexity"} <= set(quality)
    assert "summaries_per_second" not in quality and "samples_per_second" not in json.loads(
        (first.path / "metrics/train.json").read_text()
    )

    # The second run seen as a rerun of the first: only the timing files differ.
    first.run("git", "add", "-A")
    first.run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first run")
    for name in QUALITY_FILES + TIMING_FILES:
        shutil.copyfile(second.path / name, first.path / name)
    diff = json.loads(first.dvc("metrics", "diff", "--json").stdout or "{}")
    assert diff and set(diff) <= set(TIMING_FILES), sorted(diff)
