#!/usr/bin/env bash
# GPU readiness check, under 8 minutes on one GPU:
#   1. the default test suite with TOKENREDUCE_TEST_DEVICE=cuda (tests taking the `device` fixture run on
#      the GPU; the rest run as usual), at most 300 s;
#   2. the GPU table of scripts/gpu_check.py (ViT-B/16 fp16 batch 64 ToMe r=8/13, MiniLM batch 256,
#      SmolLM2-135M decode with AdaKV keep 0.25), at most 150 s.
# Results: OUT/pytest.log, OUT/gpu_check.json, OUT/gpu_check.md (default OUT: results/gpu_check).
#
# Usage: bash scripts/gpu_check.sh [--out DIR] [--no-tests] [--dry-run]
#   --dry-run   the table with tiny shapes on the CPU (seconds, no tests, not GPU figures; CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."

out=results/gpu_check
dry=0
tests=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --no-tests) tests=0; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -f .venv/bin/activate ] && . .venv/bin/activate
py="${PYTHON:-python}"
mkdir -p "$out"

if [ "$dry" = 1 ]; then
  echo "dry run: would run: TOKENREDUCE_TEST_DEVICE=cuda $py -m pytest -q -p no:cacheprovider"
  exec "$py" scripts/gpu_check.py --dry-run --out "$out"
fi

if ! "$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device; use --dry-run for the CPU check" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/nvidia-smi.csv" 2>&1 || true

args=()
test_rc=0
if [ "$tests" = 1 ]; then
  echo "gpu_check.sh: test suite on cuda (log: $out/pytest.log)"
  TOKENREDUCE_TEST_DEVICE=cuda timeout 300 "$py" -m pytest -q -p no:cacheprovider > "$out/pytest.log" 2>&1
  test_rc=$?
  tail -n 3 "$out/pytest.log"
  args=(--tests-rc "$test_rc" --tests-log "$out/pytest.log" --tests-device cuda)
fi

echo "gpu_check.sh: GPU table"
timeout 150 "$py" scripts/gpu_check.py --out "$out" "${args[@]}"
table_rc=$?
echo "gpu_check.sh: tests exit $test_rc, table exit $table_rc; results in $out/"
[ "$test_rc" = 0 ] && [ "$table_rc" = 0 ]
