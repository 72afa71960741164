"""A tiny tokenized dataset (sentencepiece model + TFRecord shards) made by the real tokenize code."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from summarizer.config import Params, TokenizeConfig, params_from_dict
from summarizer.records import tokenize_splits
from tests.conftest import make_pairs

TOKENIZE = TokenizeConfig(
    vocab_size=200, max_source_tokens=40, max_target_tokens=10, num_shards=2, input_sentence_size=1000
)
SPLIT_SIZES = {"train": 192, "val": 32, "test": 16}


def write_tokenized(directory: Path, seed: int = 0, train_examples: int = SPLIT_SIZES["train"]) -> Path:
    """Write ``directory/ingested/{split}.jsonl`` and tokenize them into ``directory/tokenized``.

    192 train examples make 6 steps per epoch for 2 workers of 16; more make longer epochs.
    """
    sizes = {**SPLIT_SIZES, "train": train_examples}
    pairs = iter(make_pairs(sum(sizes.values()), seed=seed))
    ingested, tokenized = directory / "ingested", directory / "tokenized"
    ingested.mkdir(parents=True, exist_ok=True)
    tokenized.mkdir(parents=True, exist_ok=True)
    for split, count in sizes.items():
        lines = []
        for index in range(count):
            text, summary = next(pairs)
            lines.append(
                json.dumps({"id": f"{split}{index}", "text": text, "summary": summary, "group": str(index)})
            )
        (ingested / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenize_splits(ingested, tokenized, TOKENIZE)
    return tokenized


def tiny_train_params(**train: object) -> dict:
    """Params (as YAML values) for a model small enough for 2 shared CPU cores."""
    values = {
        "units": 16,
        "embedding_dim": 16,
        "batch_size": 16,
        "epochs": 3,
        "warmup_steps": 4,
        "learning_rate": 0.01,
        "min_learning_rate": 0.0001,
        "dropout": 0.0,
        "max_wall_minutes": 10.0,
        "workers": 2,
    }
    values.update(train)
    return {
        "tokenize": {
            "vocab_size": TOKENIZE.vocab_size,
            "max_source_tokens": TOKENIZE.max_source_tokens,
            "max_target_tokens": TOKENIZE.max_target_tokens,
            "num_shards": TOKENIZE.num_shards,
        },
        "train": values,
    }


def write_params(path: Path, values: dict, tracking_uri: str) -> Params:
    """Write a params file whose MLflow store is ``tracking_uri``; return the parsed Params."""
    values = {**values, "tracking": {"tracking_uri": tracking_uri, "experiment": "tests"}}
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return params_from_dict(values)
