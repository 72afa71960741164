"""A user's first corpus, 5,000 pairs, through the whole DAG with the default params (the real dvc repro)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from summarizer.config import AUTO_VOCAB_SIZE, params_from_dict
from tests.conftest import make_pairs, write_csv
from tests.pipeline.dvc_project import DvcProject, merge

pytestmark = pytest.mark.slow

USER_PAIRS = 5000


def test_a_5000_pair_csv_goes_through_the_dag_with_the_default_params(tmp_path: Path) -> None:
    params = merge(
        params_from_dict({}).to_nested_dict(),
        {"ingest": {"source": "file", "path": "data/external/articles.csv"}},
    )
    project = DvcProject(tmp_path / "repo", params)
    # Short synthetic pairs: a corpus far too small for 8,000 pieces, as a user's first one may be.
    write_csv(project.path / "data/external/articles.csv", make_pairs(USER_PAIRS, seed=3))

    result = project.dvc("repro")

    tokenize = json.loads((project.path / "metrics/tokenize.json").read_text(encoding="utf-8"))
    pieces = tokenize["vocab_size"]
    assert tokenize["vocab_size_setting"] == "auto" and 100 < pieces < AUTO_VOCAB_SIZE
    assert f"tokenize.vocab_size: auto: the corpus allows at most {pieces} pieces" in result.stderr
    ingest = json.loads((project.path / "metrics/ingest.json").read_text(encoding="utf-8"))
    assert ingest["input_records"] == USER_PAIRS
    train = json.loads((project.path / "metrics/train.json").read_text(encoding="utf-8"))
    assert train["stopped_by"] in ("epochs", "early_stopping")
    quality = json.loads((project.path / "metrics.json").read_text(encoding="utf-8"))
    assert quality["test_examples"] == ingest["splits"]["test"] and quality["rougeL"] > 0

    # The same corpus with an explicit vocabulary it cannot fill still fails, naming the size it allows.
    explicit = merge(params, {"tokenize": {"vocab_size": AUTO_VOCAB_SIZE}})
    (project.path / "explicit.yaml").write_text(yaml.safe_dump(explicit), encoding="utf-8")
    failed = project.run(
        "python", "-m", "pipeline.tokenize", "--params", "explicit.yaml",
        "--out-dir", str(tmp_path / "explicit"), "--stats", str(tmp_path / "explicit.json"), check=False,
    )  # fmt: skip
    assert failed.returncode == 1 and not (tmp_path / "explicit").exists()
    assert f"tokenize.vocab_size: {AUTO_VOCAB_SIZE} is too large for the training corpus" in failed.stderr
    assert f"sentencepiece allows at most {pieces}." in failed.stderr
