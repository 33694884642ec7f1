#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real MiniLM checkpoint (hash-checked), run every
# test of the workspace, then build the Python package into a fresh virtual environment
# (target/pyenv) and run its tests (crates/sener-py/tests) against the release binary.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SENER_MINILM_DIR="$(bash tools/setup-minilm.sh)"
export SENER_MINILM_DIR
cargo test --workspace "$@"
bash tools/test-python.sh
