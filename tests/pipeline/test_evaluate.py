"""The evaluate stage entry point: arguments match dvc.yaml, bad params exit 2, a run prints a summary."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from pipeline import evaluate
from tests.conftest import REPO_ROOT
from tests.helpers import build_model_directory, training_run


def run_stage(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    environment.pop("MLFLOW_TRACKING_URI", None)
    environment.pop("DVC_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "pipeline.evaluate", *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_defaults_match_the_dvc_stage_command() -> None:
    stage = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["evaluate"]
    words = shlex.split(stage["cmd"])
    assert words[:3] == ["python", "-m", "pipeline.evaluate"]
    from_dvc = vars(evaluate.build_parser().parse_args(words[3:]))
    assert from_dvc == vars(evaluate.build_parser().parse_args([]))
    assert {from_dvc["metrics"], from_dvc["timings"]} == {next(iter(entry)) for entry in stage["metrics"]}
    assert {from_dvc["plot"]} == {next(iter(entry)) for entry in stage["plots"]}
    assert stage["outs"] == [from_dvc["predictions"]]
    assert {from_dvc["model_dir"], from_dvc["test"], from_dvc["data_dir"]} <= set(stage["deps"])


def test_help_lists_every_path_option(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    options = ("--params", "--model-dir", "--test", "--data-dir", "--metrics", "--timings", "--predictions")
    for option in (*options, "--plot"):
        assert option in help_text


def test_invalid_params_exit_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  beam_width: 0\n", encoding="utf-8")
    assert evaluate.main(["--params", str(params)]) == 2
    assert "evaluate.beam_width" in capsys.readouterr().err


def test_missing_model_directory_exits_1_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "params.yaml").write_text("{}\n", encoding="utf-8")
    metrics_path = tmp_path / "metrics.json"
    status = evaluate.main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "--model-dir",
            str(tmp_path / "absent"),
            "--metrics",
            str(metrics_path),
        ]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert str(tmp_path / "absent") in error and "model.keras" in error
    assert not metrics_path.exists()


@pytest.mark.slow
def test_stage_writes_outputs_and_prints_the_summary(tmp_path: Path) -> None:
    run_id = training_run(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tiny = build_model_directory(tmp_path / "work", run={"run_id": run_id, "experiment": "summarizer"})
    params = {
        "evaluate": {"search": "greedy", "batch_size": 4, "max_length": 8, "lead_words": [4, 6]},
        "tracking": {"tracking_uri": "sqlite:///mlflow.db"},
    }  # relative: resolved against the cwd
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")

    completed = run_stage(
        "--model-dir",
        str(tiny.model_dir),
        "--test",
        str(tiny.ingested_dir / "test.jsonl"),
        "--data-dir",
        str(tiny.data_dir),
        cwd=tmp_path,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert (
        metrics["search"] == "greedy"
        and metrics["test_examples"] == 10
        and metrics["lead"]["best_words"] in (4, 6)
    )
    assert len((tmp_path / "reports/predictions.jsonl").read_text(encoding="utf-8").splitlines()) == 10
    timings = json.loads((tmp_path / "metrics/timings/evaluate.json").read_text(encoding="utf-8"))
    assert timings["summaries_per_second"] > 0 and "summaries_per_second" not in metrics
    assert (
        (tmp_path / "plots/rouge_by_length.csv")
        .read_text(encoding="utf-8")
        .startswith("source_words,rouge_l,lead_rouge_l,count\n")
    )
    summary_line, registry_line = completed.stdout.strip().splitlines()[-2:]
    assert summary_line.startswith(f"test ROUGE-1/2/L {metrics['rouge1']:.2f}/{metrics['rouge2']:.2f}/")
    assert f"perplexity {metrics['test_perplexity']:.2f}" in summary_line
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["test_rouge1"] == metrics["rouge1"]
    # The untrained model does not beat the lead: registered, but only as challenger.
    reason = metrics["registry"]["reason"]
    assert metrics["registry"] == {
        "model": "summarizer",
        "version": 1,
        "alias": "challenger",
        "reason": reason,
    }
    assert registry_line == f"registry: summarizer version 1 is challenger (models:/summarizer/1): {reason}"
    assert "does not beat the lead" in reason
    assert mlflow.MlflowClient(uri, registry_uri=uri).get_registered_model("summarizer").aliases == {
        "challenger": 1
    }
