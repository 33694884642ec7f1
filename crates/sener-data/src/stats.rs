//! Corpus statistics (for `sener stats`): documents, words, entities per type, the entity-length
//! histogram, entities too long for the span window, and, once aligned and segmented, subwords
//! and entities that are not inside any segment.

use std::collections::BTreeMap;

use crate::align::Alignment;
use crate::document::Document;
use crate::error::Result;
use crate::report::Issue;
use crate::segment::Segmentation;

/// Statistics of a set of documents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Number of documents.
    pub documents: usize,
    /// Total words.
    pub words: usize,
    /// Most words in one document.
    pub max_words: usize,
    /// Total characters (code points).
    pub chars: usize,
    /// Total entities.
    pub entities: usize,
    /// Entities per label.
    pub per_label: BTreeMap<String, usize>,
    /// Entity length in words → number of entities (word-aligned entities only).
    pub length_histogram: BTreeMap<usize, usize>,
    /// Entities longer than `span_window + 1` words: the model can never predict them.
    pub longer_than_span_window: usize,
    /// Entities whose boundaries fall inside words (not in the histogram).
    pub not_word_aligned: usize,
    /// Total subwords (after [`Stats::add_segmentation`]).
    pub subwords: usize,
    /// Most subwords in one document.
    pub max_subwords: usize,
    /// Total segments.
    pub segments: usize,
    /// Entities in no segment (they cross a segment boundary).
    pub entities_outside_segments: usize,
}

impl Stats {
    /// Counts documents, words and entities. `span_window` is the one-sided span window in words
    /// (128 in SeNER: spans of up to 129 words can be predicted). Documents without words count
    /// no words and their entities count as not word-aligned.
    pub fn of_documents(docs: &[Document], span_window: usize) -> Result<Stats> {
        let mut s = Stats::default();
        for d in docs {
            s.documents += 1;
            s.words += d.word_count();
            s.max_words = s.max_words.max(d.word_count());
            s.chars += d.char_len();
            s.entities += d.entities.len();
            for e in &d.entities {
                *s.per_label.entry(e.label.clone()).or_insert(0) += 1;
            }
            if d.words.is_none() {
                s.not_word_aligned += d.entities.len();
                continue;
            }
            let (we, rep) = d.word_entities()?;
            s.not_word_aligned += rep.count(Issue::EntityNotWordAligned);
            for e in we {
                let n = e.end - e.start;
                *s.length_histogram.entry(n).or_insert(0) += 1;
                if n > span_window + 1 {
                    s.longer_than_span_window += 1;
                }
            }
        }
        Ok(s)
    }

    /// Adds one document's alignment and segmentation.
    pub fn add_segmentation(&mut self, align: &Alignment, seg: &Segmentation) {
        self.subwords += align.len();
        self.max_subwords = self.max_subwords.max(align.len());
        self.segments += seg.segments.len();
        self.entities_outside_segments += seg.report.count(Issue::EntityOutsideSegments);
    }
}
