#!/usr/bin/env bash
# Set everything up, then run the whole pipeline (ingest -> tokenize -> train -> evaluate) and show its metrics.
# Usage: scripts/run.sh [dvc repro args...]     e.g. scripts/run.sh tokenize   (run up to one stage)
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
scripts/setup.sh
# shellcheck source=/dev/null
. .venv/bin/activate
printf '\n==> dvc repro %s\n' "$*"
dvc repro "$@"
printf '\n==> dvc metrics show\n'
dvc metrics show
