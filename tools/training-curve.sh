#!/usr/bin/env bash
# The real training run of docs/performance.md, f32 against bf16: MiniLM, the sener recipe,
# Scholar-XL dev with 20 % held out, the same seed (so both runs see the same batches, masks and
# dropout draws), a fixed number of optimiser steps.
#
#   tools/training-curve.sh [OUT_DIR]        (STEPS=50, DATA=../shared/data/scholar-xl/dev.jsonl)
#
# Each run writes OUT_DIR/<dtype>/ (the model), OUT_DIR/<dtype>.metrics.jsonl (a line per step:
# loss, seconds; the held-out evaluation at the end) and prints its wall time.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-target/training-curve}
steps=${STEPS:-50}
data=${DATA:-../shared/data/scholar-xl/dev.jsonl}
minilm="$(bash tools/setup-minilm.sh)"
cargo build --release -p sener-cli
mkdir -p "$out"
for dt in f32 bf16; do
    start=$SECONDS
    target/release/sener train --train "$data" --holdout 0.2 --base "$minilm" --output "$out/$dt" \
        --max-steps "$steps" --seed 42 --dtype "$dt" --metrics-log "$out/$dt.metrics.jsonl"
    echo "$dt: $steps steps in $((SECONDS - start)) s" >&2
done
