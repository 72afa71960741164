"""The pyfunc model: logged into a run, loaded by MLflow, summarizing like the pipeline."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import pandas as pd
import pytest
import yaml

from summarizer.inference import SummarizerPipeline
from summarizer.pyfunc import log_pyfunc_model, pip_requirements
from summarizer.tracking import RunTracker
from tests.helpers import GREEDY, RegisteredModel, TinyModel, build_model_directory, register_tiny_model
from tests.workers.serve import ModelServer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def texts(tiny: TinyModel) -> list[str]:
    return [text for text, _ in tiny.test_pairs()]


@dataclasses.dataclass(frozen=True)
class Registered:
    """The tiny model registered as version 1 of ``summarizer``, alias ``champion``, and its summaries."""

    model: RegisteredModel
    expected: list[str]  # SummarizerPipeline's summaries of ``texts``

    @property
    def uri(self) -> str:
        return self.model.uri


@pytest.fixture(scope="module")
def registered(tiny: TinyModel, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Registered:
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    model = register_tiny_model(uri, tiny.model_dir, GREEDY)
    return Registered(model, SummarizerPipeline.load(tiny.model_dir, GREEDY).summarize(texts))


def _load(uri: str, model_uri: str) -> mlflow.pyfunc.PyFuncModel:
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)


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


@pytest.mark.slow
def test_pyfunc_model_is_logged_from_code_with_signature_and_example(registered: Registered) -> None:
    model = mlflow.MlflowClient(tracking_uri=registered.uri).get_logged_model(registered.model.model_id)
    assert model.name == "summarizer" and model.source_run_id == registered.model.run_id
    # models:/ URIs resolve through the global tracking URI whatever tracking_uri= says: use the location.
    directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location))
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text(encoding="utf-8"))
    flavor = mlmodel["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py")  # models-from-code, nothing pickled
    assert not list(directory.rglob("python_model.pkl"))
    signature = mlmodel["signature"]
    assert json.loads(signature["inputs"]) == [{"type": "string", "name": "text", "required": True}]
    assert json.loads(signature["outputs"]) == [{"type": "string", "name": "summary", "required": True}]
    assert mlmodel["saved_input_example_info"]["type"] == "dataframe"


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_uri",
    [
        "runs:/{run_id}/summarizer",
        "models:/{model_id}",
        "models:/summarizer/{version}",
        "models:/summarizer@champion",
    ],
)
def test_run_and_registry_uris_load_and_summarize_like_the_pipeline(
    registered: Registered, texts: list[str], model_uri: str
) -> None:
    uri = model_uri.format(**dataclasses.asdict(registered.model))
    frame = _load(registered.uri, uri).predict(pd.DataFrame({"text": texts}))
    assert frame["summary"].tolist() == registered.expected


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations_with_the_pipeline_summaries(
    registered: Registered, texts: list[str], tmp_path: Path
) -> None:
    # No PYTHONPATH: the installed environment and the model's own copy of the package (code_paths).
    environment = {"MLFLOW_TRACKING_URI": registered.uri, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""}
    with ModelServer("models:/summarizer@champion", tmp_path / "serve.log", environment) as server:
        records = server.invoke({"dataframe_records": [{"text": text} for text in texts]})
        columns = server.invoke({"inputs": {"text": texts[:2]}})
        split = server.invoke({"dataframe_split": {"columns": ["text"], "data": [[texts[0]]]}})
    assert records == {"predictions": [{"summary": summary} for summary in registered.expected]}
    assert columns == {"predictions": [{"summary": summary} for summary in registered.expected[:2]]}
    assert split == {"predictions": [{"summary": registered.expected[0]}]}
