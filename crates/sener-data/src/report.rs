//! Reports of what a reader, writer or segmenter dropped or adjusted: nothing is lost silently.

use std::collections::BTreeMap;
use std::fmt;

/// How many examples are kept per issue kind.
const MAX_EXAMPLES: usize = 5;

/// A kind of adjustment or loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Issue {
    /// An entity with no characters or words (start == end) was dropped.
    EmptyEntityDropped,
    /// A discontinuous brat annotation (several fragments) was dropped.
    DiscontinuousEntityDropped,
    /// A brat annotation line that is not text-bound (relation, event, attribute, note...) was ignored.
    NonTextBoundAnnotationIgnored,
    /// A brat annotation's text column differs from the document text at its offsets; the offsets were kept.
    AnnotationTextMismatch,
    /// A CoNLL `I-` (or `E-`) tag did not continue an entity of the same type; a new entity was started.
    InsideTagWithoutBegin,
    /// A BIOES entity was not closed by `E-`/`S-`; it was closed at the last `B-`/`I-` token.
    UnclosedBioesEntity,
    /// A CoNLL document with no tokens was skipped.
    EmptyDocumentSkipped,
    /// A nested or overlapping entity could not be written to a flat format and was dropped.
    NestedEntityDropped,
    /// An entity whose boundaries fall inside a word could not be mapped to words and was dropped.
    EntityNotWordAligned,
    /// An entity was not inside any segment and so is not a label of any segment.
    EntityOutsideSegments,
    /// A word produced no subword tokens.
    WordWithoutSubwords,
    /// Raw text was cut into words and an entity boundary fell inside a word, which was split
    /// there (the written words differ from the text's own words).
    WordSplitAtEntityBoundary,
}

impl Issue {
    /// A short human description.
    pub fn describe(self) -> &'static str {
        match self {
            Issue::EmptyEntityDropped => "empty entity dropped",
            Issue::DiscontinuousEntityDropped => "discontinuous entity dropped",
            Issue::NonTextBoundAnnotationIgnored => "non-text-bound annotation ignored",
            Issue::AnnotationTextMismatch => "annotation text differs from document text (offsets kept)",
            Issue::InsideTagWithoutBegin => "I-/E- tag without a preceding B-/I- of the same type (new entity started)",
            Issue::UnclosedBioesEntity => "BIOES entity not closed by E-/S- (closed at its last token)",
            Issue::EmptyDocumentSkipped => "empty document skipped",
            Issue::NestedEntityDropped => "nested or overlapping entity dropped (flat format)",
            Issue::EntityNotWordAligned => "entity boundary inside a word, entity dropped",
            Issue::EntityOutsideSegments => "entity not fully inside any segment",
            Issue::WordWithoutSubwords => "word with no subword tokens",
            Issue::WordSplitAtEntityBoundary => "word split where an entity starts or ends inside it",
        }
    }
}

/// Counts (and a few located examples) of every adjustment or loss.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    counts: BTreeMap<Issue, usize>,
    examples: BTreeMap<Issue, Vec<String>>,
}

impl Report {
    /// An empty report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one occurrence of `issue`; `detail` (e.g. `file:line`) is evaluated only for the
    /// first few occurrences.
    pub fn note(&mut self, issue: Issue, detail: impl FnOnce() -> String) {
        *self.counts.entry(issue).or_insert(0) += 1;
        let ex = self.examples.entry(issue).or_default();
        if ex.len() < MAX_EXAMPLES {
            ex.push(detail());
        }
    }

    /// How many times `issue` occurred.
    pub fn count(&self, issue: Issue) -> usize {
        self.counts.get(&issue).copied().unwrap_or(0)
    }

    /// All counts, by issue.
    pub fn counts(&self) -> &BTreeMap<Issue, usize> {
        &self.counts
    }

    /// The first few examples recorded for `issue`.
    pub fn examples(&self, issue: Issue) -> &[String] {
        self.examples.get(&issue).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Adds the counts and examples of `other` into `self`.
    pub fn merge(&mut self, other: Report) {
        for (k, v) in other.counts {
            *self.counts.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.examples {
            let ex = self.examples.entry(k).or_default();
            for e in v {
                if ex.len() < MAX_EXAMPLES {
                    ex.push(e);
                }
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.counts.is_empty() {
            return write!(f, "nothing dropped or adjusted");
        }
        for (i, (issue, n)) in self.counts.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{n} × {}", issue.describe())?;
            if let Some(ex) = self.examples.get(issue) {
                if !ex.is_empty() {
                    write!(f, " (e.g. {})", ex.join("; "))?;
                }
            }
        }
        Ok(())
    }
}
