"""DVC stage `ingest`: read the corpus; write the raw snapshot, the train/val/test splits and their stats.

Reads  the corpus the `ingest` section names (the pinned Debian snapshot in {debian-snapshot}, the live Debian
       index, or your CSV/JSONL/Parquet).
Writes {raw-dir} (snapshot and SOURCE.json), {out-dir}/{train,val,test}.jsonl and the stats JSON, atomically.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import stage
from summarizer.config import Params
from summarizer.data import run_ingest

PROGRAM = "ingest"


def build_parser() -> argparse.ArgumentParser:
    parser = stage.build_parser(
        PROGRAM,
        "Read the corpus chosen by the 'ingest' section of the params file (the pinned snapshot of the "
        "Debian package descriptions, the live Debian index, or your CSV/JSONL/Parquet file), normalize, "
        "filter, dedupe, group near-duplicates and split it into train/val/test by a hash of the group.",
    )
    parser.add_argument(
        "--debian-snapshot",
        default="corpora/debian",
        help="the pinned Debian snapshot (Translation-en.txt.xz, SNAPSHOT.json), read when ingest.source "
        "is debian",
    )
    parser.add_argument("--raw-dir", default="data/raw", help="where the raw snapshot and SOURCE.json go")
    parser.add_argument("--out-dir", default="data/ingested", help="where {train,val,test}.jsonl go")
    parser.add_argument("--stats", default="metrics/ingest.json", help="data statistics JSON to write")
    return parser


def run(arguments: argparse.Namespace, params: Params) -> None:
    run_ingest(
        params.ingest, arguments.raw_dir, arguments.out_dir, arguments.stats, arguments.debian_snapshot
    )


def main(argv: list[str] | None = None) -> int:
    return stage.main(PROGRAM, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
