#!/usr/bin/env bash
# Screenshot the MLflow UI's compare view of this project's runs, in a real headless Chromium against a real
# `mlflow ui` that this script starts on 127.0.0.1 and stops again.
#
# Usage: scripts/mlflow-compare-screenshot.sh [OUTPUT.png]   (default docs/mlflow-compare.png)
# Needs: Debian's chromium (apt-get install chromium), the .venv from scripts/setup.sh, runs in mlflow.db.
# Environment: MLFLOW_TRACKING_URI (default sqlite:///mlflow.db), EXPERIMENT (default summarizer), PORT (5055).
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
OUTPUT=${1:-docs/mlflow-compare.png}
URI=${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db}
EXPERIMENT=${EXPERIMENT:-summarizer}
PORT=${PORT:-5055}
PYTHON=.venv/bin/python

command -v chromium >/dev/null || { echo "chromium not found: apt-get install chromium" >&2; exit 1; }

compare_path=$("$PYTHON" - "$URI" "$EXPERIMENT" <<'EOF'
import json, sys, urllib.parse
import mlflow
client = mlflow.MlflowClient(sys.argv[1])
experiment = client.get_experiment_by_name(sys.argv[2])
if experiment is None:
    sys.exit(f"no experiment {sys.argv[2]!r} in {sys.argv[1]}: run the pipeline first")
runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=6)
if len(runs) < 2:
    sys.exit(f"the compare view needs at least 2 runs; {sys.argv[2]!r} has {len(runs)}")
query = urllib.parse.urlencode({
    "runs": json.dumps([run.info.run_id for run in runs]),
    "experiments": json.dumps([experiment.experiment_id]),
})
print(f"/#/compare-runs?{query}")
EOF
)

log=$(mktemp)
.venv/bin/mlflow ui --backend-store-uri "$URI" --host 127.0.0.1 --port "$PORT" >"$log" 2>&1 &
server=$!
profile=$(mktemp -d)
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$profile" "$log"' EXIT

for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { cat "$log" >&2; echo "mlflow ui exited" >&2; exit 1; }
  sleep 1
done

mkdir -p "$(dirname "$OUTPUT")"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1600,1300 --virtual-time-budget=20000 --screenshot="$OUTPUT" \
  "http://127.0.0.1:$PORT$compare_path" >/dev/null 2>&1
echo "wrote $OUTPUT ($compare_path)"
