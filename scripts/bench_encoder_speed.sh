#!/usr/bin/env bash
# Issue 21's speed table, one command: every registered encoder method against the unreduced model in
# the same process (median of 5 runs interleaved with it, after a warm-up), with peak tensor memory:
#   1. all-MiniLM-L6-v2, NQ passages (300 questions' gold passages; 96 timed passages, batch 32):
#      every text method at keep 0.7 (MCTF and Zero-TPrune at their default min_step=0.1), MCTF and
#      Zero-TPrune also at keep 0.5 and with min_step=0 (one step per layer, the former default), ToMe
#      and EViT at keep 0.9 with min_step=0.05 (without it: 0.99x / 1.00x in the previous round);
#   2. the 2x candidates with STS-B beside NQ: ToMe keep 0.3 decreasing (the previous best) and ToMe
#      keep 0.25 decreasing over blocks 0-4 (the last block left whole), chosen on NQ questions
#      1000-2000 and STS-B dev; NQ 1-300 and STS-B test here are held out;
#   3. the same encoder one passage at a time (batch-1 latency, 64 passages): unreduced vs ToMe keep 0.7
#      and the 2x setting;
#   4. ViT-B/16 (random weights, batch 8): every method at keep 0.7.
# Usage: bash scripts/bench_encoder_speed.sh [OUTDIR]   (default results/encoder_speed; ~9 min on a quiet
# 2-core machine, estimated). Prints the load before and after; render with scripts/bench_tables.py OUTDIR/*.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-results/encoder_speed}
mkdir -p "$OUT"
FAST=tome:keep=0.3,schedule=decreasing,metric=hidden,min_tokens=16
TWO="tome:keep=0.25,schedule=decreasing,metric=hidden,min_tokens=16,layers=0;1;2;3;4"
echo "load before: $(uptime)"
tokenreduce bench --data nq:300 --threads 2 --timing-batches 3 --repeats 5 --no-progress \
  --methods ats,diffrate,evit,mctf,pitome,random,tome,topk-norm,zero-tprune --keep 0.7 \
  --config mctf:keep=0.5 --config zero-tprune:keep=0.5 \
  --config mctf:keep=0.7,min_step=0 --config zero-tprune:keep=0.7,min_step=0 \
  --config tome:keep=0.9,min_step=0.05 --config evit:keep=0.9,min_step=0.05 --out "$OUT/minilm_nq"
tokenreduce bench --data nq:300,stsb --threads 2 --timing-batches 3 --repeats 5 --no-progress \
  --config "$FAST" --config "$TWO" --out "$OUT/minilm_2x"
tokenreduce bench --data nq:200 --threads 2 --batch-size 1 --timing-batches 64 --repeats 5 --no-progress \
  --config tome:keep=0.7 --config "$TWO" --out "$OUT/minilm_batch1"
tokenreduce bench vit --keep 0.7 --threads 2 --repeats 5 --no-progress --out "$OUT/vit_b16"
echo "load after: $(uptime)"
