"""The summarizer as an MLflow pyfunc model, logged into the run that trained it.

:class:`SummarizerPyfunc` wraps :class:`~summarizer.inference.SummarizerPipeline` as an
``mlflow.pyfunc.PythonModel`` (a ``text`` column in, a ``summary`` column out); :func:`log_pyfunc_model` logs
it into an existing run so that
``mlflow models predict -m runs:/<run_id>/summarizer -i texts.csv -t csv --env-manager local`` and
``mlflow models serve -m models:/summarizer@champion --env-manager local`` work.
This is tracking's concern (what goes into the MLflow run), kept beside :mod:`summarizer.tracking`.

The model is logged *from code* (MLflow 3): ``python_model`` is the path of :mod:`summarizer.pyfunc_model`,
which calls :func:`mlflow.models.set_model`; the package itself travels as ``code_paths``. Nothing is
pickled, so a logged model loads as long as its copied code does.

Serving (``POST /invocations``; the signature is one string column in, one string column out)::

    {"dataframe_records": [{"text": "..."}, ...]}   or   {"inputs": {"text": ["...", ...]}}
    -> {"predictions": [{"summary": "..."}, ...]}
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import yaml
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema

import summarizer
from summarizer.config import EvaluateConfig
from summarizer.inference import SummarizerPipeline, decoding_config
from summarizer.model_directory import check_model_directory
from summarizer.tracking import RunTracker

TEXT_COLUMN = "text"
SUMMARY_COLUMN = "summary"
PYFUNC_NAME = "summarizer"
MODEL_DIR_ARTIFACT = "model_dir"
DECODING_KEY = "decoding"
MODEL_URI_SCHEMES = ("models:/", "runs:/")
# The models-from-code file MLflow runs to load the model (see its docstring).
MODEL_CODE_PATH = Path(__file__).with_name("pyfunc_model.py")
# Distribution names whose installed versions the pyfunc model pins (tensorflow is added separately).
PINNED_DISTRIBUTIONS = (
    "keras",
    "sentencepiece",
    "rouge-score",
    "numpy",
    "pandas",
    "pyarrow",
    "pyyaml",
    "mlflow",
)


def _texts_of(model_input: Any) -> list[str]:
    """The texts of a pyfunc input: a DataFrame's ``text`` column (or its only column), a Series or a list."""
    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN in model_input.columns:
            return model_input[TEXT_COLUMN].tolist()
        if len(model_input.columns) == 1:
            return model_input.iloc[:, 0].tolist()
        raise ValueError(f"expected a '{TEXT_COLUMN}' column, got columns {list(model_input.columns)}")
    if isinstance(model_input, pd.Series | np.ndarray):
        return list(model_input.tolist())
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, Mapping) and TEXT_COLUMN in model_input:
        return list(model_input[TEXT_COLUMN])
    return list(model_input)


class SummarizerPyfunc(mlflow.pyfunc.PythonModel):
    """The summarizer as an MLflow pyfunc model: ``predict`` maps a ``text`` column to a ``summary`` column.

    The model directory is the ``model_dir`` artifact; the decoding settings are the ``decoding`` entry of the
    model config (``evaluate.*`` keys).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        decoding = (context.model_config or {}).get(DECODING_KEY)
        self.pipeline = SummarizerPipeline.load(context.artifacts[MODEL_DIR_ARTIFACT], decoding)

    def predict(
        self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame | list[str]:
        """A DataFrame with a ``summary`` column for DataFrame input, else a list of summaries."""
        summaries = self.pipeline.summarize(_texts_of(model_input))
        if isinstance(model_input, pd.DataFrame):
            return pd.DataFrame({SUMMARY_COLUMN: summaries}, index=model_input.index)
        return summaries


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def pip_requirements() -> list[str]:
    """Exact pins of the installed TensorFlow (``tensorflow-cpu`` or ``tensorflow``) and other libraries."""
    names = [
        next((name for name in ("tensorflow-cpu", "tensorflow") if _installed_version(name)), "tensorflow")
    ]
    names += PINNED_DISTRIBUTIONS
    return [f"{name}=={version}" if (version := _installed_version(name)) else name for name in names]


def pyfunc_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema([ColSpec("string", SUMMARY_COLUMN)])
    )


def log_pyfunc_model(
    run: RunTracker | str,
    model_dir: str | Path,
    decoding: EvaluateConfig | Mapping[str, Any] | None = None,
    *,
    name: str = PYFUNC_NAME,
    tracking_uri: str | None = None,
    example_texts: Sequence[str] = (),
) -> str:
    """Log ``model_dir`` as a pyfunc model named ``name`` in an existing run; returns ``runs:/<id>/<name>``.

    See :func:`log_pyfunc_model_info` (same arguments), which returns MLflow's ``ModelInfo`` instead
    (``model_uri`` ``models:/<model_id>``, ``model_id``, ``run_id``).
    """
    info = log_pyfunc_model_info(
        run, model_dir, decoding, name=name, tracking_uri=tracking_uri, example_texts=example_texts
    )
    return f"runs:/{info.run_id}/{name}"


def log_pyfunc_model_info(
    run: RunTracker | str,
    model_dir: str | Path,
    decoding: EvaluateConfig | Mapping[str, Any] | None = None,
    *,
    name: str = PYFUNC_NAME,
    tracking_uri: str | None = None,
    example_texts: Sequence[str] = (),
) -> ModelInfo:
    """Log ``model_dir`` as a models-from-code pyfunc model named ``name`` in an existing run.

    ``run`` is a started :class:`RunTracker` (its store is used) or a run id (in ``tracking_uri``, else the
    current MLflow tracking URI). The fluent MLflow state is restored afterwards: the previous tracking URI,
    and the run's status (the fluent API ends the run FINISHED; a RUNNING run goes back to RUNNING).
    ``example_texts``, if given, become the input example, which MLflow checks by loading the logged model
    and summarizing them.

    Returns:
        MLflow's ``ModelInfo``: ``model_uri`` (``models:/<model_id>``), ``model_id``, ``run_id``, signature.
    """
    model_dir = check_model_directory(model_dir)
    run_id = run.run_id if isinstance(run, RunTracker) else run
    uri = run.tracking_uri if isinstance(run, RunTracker) else tracking_uri or mlflow.get_tracking_uri()
    # mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI (for subprocesses), which would override every
    # later resolve_tracking_uri in this process: restore the variable exactly, unset if it was unset.
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient(tracking_uri=uri)
        previous_status = client.get_run(run_id).info.status
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(name=name, **_model_arguments(model_dir, decoding, example_texts))
        if previous_status != "FINISHED":
            client.update_run(run_id, status=previous_status)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    return info


def _model_arguments(
    model_dir: Path, decoding: EvaluateConfig | Mapping[str, Any] | None, example_texts: Sequence[str]
) -> dict[str, Any]:
    """What ``log_model`` and ``save_model`` are given: the code, the model directory, settings, signature."""
    settings = dataclasses.asdict(decoding_config(decoding))
    return {
        "python_model": str(MODEL_CODE_PATH),
        "artifacts": {MODEL_DIR_ARTIFACT: str(model_dir)},
        "model_config": {DECODING_KEY: {key: _jsonable(value) for key, value in settings.items()}},
        "code_paths": [str(Path(summarizer.__file__).parent)],
        "pip_requirements": pip_requirements(),
        "signature": pyfunc_signature(),
        "input_example": pd.DataFrame({TEXT_COLUMN: list(example_texts)}) if example_texts else None,
    }


def save_pyfunc_model(
    model_dir: str | Path,
    path: str | Path,
    decoding: EvaluateConfig | Mapping[str, Any] | None = None,
    example_texts: Sequence[str] = (),
) -> Path:
    """Save ``model_dir`` as the pyfunc model (as :func:`log_pyfunc_model_info` logs it) at a new ``path``.

    No tracking store is involved: ``mlflow models serve -m PATH --env-manager local`` serves it.
    """
    model_dir = check_model_directory(model_dir)
    mlflow.pyfunc.save_model(path=str(path), **_model_arguments(model_dir, decoding, example_texts))
    return Path(path)


def is_model_uri(model: str) -> bool:
    """``models:/...`` or ``runs:/...`` (an MLflow model URI), rather than a model directory."""
    return model.startswith(MODEL_URI_SCHEMES)


def download_model_directory(model_uri: str, tracking_uri: str, destination: str | Path) -> tuple[Path, dict]:
    """Download the pyfunc model at ``model_uri`` into ``destination``: its model directory and decoding.

    ``models:/`` URIs are resolved through MLflow's global tracking (and registry) URI, whatever
    ``tracking_uri=`` arguments say, so it is set to ``tracking_uri`` meanwhile (then restored).

    Returns:
        The model directory inside the downloaded model, and the decoding settings it was logged with.

    Raises:
        MlflowException: no such run, model, version or alias (``RESOURCE_DOES_NOT_EXIST``), or a store
            failure.
        ModelDirectoryError: the model holds no summarizer model directory.
    """
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")  # set_tracking_uri sets it too: restore it exactly
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(destination)))
    finally:
        mlflow.set_tracking_uri(previous_uri)
    mlmodel = yaml.safe_load((local / "MLmodel").read_text(encoding="utf-8"))
    # MLmodel keeps the model config under `config`, the artifact under `artifacts/<source directory name>`.
    flavor = mlmodel.get("flavors", {}).get("python_function", {})
    decoding = (flavor.get("config") or {}).get(DECODING_KEY, {})
    artifact = (flavor.get("artifacts") or {}).get(MODEL_DIR_ARTIFACT, {}).get("path", "")
    return check_model_directory(local / artifact), decoding


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


__all__ = [
    "MODEL_CODE_PATH",
    "SummarizerPyfunc",
    "download_model_directory",
    "is_model_uri",
    "log_pyfunc_model",
    "log_pyfunc_model_info",
    "pip_requirements",
    "pyfunc_signature",
    "save_pyfunc_model",
]
