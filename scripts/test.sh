#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow benchmarks excluded: -m slow runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
