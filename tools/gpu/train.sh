#!/usr/bin/env bash
# GPU training on Scholar-XL with the real MiniLM: `sener train` on dev.jsonl, `sener eval` on
# test.jsonl. Needs gpu/minilm/ (config + tokenizer), the two halves of model.safetensors
# (/root/stash/minilm.part1 from smoke.sh, gpu/minilm.part2), gpu/sx/{dev,test}.jsonl.
# A one-epoch calibration run times a step, then the real run takes as many epochs of the paper's
# recipe (batch 16) as fit in TRAIN_S seconds (3..30). Results under $OUT (model.tar: the model).
cd "$(dirname "$0")/../.." && . tools/gpu/env.sh
M=/root/minilm; mkdir -p $M; cp gpu/minilm/*.json $M/
cat /root/stash/minilm.part1 gpu/minilm.part2 > $M/model.safetensors
echo "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  $M/model.safetensors" | sha256sum -c - || exit 3
common=(--device cuda --train gpu/sx/dev.jsonl --base $M --max-len 512 --batch-size ${BATCH:-16} --micro-batch ${MICRO:-16} --checkpoint-every 0)
[ -n "${EPOCHS:-}" ] || timeout -s INT ${CAL_S:-60} "$S" train "${common[@]}" --output /root/cal --epochs 1 2>&1 | tail -40 | tee "$OUT/calibration.log"
[ -n "${EPOCHS:-}" ] || EPOCHS=$(python3 - "${TRAIN_S:-300}" "$OUT/calibration.log" <<'PY'
import json, sys, math
steps = [json.loads(l) for l in open("/root/cal.metrics.jsonl") if '"event":"step"' in l.replace(" ", "")]
# seconds per step from the later steps (the first ones include start-up and kernel loading)
a, b = steps[len(steps) // 3], steps[-1]
sps = (b["seconds"] - a["seconds"]) / max(1, b["step"] - a["step"])
import re
m = re.search(r'"train_segments":\s*(\d+)', open(sys.argv[2]).read())
per_epoch = math.ceil(int(m.group(1)) / 16) if m else steps[-1]["step"]
print(max(3, min(30, int(float(sys.argv[1]) / (sps * per_epoch)))))
PY
)
echo "epochs: $EPOCHS" | tee "$OUT/train.log"
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 500 > "$OUT/gpu-mem.log" 2>/dev/null &
smi=$!
TIME=""; [ -x /usr/bin/time ] && TIME="/usr/bin/time -v"
$TIME timeout -s INT $(( ${TRAIN_S:-300} + 60 )) "$S" train "${common[@]}" --output /root/m --epochs $EPOCHS ${TRAIN_ARGS:-} 2>&1 \
  | grep -v '^\s*$' | tail -45 | tee -a "$OUT/train.log"
kill $smi 2>/dev/null; echo "peak GPU memory (MiB, whole GPU): $(sort -n "$OUT/gpu-mem.log" | tail -1)" | tee -a "$OUT/train.log"
cp /root/m.metrics.jsonl "$OUT/" 2>/dev/null
timeout 150 "$S" eval --device cuda --model /root/m --data gpu/sx/test.jsonl --json "$OUT/test.json" --markdown "$OUT/test.md" 2>&1 | tail -30
(cd /root && tar cf "$OUT/model.tar" m)
