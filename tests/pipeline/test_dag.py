"""End-to-end: the real `dvc repro` over the real stages, in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from tests.pipeline.dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow


def test_dvc_repro_tokenize_builds_shards_and_second_run_does_nothing(tmp_path: Path) -> None:
    project = DvcProject(tmp_path / "repo", tiny_params())

    project.dvc("repro", "tokenize")

    tokenized = project.path / "data/tokenized"
    assert (tokenized / "spm.model").is_file()
    assert sorted(path.name for path in tokenized.glob("train-*.tfrecord")) == [
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    ingest_stats = json.loads((project.path / "metrics/ingest.json").read_text())
    splits = [json.loads(line) for line in (project.path / "data/ingested/train.jsonl").open()]
    assert len(splits) > 100 and {"id", "text", "summary", "group"} <= splits[0].keys()
    assert ingest_stats["input_records"] == 300
    assert json.loads((project.path / "metrics/tokenize.json").read_text())

    second = project.dvc("repro", "tokenize")
    assert "didn't change, skipping" in second.stdout and "Running stage" not in second.stdout


def test_dvc_repro_whole_dag_with_two_workers_logs_one_mlflow_run(tmp_path: Path) -> None:
    project = DvcProject(tmp_path / "repo", tiny_params(workers=2))

    project.dvc("repro")

    for output in (
        "data/raw",
        "data/ingested/test.jsonl",
        "data/tokenized/spm.model",
        "models/summarizer/model.keras",
        "metrics/train.json",
        "plots/train_history.csv",
        "reports/predictions.jsonl",
    ):
        assert (project.path / output).exists(), output
    metrics = json.loads((project.path / "metrics.json").read_text())
    assert 0 <= metrics["rouge1"] <= 100 and 0 <= metrics["rougeL"] <= 100
    assert metrics["lead"]["best_words"] in (6, 8, 10) and metrics["lead"]["rougeL"] > 0
    assert metrics["test_perplexity"] > 1

    runs = mlflow.MlflowClient(f"sqlite:///{project.path / 'mlflow.db'}").search_runs(
        [
            experiment.experiment_id
            for experiment in mlflow.MlflowClient(
                f"sqlite:///{project.path / 'mlflow.db'}"
            ).search_experiments()
        ]
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.cell"] == "gru" and run.data.params["tokenize.vocab_size"] == "200"
    assert {"val_loss", "test_rouge1", "test_perplexity"} <= run.data.metrics.keys()
    client = mlflow.MlflowClient(f"sqlite:///{project.path / 'mlflow.db'}")
    assert [point.step for point in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]

    second = project.dvc("repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
