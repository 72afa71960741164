"""params.yaml -> typed config: defaults, type checks, ranges and unknown keys, each error naming its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from summarizer.config import AUTO_VOCAB_SIZE, ConfigError, Params, load_params, params_from_dict
from tests.conftest import REPO_ROOT


def test_the_committed_params_file_matches_the_defaults() -> None:
    """params.yaml documents every key with its default value, so the two cannot drift apart."""
    assert load_params(REPO_ROOT / "params.yaml") == Params()


def test_vocab_size_is_auto_by_default_or_an_exact_number() -> None:
    assert (
        Params().tokenize.vocab_size == "auto" and Params().tokenize.max_vocab_size == AUTO_VOCAB_SIZE == 8000
    )
    exact = params_from_dict({"tokenize": {"vocab_size": 500}}).tokenize
    assert (exact.vocab_size, exact.max_vocab_size) == (500, 500)


def test_a_missing_section_or_key_takes_its_default() -> None:
    params = params_from_dict({"tokenize": {"vocab_size": 500}})
    assert params.tokenize.vocab_size == 500
    assert params.tokenize.seed == Params().tokenize.seed
    assert params.train == Params().train


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tokenize": {"vocab_sise": 8000}}, "tokenize.vocab_sise: unknown key; allowed keys are"),
        ({"tokeniz": {}}, "tokeniz: unknown key"),
        ({"train": {"horovod": {"cycle_time": 5}}}, "train.horovod.cycle_time: unknown key"),
        (
            {"train": {"horovod": {"cycle_time_ms": "fast"}}},
            "train.horovod.cycle_time_ms: expected a number or 'auto', got 'fast'",
        ),
        (
            {"train": {"horovod": {"cycle_time_ms": 0}}},
            "train.horovod.cycle_time_ms: expected auto or a number > 0, got 0.0",
        ),
        ({"tokenize": {"seed": -1}}, "tokenize.seed: expected an integer >= 0, got -1"),
        ({"tokenize": {"num_threads": 0}}, "tokenize.num_threads: expected 1..256, got 0"),
        (
            {"tokenize": {"vocab_size": "big"}},
            "tokenize.vocab_size: expected an integer or 'auto', got 'big'",
        ),
        ({"tokenize": {"vocab_size": 50}}, "tokenize.vocab_size: expected auto or 100..1000000, got 50"),
        (
            {"ingest": {"delimiter": ":"}},
            "ingest.delimiter: expected one of auto, ',', ';', '\\t', '|', got ':'",
        ),
        ({"tokenize": {"num_threads": 2.5}}, "tokenize.num_threads: expected an integer, got 2.5"),
        (
            {"tokenize": {"input_sentence_size": 999}},
            "tokenize.input_sentence_size: expected an integer >= 1000",
        ),
        (
            {"tokenize": {"model_type": "word"}},
            "tokenize.model_type: expected one of unigram, bpe, got 'word'",
        ),
        ({"train": {"copy_attention": "yes"}}, "train.copy_attention: expected true or false, got 'yes'"),
        ({"train": "gru"}, "train: expected a mapping of TrainConfig keys"),
        (
            {"ingest": {"source": "apt"}},
            "ingest.source: expected one of debian, debian-live, file, got 'apt'",
        ),
        ({"ingest": {"max_records": -1}}, "ingest.max_records: expected an integer >= 0 (0 = all records)"),
        ({"train": {"accumulate_steps": 0}}, "train.accumulate_steps: expected an integer >= 1, got 0"),
        ({"train": {"bucket_width": 0}}, "train.bucket_width: expected an integer >= 1, got 0"),
        ({"train": {"batch_type": "sentences"}}, "train.batch_type: expected one of examples, tokens"),
        (
            {"train": {"batch_type": "tokens", "batch_size": 64}},
            "train.batch_size: with train.batch_type tokens it is a budget of source tokens per batch and "
            "must hold one example of the longest source: expected >= tokenize.max_source_tokens (80), "
            "got 64",
        ),
    ],
)
def test_a_bad_value_fails_naming_its_key(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        params_from_dict(values)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(path)
    path.write_text("tokenize: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_params(path)
    path.write_text(yaml.safe_dump({"evaluate": {"beam_width": 0}}), encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{path}: evaluate.beam_width"):
        load_params(path)


def test_flat_keys_are_dotted_for_mlflow() -> None:
    flat = Params().to_flat_dict()
    assert flat["tokenize.num_threads"] == 2 and "train.horovod.cycle_time_ms" in flat
    assert params_from_dict(Params().to_nested_dict()) == Params()


def test_batching_defaults_are_todays_batches_and_a_token_budget_may_be_set() -> None:
    train = Params().train
    assert (train.batch_type, train.batch_size, train.accumulate_steps) == ("examples", 64, 1)
    values = {"batch_type": "tokens", "batch_size": 80, "accumulate_steps": 4}
    tokens = params_from_dict({"train": values}).train
    assert (tokens.batch_type, tokens.batch_size, tokens.accumulate_steps) == ("tokens", 80, 4)


def test_horovod_cycle_time_auto_is_horovods_default_on_gpus_and_longer_on_cpus() -> None:
    auto = params_from_dict({}).train.horovod
    assert auto.cycle_time_ms == "auto"
    assert (auto.cycle_time_for(gpus=True), auto.cycle_time_for(gpus=False)) == (1.0, 20.0)
    chosen = params_from_dict({"train": {"horovod": {"cycle_time_ms": 3}}}).train.horovod
    assert (chosen.cycle_time_for(gpus=True), chosen.cycle_time_for(gpus=False)) == (3.0, 3.0)
