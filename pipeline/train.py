"""DVC stage `train`: the summarizer on data/tokenized, data-parallel under ``horovodrun`` (or one process).

Reads  {data-dir} (shards and spm.model from the tokenize stage) and the `train`, `tokenize` and `tracking`
sections of the params file. Writes {out-dir} (the model directory), the metrics JSON and the history CSV,
on the chief, atomically. The repository root (--root) holds ``.checkpoints/`` (resume state) and the
default MLflow store. An interrupted run (Ctrl-C, SIGTERM) is marked KILLED in MLflow and keeps its last
checkpoint: running the stage again with the same params and data resumes it, in the same MLflow run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import stage
from summarizer import distribution, runner, tracking
from summarizer.config import Params
from summarizer.reproducibility import make_deterministic

PROGRAM = "train"


def build_parser() -> argparse.ArgumentParser:
    parser = stage.build_parser(PROGRAM, __doc__.splitlines()[0].removeprefix("DVC stage `train`: "))
    parser.add_argument("--data-dir", type=Path, default=Path("data/tokenized"), help="shards and spm.model")
    parser.add_argument("--out-dir", type=Path, default=Path("models/summarizer"), help="model directory")
    parser.add_argument("--metrics", type=Path, default=Path("metrics/train.json"), help="metrics JSON")
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("plots/train_history.csv"),
        help="per-epoch history CSV for dvc plots",
    )
    parser.add_argument(
        "--timings",
        type=Path,
        default=Path("metrics/timings/train.json"),
        help="timings JSON (samples/s, seconds; per epoch too)",
    )
    stage.add_root_argument(parser)
    return parser


def run(arguments: argparse.Namespace, params: Params) -> None:
    paths = runner.TrainingPaths(
        data_dir=arguments.data_dir,
        out_dir=arguments.out_dir,
        metrics=arguments.metrics,
        history=arguments.history,
        root=arguments.root or tracking.project_root(),
        timings=arguments.timings,
    )
    horovod = params.train.horovod
    ranks = distribution.init(dynamic_timeline=bool(horovod.timeline), horovod=horovod)
    make_deterministic(params.train.seed)  # after init, which sets the thread counts
    runner.run_training(params, ranks, paths)


def main(argv: list[str] | None = None) -> int:
    return stage.main(PROGRAM, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
