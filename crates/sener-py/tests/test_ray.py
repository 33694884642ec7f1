"""Corpus-scale extraction on a real two-node Ray cluster (separate `ray start` processes on free
loopback ports, one CPU each; see ray_cluster.py) with the real default model: both nodes work,
each actor loads the model once, the results equal `sener extract` in one process, and with the
second node killed mid-run every document still comes out exactly once. Skipped without Ray
(`pip install "sener[ray]"`); tools/test-python.sh installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray_cluster import RayCluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "sener-minilm-scholarxl"
EXAMPLE = ROOT / "examples" / "scholar-homepage.txt"
SENER_BIN = Path(os.environ.get("SENER_BIN", ROOT / "target" / "release" / "sener"))

NON_ASCII = (
    "Zoë Müller-Łukasiewicz (ミュラー・ゾーイ) est professeure à l'Université de Montréal depuis 2019. "
    "Elle a obtenu son doctorat à l'ETH Zürich en 2012 — thèse « Réseaux sociaux » 👩‍🔬. "
    "Her research interests include graph mining, 自然言語処理 and knowledge graphs. "
)


def corpus(folder: Path, n: int = 56) -> list[tuple[str, str]]:
    """`n` documents: sentence windows of the example homepage, one long enough for several
    512-token segments, one full of non-ASCII text."""
    sentences = [s.strip() + "." for s in EXAMPLE.read_text(encoding="utf-8").split(". ") if s.strip()]
    docs = [("long", " ".join(sentences) * 4), ("non-ascii", NON_ASCII * 3)]
    i = 0
    while len(docs) < n:
        k = 2 + i % 5
        start = (i * 3) % max(1, len(sentences) - k)
        docs.append((f"doc{i:03d}", " ".join(sentences[start : start + k])))
        i += 1
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id, text in docs:
        (folder / f"{doc_id}.txt").write_text(text, encoding="utf-8")
    return docs


def cli_entities(folder: Path, docs: list[tuple[str, str]]) -> dict[str, list[tuple]]:
    """`sener extract` over the same files, in one process."""
    files = [str(folder / f"{d}.txt") for d, _ in docs]
    out = subprocess.run(
        [str(SENER_BIN), "extract", "--model", str(MODEL), *files],
        check=True, capture_output=True, text=True,
    )
    got = {}
    for line in out.stdout.splitlines():
        r = json.loads(line)
        got[r["id"]] = [(e["start"], e["end"], e["label"], e["text"], round(e["score"], 4)) for e in r["entities"]]
    return got


def same(entities: list[dict], want: list[tuple]) -> bool:
    """The CLI's entities (spans, labels, texts); scores to 1e-4 (documents batched together
    share forward passes, which may change the last bits of a score)."""
    got = [(e["start"], e["end"], e["label"], e["text"]) for e in entities]
    return got == [w[:4] for w in want] and all(abs(e["score"] - w[4]) < 1e-4 for e, w in zip(entities, want))


def rows_of(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line being written
    return out


def run_job(c: RayCluster, folder: Path, out: Path, batch: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable, "-m", "sener.ray", "--model", str(MODEL), "--input", str(folder / "*.txt"),
            "--output", str(out), "--address", c.address, "--record-node", "--batch-size", str(batch), "--blocks", "56",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


@pytest.fixture()
def cluster(tmp_path):
    if not SENER_BIN.is_file():
        pytest.skip(f"{SENER_BIN} not built")
    c = RayCluster(tmp_path / "cluster", nodes=2)
    with c:
        yield c
    assert c.left() == [], f"Ray processes left behind: {c.left()}"


def test_two_nodes_give_the_cli_entities_each_document_once(cluster, tmp_path):
    docs = corpus(tmp_path / "docs")
    nodes = cluster.node_ids()
    assert len(nodes) == 2, "two live nodes"
    out = tmp_path / "out.jsonl"
    job = run_job(cluster, tmp_path / "docs", out, batch=2)
    stdout, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-4000:]
    print(stderr.strip().splitlines()[-1])
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == sorted(d for d, _ in docs), "every document exactly once"
    assert {r["sener_node"] for r in rows} == set(nodes), "work ran on both nodes"
    assert all(r["sener_loads"] == 1 for r in rows), "each actor loaded the model once"
    want = cli_entities(tmp_path / "docs", docs)
    for r in rows:
        assert same(r["entities"], want[r["id"]]), r["id"]
    text = dict(docs)
    for r in rows:
        for e in r["entities"]:
            assert text[r["id"]][e["start"] : e["end"]] == e["text"]


def test_the_job_survives_losing_a_node(cluster, tmp_path):
    docs = corpus(tmp_path / "docs")
    head, second = cluster.node_ids()
    out = tmp_path / "out.jsonl"
    job = run_job(cluster, tmp_path / "docs", out, batch=1)
    # Kill the second node once it has done some of the work, long before the end.
    deadline = time.monotonic() + 600
    killed_at = None
    while time.monotonic() < deadline and job.poll() is None:
        rows = rows_of(Path(str(out) + ".partial"))
        if any(r["sener_node"] == second for r in rows):
            killed_at = len(rows)
            cluster.kill(1)
            break
        time.sleep(0.2)
    assert killed_at is not None, "the second node never delivered a row before the job ended"
    assert killed_at < len(docs), "the node was killed mid-run"
    stdout, stderr = job.communicate(timeout=900)
    assert job.returncode == 0, stderr[-4000:]
    rows = rows_of(out)
    assert sorted(r["id"] for r in rows) == sorted(d for d, _ in docs), "every document exactly once"
    assert any(r["sener_node"] == head for r in rows[killed_at:]), "the head finished the job"
    want = cli_entities(tmp_path / "docs", docs)
    for r in rows:
        assert same(r["entities"], want[r["id"]]), r["id"]


def test_the_predictor_keeps_other_columns():
    import pyarrow as pa

    from sener.ray import ENTITIES, SenerPredictor

    p = SenerPredictor(str(MODEL), num_threads=1)
    batch = pa.table({"id": ["a", "b"], "text": [NON_ASCII, ""], "year": [2019, 2020]})
    got = p(batch)
    assert got.column_names == ["id", "text", "year", "entities"]
    assert got.column("entities").type == ENTITIES
    assert got.column("year").to_pylist() == [2019, 2020]
    ents = got.column("entities").to_pylist()
    assert ents[1] == []
    for e in ents[0]:
        assert NON_ASCII[e["start"] : e["end"]] == e["text"]
    # pandas and dict batches too
    assert p({"id": ["a"], "text": [NON_ASCII]}).column("entities").to_pylist() == ents[:1]
