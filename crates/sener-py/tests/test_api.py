"""The Python API against the CLI and the library's guarantees: exact offsets on non-ASCII text,
batch order, threads, every error type, the metric, training.

Needs the default model's base encoder (`bash tools/setup-minilm.sh`; `tools/test.sh` runs these
tests after the Rust ones) and the `sener` binary (`target/release/sener`, or `$SENER_BIN`).
"""

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

import sener

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "models" / "sener-minilm-scholarxl"
DATA = ROOT.parent / "shared" / "data"
FIXTURES = ROOT / "crates" / "sener" / "tests" / "fixtures"
SENER_BIN = Path(os.environ.get("SENER_BIN", ROOT / "target" / "release" / "sener"))

TEXT = (
    "Jie Tang is a Professor of Computer Science at Tsinghua University, Beijing. "
    "He received his Ph.D. from Tsinghua University in 2006. Prof. Tang's research interests "
    "include social network analysis, data mining and machine learning. "
    "Née à Zürich — Dr. Zoë Müller (日本語の研究者) joined the Université de Montréal in 2019 👩‍🔬. "
)


def test_installed_from_one_abi3_wheel():
    # The dist-info's WHEEL file, written by maturin: the stable-ABI tag that lets one wheel
    # serve every CPython >= 3.10, and the extension module is the limited-API build.
    from importlib.metadata import distribution

    tags = [l.split(":", 1)[1].strip() for l in distribution("sener").read_text("WHEEL").splitlines() if l.startswith("Tag:")]
    assert tags and all(t.startswith("cp310-abi3-") for t in tags), tags
    assert Path(sener._sener.__file__).name == "_sener.abi3.so"


@pytest.fixture(scope="module")
def ex():
    return sener.load(MODEL)


def test_offsets_are_python_str_indices_on_non_ascii_text(ex):
    text = TEXT * 3
    ents = ex.extract(text, threshold=0.05)
    assert ents, "a low threshold finds spans"
    for e in ents:
        assert set(e) == {"start", "end", "text", "label", "score"}
        assert text[e["start"] : e["end"]] == e["text"]
        assert e["label"] in ex.labels
        assert 0.0 <= e["score"] <= 1.0
    # spans after the non-ASCII characters are still exact
    assert any(e["start"] > text.index("👩") for e in ents)


def test_extract_matches_the_cli(ex, tmp_path):
    if not SENER_BIN.is_file():
        pytest.skip(f"{SENER_BIN} not built")
    f = tmp_path / "doc.txt"
    f.write_text(TEXT, encoding="utf-8")
    out = subprocess.run([str(SENER_BIN), "extract", "--model", str(MODEL), str(f)], check=True, capture_output=True, text=True)
    cli = json.loads(out.stdout)["entities"]
    py = ex.extract(TEXT)
    assert [(e["start"], e["end"], e["label"], e["text"]) for e in py] == [(e["start"], e["end"], e["label"], e["text"]) for e in cli]
    assert [round(e["score"], 5) for e in py] == [round(e["score"], 5) for e in cli]


def test_batch_keeps_input_order(ex):
    texts = [TEXT, "", "Jie Tang works at Tsinghua University.", TEXT[::-1], "   "]
    batch = ex.extract_batch(texts, batch_size=2)
    single = [ex.extract(t) for t in texts]
    # The texts of a batch share forward passes: the same entities, scores to 1e-5.
    key = lambda ents: [(e["start"], e["end"], e["label"], e["text"]) for e in ents]
    assert [key(b) for b in batch] == [key(s) for s in single]
    for b, s in zip(batch, single):
        assert all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(b, s))
    assert batch[1] == [] and batch[4] == []


def test_threads_share_one_extractor_and_the_gil_is_released(ex):
    texts = [TEXT * (i + 1) for i in range(4)]
    want = [ex.extract(t) for t in texts]
    got = [None] * len(texts)

    def work(i):
        got[i] = ex.extract(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    # While the model runs in Rust, this thread keeps running Python code.
    ticks = 0
    while any(t.is_alive() for t in threads):
        ticks += 1
        time.sleep(0.001)
    for t in threads:
        t.join()
    assert got == want
    assert ticks > 10, f"the main thread ran only {ticks} times while extracting"


def test_labels_and_config(ex):
    cfg = ex.config
    assert ex.labels == cfg["labels"]
    assert cfg["splitter"] == "treebank"
    assert "span" in cfg and "arrow" in cfg
    assert "labels" in repr(ex)


def test_errors_have_the_fitting_type(ex, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        sener.load(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match="not a probability"):
        ex.extract("text", threshold=1.5)
    with pytest.raises(TypeError):
        ex.extract(123)
    with pytest.raises(ValueError, match="batch_size"):
        ex.extract_batch(["a"], batch_size=0)
    with pytest.raises(ValueError, match="device"):
        sener.load(MODEL, device="tpu")
    bad = tmp_path / "model"
    bad.mkdir()
    (bad / "sener.json").write_text('{"base": {"path": "x"}, "labels": ["a", "a"]}')
    with pytest.raises(ValueError, match="appears twice"):
        sener.load(bad)
    with pytest.raises(FileNotFoundError):
        sener.evaluate(ex, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unknown input format"):
        sener.evaluate(ex, tmp_path, format="xml")


def test_evaluate_equals_sener_eval(ex, tmp_path):
    test = DATA / "scholar-xl" / "test.jsonl"
    if not test.is_file() or not SENER_BIN.is_file():
        pytest.skip("needs ../shared/data and the sener binary")
    sub = tmp_path / "test5.jsonl"
    sub.write_text("".join(test.read_text().splitlines(keepends=True)[:5]))
    got = sener.evaluate(ex, sub)
    js = tmp_path / "r.json"
    subprocess.run([str(SENER_BIN), "eval", "--model", str(MODEL), "--data", str(sub), "--json", str(js)], check=True, capture_output=True)
    want = json.loads(js.read_text())
    assert got["micro"] == want["micro"]
    assert got["per_type"] == want["per_type"]
    assert got["macro"] == want["macro"]
    assert got["unit"] == "word"
    # by path, the same
    assert sener.evaluate(str(MODEL), sub)["micro"] == want["micro"]


def test_train_runs_the_trainer(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    for f in ["config.json", "model.safetensors"]:
        (base / f).write_bytes((FIXTURES / "deberta_v3_tiny" / f).read_bytes())
    (base / "tokenizer.json").write_bytes((FIXTURES / "deberta_v3_tiny_tok" / "tokenizer.json").read_bytes())
    lines = []
    for d in range(6):
        words = [f"w{4 + (d * 7 + i * 3) % 60}" for i in range(16)]
        lines.append(json.dumps({"doc_id": f"d{d}", "text": words, "entity": [[1, 3, words[1:3], "x"]]}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    report = sener.train(
        train=tmp_path / "train.jsonl",
        base=base,
        output=tmp_path / "m" / "model",
        max_steps=2,
        batch_size=2,
        micro_batch=2,
        span={"window": 4, "cnn_depth": 1},
    )
    assert report["steps"] == 2 and not report["interrupted"]
    assert (tmp_path / "m" / "model" / "sener.json").is_file()
    saved = json.loads((tmp_path / "m" / "model.train.json").read_text())
    assert saved["span"]["window"] == 4 and saved["recipe"] == "sener"
    assert sener.load(tmp_path / "m" / "model").labels == ["x"]
    with pytest.raises(ValueError, match="unknown field `learning_rate`"):
        sener.train(train=tmp_path / "train.jsonl", base=base, learning_rate=0.1)
