#!/usr/bin/env bash
# Set everything up, then run the whole pipeline (ingest -> tokenize -> train -> evaluate) and print its results
# (summarizer results: ROUGE and perplexity vs the best lead, epochs, samples/s, stage times, registry decision).
# SUMMARIZER_VERBOSE=1 scripts/run.sh also shows the libraries' start-up lines (TensorFlow, MLflow, absl).
# Usage: scripts/run.sh [dvc repro args...]     e.g. scripts/run.sh tokenize   (run up to one stage)
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
scripts/setup.sh
# shellcheck source=/dev/null
. .venv/bin/activate
printf '\n==> dvc repro %s\n' "$*"
dvc repro "$@"
printf '\n==> summarizer results\n'
summarizer results || true  # after `scripts/run.sh tokenize` there is no metrics.json yet: it says so
