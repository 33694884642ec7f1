#!/usr/bin/env bash
# The Python package's tests: builds the `sener` binary (the tests compare against it) and the
# wheel of crates/sener-py, installs it with its pinned test, spaCy and Ray extras into a fresh
# virtual environment (target/pyenv) and runs pytest: the API, the spaCy component, and a real
# two-node Ray cluster (separate `ray start` processes on free loopback ports, stopped at the end).
# Needs cargo and python3 (>= 3.10) with pip and venv. SENER_PY_EXTRAS overrides the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
SENER_MINILM_DIR="${SENER_MINILM_DIR:-$(bash tools/setup-minilm.sh)}"
export SENER_MINILM_DIR
cargo build --release -q -p sener-cli
rm -rf target/pyenv
python3 -m venv target/pyenv
target/pyenv/bin/python -m pip install -q --disable-pip-version-check "./crates/sener-py[${SENER_PY_EXTRAS:-test,spacy,ray}]"
SENER_BIN="$PWD/target/release/sener" target/pyenv/bin/python -m pytest -q crates/sener-py/tests
