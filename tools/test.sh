#!/usr/bin/env bash
# The whole test suite, as CI runs it: fetch the real MiniLM checkpoint (hash-checked), run every
# test of the workspace and the MPI tests (when Open MPI is installed), then build the Python package into a fresh virtual environment
# (target/pyenv) and run its tests (crates/sener-py/tests) against the release binary.
# Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SENER_MINILM_DIR="$(bash tools/setup-minilm.sh)"
export SENER_MINILM_DIR
cargo test --workspace "$@"
# Data-parallel training over MPI: real `mpirun -np 2` jobs (needs Open MPI: .ci/run installs it).
if command -v mpirun >/dev/null && command -v mpicc >/dev/null; then
    cargo test -p sener-cli --features mpi --test mpi "$@"
else
    echo "SKIPPED: MPI tests (no mpirun/mpicc; apt-get install openmpi-bin libopenmpi-dev)"
fi
bash tools/test-python.sh
