#!/usr/bin/env bash
# Set everything up, then lint and run the whole test suite (slow end-to-end tests included).
# Usage: scripts/test.sh [pytest args...]
set -euo pipefail
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"
scripts/setup.sh
scripts/install-test-system-deps.sh
# shellcheck source=/dev/null
. .venv/bin/activate
printf '\n==> ruff format --check and ruff check\n'
ruff format --check .
ruff check .
printf '\n==> pytest\n'
exec python -m pytest --durations=25 "$@"
