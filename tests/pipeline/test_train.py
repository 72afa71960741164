"""The train stage entry point: arguments matching dvc.yaml, params errors, a one-process run's outputs."""

from __future__ import annotations

import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import pytest
import yaml

from pipeline import train
from summarizer import records, runner, training
from summarizer.distribution import LocalDistribution
from tests.conftest import REPO_ROOT
from tests.workers.launch import check, horovod_environment, horovodrun
from tests.workers.tiny_data import tiny_train_params, write_params, write_tokenized

METRIC_KEYS = {
    "best_val_loss", "final_val_loss", "best_val_perplexity", "epochs", "parameter_count", "workers",
    "stopped_by", "stop_reason",
}  # fmt: skip
TIMING_KEYS = {"samples_per_second", "target_tokens_per_second", "wall_seconds", "per_epoch"}


def test_arguments_of_dvc_yaml_parse_and_name_the_stage_outputs() -> None:
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]["train"]
    words = shlex.split(stage["cmd"])
    arguments = train.build_parser().parse_args(words[words.index("pipeline.train") + 1 :])
    assert str(arguments.out_dir) in stage["outs"]
    assert str(arguments.data_dir) in stage["deps"]
    assert [str(arguments.metrics), str(arguments.timings)] == [
        next(iter(entry)) for entry in stage["metrics"]
    ]
    assert [str(arguments.history)] == [next(iter(entry)) for entry in stage["plots"]]
    assert arguments.root is None  # the repository root
    assert "src/summarizer/training.py" in stage["deps"] and "src/summarizer/distribution.py" in stage["deps"]


def test_help_lists_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    for option in ("--params", "--data-dir", "--out-dir", "--metrics", "--history", "--timings", "--root"):
        assert option in output


def test_bad_params_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  cell: lsmt\n", encoding="utf-8")
    assert train.main(["--params", str(params)]) == 2
    error = capsys.readouterr().err
    assert "train: error:" in error and "train.cell" in error and "lsmt" in error
    assert not (tmp_path / "models").exists()


@pytest.mark.slow
def test_one_process_run_with_default_paths_writes_the_best_model_and_metrics(tmp_path: Path) -> None:
    data_dir = write_tokenized(tmp_path / "data")
    params = write_params(tmp_path / "params.yaml", tiny_train_params(epochs=3), "sqlite:///mlflow.db")
    environment = horovod_environment()
    environment.pop("DVC_ROOT", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.train",
        ],  # every path from its default, relative to the repository root
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.startswith("epoch ")]) == 3
    assert not list((tmp_path / ".checkpoints").glob("train-*"))

    out_dir = tmp_path / "models/summarizer"
    assert sorted(path.name for path in out_dir.iterdir()) == [
        "config.json",
        "model.keras",
        "run.json",
        "spm.model",
    ]
    assert (out_dir / "spm.model").read_bytes() == (data_dir / "spm.model").read_bytes()
    metrics = json.loads((tmp_path / "metrics/train.json").read_text())
    assert set(metrics) == METRIC_KEYS and metrics["workers"] == 1 and metrics["epochs"] == 3
    assert (metrics["stopped_by"], metrics["stop_reason"]) == ("epochs", "completed 3 epochs")
    timings = json.loads((tmp_path / "metrics/timings/train.json").read_text())
    assert set(timings) == TIMING_KEYS and sorted(timings["per_epoch"]) == ["1", "2", "3"]
    assert timings["samples_per_second"] > 0 and timings["per_epoch"]["2"]["seconds"] > 0
    with (tmp_path / "plots/train_history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert list(history[0]) == list(runner.HISTORY_COLUMNS) and len(history) == 3
    assert metrics["best_val_loss"] == pytest.approx(min(float(row["val_loss"]) for row in history))

    config = json.loads((out_dir / "config.json").read_text())
    assert (config["max_source_tokens"], config["max_target_tokens"]) == (40, 10)
    assert config["special_ids"] == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    model = keras.saving.load_model(out_dir / "model.keras")
    assert model.count_params() == metrics["parameter_count"]
    val = records.read_dataset(records.list_shards(data_dir, "val"), 16, shuffle=False)
    val_loss = training.Trainer(model, params.train, LocalDistribution()).evaluate(val)
    assert val_loss == pytest.approx(metrics["best_val_loss"], rel=1e-4)

    run = json.loads((out_dir / "run.json").read_text())
    assert (
        run["tracking_uri"] == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
        and run["experiment"] == "tests"
    )
    recorded = mlflow.MlflowClient(run["tracking_uri"]).get_run(run["run_id"])
    assert recorded.info.status == "FINISHED" and recorded.info.run_name == "gru-float32-1w"
    assert recorded.data.metrics["val_perplexity"] == pytest.approx(float(history[-1]["val_perplexity"]))


@pytest.mark.slow
def test_two_worker_run_gets_system_metrics_from_rank_0(tmp_path: Path) -> None:
    data_dir = write_tokenized(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    write_params(tmp_path / "params.yaml", tiny_train_params(epochs=2), uri)
    command = [
        "-m", "pipeline.train", "--params", str(tmp_path / "params.yaml"), "--data-dir", str(data_dir),
        "--out-dir", str(tmp_path / "models/summarizer"), "--metrics", str(tmp_path / "metrics/train.json"),
        "--history", str(tmp_path / "plots/train_history.csv"), "--root", str(tmp_path),
        "--timings", str(tmp_path / "metrics/timings/train.json"),
    ]  # fmt: skip
    sampling = {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "0.2"}
    check(horovodrun(command, workers=2, cwd=tmp_path, environment=sampling))
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("tests").experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["workers"] == 2
    metrics = run.data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100
    assert metrics["system/system_memory_usage_megabytes"] > 0
    history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2
    # Sampled while the run was running, and by one process (rank 0): one value per step.
    assert all(run.info.start_time <= metric.timestamp <= run.info.end_time for metric in history)
    assert len({metric.step for metric in history}) == len(history)
