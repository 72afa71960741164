"""The pyfunc model: logged into a run, loaded by MLflow, summarizing like the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import pandas as pd
import pytest

from summarizer.inference import SummarizerPipeline
from summarizer.pyfunc import log_pyfunc_model, pip_requirements
from summarizer.tracking import RunTracker
from tests.helpers import GREEDY, TinyModel, build_model_directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def texts(tiny: TinyModel) -> list[str]:
    return [text for text, _ in tiny.test_pairs()]


def test_pip_requirements_pin_the_installed_stack() -> None:
    requirements = pip_requirements()
    assert any(requirement.startswith(("tensorflow-cpu==", "tensorflow==")) for requirement in requirements)
    assert f"keras=={keras.__version__}" in requirements
    assert f"mlflow=={mlflow.__version__}" in requirements


@pytest.mark.slow
def test_pyfunc_model_summarizes_like_the_pipeline(tiny: TinyModel, texts: list[str], tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri)
    run_id = tracker.start("summarizer", "pyfunc-test")
    previous_uri = mlflow.get_tracking_uri()

    model_uri = log_pyfunc_model(tracker, tiny.model_dir, GREEDY)

    assert model_uri == f"runs:/{run_id}/summarizer"
    assert tracker.client.get_run(run_id).info.status == "RUNNING"  # restored after the fluent run
    assert mlflow.get_tracking_uri() == previous_uri
    expected = SummarizerPipeline.load(tiny.model_dir, GREEDY).summarize(texts)
    mlflow.set_tracking_uri(uri)
    try:
        loaded = mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    frame = loaded.predict(pd.DataFrame({"text": texts}))
    assert list(frame.columns) == ["summary"] and frame["summary"].tolist() == expected
    assert loaded.unwrap_python_model().predict(None, texts[:2]) == expected[:2]

    csv_path = tmp_path / "texts.csv"
    pd.DataFrame({"text": texts[:3]}).to_csv(csv_path, index=False)
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "models",
        "predict",
        "-m",
        model_uri,
        "-i",
        str(csv_path),
        "-t",
        "csv",
        "--env-manager",
        "local",
    ]
    environment = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    completed = subprocess.run(
        command, capture_output=True, text=True, env=environment, timeout=600, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    predictions = json.loads(completed.stdout.strip().splitlines()[-1])["predictions"]
    assert [row["summary"] for row in predictions] == expected[:3]
