"""Ray throughput, one node against two (one CPU each), side by side in one run, on a real local
cluster (tests/ray_cluster.py) with the default model:

    target/pyenv/bin/python crates/sener-py/bench/ray_bench.py [--docs 112] [--model M]

Prints documents/s and words/s per cluster size (the driver's own figures, `python -m sener.ray`).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from ray_cluster import RayCluster  # noqa: E402
from test_ray import MODEL, corpus  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--docs", type=int, default=112)
    p.add_argument("--model", default=str(MODEL))
    p.add_argument("--batch-size", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus(tmp / "docs", args.docs)
        for nodes in (1, 2):
            with RayCluster(tmp / f"c{nodes}", nodes=nodes) as c:
                out = subprocess.run(
                    [sys.executable, "-m", "sener.ray", "--model", args.model, "--input", str(tmp / "docs" / "*.txt"),
                     "--output", str(tmp / f"out{nodes}.jsonl"), "--address", c.address, "--batch-size", str(args.batch_size)],
                    capture_output=True, text=True, check=False,
                )
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                line = [l for l in out.stderr.splitlines() if "documents/s" in l][-1]
                m = re.search(r"([\d.]+) documents/s, (\d+) words/s", line)
                print(f"{nodes} node(s) x 1 CPU: {line}")
                assert m is not None
            if c.left():
                print(f"processes left: {c.left()}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
