"""The model directory contract: written by training, read by evaluation and serving, errors naming fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from summarizer.inference import SummarizerPipeline
from summarizer.model_directory import (
    SPECIAL_IDS,
    ModelDirectoryError,
    ModelSettings,
    RunInfo,
    check_model_directory,
    load,
    read_run_info,
    read_settings,
)
from tests.helpers import TOKENIZE, TinyModel, build_model_directory


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(
        tmp_path_factory.mktemp("tiny"),
        run={"run_id": "a" * 32, "experiment": "tests", "tracking_uri": "sqlite:///x.db"},
    )


def test_written_directory_reads_back_what_was_written(tiny: TinyModel) -> None:
    assert sorted(path.name for path in tiny.model_dir.iterdir()) == [
        "config.json",
        "model.keras",
        "run.json",
        "spm.model",
    ]
    expected = ModelSettings(TOKENIZE.max_source_tokens, TOKENIZE.max_target_tokens)
    assert read_settings(tiny.model_dir) == expected
    assert read_run_info(tiny.model_dir) == RunInfo("a" * 32, "tests", "sqlite:///x.db")
    config = json.loads((tiny.model_dir / "config.json").read_text())
    assert config == {"max_source_tokens": 40, "max_target_tokens": 10, "special_ids": SPECIAL_IDS}
    model, tokenizer, settings = load(tiny.model_dir)
    assert model.vocab_size == tokenizer.vocab_size and settings.max_source_tokens == 40


def test_special_ids_that_differ_from_the_code_are_refused(tiny: TinyModel, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for name in ("model.keras", "spm.model"):
        (broken / name).write_bytes((tiny.model_dir / name).read_bytes())
    config = json.loads((tiny.model_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "special_ids": {**SPECIAL_IDS, "eos": 9}}))
    with pytest.raises(ModelDirectoryError, match=r"config\.json: field 'special_ids'"):
        load(broken)


def test_incomplete_model_directory_names_the_missing_files(tmp_path: Path) -> None:
    (tmp_path / "spm.model").write_bytes(b"")
    with pytest.raises(ModelDirectoryError, match=r"lacks model\.keras, config\.json.*dvc repro train"):
        check_model_directory(tmp_path)
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        SummarizerPipeline.load(tmp_path / "absent")


def test_malformed_config_json_names_the_field(tiny: TinyModel, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    broken.mkdir()
    for name in ("model.keras", "spm.model"):
        (broken / name).write_bytes((tiny.model_dir / name).read_bytes())
    config = json.loads((tiny.model_dir / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "max_source_tokens": "40"}))
    with pytest.raises(ModelDirectoryError, match=r"config\.json: field 'max_source_tokens'"):
        SummarizerPipeline.load(broken)


def test_run_json_errors_name_the_field(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"run_id": "", "experiment": "summarizer"}', encoding="utf-8")
    with pytest.raises(ModelDirectoryError, match=r"run\.json: field 'run_id'"):
        read_run_info(tmp_path)
    with pytest.raises(ModelDirectoryError, match=r"run\.json: not found"):
        read_run_info(tmp_path / "absent")
