"""DVC stage `evaluate`: decode the test split with the trained summarizer, score it, log to the training run.

Reads  {model-dir} (the train stage's model directory), the ingested test split {test} and its TFRecord shards
in {data-dir}, and the `evaluate`, `tracking` and `registry` sections of the params. Writes the metrics JSON,
the predictions JSONL and the ROUGE-by-length plot CSV, each atomically, and ends the training's MLflow run
FINISHED with the test metrics, the outputs and the pyfunc model logged to it; registers that model in the
MLflow Model Registry (the `registry` section) and prints where its alias went.
"""

from __future__ import annotations

import argparse
import sys

from pipeline import stage
from summarizer import tracking
from summarizer.config import Params
from summarizer.evaluation import run_evaluation, summary_text
from summarizer.registry import REGISTRY_KEY, decision_line
from summarizer.reproducibility import make_deterministic

PROGRAM = "evaluate"


def build_parser() -> argparse.ArgumentParser:
    parser = stage.build_parser(
        PROGRAM,
        "Summarize the test split with the trained model (greedy or beam search, as the `evaluate` section "
        "says), compute ROUGE against lead baselines and test perplexity, and log everything to the "
        "training's MLflow run.",
    )
    parser.add_argument("--model-dir", default="models/summarizer", help="the train stage's model directory")
    parser.add_argument("--test", default="data/ingested/test.jsonl", help="ingested test split")
    parser.add_argument("--data-dir", default="data/tokenized", help="directory of the test TFRecord shards")
    parser.add_argument("--metrics", default="metrics.json", help="metrics JSON to write (DVC metrics)")
    parser.add_argument(
        "--timings",
        default="metrics/timings/evaluate.json",
        help="timings JSON to write (summaries/s, seconds)",
    )
    parser.add_argument("--predictions", default="reports/predictions.jsonl", help="per-example predictions")
    parser.add_argument("--plot", default="plots/rouge_by_length.csv", help="ROUGE-L by source length CSV")
    stage.add_root_argument(parser)
    return parser


def run(arguments: argparse.Namespace, params: Params) -> None:
    make_deterministic()
    values = run_evaluation(
        params,
        model_dir=arguments.model_dir,
        test_jsonl=arguments.test,
        data_dir=arguments.data_dir,
        metrics_path=arguments.metrics,
        predictions_path=arguments.predictions,
        plot_path=arguments.plot,
        root=arguments.root or tracking.project_root(),
        timings_path=arguments.timings,
    )
    print(summary_text(values))
    print(decision_line(values[REGISTRY_KEY]))


def main(argv: list[str] | None = None) -> int:
    return stage.main(PROGRAM, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
