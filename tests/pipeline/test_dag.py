"""End-to-end: the real `dvc repro` over the real stages, in a temporary copy of the repository."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from summarizer.cli import summarizer_main
from tests.pipeline.dvc_project import DvcProject, tiny_params

pytestmark = pytest.mark.slow

# Library lines each stage (and the horovodrun launcher and ranks) printed before summarizer.quiet, in a shell
# without TF_CPP_MIN_LOG_LEVEL; oneDNN's own lines are checked in tests/pipeline/test_tokenize.py.
STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "cpu_feature_guard.cc",
    "tf_record_dataset_op.cc",
    "Creating initial MLflow database tables",
    "Validating input example against model signature",
    "Downloading artifacts",
    "Using default tokenizer.",
)
DATA_STATISTICS = ("metrics/ingest.json", "metrics/tokenize.json")


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


def test_dvc_repro_whole_dag_with_two_workers_logs_one_mlflow_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = DvcProject(tmp_path / "repo", tiny_params(workers=2))
    project.env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a new user's shell: no library log settings
    project.env.pop("SUMMARIZER_VERBOSE", None)

    repro = project.dvc("repro")

    output = repro.stdout + repro.stderr
    assert [noise for noise in STARTUP_NOISE if noise in output] == [], output
    assert "[0]<stdout>:training stopped: completed 2 epochs" in output  # our own lines still print

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

    # Data statistics are DVC-tracked files of their own, not metrics: shown only when named.
    shown = json.loads(project.dvc("metrics", "show", "--json").stdout)[""]["data"]
    assert "metrics.json" in shown and "metrics/train.json" in shown
    assert not set(DATA_STATISTICS) & set(shown), sorted(shown)
    statistics = json.loads(project.dvc("metrics", "show", "--json", *DATA_STATISTICS).stdout)[""]["data"]
    assert statistics["metrics/ingest.json"]["data"]["input_records"] == 300
    assert "Data and pipelines are up to date" in project.dvc("status").stdout  # cache: false outs hold

    # The end-of-run table on what the stages wrote.
    capsys.readouterr()
    assert summarizer_main(["results", "--root", str(project.path)]) == 0
    table = capsys.readouterr().out
    assert f"ROUGE-L     {metrics['rougeL']:5.2f}" in table, table
    assert f"best lead (first {metrics['lead']['best_words']} words)" in table
    assert "training  2 epochs on 2 workers" in table and "stopped: completed 2 epochs" in table
    assert "time      tokenize" in table and "train" in table and "evaluate" in table
