#!/usr/bin/env bash
# The Python package's tests: builds the `sener` binary (the tests compare against it) and the
# abi3 wheel of crates/sener-py (target/wheels/), installs it with its pinned test, spaCy and Ray extras into a fresh
# virtual environment (target/pyenv) and runs pytest: the API, the spaCy component, and a real
# two-node Ray cluster (separate `ray start` processes on free loopback ports, stopped at the end).
# Needs cargo and python3 (>= 3.10) with pip and venv. SENER_PY_EXTRAS overrides the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
SENER_MINILM_DIR="${SENER_MINILM_DIR:-$(bash tools/setup-minilm.sh)}"
export SENER_MINILM_DIR
cargo build --release -q -p sener-cli
rm -rf target/pyenv target/wheels
python3 -m venv target/pyenv
# The distributable abi3 wheel (one file for every CPython >= 3.10 on this platform), built by
# maturin through pip, then installed from that file: the tests run what a user would install.
target/pyenv/bin/python -m pip wheel -q --disable-pip-version-check --no-deps -w target/wheels ./crates/sener-py
wheel=(target/wheels/sener-*-cp310-abi3-*.whl)
[ -f "${wheel[0]}" ] || { echo "no abi3 wheel in target/wheels: $(ls target/wheels)" >&2; exit 1; }
target/pyenv/bin/python -m pip install -q --disable-pip-version-check "${wheel[0]}[${SENER_PY_EXTRAS:-test,spacy,ray}]"
SENER_BIN="$PWD/target/release/sener" target/pyenv/bin/python -m pytest -q crates/sener-py/tests
