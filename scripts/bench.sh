#!/usr/bin/env bash
# Set up (idempotent) and run the main job: every encoder method at several keep rates on
# all-MiniLM-L6-v2, offline, on a docstring->code retrieval task built from Python's stdlib.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
tokenreduce bench "$@"
