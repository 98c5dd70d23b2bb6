#!/usr/bin/env bash
# Set up (idempotent) and run the main job: every encoder method at one representative setting on
# all-MiniLM-L6-v2, offline, on a docstring->code retrieval task built from Python's stdlib; prints the
# table and the recommended setting, writes results/main/bench.{json,csv,html} (+ PNG plots).
# `bash scripts/bench.sh --full` runs every method × keep 0.9/0.7/0.5/0.3 instead (several times longer).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
tokenreduce bench --out results/main/bench "$@"
