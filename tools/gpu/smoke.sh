#!/usr/bin/env bash
# First GPU call: checks the CUDA build end to end on tiny inputs (train → eval → extract on a tiny
# DeBERTa, a MiniLM-shaped training step), and keeps the first half of the MiniLM weights on the
# machine for train.sh (one call carries ≤ 64 MiB). Results under $OUT.
cd "$(dirname "$0")/../.." && . tools/gpu/env.sh
mkdir -p /root/stash && if [ -f gpu/minilm.part1 ]; then cp gpu/minilm.part1 /root/stash/; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/smoke.txt"
ldd "$S" | grep -E "cublas|nvrtc|curand|cudart|libcuda" | tee -a "$OUT/smoke.txt"
t() { echo "+ $*" | tee -a "$OUT/smoke.txt"; timeout "$@" 2>&1 | grep -v '^\s*$' | tail -25 | tee -a "$OUT/smoke.txt"; }
t 60 "$S" train --device cuda --config gpu/smoke/run.toml
t 30 "$S" eval --device cuda --model /root/smoke/model --data gpu/smoke/train.jsonl
echo "w4 w7 w10 w13 w16 w19" | t 30 "$S" extract --device cuda --model /root/smoke/model
t 60 "$S" bench train-step --model minilm-shape --device cuda --lengths 512,2048 --steps 4
t 60 "$S" bench model --device cuda --models minilm-shape --modes sener --lengths 512,4096
[ -f /root/smoke/model/sener.json ] && echo "SMOKE-TRAIN-OK" | tee -a "$OUT/smoke.txt"
