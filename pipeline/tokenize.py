"""DVC stage `tokenize`: train the shared sentencepiece model and write TFRecord shards of every split.

Reads  {in-dir}/{train,val,test}.jsonl (from the ingest stage) and the `tokenize` section of the params file.
Writes {out-dir}/spm.model, spm.vocab, {split}-NNNNN-of-NNNNN.tfrecord, and the metrics JSON --stats.
The output directory is built in a temporary directory beside it and moved into place only on success.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.stage import CONFIG_ERROR, INPUT_ERROR, fail, start_logging
from summarizer.config import ConfigError, load_params
from summarizer.io import atomic_directory, write_json
from summarizer.records import run_tokenize

PROGRAM = "tokenize"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Train one sentencepiece model on the train split's texts and summaries, then encode "
        "every split into TFRecord shards (source_ids, target_ids) for the train and evaluate stages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--params", default="params.yaml", help="params file; its `tokenize` section is used")
    parser.add_argument("--in-dir", default="data/ingested", help="directory holding {train,val,test}.jsonl")
    parser.add_argument(
        "--out-dir",
        default="data/tokenized",
        help="output directory (replaced): spm.model, spm.vocab, shards",
    )
    parser.add_argument("--stats", default="metrics/tokenize.json", help="metrics JSON to write")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    log = start_logging(PROGRAM)
    try:
        config = load_params(arguments.params).tokenize
    except ConfigError as error:
        return fail(PROGRAM, str(error), CONFIG_ERROR)
    try:
        with atomic_directory(arguments.out_dir) as staging:
            stats = run_tokenize(arguments.in_dir, staging, config)
            write_json(arguments.stats, stats)
        log.info("written %s and %s", arguments.out_dir, arguments.stats)
    except (FileNotFoundError, ValueError) as error:
        return fail(PROGRAM, str(error), INPUT_ERROR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
