//! Segmentation of long documents into model inputs, as the official SeNER code does it
//! (`EntDataset.convert` in `sener/utils/data_loader.py`).
//!
//! - The document's subwords (see [`crate::align`]) are cut into pieces of `max_len − 2`
//!   subwords starting every `step = max_len − 2 − overlap` subwords (Python
//!   `range(0, n_subwords, step)`); each piece becomes `[CLS] + piece + [SEP]`. With `overlap = 0`
//!   (the official `train_stride = 1`) pieces are consecutive and do not overlap. With an overlap
//!   the official loop is kept as is, so the last piece may lie inside the previous one.
//! - A word whose subwords straddle a boundary appears, partly, in both segments.
//! - `indexes`: the subwords of the segment's `j`-th word (0-based, counted from the word of the
//!   piece's first subword, the segment's `word_offset`) get `j + 1`; `[CLS]` and `[SEP]` get 0.
//! - Labels: an entity (words `s..e`, exclusive) is kept, re-based, when
//!   `first_word ≤ s` and `e − 1 ≤ last_word`, the words of the piece's first and last subwords.
//!   An entity kept in no segment is counted as [`Issue::EntityOutsideSegments`].
//! - A document without subwords gives no segment.

use crate::align::{Alignment, SpecialTokens};
use crate::document::{Document, Span, WordEntity};
use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// Segmentation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentConfig {
    /// Maximum input length in tokens, `[CLS]` and `[SEP]` included (official: 5120).
    pub max_len: usize,
    /// Subwords shared by consecutive segments (official: 0, i.e. `train_stride = 1`).
    pub overlap: usize,
}

impl Default for SegmentConfig {
    fn default() -> Self {
        SegmentConfig { max_len: 5120, overlap: 0 }
    }
}

impl SegmentConfig {
    /// Consecutive, non-overlapping segments of at most `max_len` tokens.
    pub fn new(max_len: usize) -> Self {
        SegmentConfig { max_len, overlap: 0 }
    }

    /// The settings of the official code's `max_len` and `train_stride` (overlap = stride − 1).
    pub fn from_official(max_len: usize, train_stride: usize) -> Self {
        SegmentConfig { max_len, overlap: train_stride.saturating_sub(1) }
    }

    /// Subwords per piece: `max_len − 2`.
    pub fn piece_len(&self) -> usize {
        self.max_len.saturating_sub(2)
    }

    /// Distance between piece starts: `max_len − 2 − overlap`.
    pub fn step(&self) -> usize {
        self.piece_len().saturating_sub(self.overlap)
    }

    /// Checks `max_len ≥ 3` and `overlap < max_len − 2`.
    pub fn validate(&self) -> Result<()> {
        if self.max_len < 3 {
            return Err(DataError::Config(format!("max_len {} leaves no room for a subword between [CLS] and [SEP]", self.max_len)));
        }
        if self.step() == 0 {
            return Err(DataError::Config(format!("overlap {} must be below max_len − 2 = {}", self.overlap, self.piece_len())));
        }
        Ok(())
    }
}

/// One model input.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Position of the segment in its document.
    pub index: usize,
    /// `[CLS] + subwords + [SEP]`.
    pub input_ids: Vec<u32>,
    /// Per input position: segment word index + 1, and 0 for `[CLS]`/`[SEP]`.
    pub indexes: Vec<u32>,
    /// Document subword index of the first subword of the piece.
    pub subword_offset: usize,
    /// Document index of the segment's first word.
    pub word_offset: usize,
    /// Number of words: last word − first word + 1 (the official `word_len`).
    pub n_words: usize,
    /// Document character offset of the first word's start.
    pub char_offset: usize,
    /// Document character offset of the last word's end.
    pub char_end: usize,
    /// Document character span of each input position (`None` for `[CLS]`/`[SEP]`).
    pub token_chars: Vec<Option<Span>>,
    /// Entities inside the segment, in segment word indices (end exclusive).
    pub entities: Vec<WordEntity>,
}

impl Segment {
    /// Number of input tokens (`[CLS]`/`[SEP]` included).
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    /// Whether the segment has no tokens (never true for a built segment).
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// The positive cells of the official training label tensor (spec section 6) for a band of
    /// one-sided width `window` (128): for each entity with inclusive end `e` and `e − s ≤ window`,
    /// `(s, window + e − s, type)` and `(e, window − (e − s), type)`, where `type` is the label's
    /// index in `labels`. Longer entities get no cell (they are counted).
    /// Errors on a label not in `labels`.
    pub fn band_targets(&self, window: usize, labels: &[&str]) -> Result<BandTargets> {
        let mut cells = Vec::with_capacity(2 * self.entities.len());
        let mut too_long = 0;
        for e in &self.entities {
            let t = labels
                .iter()
                .position(|l| *l == e.label)
                .ok_or_else(|| DataError::Config(format!("label {:?} is not in the label set {labels:?}", e.label)))?;
            let (s, end) = (e.start, e.end - 1);
            let d = end - s;
            if d > window {
                too_long += 1;
                continue;
            }
            cells.push(BandCell { row: s, col: window + d, label: t });
            cells.push(BandCell { row: end, col: window - d, label: t });
        }
        Ok(BandTargets { cells, too_long })
    }

    /// The document character span of segment words `start..end` (end exclusive).
    pub fn word_span_chars(&self, doc: &Document, start: usize, end: usize) -> Option<Span> {
        doc.word_range_chars(start + self.word_offset, end + self.word_offset)
    }
}

/// One positive cell of the band label tensor `[n_words, 2·window+1, n_labels]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandCell {
    /// Word row.
    pub row: usize,
    /// Band column (`window` is the diagonal).
    pub col: usize,
    /// Label index.
    pub label: usize,
}

/// The training targets of one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BandTargets {
    /// Positive cells (a one-word entity gives the same cell twice, as in the official code).
    pub cells: Vec<BandCell>,
    /// Entities longer than `window + 1` words, which get no cell.
    pub too_long: usize,
}

/// A document's segments and what segmentation could not keep.
#[derive(Debug, Clone, PartialEq)]
pub struct Segmentation {
    /// The segments, in order.
    pub segments: Vec<Segment>,
    /// Entities kept in no segment ([`Issue::EntityOutsideSegments`]).
    pub report: Report,
}

/// Segments a document; `entities` are its word-level entities ([`Document::word_entities`]).
pub fn segment(doc: &Document, align: &Alignment, entities: &[WordEntity], special: &SpecialTokens, cfg: &SegmentConfig) -> Result<Segmentation> {
    cfg.validate()?;
    let words = doc.words.as_ref().ok_or_else(|| DataError::document(&doc.id, "document has no words"))?;
    if align.word_index.iter().any(|&m| m >= words.len())
        || align.word_index.windows(2).any(|w| w[0] > w[1])
        || align.char_spans.len() != align.ids.len()
        || align.word_index.len() != align.ids.len()
    {
        return Err(DataError::document(&doc.id, "alignment does not belong to this document"));
    }
    let n = align.len();
    let mut segments = Vec::new();
    let mut kept = vec![false; entities.len()];
    let mut start = 0usize;
    while start < n {
        let end = (start + cfg.piece_len()).min(n);
        let first = align.word_index[start];
        let last = align.word_index[end - 1];
        let mut input_ids = Vec::with_capacity(end - start + 2);
        let mut indexes = Vec::with_capacity(end - start + 2);
        let mut token_chars = Vec::with_capacity(end - start + 2);
        input_ids.push(special.cls);
        indexes.push(0);
        token_chars.push(None);
        for k in start..end {
            input_ids.push(align.ids[k]);
            indexes.push((align.word_index[k] - first + 1) as u32);
            token_chars.push(Some(align.char_spans[k]));
        }
        input_ids.push(special.sep);
        indexes.push(0);
        token_chars.push(None);
        let mut ents = Vec::new();
        for (i, e) in entities.iter().enumerate() {
            if e.start < e.end && first <= e.start && e.end - 1 <= last {
                kept[i] = true;
                ents.push(WordEntity { start: e.start - first, end: e.end - first, label: e.label.clone(), score: e.score });
            }
        }
        segments.push(Segment {
            index: segments.len(),
            input_ids,
            indexes,
            subword_offset: start,
            word_offset: first,
            n_words: last - first + 1,
            char_offset: words[first].start,
            char_end: words[last].end,
            token_chars,
            entities: ents,
        });
        start += cfg.step();
    }
    let mut report = Report::new();
    for (i, e) in entities.iter().enumerate() {
        if !kept[i] {
            report.note(Issue::EntityOutsideSegments, || format!("{} words {}..{} {}", doc.id, e.start, e.end, e.label));
        }
    }
    Ok(Segmentation { segments, report })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::align::{align_with, Piece};

    const SP: SpecialTokens = SpecialTokens { cls: 1, sep: 2, pad: 0, mask: Some(3), unk: None };

    /// One piece per character, id = 10 + char position in word.
    fn chars(w: &str) -> Result<Vec<Piece>> {
        Ok(w.chars().enumerate().map(|(i, _)| Piece { id: 10 + i as u32, start: i, end: i + 1 }).collect())
    }

    fn doc() -> (Document, Vec<WordEntity>) {
        // subwords: ab=0,1 c=2 def=3,4,5 g=6 hi=7,8
        let mut d = Document::from_words("d", &["ab", "c", "def", "g", "hi"]);
        d.push_word_entity(0, 2, "X", None).unwrap(); // words 0..2 (subwords 0..3)
        d.push_word_entity(2, 3, "Y", None).unwrap(); // word 2 (straddles)
        d.push_word_entity(3, 5, "Z", None).unwrap();
        d.push_word_entity(1, 4, "W", None).unwrap();
        let (we, _) = d.word_entities().unwrap();
        (d, we)
    }

    #[test]
    fn consecutive_segments_like_official() {
        let (d, we) = doc();
        let a = align_with(&d, chars).unwrap();
        let s = segment(&d, &a, &we, &SP, &SegmentConfig::new(6)).unwrap();
        // pieces of 4: [0,4) [4,8) [8,9)
        assert_eq!(s.segments.len(), 3);
        let s0 = &s.segments[0];
        assert_eq!(s0.input_ids, vec![1, 10, 11, 10, 10, 2]);
        assert_eq!(s0.indexes, vec![0, 1, 1, 2, 3, 0]);
        assert_eq!((s0.word_offset, s0.n_words, s0.char_offset, s0.char_end), (0, 3, 0, 8));
        // Y (word 2) is kept in segment 0 (partly there), as the official code does.
        let labels0: Vec<_> = s0.entities.iter().map(|e| (e.start, e.end, e.label.as_str())).collect();
        assert_eq!(labels0, vec![(0, 2, "X"), (2, 3, "Y")]);
        let s1 = &s.segments[1];
        assert_eq!(s1.indexes, vec![0, 1, 1, 2, 3, 0]);
        assert_eq!((s1.word_offset, s1.n_words), (2, 3));
        let labels1: Vec<_> = s1.entities.iter().map(|e| (e.start, e.end, e.label.as_str())).collect();
        assert_eq!(labels1, vec![(0, 1, "Y"), (1, 3, "Z")]);
        assert_eq!(s1.word_span_chars(&d, 1, 3), Some(Span::new(9, 13)));
        assert_eq!(s.segments[2].indexes, vec![0, 1, 0]);
        assert_eq!(s.report.count(Issue::EntityOutsideSegments), 1); // W crosses
        assert_eq!(s1.token_chars[1], Some(Span::new(6, 7)));
        let t = s1.band_targets(1, &["X", "Y", "Z"]).unwrap();
        let cells: Vec<_> = t.cells.iter().map(|c| (c.row, c.col, c.label)).collect();
        assert_eq!(cells, vec![(0, 1, 1), (0, 1, 1), (1, 2, 2), (2, 0, 2)]);
        assert_eq!(t.too_long, 0);
        assert_eq!(s1.band_targets(0, &["Y", "Z"]).unwrap().too_long, 1);
        assert!(s1.band_targets(1, &["X"]).is_err());
    }

    #[test]
    fn overlap_keeps_more_entities() {
        let (d, we) = doc();
        let a = align_with(&d, chars).unwrap();
        let cfg = SegmentConfig { max_len: 7, overlap: 3 };
        let s = segment(&d, &a, &we, &SP, &cfg).unwrap();
        // pieces of 5 every 2: [0,5) [2,7) [4,9) [6,9) [8,9)
        let offs: Vec<_> = s.segments.iter().map(|g| g.subword_offset).collect();
        assert_eq!(offs, vec![0, 2, 4, 6, 8]);
        assert!(s.report.is_empty());
        assert_eq!(SegmentConfig::from_official(7, 4), cfg);
        assert!(SegmentConfig { max_len: 7, overlap: 5 }.validate().is_err());
        assert!(SegmentConfig::new(2).validate().is_err());
    }
}
