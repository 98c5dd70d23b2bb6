#!/usr/bin/env bash
# Set up (idempotent) and run the default test suite (slow benchmarks excluded: -m slow runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Debian chromium + chromedriver for the HTML report's browser test (skips cleanly without them)
bash scripts/install_chromium.sh || echo "chromium unavailable: the browser tests will skip"
. .venv/bin/activate
ruff check .
python -m pytest -q -p no:cacheprovider "$@"
