"""DVC stage `tokenize`: train the shared sentencepiece model and write TFRecord shards of every split.

Reads  {in-dir}/{train,val,test}.jsonl (from the ingest stage) and the `tokenize` section of the params file.
Writes {out-dir}/spm.model, spm.vocab, {split}-NNNNN-of-NNNNN.tfrecord, and the metrics JSON --stats.
The output directory is built in a temporary directory beside it and moved into place only on success.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import stage
from summarizer.config import Params
from summarizer.records import run_tokenize

PROGRAM = "tokenize"


def build_parser() -> argparse.ArgumentParser:
    parser = stage.build_parser(
        PROGRAM,
        "Train one sentencepiece model on the train split's texts and summaries, then encode every split "
        "into TFRecord shards (source_ids, target_ids) for the train and evaluate stages.",
    )
    parser.add_argument("--in-dir", default="data/ingested", help="directory holding {train,val,test}.jsonl")
    parser.add_argument(
        "--out-dir",
        default="data/tokenized",
        help="output directory (replaced): spm.model, spm.vocab, shards",
    )
    parser.add_argument("--stats", default="metrics/tokenize.json", help="data statistics JSON to write")
    parser.add_argument(
        "--timings", default="metrics/timings/tokenize.json", help="timings JSON to write (seconds, MB/s)"
    )
    return parser


def run(arguments: argparse.Namespace, params: Params) -> None:
    run_tokenize(params.tokenize, arguments.in_dir, arguments.out_dir, arguments.stats, arguments.timings)


def main(argv: list[str] | None = None) -> int:
    return stage.main(PROGRAM, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
