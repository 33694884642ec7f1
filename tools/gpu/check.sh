#!/usr/bin/env bash
# The GPU check of issue 18, one call (≤ 10 minutes of work, ≤ 64 MiB carried), one table:
#   1. the generic-path training step (candle ops, BiSPA in row chunks, recomputation) of a
#      DeBERTa-v3-large-shaped model at 5,120 tokens: seconds per step and peak GPU memory;
#   2. a short real training: MiniLM (weights carried as f16, widened to f32 on load) on
#      Scholar-XL dev with 20 % of its documents held out, ~150 s; the held-out micro F1;
#   3. the 100k-token inference (DeBERTa-v3-base shape, random weights): seconds and GPU memory;
#   4. a one-rank NCCL smoke test (`sener bench collective --device cuda` with the cuda,nccl
#      build; skipped, with the reason, where libnccl.so.2 or the MPI runtime is missing).
# Staging here (see README.md): gpu/sener.xz, gpu/sener-nccl.xz, gpu/minilm16/ (config,
# tokenizer, f16 weights from half.py), gpu/sx/dev.jsonl.xz. Results and the table under $OUT.
cd "$(dirname "$0")/../.." && . tools/gpu/env.sh
N=/root/sener-nccl
if [ ! -x "$N" ] && [ -f gpu/sener-nccl.xz ]; then xz -dc gpu/sener-nccl.xz > "$N" 2>/dev/null || python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" gpu/sener-nccl.xz > "$N"; chmod +x "$N"; fi
DEV=/root/sx-dev.jsonl
xz -dc gpu/sx/dev.jsonl.xz > "$DEV" 2>/dev/null || python3 -c "import lzma,sys; sys.stdout.buffer.write(lzma.open(sys.argv[1]).read())" gpu/sx/dev.jsonl.xz > "$DEV"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
t() { local s=$1; shift; echo "+ $*" >&2; timeout "$s" "$@"; }

# 1. generic-path step, DeBERTa-v3-large shape, 5,120 tokens (peak = GPU memory the step added)
t 170 "$S" bench train-step --model deberta-v3-large --device cuda --lengths 5120 --steps 2 --recompute always \
  --kernels generic --json "$OUT/large-generic.json" 2>&1 | tee "$OUT/large-generic.md"

# 2. short real training on Scholar-XL dev (20 % held out)
t 260 "$S" train --device cuda --train "$DEV" --holdout 0.2 --base gpu/minilm16 --output /root/check-model \
  --max-time 150s --checkpoint-every 0 --metrics-log "$OUT/train.metrics.jsonl" > "$OUT/train.log" 2>&1
tail -25 "$OUT/train.log"

# 3. inference at 100,000 tokens
t 120 "$S" bench model --device cuda --models deberta-v3-base --modes sener --lengths 100000 --budget-gib 120 \
  --timeout-s 90 --json "$OUT/100k.json" 2>&1 | tee "$OUT/100k.md"

# 4. one-rank NCCL smoke test
if [ ! -x "$N" ]; then echo "no gpu/sener-nccl.xz carried" > "$OUT/nccl.md"
elif ldd "$N" | grep -q "not found"; then { echo "skipped: missing libraries"; ldd "$N" | grep "not found"; } > "$OUT/nccl.md"
else t 60 "$N" bench collective --device cuda --reps 20 > "$OUT/nccl.md" 2>&1; fi
cat "$OUT/nccl.md"

python3 - "$OUT" <<'PY' | tee "$OUT/check.md"
import json, os, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception as e:
        return None
rows = []
g = load("large-generic.json")
if g and "step_seconds" in g[0]:
    r = g[0]
    rows.append(("generic-path training step, DeBERTa-v3-large shape, 5,120 tokens", f"{r['step_seconds']:.2f} s/step (first {r['first_step_seconds']:.2f} s)", f"{r.get('peak_gpu_mib', 0) / 1024:.1f} GiB peak GPU memory"))
else:
    rows.append(("generic-path training step, DeBERTa-v3-large shape, 5,120 tokens", "failed", (g or [{}])[0].get("skipped", "see large-generic.md")))
f1, steps = None, 0
try:
    for line in open(os.path.join(out, "train.metrics.jsonl")):
        v = json.loads(line)
        if v.get("event") == "eval":
            f1 = max(f1 or 0.0, v["dev"]["f1"])
        if v.get("event") == "step":
            steps = v["step"]
except OSError:
    pass
rows.append(("MiniLM on Scholar-XL dev, 150 s, 20 % held out", f"{steps} steps", f"held-out micro F1 {100 * f1:.2f}" if f1 is not None else "no evaluation (see train.log)"))
m = load("100k.json")
runs = [r for r in (m or {}).get("runs", []) if r.get("seconds") == r.get("seconds") and r.get("seconds") is not None]
if runs:
    r = runs[0]
    rows.append(("inference, 100,000 tokens, DeBERTa-v3-base shape", f"{r['seconds']:.2f} s", f"{r['peak_bytes'] / 2**30:.1f} GiB peak GPU memory"))
else:
    rows.append(("inference, 100,000 tokens, DeBERTa-v3-base shape", "failed", "see 100k.md"))
nccl = open(os.path.join(out, "nccl.md")).read() if os.path.exists(os.path.join(out, "nccl.md")) else ""
j = [json.loads(l) for l in nccl.splitlines() if l.startswith("{")]
rows.append(("NCCL all-reduce, one rank, 8 MiB", "ok" if j and j[0].get("ok") else "not run", f"{j[0]['median_ms']:.2f} ms" if j else nccl.strip().splitlines()[0] if nccl.strip() else ""))
print("| check | result | figure |")
print("|---|---|---|")
for a, b, c in rows:
    print(f"| {a} | {b} | {c} |")
PY
