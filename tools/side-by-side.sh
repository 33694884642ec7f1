#!/usr/bin/env bash
# The side-by-side runs of docs/performance.md in one go: the official SeNER code (PyTorch, through
# tools/bench_official.py) and sener on the same shape (DeBERTa-v3-base, random weights), the same
# synthetic segment and the same thread count, one after the other, nothing else running.
#
#   tools/side-by-side.sh OFFICIAL_SENER_DIR [OUT_DIR]
#
# OFFICIAL_SENER_DIR is the official `sener/` folder (THUDM/scholar-profiling); PY is a Python with
# torch 2.5.1, transformers 4.46.3, peft 0.11.1 and FastNLP 1.0.1 (tools/bench_official.py's
# docstring has the install). THREADS (default 2) applies to both sides; SKIP_OFFICIAL=1 runs sener
# only. Every result is one JSON line (official) or a JSON file (sener) under OUT_DIR
# (default target/side-by-side); the tables of docs/performance.md are read off them.
set -euo pipefail
cd "$(dirname "$0")/.."
official=${1:?usage: tools/side-by-side.sh OFFICIAL_SENER_DIR [OUT_DIR]}
out=${2:-target/side-by-side}
py=${PY:-python3}
threads=${THREADS:-2}
mkdir -p "$out"
cargo build --release -p sener-cli
sener=target/release/sener
export RAYON_NUM_THREADS=$threads
model="$out/deberta-v3-base-random"
# The model is read from a file, as `sener extract` reads one.
[ -f "$model/model.safetensors" ] || "$sener" bench random-model --model deberta-v3-base --output "$model"

official() { # MODE TOKENS REPEAT
    [ "${SKIP_OFFICIAL:-0}" = 1 ] && return 0
    echo "== official $1, $2 tokens" >&2
    "$py" tools/bench_official.py --official-dir "$official" --mode "$1" --tokens "$2" --repeat "$3" \
        --threads "$threads" | tee -a "$out/official.jsonl"
}

# Inference at 5,120 tokens: steady state (median of 3 forwards in one process) and the first
# forward of a fresh process (one forward per process).
official forward 5120 2
"$sener" bench model --models "$model" --modes sener --lengths 5120 --dtypes f32,bf16 --repeat 3 \
    --json "$out/forward-steady.json"
"$sener" bench model --models "$model" --modes sener --lengths 5120 --dtypes f32,bf16 --repeat 1 \
    --json "$out/forward-first.json"

# The training step (forward + backward + AdamW, LoRA r8) at 1,024 and 2,048 tokens.
official train-step 1024 3
official train-step 2048 3
for r in auto always; do
    "$sener" bench train-step --model "$model" --lengths 1024,2048 --recompute "$r" --steps 4 \
        --dtypes f32,bf16 --json "$out/train-step-$r.json"
done
echo "results in $out" >&2
