#!/usr/bin/env bash
# Keeps the binary and the first half of the MiniLM weights on a warm GPU machine for train.sh in
# the next call (one call carries ≤ 64 MiB; the weights alone are 91 MB).
cd "$(dirname "$0")/../.." && . tools/gpu/env.sh
mkdir -p /root/stash && cp gpu/minilm.part1 /root/stash/ && ls -la /root/stash "$S" && nvidia-smi -L
