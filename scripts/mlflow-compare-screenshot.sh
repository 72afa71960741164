#!/usr/bin/env bash
# Screenshot the MLflow UI's runs table as people compare this project's runs: one row per evaluated run (best
# test ROUGE-L first) with the cell (train.cell: gru or lstm), test ROUGE-L, the best lead baseline's ROUGE-L and
# the validation perplexity of the kept epoch; no training loss, no other columns, no assistant panel. A real
# headless Chromium against a real `mlflow ui` that this script starts on 127.0.0.1 and stops again.
#
# Usage: scripts/mlflow-compare-screenshot.sh [OUTPUT.png]   (default docs/mlflow-compare.png)
# Needs: Debian's chromium (apt-get install chromium), the .venv from scripts/setup.sh, at least 2 runs that
# carry the metrics of METRICS in scripts/mlflow_compare_view.py (test_rougeL, test_lead_rougeL,
# best_val_perplexity: train and evaluate ran); runs without them are left out, saying so.
# Environment: MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), EXPERIMENT (default summarizer), PORT (5055),
# CHROMIUM (default chromium), PYTHON (default .venv/bin/python).
# How: scripts/mlflow_compare_view.py checks the runs first (fails before starting anything), then drives
# Chromium over the DevTools protocol and sets the page's view state in localStorage before it loads.
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
OUTPUT=${1:-docs/mlflow-compare.png}
URI=${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}
EXPERIMENT=${EXPERIMENT:-summarizer}
PORT=${PORT:-5055}
PYTHON=${PYTHON:-.venv/bin/python}
CHROMIUM=${CHROMIUM:-chromium}
export CHROMIUM

plan=$("$PYTHON" scripts/mlflow_compare_view.py plan "$URI" "$EXPERIMENT")

command -v "$CHROMIUM" >/dev/null || { echo "$CHROMIUM not found: apt-get install chromium" >&2; exit 1; }
mlflow_bin=$(dirname "$PYTHON")/mlflow

log=$(mktemp)
"$mlflow_bin" ui --backend-store-uri "$URI" --host 127.0.0.1 --port "$PORT" --workers 1 >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f "$log"' EXIT

for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "mlflow ui exited" >&2; exit 1; }
  sleep 1
done

"$PYTHON" scripts/mlflow_compare_view.py shoot "$plan" "http://127.0.0.1:$PORT" "$OUTPUT"
echo "wrote $OUTPUT ($(echo "$plan" | "$PYTHON" -c 'import json,sys; print(", ".join(r["name"] for r in json.load(sys.stdin)["runs"]))'))"
