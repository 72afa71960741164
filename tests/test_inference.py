"""Inference: a model directory -> summaries (greedy and beam), teacher-forced scores, the pyfunc model.

:func:`build_model_directory` writes a complete, tiny model directory the way the pipeline does (the real
tokenize stage code, ``build_model``, ``training.write_model_directory``); test_evaluation and test_cli
use it.
The model is seeded and untrained: the tests compare decoding paths with each other, not with references.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from summarizer.config import ConfigError, EvaluateConfig, Params, TokenizeConfig, TrainConfig
from summarizer.decoding import greedy_search
from summarizer.inference import (
    ModelDirectoryError,
    SummarizerPipeline,
    check_model_directory,
    log_pyfunc_model,
    pip_requirements,
)
from summarizer.model import build_model
from summarizer.records import run_tokenize
from summarizer.tokenization import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from summarizer.tracking import RunTracker
from summarizer.training import inference_config, write_model_directory
from tests.conftest import make_pairs

TOKENIZE = TokenizeConfig(
    vocab_size=150, max_source_tokens=40, max_target_tokens=10, num_shards=2, input_sentence_size=1000
)
TRAIN = TrainConfig(units=16, embedding_dim=16, dropout=0.0, seed=7)
GREEDY = {"search": "greedy", "max_length": 10, "min_length": 1, "no_repeat_ngram_size": 0, "batch_size": 4}
SPLIT_SIZES = {"train": 120, "val": 8, "test": 10}


@dataclasses.dataclass(frozen=True)
class TinyModel:
    model_dir: Path
    data_dir: Path  # tokenized: spm.model and {split}-NNNNN-of-00002.tfrecord
    ingested_dir: Path  # {train,val,test}.jsonl

    def test_pairs(self) -> list[tuple[str, str]]:
        lines = (self.ingested_dir / "test.jsonl").read_text(encoding="utf-8").splitlines()
        return [(record["text"], record["summary"]) for record in map(json.loads, lines)]


def write_split(path: Path, pairs: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index, (text, summary) in enumerate(pairs):
            record = {
                "id": f"{path.stem}-{index}",
                "text": text,
                "summary": summary,
                "group": f"{path.stem}{index}",
            }
            handle.write(json.dumps(record) + "\n")


def build_model_directory(root: Path, run: dict | None = None) -> TinyModel:
    """Ingested splits, tokenized shards and a seeded untrained model directory under ``root``."""
    ingested, tokenized = root / "ingested", root / "tokenized"
    ingested.mkdir(parents=True)
    tokenized.mkdir()
    for seed, (split, count) in enumerate(SPLIT_SIZES.items()):
        write_split(ingested / f"{split}.jsonl", make_pairs(count, seed=seed))
    run_tokenize(ingested, tokenized, TOKENIZE)
    params = Params(tokenize=TOKENIZE, train=TRAIN)
    keras.utils.set_random_seed(TRAIN.seed)
    model = build_model(TRAIN, Tokenizer.load(tokenized / "spm.model").vocab_size)
    run = run or {"run_id": "0" * 32, "experiment": "summarizer", "tracking_uri": "sqlite:///unused.db"}
    write_model_directory(root / "model", model, tokenized, inference_config(params, model), run)
    return TinyModel(root / "model", tokenized, ingested)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return build_model_directory(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def greedy(tiny: TinyModel) -> SummarizerPipeline:
    return SummarizerPipeline.load(tiny.model_dir, GREEDY)


@pytest.fixture(scope="module")
def texts(tiny: TinyModel) -> list[str]:
    return [text for text, _ in tiny.test_pairs()]


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


def test_bad_decoding_setting_names_the_evaluate_key(tiny: TinyModel) -> None:
    with pytest.raises(ConfigError, match="evaluate.beam_widht"):
        SummarizerPipeline.load(tiny.model_dir, {"beam_widht": 2})
    with pytest.raises(ConfigError, match="evaluate.min_length"):
        SummarizerPipeline.load(tiny.model_dir, {"min_length": 0})


def test_settings_come_from_config_json(greedy: SummarizerPipeline) -> None:
    assert (greedy.settings.max_source_tokens, greedy.settings.max_target_tokens) == (40, 10)
    assert greedy.decoding == EvaluateConfig(**GREEDY)


def test_summary_equals_an_unpadded_eager_greedy_decode(greedy: SummarizerPipeline, texts: list[str]) -> None:
    """The padded, fixed-shape tf.function path gives the ids of a plain eager decode of one unpadded text."""
    source = tf.constant([greedy.source_ids([texts[0]])[0]], tf.int32)  # (1, source_time) without padding
    context, state = greedy.model.encode(source)
    expected = greedy_search(
        lambda ids, step_state: greedy.model.decode_step(ids, step_state, context),
        state,
        1,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        max_length=10,
        min_length=1,
    )
    expected_ids = expected.ids.numpy()[0, : int(expected.lengths[0])]
    assert len(expected_ids) >= 1
    assert greedy.summarize(texts[:1]) == [greedy.summary_of_ids(expected_ids, texts[0])]
    assert greedy.summarize(texts)[0] == greedy.summarize(texts[:1])[0]


def test_greedy_and_beam_width_one_give_identical_summaries(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    beam_one = greedy.with_decoding({**GREEDY, "search": "beam", "beam_width": 1, "length_penalty": 0.0})
    summaries = greedy.summarize(texts)
    assert beam_one.summarize(texts) == summaries
    assert len(set(summaries)) > 1  # the texts differ, and so do their summaries


def test_batching_and_padding_rows_do_not_change_summaries(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    whole = greedy.summarize(texts, batch_size=len(texts))
    assert greedy.summarize(texts, batch_size=3) == whole  # 3 + 3 + 3 + 1 (two padding rows)
    assert [greedy.summarize([text])[0] for text in texts[:3]] == whole[:3]


def test_each_batch_size_is_traced_once(greedy: SummarizerPipeline, texts: list[str]) -> None:
    pipeline = greedy.with_decoding(GREEDY)
    pipeline.summarize(texts, batch_size=3)
    pipeline.summarize(texts[:5], batch_size=3)
    assert pipeline._decoders[3].experimental_get_tracing_count() == 1


def test_beam_summaries_are_never_empty_and_respect_the_lengths(
    greedy: SummarizerPipeline, texts: list[str]
) -> None:
    beam = greedy.with_decoding({"search": "beam", "beam_width": 3, "max_length": 6, "min_length": 2})
    summaries = beam.summarize(texts)
    ids, lengths = beam.decoder(len(texts))(tf.constant(beam._padded(beam.source_ids(texts), len(texts))))
    assert all(2 <= length <= 6 for length in lengths.numpy())
    assert summaries == [
        beam.summary_of_ids(row[:length], text)
        for row, length, text in zip(ids.numpy(), lengths.numpy(), texts, strict=True)
    ]
    assert all(summary.strip() for summary in summaries)


def test_whitespace_only_pieces_fall_back_to_the_lead_word(greedy: SummarizerPipeline) -> None:
    space_piece = greedy.tokenizer.processor.piece_to_id("▁")
    assert greedy.tokenizer.decode([space_piece]).strip() == ""
    assert greedy.summary_of_ids([space_piece, PAD_ID], "  Zorblat  is a tool.") == "Zorblat"
    assert greedy.summary_of_ids([EOS_ID, BOS_ID], "quintex daemon") == "quintex"


def test_empty_text_is_rejected_naming_its_index(greedy: SummarizerPipeline) -> None:
    with pytest.raises(ValueError, match="text 1: empty"):
        greedy.summarize(["a tool for text editing", " \n\t "])


def test_texts_are_normalized_like_ingest(greedy: SummarizerPipeline, texts: list[str]) -> None:
    spaced = "  " + texts[0].replace(" ", "   ").replace("is a", "is\u00a0a") + "\n\n"
    assert greedy.source_ids([spaced]) == greedy.source_ids([texts[0]])


def test_score_equals_the_models_own_target_log_probs(greedy: SummarizerPipeline, tiny: TinyModel) -> None:
    pairs = tiny.test_pairs()[:5]
    total_nll, tokens = greedy.score(
        [text for text, _ in pairs], [summary for _, summary in pairs], batch_size=2
    )
    expected_nll, expected_tokens = 0.0, 0
    for text, summary in pairs:
        target = greedy.target_ids(summary)
        inputs = {
            "source_ids": tf.constant([greedy.source_ids([text])[0]]),
            "target_in": tf.constant([[BOS_ID, *target[:-1]]]),
            "target_out": tf.constant([target]),
        }
        expected_nll -= float(tf.reduce_sum(greedy.model.score(inputs)["target_log_probs"]))
        expected_tokens += len(target)
    assert tokens == expected_tokens
    assert total_nll == pytest.approx(expected_nll, rel=1e-4)
    assert total_nll / tokens > 1.0  # an untrained model is far from certain


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


def test_padding_row_sources_are_real_inputs(greedy: SummarizerPipeline) -> None:
    padded = greedy._padded([[5, 6, 7], [8]], 4)
    assert padded.shape == (4, 40) and padded.dtype == np.int32
    assert padded[:, :3].tolist() == [[5, 6, 7], [8, 0, 0], [5, 6, 7], [5, 6, 7]]
    assert not padded[:, 3:].any()
