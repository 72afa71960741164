"""The cost of TensorFlow's op determinism: samples/s of the product's train step with it off and on.

Op determinism is switched on for a whole process (``summarizer.reproducibility.make_deterministic``, as the
train stage does) and cannot honestly be switched off again, so each measurement runs in a fresh process:
``python -m benchmarks.determinism --settings JSON --out PATH [--deterministic]``. The caller alternates
off and on so that a slow spell of a shared machine does not fall on one setting only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import Shapes
from benchmarks.training_speed import Timing, measure_our_training
from summarizer.config import TrainConfig
from summarizer.io import read_json, write_json
from summarizer.reproducibility import is_deterministic, make_deterministic

REPO_ROOT = Path(__file__).resolve().parents[1]


class DeterminismBenchmarkError(RuntimeError):
    """The measuring process failed; the message holds its output."""


def measure_in_child(
    deterministic: bool, config: TrainConfig, shapes: Shapes, timing: Timing, seed: int, timeout: float
) -> dict[str, Any]:
    """Samples/s of ``Trainer.train_step`` in a fresh process, with op determinism on or off."""
    train = {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    train.pop("horovod")
    settings = {"train": train, "shapes": dataclasses.asdict(shapes), "timing": dataclasses.asdict(timing)}
    with tempfile.TemporaryDirectory(prefix="benchmark-determinism-") as directory:
        out = Path(directory) / "result.json"
        command = [sys.executable, "-m", "benchmarks.determinism", "--settings", json.dumps(settings)]
        command += ["--out", str(out), "--seed", str(seed)] + (["--deterministic"] if deterministic else [])
        environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0 or not out.is_file():
            raise DeterminismBenchmarkError(
                f"benchmarks.determinism exited {result.returncode}:\n{result.stderr[-3000:]}"
            )
        return read_json(out)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.determinism", description=__doc__)
    parser.add_argument("--settings", required=True, help='JSON: {"train": {...}, "shapes": {...}, ...}')
    parser.add_argument("--out", required=True, help="result JSON to write")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--deterministic", action="store_true", help="turn op determinism on first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    settings = json.loads(arguments.settings)
    if arguments.deterministic:
        make_deterministic(arguments.seed)
    result = measure_our_training(
        TrainConfig(**settings["train"]),
        Shapes(**settings["shapes"]),
        Timing(**settings["timing"]),
        arguments.seed,
    )
    write_json(arguments.out, {**result, "op_determinism": is_deterministic()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
