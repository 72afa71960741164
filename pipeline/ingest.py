"""Ingest stage: fetch or read the corpus; write the raw snapshot, the train/val/test splits and stats."""

from __future__ import annotations

import argparse
import sys

from pipeline.stage import CONFIG_ERROR, INPUT_ERROR, fail, start_logging
from summarizer.config import ConfigError, load_params
from summarizer.data import IngestError, run_ingest

PROGRAM = "ingest"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.ingest",
        description="Read the corpus chosen by the 'ingest' section of the params file (the Debian package "
        "descriptions, or your CSV/JSONL/Parquet file), normalize, filter, dedupe, group near-duplicates and "
        "split it into train/val/test by a hash of the group.",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "--raw-dir",
        default="data/raw",
        help="where the raw snapshot and SOURCE.json go (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir", default="data/ingested", help="where {train,val,test}.jsonl go (default: %(default)s)"
    )
    parser.add_argument(
        "--stats", default="metrics/ingest.json", help="stats JSON, a DVC metrics file (default: %(default)s)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start_logging(PROGRAM)
    try:
        params = load_params(args.params)
    except ConfigError as error:
        return fail(PROGRAM, str(error), CONFIG_ERROR)
    try:
        run_ingest(params.ingest, args.raw_dir, args.out_dir, args.stats)
    except IngestError as error:
        return fail(PROGRAM, str(error), INPUT_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
