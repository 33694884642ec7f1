#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real MiniLM checkpoint (hash-checked), then
# every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
SENER_MINILM_DIR="$(bash tools/setup-minilm.sh)"
export SENER_MINILM_DIR
cargo test --workspace "$@"
