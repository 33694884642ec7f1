#!/usr/bin/env bash
# GPU benchmarks (random weights, nothing to download): the whole-model inference table from 512
# to 100k tokens (SeNER vs full attention + L×L), and training steps at 5120 tokens with a
# DeBERTa-v3-large-shaped model and at 512 with MiniLM's shape. Run from the repo root on the GPU
# machine with the binary in gpu/. Results under $OUT.
cd "$(dirname "$0")/../.." && . tools/gpu/env.sh
# keep the first half of the MiniLM weights for train.sh in a later call (one call carries ≤ 64 MiB)
mkdir -p /root/stash && if [ -f gpu/minilm.part1 ]; then cp gpu/minilm.part1 /root/stash/; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
ldd "$S" | grep -E "cublas|nvrtc|curand|cudart|libcuda" | tee -a "$OUT/gpu.txt"
t() { echo "+ $*" >&2; timeout "$@"; }

t 190 "$S" bench model --device cuda --models deberta-v3-base --modes sener,full \
  --lengths 512,1024,2048,4096,5120,8192,16384,32768,65536,100000 --budget-gib 120 --max-tflop 400 --timeout-s 40 \
  --json "$OUT/bench-cuda.json" --svg "$OUT/bench-cuda.svg" 2>&1 | tee "$OUT/bench-cuda.md"
t 80 "$S" bench train-step --model deberta-v3-large --device cuda --lengths 5120 --steps ${STEPS:-3} --json "$OUT/train-step-large.json" 2>&1 | tee "$OUT/train-step-large.md"
