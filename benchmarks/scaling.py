"""Horovod scaling: samples/s of ``benchmarks.horovod_worker`` with 1, 2 or more workers on this machine."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Shapes
from benchmarks.training_speed import Timing
from summarizer.config import TrainConfig
from summarizer.io import read_json

REPO_ROOT = Path(__file__).resolve().parents[1]
SINGLE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


class ScalingError(RuntimeError):
    """horovodrun failed; the message holds its command and output."""


def worker_environment() -> dict[str, str]:
    """The venv's horovodrun and python first on PATH, this repository importable, one thread per worker."""
    venv_bin = str(Path(sys.executable).parent)
    environment = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **SINGLE_THREAD,
    }
    environment.pop("MLFLOW_TRACKING_URI", None)
    return environment


def horovodrun_command(workers: int, settings: dict[str, Any], out: Path) -> list[str]:
    """The train stage's launcher line (dvc.yaml), with the benchmark worker instead of pipeline.train.

    The worker sets Horovod's fusion threshold and cycle time from ``settings["horovod"]``, as the train stage
    does from ``train.horovod``.
    """
    return [
        str(Path(sys.executable).parent / "horovodrun"),
        "--gloo",
        "-np",
        str(workers),
        "-H",
        f"localhost:{workers}",
        sys.executable,
        "-m",
        "benchmarks.horovod_worker",
        "--settings",
        json.dumps(settings),
        "--out",
        str(out),
    ]


def run_workers(
    workers: int, config: TrainConfig, shapes: Shapes, timing: Timing, timeout: float, control: bool = False
) -> dict[str, Any]:
    """Start ``workers`` ranks with horovodrun and return the chief's figures.

    ``control``: follow every step with the train stage's stop/checkpoint control (see horovod_worker).

    Raises:
        ScalingError: horovodrun exited non-zero or wrote no result.
    """
    train = {
        field.name: getattr(config, field.name)
        for field in dataclasses.fields(config)
        if field.name != "horovod"
    }
    settings = {
        "train": train,
        "horovod": dataclasses.asdict(config.horovod),
        "shapes": dataclasses.asdict(shapes),
        "timing": dataclasses.asdict(timing),
        "control": control,
    }
    with tempfile.TemporaryDirectory(prefix="benchmark-horovod-") as directory:
        out = Path(directory) / "result.json"
        command = horovodrun_command(workers, settings, out)
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=worker_environment(), capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0 or not out.is_file():
            raise ScalingError(
                f"{' '.join(command[:8])} ... exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                f"{result.stderr[-3000:]}"
            )
        return read_json(out)


def scaling_efficiency(one_worker_rate: float, rate: float, workers: int = 2) -> float:
    """(``workers``-worker rate) / (``workers`` x 1-worker rate): 1.0 is perfect linear scaling."""
    return rate / (workers * one_worker_rate)


__all__ = ["ScalingError", "horovodrun_command", "run_workers", "scaling_efficiency", "worker_environment"]
