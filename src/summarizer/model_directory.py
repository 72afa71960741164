"""The model directory, ``models/summarizer/``: the contract between training, evaluation and serving.

The train stage writes it with :func:`write_model_directory`; the evaluate stage, ``summarize`` and the MLflow
pyfunc read it through :func:`load` / :func:`read_run_info`. Nothing else knows its file names or keys:

* ``model.keras``: the Keras model (native format; importing ``summarizer.model`` registers its layers),
* ``spm.model``: the sentencepiece model the data was tokenized with,
* ``config.json``: ``{"max_source_tokens", "max_target_tokens", "special_ids"}``, what inference needs
  besides the weights (texts are capped as in training; special ids must equal
  :mod:`summarizer.tokenization`'s),
* ``run.json``: ``{"run_id", "experiment", "tracking_uri"}``, the MLflow run the evaluate stage continues.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras

import summarizer.model  # noqa: F401  (registers the custom layers that load_model needs)
from summarizer.io import atomic_directory, read_json, write_json
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer

MODEL_FILE = "model.keras"
TOKENIZER_FILE = "spm.model"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
REQUIRED_FILES = (MODEL_FILE, TOKENIZER_FILE, CONFIG_FILE)
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


class ModelDirectoryError(FileNotFoundError):
    """A model directory is missing or incomplete, or one of its JSON files is malformed."""


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """``config.json``: what inference needs besides the weights."""

    max_source_tokens: int
    max_target_tokens: int


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """``run.json``: the MLflow run that trained the model."""

    run_id: str
    experiment: str
    tracking_uri: str = ""


def write_model_directory(
    out_dir: str | Path, model: keras.Model, tokenizer_file: str | Path, settings: ModelSettings, run: RunInfo
) -> None:
    """Write the whole directory beside ``out_dir`` and move it into place (all files or none)."""
    with atomic_directory(out_dir) as temporary:
        model.save(temporary / MODEL_FILE)
        shutil.copyfile(tokenizer_file, temporary / TOKENIZER_FILE)
        write_json(temporary / CONFIG_FILE, {**dataclasses.asdict(settings), "special_ids": SPECIAL_IDS})
        write_json(temporary / RUN_FILE, dataclasses.asdict(run))


def check_model_directory(model_dir: str | Path) -> Path:
    """Return ``model_dir`` as a Path if it holds every file inference needs.

    Raises:
        ModelDirectoryError: naming the directory, the missing files and how to produce them.
    """
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not missing:
        return model_dir
    problem = "does not exist" if not model_dir.is_dir() else f"lacks {', '.join(missing)}"
    raise ModelDirectoryError(
        f"{model_dir}: not a summarizer model directory ({problem}); expected {', '.join(REQUIRED_FILES)} "
        "as written by the train stage (run `dvc repro train`, or pass --model-dir)"
    )


def _read_object(path: Path) -> dict[str, Any]:
    try:
        value = read_json(path)
    except json.JSONDecodeError as error:
        raise ModelDirectoryError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(value, dict):
        raise ModelDirectoryError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _positive_int(config: Mapping[str, Any], key: str, path: Path) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelDirectoryError(f"{path}: field '{key}' must be an integer >= 1, got {value!r}")
    return value


def read_settings(model_dir: str | Path) -> ModelSettings:
    """Parse ``config.json``; its special ids must equal :mod:`summarizer.tokenization`'s."""
    path = Path(model_dir) / CONFIG_FILE
    config = _read_object(path)
    special_ids = config.get("special_ids", SPECIAL_IDS)
    if special_ids != SPECIAL_IDS:
        raise ModelDirectoryError(
            f"{path}: field 'special_ids' is {special_ids!r}, this code uses {SPECIAL_IDS!r}"
        )
    return ModelSettings(
        _positive_int(config, "max_source_tokens", path), _positive_int(config, "max_target_tokens", path)
    )


def read_run_info(model_dir: str | Path) -> RunInfo:
    """Parse ``run.json``.

    Raises:
        ModelDirectoryError: the file is missing or malformed, or a field is not a non-empty string.
    """
    path = Path(model_dir) / RUN_FILE
    if not path.is_file():
        raise ModelDirectoryError(
            f"{path}: not found; the train stage writes it with the MLflow run to resume"
        )
    info = _read_object(path)
    for name in ("run_id", "experiment"):
        if not isinstance(info.get(name), str) or not info[name]:
            raise ModelDirectoryError(f"{path}: field '{name}' must be a non-empty string")
    return RunInfo(info["run_id"], info["experiment"], str(info.get("tracking_uri") or ""))


def load(model_dir: str | Path) -> tuple[keras.Model, Tokenizer, ModelSettings]:
    """The model, its tokenizer and settings.

    Raises:
        ModelDirectoryError: a file is missing or malformed, or the model and tokenizer disagree.
    """
    model_dir = check_model_directory(model_dir)
    settings = read_settings(model_dir)
    tokenizer = Tokenizer.load(model_dir / TOKENIZER_FILE)
    model = keras.saving.load_model(model_dir / MODEL_FILE, compile=False)
    if model.vocab_size != tokenizer.vocab_size:
        raise ModelDirectoryError(
            f"{model_dir}: {MODEL_FILE} has a {model.vocab_size}-id vocabulary but {TOKENIZER_FILE} has "
            f"{tokenizer.vocab_size} pieces; they come from different runs"
        )
    return model, tokenizer, settings


__all__ = [
    "CONFIG_FILE",
    "MODEL_FILE",
    "REQUIRED_FILES",
    "RUN_FILE",
    "SPECIAL_IDS",
    "TOKENIZER_FILE",
    "ModelDirectoryError",
    "ModelSettings",
    "RunInfo",
    "check_model_directory",
    "load",
    "read_run_info",
    "read_settings",
    "write_model_directory",
]
