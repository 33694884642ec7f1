#!/usr/bin/env bash
# The main job until extraction lands: encode a whole long document (a full SciREX paper,
# ~5,000 words) in one pass with the real all-MiniLM-L6-v2 encoder and arrow attention, and print
# its shape, speed and peak memory. Hidden states go to target/quickstart-hidden.safetensors.
set -euo pipefail
cd "$(dirname "$0")/.."
minilm="$(bash tools/setup-minilm.sh)"
cargo build --release -q -p sener-cli
data="${SENER_DATA:-../shared/data}"
doc=target/quickstart-doc.txt
python3 - "$data/scirex/dev.jsonl" "$doc" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    d = json.loads(f.readline())
open(sys.argv[2], "w").write(" ".join(d["words"]))
print(f"document {d['doc_id']}: {len(d['words'])} words", file=sys.stderr)
PY
./target/release/sener encode --model "$minilm" --file "$doc" --output target/quickstart-hidden.safetensors "$@"
