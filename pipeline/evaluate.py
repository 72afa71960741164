"""DVC stage `evaluate`: decode the test split with the trained summarizer, score it, log to the training run.

Reads  {model-dir} (model.keras, spm.model, config.json, run.json from the train stage), the ingested test
split {test} and its TFRecord shards in {data-dir}, and the `evaluate` and `tracking` sections of the params.
Writes the metrics JSON, the predictions JSONL and the ROUGE-by-length plot CSV, each atomically, and ends the
training's MLflow run FINISHED with the test metrics, the outputs and the pyfunc model logged to it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.stage import CONFIG_ERROR, INPUT_ERROR, fail, start_logging
from summarizer.config import ConfigError, load_params
from summarizer.evaluation import run_evaluation, summary_text
from summarizer.tracking import project_root

PROGRAM = "evaluate"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"python -m pipeline.{PROGRAM}",
        description="Summarize the test split with the trained model (greedy or beam search, as the "
        "`evaluate` section says), compute ROUGE against lead baselines and test perplexity, and log "
        "everything to the training's MLflow run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--params", default="params.yaml", help="params file; `evaluate` and `tracking` are used"
    )
    parser.add_argument("--model-dir", default="models/summarizer", help="the train stage's model directory")
    parser.add_argument(
        "--test", default="data/ingested/test.jsonl", help="ingested test split (texts, references)"
    )
    parser.add_argument("--data-dir", default="data/tokenized", help="directory of the test TFRecord shards")
    parser.add_argument("--metrics", default="metrics.json", help="metrics JSON to write (DVC metrics)")
    parser.add_argument(
        "--predictions", default="reports/predictions.jsonl", help="per-example predictions JSONL"
    )
    parser.add_argument("--plot", default="plots/rouge_by_length.csv", help="ROUGE-L by source length CSV")
    parser.add_argument(
        "--root",
        default=None,
        help="directory against which a relative sqlite tracking URI resolves (default: $DVC_ROOT or the "
        "current directory)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    start_logging(PROGRAM)
    try:
        params = load_params(arguments.params)
    except ConfigError as error:
        return fail(PROGRAM, str(error), CONFIG_ERROR)
    root = Path(arguments.root) if arguments.root else project_root()
    try:
        values = run_evaluation(
            params,
            model_dir=arguments.model_dir,
            test_jsonl=arguments.test,
            data_dir=arguments.data_dir,
            metrics_path=arguments.metrics,
            predictions_path=arguments.predictions,
            plot_path=arguments.plot,
            root=root,
        )
    except (FileNotFoundError, ValueError) as error:
        return fail(PROGRAM, str(error), INPUT_ERROR)
    print(summary_text(values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
