"""scripts/mlflow-compare-screenshot.sh checks the runs before it starts a server or a browser."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "mlflow-compare-screenshot.sh"
VIEW = ROOT / "scripts" / "mlflow_compare_view.py"
COMPLETE = {"test_rougeL": 38.0, "test_lead_rougeL": 28.02, "best_val_perplexity": 24.6, "train_loss": 3.1}


def add_run(uri: str, name: str, cell: str, metrics: dict[str, float]) -> str:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("summarizer")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("summarizer")
    run = client.create_run(experiment_id, run_name=name)
    client.log_param(run.info.run_id, "train.cell", cell)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def screenshot(uri: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PYTHON": sys.executable,
        "CHROMIUM": str(tmp_path / "no-chromium"),  # never reached: the checks come first
    }
    return subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out.png")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def load_view():
    sys.path.insert(0, str(VIEW.parent))
    try:
        import mlflow_compare_view
    finally:
        sys.path.remove(str(VIEW.parent))
    return mlflow_compare_view


def test_the_script_checks_the_runs_first_then_plans_the_view(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    gru = add_run(uri, "gru-float32-2w", "gru", COMPLETE)
    killed = add_run(uri, "lstm-float32-2w", "lstm", {"train_loss": 3.0, "best_val_perplexity": 30.0})

    # one evaluated run: the script fails before it starts a server or looks for chromium
    result = screenshot(uri, tmp_path)
    assert result.returncode != 0
    assert (
        "at least 2 runs with the metrics test_rougeL, test_lead_rougeL, best_val_perplexity" in result.stderr
    )
    assert "has 1 of 2 runs" in result.stderr
    assert (
        "left out run lstm-float32-2w" in result.stderr
        and "no test_rougeL, test_lead_rougeL" in result.stderr
    )
    assert not (tmp_path / "out.png").exists()

    view = load_view()
    with pytest.raises(SystemExit, match="no experiment 'other'"):
        view.plan(uri, "other")

    lstm = add_run(uri, "lstm-float32-2w", "lstm", {**COMPLETE, "test_rougeL": 36.5})
    plan = view.plan(uri, "summarizer")
    assert [run["id"] for run in plan["runs"]] == [gru, lstm]  # best test ROUGE-L first
    assert [run["cell"] for run in plan["runs"]] == ["gru", "lstm"]
    assert killed not in json.dumps(plan)

    storage = view.local_storage(plan)
    key = f'MLflowLocalStorage-1.1-ExperimentPage-["{plan["experiment_id"]}"]-ReactComponentState'
    page = json.loads(storage[key])
    assert page["selectedColumns"] == [
        "params.`train.cell`",
        "metrics.`test_rougeL`",
        "metrics.`test_lead_rougeL`",
        "metrics.`best_val_perplexity`",
    ]
    assert "train_loss" not in json.dumps(page)
    assert page["orderByKey"] == "metrics.`test_rougeL`" and page["orderByAsc"] is False
    assert page["searchFilter"] == "metrics.test_rougeL >= 0"
    assert storage["mlflow.assistant.panelOpen_v1"] == "false"
