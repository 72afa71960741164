"""Train stage: the summarizer on data/tokenized, data-parallel under ``horovodrun`` (or in one process).

The repository root (``DVC_ROOT`` under DVC, else the current directory) holds ``.checkpoints/`` (resume
state) and the default MLflow store. An interrupted run (Ctrl-C, SIGTERM) is marked KILLED in MLflow and
keeps its last checkpoint: running the stage again with the same params and data resumes it, in the same
MLflow run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from summarizer import distribution, tracking, training
from summarizer.config import ConfigError, load_params


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (default: %(default)s)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data/tokenized"),
        help="shards and spm.model (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=Path("models/summarizer"),
        help="model directory (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics", type=Path, default=Path("metrics/train.json"), help="metrics JSON (default: %(default)s)"
    )
    parser.add_argument(
        "--history",
        type=Path,
        default=Path("plots/train_history.csv"),
        help="per-epoch history CSV for dvc plots (default: %(default)s)",
    )
    parser.add_argument(
        "--checkpoint-root",
        type=Path,
        default=None,
        help="directory holding .checkpoints/ and anchoring a relative sqlite MLflow URI "
        "(default: the repository root: DVC_ROOT, else the current directory)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    try:
        params = load_params(arguments.params)
    except ConfigError as error:
        parser.error(str(error))
    paths = training.TrainingPaths(
        data_dir=arguments.data_dir,
        out_dir=arguments.out_dir,
        metrics=arguments.metrics,
        history=arguments.history,
        root=arguments.checkpoint_root or tracking.project_root(),
    )
    run = distribution.init(dynamic_timeline=bool(params.train.horovod.timeline))
    training.run_training(params, run, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
