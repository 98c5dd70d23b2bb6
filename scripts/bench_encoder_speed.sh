#!/usr/bin/env bash
# Issue 21's speed table, one command: every registered encoder method against the unreduced model in
# the same process (median of 5 runs interleaved with it, after a warm-up), with peak tensor memory:
#   1. all-MiniLM-L6-v2, NQ passages (300 questions' gold passages; 96 timed passages, batch 32):
#      every text method at keep 0.7, ToMe and EViT at keep 0.9 (with and without min_step), Zero-TPrune
#      and MCTF at keep 0.7 with min_step=0.1 (half the scoring layers), and the fastest setting tried;
#   2. the same encoder one passage at a time (batch-1 latency, 64 passages): unreduced vs ToMe and 2x;
#   3. ViT-B/16 (random weights, batch 8): every method at keep 0.7.
# Usage: bash scripts/bench_encoder_speed.sh [OUTDIR]   (default results/encoder_speed; ~9 min on a quiet
# 2-core machine). Prints the load before and after; render with scripts/bench_tables.py OUTDIR/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-results/encoder_speed}
mkdir -p "$OUT"
FAST=tome:keep=0.3,schedule=decreasing,metric=hidden,min_tokens=16
echo "load before: $(uptime)"
tokenreduce bench --data nq:300 --threads 2 --timing-batches 3 --repeats 5 --no-progress \
  --methods ats,diffrate,evit,mctf,pitome,random,tome,topk-norm,zero-tprune --keep 0.7 \
  --config tome:keep=0.9 --config evit:keep=0.9 --config tome:keep=0.9,min_step=0.05 \
  --config evit:keep=0.9,min_step=0.05 --config zero-tprune:keep=0.7,min_step=0.1 \
  --config mctf:keep=0.7,min_step=0.1 --config "$FAST" --out "$OUT/minilm_nq"
tokenreduce bench --data nq:200 --threads 2 --batch-size 1 --timing-batches 64 --repeats 5 --no-progress \
  --config tome:keep=0.7 --config "$FAST" --out "$OUT/minilm_batch1"
tokenreduce bench vit --keep 0.7 --threads 2 --repeats 5 --no-progress --out "$OUT/vit_b16"
echo "load after: $(uptime)"
