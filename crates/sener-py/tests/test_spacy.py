"""The spaCy component: registered by entry point, every entity in doc.spans with scores, the
best-scoring non-overlapping subset in doc.ents, nlp.pipe through extract_batch, unaligned spans
counted. Skipped without spaCy (`pip install "sener[spacy]"`)."""

from pathlib import Path

import pytest

spacy = pytest.importorskip("spacy")

import sener  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
MODEL = str(ROOT / "models" / "sener-minilm-scholarxl")

TEXT = (
    "Jie Tang is a Professor of Computer Science at Tsinghua University, Beijing. He received his "
    "Ph.D. from Tsinghua University in 2006. Dr. Zoë Müller (日本語) joined the Université de Montréal in 2019."
)


@pytest.fixture(scope="module")
def nlp():
    nlp = spacy.blank("en")
    # no import of sener.spacy: the factory comes from the package's entry point
    nlp.add_pipe("sener", config={"model": MODEL, "threshold": 0.05})
    return nlp


def test_entities_go_to_span_group_and_ents(nlp):
    ex = sener.load(MODEL)
    want = ex.extract(TEXT, threshold=0.05)
    assert want, "a low threshold finds spans"
    doc = nlp(TEXT)
    group = doc.spans["sener"]
    comp = nlp.get_pipe("sener")
    assert len(group) + comp.unaligned == len(want)
    if comp.unaligned == 0:
        assert list(group.attrs["scores"]) == [e["score"] for e in want]
    # every span covers its model span (expanded to whole tokens at most)
    for span, e in zip(group, want):
        assert span.label_ == e["label"]
        assert span.start_char <= e["start"] and span.end_char >= e["end"]
    # doc.ents: non-overlapping, each of them in the group, and greedy by score
    ents = list(doc.ents)
    for a, b in zip(ents, ents[1:]):
        assert a.end <= b.start
    keys = {(s.start, s.end, s.label_) for s in group}
    assert all((s.start, s.end, s.label_) in keys for s in ents)
    best = max(range(len(group)), key=lambda i: group.attrs["scores"][i])
    top = group[best]
    assert any((s.start, s.end) == (top.start, top.end) for s in ents), "the best-scoring span is in doc.ents"


def test_pipe_equals_single_docs(nlp):
    texts = [TEXT, "Jie Tang works at Tsinghua University.", "", TEXT]
    def spans(doc):
        return [(s.start_char, s.end_char, s.label_) for s in doc.spans["sener"]]

    piped = [spans(d) for d in nlp.pipe(texts, batch_size=3)]
    single = [spans(nlp(t)) for t in texts]
    assert piped == single


def test_a_model_is_required():
    with pytest.raises(ValueError, match="needs a model"):
        spacy.blank("en").add_pipe("sener")
