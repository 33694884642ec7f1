"""A spaCy pipeline component: ``nlp.add_pipe("sener", config={"model": PATH})``.

Every entity, nested ones included, goes to the span group ``doc.spans["sener"]`` with its score
(``attrs["scores"]``, as spaCy's own spancat); the non-overlapping best-scoring subset goes to
``doc.ents``. Spans are built from the model's character offsets with
``doc.char_span(..., alignment_mode="expand")`` (a model span that starts or ends inside a spaCy
token takes the whole token); a span that cannot be aligned at all is counted
(``component.unaligned``) and logged, never dropped silently. ``nlp.pipe(texts, batch_size=…)``
goes through ``Extractor.extract_batch``.

Registered through the ``spacy_factories`` entry point, so it needs no import after
``pip install "sener[spacy]"``.
"""


import logging
from typing import Any, Iterable, Iterator, Optional

from spacy.language import Language
from spacy.tokens import Doc, Span, SpanGroup

from ._sener import Extractor, load

log = logging.getLogger("sener")

DEFAULT_CONFIG: dict[str, Any] = {
    "model": None,
    "threshold": None,
    "flat": False,
    "batch_size": 8,
    "spans_key": "sener",
    "device": "cpu",
}


class SenerComponent:
    """The ``sener`` pipe: entities of a SeNER model on spaCy docs."""

    def __init__(
        self,
        nlp: Language,
        name: str,
        model: Optional[str],
        threshold: float | None = None,
        flat: bool = False,
        batch_size: int = 8,
        spans_key: str = "sener",
        device: str = "cpu",
    ) -> None:
        if not model:
            raise ValueError('the sener component needs a model: nlp.add_pipe("sener", config={"model": PATH_OR_HUB_ID})')
        self.name = name
        self.extractor: Extractor = load(model, device=device)
        self.threshold = threshold
        self.flat = flat
        self.batch_size = batch_size
        self.spans_key = spans_key
        self.unaligned = 0
        self.expanded = 0

    @property
    def labels(self) -> list[str]:
        return self.extractor.labels

    def __call__(self, doc: Doc) -> Doc:
        return self._annotate(doc, self.extractor.extract(doc.text, threshold=self.threshold, flat=self.flat))

    def pipe(self, docs: Iterable[Doc], batch_size: int | None = None) -> Iterator[Doc]:
        size = batch_size or self.batch_size
        batch: list[Doc] = []
        for doc in docs:
            batch.append(doc)
            if len(batch) >= size:
                yield from self._annotate_batch(batch, size)
                batch = []
        if batch:
            yield from self._annotate_batch(batch, size)

    def _annotate_batch(self, docs: list[Doc], size: int) -> Iterator[Doc]:
        results = self.extractor.extract_batch([d.text for d in docs], threshold=self.threshold, flat=self.flat, batch_size=size)
        for doc, ents in zip(docs, results):
            yield self._annotate(doc, ents)

    def _annotate(self, doc: Doc, ents: list[dict[str, Any]]) -> Doc:
        spans: list[Span] = []
        scores: list[float] = []
        for e in ents:
            span = doc.char_span(e["start"], e["end"], label=e["label"], alignment_mode="expand")
            if span is None:
                self.unaligned += 1
                log.warning("sener: %s span %d..%d %r cannot be aligned to spaCy tokens; not added", e["label"], e["start"], e["end"], e["text"])
                continue
            if span.start_char != e["start"] or span.end_char != e["end"]:
                self.expanded += 1
            spans.append(span)
            scores.append(e["score"])
        doc.spans[self.spans_key] = SpanGroup(doc, name=self.spans_key, spans=spans, attrs={"scores": scores})
        doc.ents = best_non_overlapping(spans, scores)
        return doc


def best_non_overlapping(spans: list[Span], scores: list[float]) -> list[Span]:
    """The spans kept greedily by score (highest first; ties: longer, then earlier) that overlap
    no span kept before, in document order."""
    order = sorted(range(len(spans)), key=lambda i: (-scores[i], -(spans[i].end - spans[i].start), spans[i].start))
    taken: set[int] = set()
    kept: list[Span] = []
    for i in order:
        s = spans[i]
        tokens = range(s.start, s.end)
        if any(t in taken for t in tokens):
            continue
        taken.update(tokens)
        kept.append(s)
    return sorted(kept, key=lambda s: s.start)


@Language.factory("sener", default_config=DEFAULT_CONFIG)
def make_sener(
    nlp: Language,
    name: str,
    model: Optional[str],
    threshold: Optional[float],
    flat: bool,
    batch_size: int,
    spans_key: str,
    device: str,
) -> SenerComponent:
    return SenerComponent(nlp, name, model, threshold=threshold, flat=flat, batch_size=batch_size, spans_key=spans_key, device=device)
