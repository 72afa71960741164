"""GRU vs LSTM as two DVC experiments: `dvc exp show` and `summarizer-compare` line them up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from summarizer.tracking import list_runs
from tests.pipeline.dvc_project import VENV_BIN, DvcProject, tiny_params

pytestmark = pytest.mark.slow


def experiment_rows(show_json: str) -> list[dict]:
    """The experiments of `dvc exp show --json` with their params and metrics, keyed by file."""
    rows = []
    for baseline in json.loads(show_json):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                data = revision["data"]
                rows.append(
                    {
                        "name": revision.get("name") or data.get("name"),
                        "params": data["params"]["params.yaml"]["data"],
                        "metrics": {path: value["data"] for path, value in data["metrics"].items()},
                    }
                )
    return rows


def test_gru_and_lstm_experiments_are_listed_with_their_metrics(tmp_path: Path) -> None:
    project = DvcProject(tmp_path / "repo", tiny_params(workers=1))

    project.dvc("exp", "run", "-n", "cell-gru", "-S", "train.cell=gru")
    lstm = project.dvc("exp", "run", "-n", "cell-lstm", "-S", "train.cell=lstm")
    assert "Stage 'ingest' didn't change, skipping" in lstm.stdout  # only train and evaluate rerun

    rows = {row["name"]: row for row in experiment_rows(project.dvc("exp", "show", "--json").stdout)}
    assert {"cell-gru", "cell-lstm"} <= rows.keys()
    for name, cell in (("cell-gru", "gru"), ("cell-lstm", "lstm")):
        assert rows[name]["params"]["train"]["cell"] == cell
        assert rows[name]["metrics"]["metrics.json"]["rougeL"] >= 0
        assert rows[name]["metrics"]["metrics.json"]["test_perplexity"] > 1
        assert rows[name]["metrics"]["metrics/train.json"]["parameter_count"] > 0
        assert rows[name]["metrics"]["metrics/timings/train.json"]["samples_per_second"] > 0
    gru_parameters = rows["cell-gru"]["metrics"]["metrics/train.json"]["parameter_count"]
    assert rows["cell-lstm"]["metrics"]["metrics/train.json"]["parameter_count"] > gru_parameters

    runs = list_runs(f"sqlite:///{project.path / 'mlflow.db'}", "summarizer")
    assert sorted(run.params["train.cell"] for run in runs) == ["gru", "lstm"]
    assert sorted(run.run_name for run in runs) == ["gru-float32-1w", "lstm-float32-1w"]
    assert {run.tags.get("dvc.exp_name") for run in runs} == {"cell-gru", "cell-lstm"}
    assert all(run.tags.get("mlflow.source.git.commit") for run in runs)
    assert set(runs[0].params) == set(runs[1].params)  # the same flattened keys line up in the compare view

    table = project.run(str(VENV_BIN / "summarizer-compare"), "--format", "csv").stdout
    lines = table.strip().splitlines()
    assert len(lines) == 3
    assert {"gru-float32-1w", "lstm-float32-1w"} <= {field for line in lines[1:] for field in line.split(",")}


def queue_statuses(project: DvcProject) -> dict[str, str]:
    """Task id -> status (Queued, Running, Success, Failed) from `dvc queue status`."""
    statuses = {}
    for line in project.dvc("queue", "status").stdout.splitlines():
        fields = line.split()
        if fields and fields[-1] in ("Queued", "Running", "Success", "Failed"):
            statuses[fields[0]] = fields[-1]
    return statuses


def wait_for_queue(project: DvcProject, timeout_seconds: float = 900) -> dict[str, str]:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        statuses = queue_statuses(project)
        if statuses and not {"Queued", "Running"} & set(statuses.values()):
            return statuses
        time.sleep(3)
    project.dvc("queue", "kill", *queue_statuses(project), check=False)
    raise AssertionError(f"the queue did not finish in {timeout_seconds} s: {queue_statuses(project)}")


def test_a_queued_grid_runs_both_cells_into_one_tracking_store(tmp_path: Path) -> None:
    project = DvcProject(tmp_path / "repo", tiny_params(workers=1))

    queued = project.dvc("exp", "run", "--queue", "-S", "train.cell=gru,lstm")
    assert queued.stdout.count("Queued experiment") == 2, queued.stdout
    project.dvc("queue", "start", "--jobs", "1")
    statuses = wait_for_queue(project)
    failed = [task for task, status in statuses.items() if status != "Success"]
    logs = "\n".join(project.dvc("queue", "logs", task, check=False).stdout for task in failed)
    assert not failed, logs

    rows = experiment_rows(project.dvc("exp", "show", "--json").stdout)
    assert sorted(row["params"]["train"]["cell"] for row in rows) == ["gru", "lstm"]
    assert all(row["metrics"]["metrics.json"]["test_perplexity"] > 1 for row in rows)
    # Queued runs execute in temporary copies; DVC_ROOT points them at this repository's store.
    runs = list_runs(f"sqlite:///{project.path / 'mlflow.db'}", "summarizer")
    assert sorted(run.run_name for run in runs) == ["gru-float32-1w", "lstm-float32-1w"]
    assert {run.status for run in runs} == {"FINISHED"}
    assert {run.tags.get("dvc.exp_name") for run in runs} == {row["name"] for row in rows}
    checkpoints = project.path / ".checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir())  # each run removed its own
