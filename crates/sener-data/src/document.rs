//! The [`Document`] type: raw text plus entities as character spans, optionally with words.
//!
//! # Offsets
//! All offsets in a [`Document`] are **Unicode code points** (Rust `char`s), counted from the
//! start of [`Document::text`], with an **exclusive end**: this is what Python's `str` slicing
//! uses (`text[start:end]`). [`OffsetMap`] converts to and from UTF-8 byte offsets.
//!
//! # Words and how they are joined
//! When a document is built from a list of words ([`Document::from_words`]), its text is the
//! words joined by a single ASCII space ([`WORD_SEPARATOR`]), and each word's character span is
//! recorded in [`Document::words`]. The join is reversible: word `i` is
//! `text[words[i].start..words[i].end]` (in code points), and the text of an entity that covers
//! words `s..e` equals `words[s..e].join(" ")`. Words may contain spaces or be empty: the recorded
//! spans, not a re-split of the text, define the words.
//!
//! The word-level view ([`Document::word_entities`]) is derived from the character spans, never
//! the other way round.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// The separator placed between words when a text is built from words: one ASCII space.
pub const WORD_SEPARATOR: &str = " ";

/// A half-open range `[start, end)`; in code points for character spans, or in word indices for
/// sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Span {
    /// First position.
    pub start: usize,
    /// One past the last position.
    pub end: usize,
}

impl Span {
    /// A new span.
    pub fn new(start: usize, end: usize) -> Self {
        Span { start, end }
    }

    /// `end - start` (0 if reversed).
    pub fn len(&self) -> usize {
        self.end.saturating_sub(self.start)
    }

    /// Whether the span is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// An entity as a character span of the document text (code points, end exclusive).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// First character.
    pub start: usize,
    /// One past the last character.
    pub end: usize,
    /// The entity type.
    pub label: String,
    /// An optional confidence (predictions).
    pub score: Option<f32>,
}

impl Entity {
    /// A new entity without score.
    pub fn new(start: usize, end: usize, label: impl Into<String>) -> Self {
        Entity { start, end, label: label.into(), score: None }
    }
}

/// An entity as a range of word indices (end exclusive), derived from a [`Document`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordEntity {
    /// First word.
    pub start: usize,
    /// One past the last word.
    pub end: usize,
    /// The entity type.
    pub label: String,
    /// An optional confidence.
    pub score: Option<f32>,
}

/// A document: raw text, entities as character spans, and optional words and sentences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// The document id (a reader makes one up from the position when the source has none).
    pub id: String,
    /// The raw text.
    pub text: String,
    /// Entities as character spans; may nest or overlap.
    pub entities: Vec<Entity>,
    /// Character span of each word, in order and non-overlapping; `None` if not segmented.
    pub words: Option<Vec<Span>>,
    /// Sentences as word-index ranges; `None` if unknown.
    pub sentences: Option<Vec<Span>>,
}

impl Document {
    /// A document with text only.
    pub fn new(id: impl Into<String>, text: impl Into<String>) -> Self {
        Document { id: id.into(), text: text.into(), entities: Vec::new(), words: None, sentences: None }
    }

    /// A document whose text is `words` joined by [`WORD_SEPARATOR`], with each word's span.
    pub fn from_words<S: AsRef<str>>(id: impl Into<String>, words: &[S]) -> Self {
        let mut text = String::new();
        let mut spans = Vec::with_capacity(words.len());
        let mut pos = 0usize;
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                text.push_str(WORD_SEPARATOR);
                pos += WORD_SEPARATOR.chars().count();
            }
            let w = w.as_ref();
            let n = w.chars().count();
            text.push_str(w);
            spans.push(Span::new(pos, pos + n));
            pos += n;
        }
        Document { id: id.into(), text, entities: Vec::new(), words: Some(spans), sentences: None }
    }

    /// Number of characters (code points) in the text.
    pub fn char_len(&self) -> usize {
        self.text.chars().count()
    }

    /// Number of words (0 when not segmented).
    pub fn word_count(&self) -> usize {
        self.words.as_ref().map_or(0, Vec::len)
    }

    /// The character span of words `start..end` (end exclusive), if in range and non-empty.
    pub fn word_range_chars(&self, start: usize, end: usize) -> Option<Span> {
        let words = self.words.as_ref()?;
        if start >= end || end > words.len() {
            return None;
        }
        Some(Span::new(words[start].start, words[end - 1].end))
    }

    /// Adds an entity given by word indices `start..end` (end exclusive). Errors when the range
    /// is empty, outside the words, or covers no character (only empty words).
    pub fn push_word_entity(&mut self, start: usize, end: usize, label: impl Into<String>, score: Option<f32>) -> Result<()> {
        let span = self.word_range_chars(start, end).filter(|s| !s.is_empty()).ok_or_else(|| {
            DataError::document(&self.id, format!("word range {start}..{end} is empty, covers no character or is outside the {} words", self.word_count()))
        })?;
        self.entities.push(Entity { start: span.start, end: span.end, label: label.into(), score });
        Ok(())
    }

    /// The text of characters `start..end`, or `None` when out of range or reversed.
    pub fn slice_chars(&self, start: usize, end: usize) -> Option<&str> {
        slice_chars(&self.text, start, end)
    }

    /// The text of an entity.
    pub fn entity_text(&self, e: &Entity) -> Option<&str> {
        self.slice_chars(e.start, e.end)
    }

    /// The words as string slices of the text.
    pub fn word_strs(&self) -> Option<Vec<&str>> {
        let words = self.words.as_ref()?;
        let map = OffsetMap::new(&self.text);
        words.iter().map(|w| map.slice(&self.text, w.start, w.end)).collect()
    }

    /// A conversion table between character and byte offsets of the text.
    pub fn offsets(&self) -> OffsetMap {
        OffsetMap::new(&self.text)
    }

    /// Checks every invariant: entity spans non-empty and inside the text, labels non-empty, words
    /// inside the text, in order and non-overlapping, sentences inside the word list.
    pub fn validate(&self) -> Result<()> {
        let n = self.char_len();
        for (i, e) in self.entities.iter().enumerate() {
            if e.start >= e.end || e.end > n {
                return Err(DataError::document(&self.id, format!("entity {i} span {}..{} is empty or outside the text of {n} characters", e.start, e.end)));
            }
            if e.label.is_empty() {
                return Err(DataError::document(&self.id, format!("entity {i} has an empty label")));
            }
        }
        if let Some(words) = &self.words {
            let mut prev = 0usize;
            for (i, w) in words.iter().enumerate() {
                if w.start < prev || w.end < w.start || w.end > n {
                    return Err(DataError::document(&self.id, format!("word {i} span {}..{} is out of order, reversed or outside the text", w.start, w.end)));
                }
                prev = w.end;
            }
            if let Some(sents) = &self.sentences {
                for (i, s) in sents.iter().enumerate() {
                    if s.start > s.end || s.end > words.len() {
                        return Err(DataError::document(&self.id, format!("sentence {i} word range {}..{} is reversed or outside the {} words", s.start, s.end, words.len())));
                    }
                }
            }
        } else if self.sentences.is_some() {
            return Err(DataError::document(&self.id, "sentences given without words"));
        }
        Ok(())
    }

    /// The word-level view of the entities: each entity whose character span starts at a word's
    /// start and ends at a word's end becomes a word range. Entities whose boundaries fall inside a
    /// word (or between words, on separator characters) are dropped and counted in the report.
    /// Errors when the document has no words.
    pub fn word_entities(&self) -> Result<(Vec<WordEntity>, Report)> {
        let words = self.words.as_ref().ok_or_else(|| DataError::document(&self.id, "document has no words"))?;
        let mut report = Report::new();
        let mut out = Vec::with_capacity(self.entities.len());
        for (i, e) in self.entities.iter().enumerate() {
            match char_span_to_words(words, e.start, e.end) {
                Some((s, t)) => out.push(WordEntity { start: s, end: t, label: e.label.clone(), score: e.score }),
                None => report.note(Issue::EntityNotWordAligned, || format!("{} entity {i} ({}..{})", self.id, e.start, e.end)),
            }
        }
        Ok((out, report))
    }

    /// Segments the text into words at Unicode whitespace (replacing any existing words and
    /// sentences), then splits words further wherever an entity boundary falls inside one, so that
    /// every entity is word-aligned.
    pub fn segment_words_whitespace(&mut self) -> usize {
        self.segment_words(crate::split::Splitter::Whitespace)
    }

    /// Segments the text into words with `splitter` (replacing any existing words and sentences),
    /// then splits words further wherever an entity boundary falls inside one, so that every
    /// entity is word-aligned. Returns how many such extra cuts were made (writers report them).
    pub fn segment_words(&mut self, splitter: crate::split::Splitter) -> usize {
        let mut cuts: Vec<usize> = self.entities.iter().flat_map(|e| [e.start, e.end]).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut words = Vec::new();
        let mut ci = 0usize;
        let mut extra = 0usize;
        for w in splitter.split(&self.text) {
            let mut s = w.start;
            while ci < cuts.len() && cuts[ci] <= w.start {
                ci += 1;
            }
            while ci < cuts.len() && cuts[ci] < w.end {
                words.push(Span::new(s, cuts[ci]));
                s = cuts[ci];
                ci += 1;
                extra += 1;
            }
            words.push(Span::new(s, w.end));
        }
        self.words = Some(words);
        self.sentences = None;
        extra
    }
}

/// Maps a character span to the word range it covers exactly, if it does.
pub fn char_span_to_words(words: &[Span], start: usize, end: usize) -> Option<(usize, usize)> {
    if start >= end {
        return None;
    }
    // First word starting at `start` (several empty words may share a position; take a non-empty
    // one when possible by searching for the first word with start == start and end > start).
    let s = words.partition_point(|w| w.start < start);
    let mut s = s;
    while s < words.len() && words[s].start == start && words[s].end == start {
        s += 1;
    }
    if s >= words.len() || words[s].start != start {
        return None;
    }
    // Last word ending at `end`.
    let e = words.partition_point(|w| w.end <= end);
    if e == 0 {
        return None;
    }
    let mut e = e;
    while e > s + 1 && words[e - 1].start == end && words[e - 1].end == end {
        e -= 1;
    }
    if e <= s || words[e - 1].end != end {
        return None;
    }
    Some((s, e))
}

/// The substring of `text` for code points `start..end`, or `None` when out of range.
pub fn slice_chars(text: &str, start: usize, end: usize) -> Option<&str> {
    if start > end {
        return None;
    }
    let b0 = char_to_byte(text, start)?;
    let len = char_to_byte(&text[b0..], end - start)?;
    Some(&text[b0..b0 + len])
}

/// The byte offset of code point `c` in `text` (`c == chars().count()` gives `text.len()`).
pub fn char_to_byte(text: &str, c: usize) -> Option<usize> {
    if c == 0 {
        return Some(0);
    }
    match text.char_indices().nth(c) {
        Some((b, _)) => Some(b),
        None => (text.chars().count() == c).then_some(text.len()),
    }
}

/// The code-point offset of byte `b` in `text`, or `None` when `b` is not on a character boundary.
pub fn byte_to_char(text: &str, b: usize) -> Option<usize> {
    if b > text.len() || !text.is_char_boundary(b) {
        return None;
    }
    Some(text[..b].chars().count())
}

/// A precomputed table between code-point and byte offsets of one text (O(1) char→byte,
/// O(log n) byte→char).
#[derive(Debug, Clone)]
pub struct OffsetMap {
    /// Byte offset of every char, plus the text length at the end.
    starts: Vec<usize>,
}

impl OffsetMap {
    /// Builds the table for `text`.
    pub fn new(text: &str) -> Self {
        let mut starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        starts.push(text.len());
        OffsetMap { starts }
    }

    /// Number of characters.
    pub fn char_len(&self) -> usize {
        self.starts.len() - 1
    }

    /// Byte offset of char `c` (`c == char_len()` allowed).
    pub fn char_to_byte(&self, c: usize) -> Option<usize> {
        self.starts.get(c).copied()
    }

    /// Char offset of byte `b`, `None` if `b` is not a character boundary of the text.
    pub fn byte_to_char(&self, b: usize) -> Option<usize> {
        self.starts.binary_search(&b).ok()
    }

    /// The substring for chars `start..end` of the text the map was built from.
    pub fn slice<'a>(&self, text: &'a str, start: usize, end: usize) -> Option<&'a str> {
        if start > end {
            return None;
        }
        let a = self.char_to_byte(start)?;
        let b = self.char_to_byte(end)?;
        text.get(a..b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_words_is_reversible() {
        let words = ["Café", "", "a b", "日本", "👩‍🔬", "x"];
        let mut d = Document::from_words("d", &words);
        assert_eq!(d.text, "Café  a b 日本 👩‍🔬 x");
        assert_eq!(d.word_strs().unwrap(), words.to_vec());
        d.push_word_entity(2, 5, "T", None).unwrap();
        assert_eq!(d.entity_text(&d.entities[0]).unwrap(), words[2..5].join(WORD_SEPARATOR));
        let (we, rep) = d.word_entities().unwrap();
        assert!(rep.is_empty());
        assert_eq!((we[0].start, we[0].end), (2, 5));
        d.validate().unwrap();
    }

    #[test]
    fn offsets_convert_both_ways() {
        let t = "aé日👍\u{301}z";
        let m = OffsetMap::new(t);
        for c in 0..=m.char_len() {
            let b = m.char_to_byte(c).unwrap();
            assert_eq!(char_to_byte(t, c), Some(b));
            assert_eq!(m.byte_to_char(b), Some(c));
            assert_eq!(byte_to_char(t, b), Some(c));
        }
        assert_eq!(m.byte_to_char(2), None);
        assert_eq!(byte_to_char(t, 2), None);
        assert_eq!(slice_chars(t, 2, 4), Some("日👍"));
        assert_eq!(slice_chars(t, 2, 99), None);
    }

    #[test]
    fn whitespace_words_split_at_entity_boundaries() {
        let mut d = Document::new("d", "BRCA1-mutant  cells\tin\nmice");
        d.entities.push(Entity::new(0, 5, "Gene"));
        d.segment_words_whitespace();
        assert_eq!(d.word_strs().unwrap(), vec!["BRCA1", "-mutant", "cells", "in", "mice"]);
        let (we, rep) = d.word_entities().unwrap();
        assert!(rep.is_empty());
        assert_eq!((we[0].start, we[0].end), (0, 1));
    }

    #[test]
    fn split_words_keep_entity_boundaries() {
        let mut d = Document::new("d", "Prof. Ng (Stanford), BRCA1-mutant.");
        d.entities.push(Entity::new(10, 14, "org"));
        d.entities.push(Entity::new(21, 26, "gene"));
        d.segment_words(crate::split::Splitter::Treebank);
        assert_eq!(d.word_strs().unwrap(), vec!["Prof.", "Ng", "(", "Stan", "ford", ")", ",", "BRCA1", "-mutant", "."]);
        let (we, rep) = d.word_entities().unwrap();
        assert!(rep.is_empty());
        assert_eq!((we[0].start, we[0].end, we[1].start, we[1].end), (3, 4, 7, 8));
    }

    #[test]
    fn unaligned_entities_are_reported() {
        let mut d = Document::from_words("d", &["ab", "cd"]);
        d.entities.push(Entity::new(1, 4, "X"));
        let (we, rep) = d.word_entities().unwrap();
        assert!(we.is_empty());
        assert_eq!(rep.count(Issue::EntityNotWordAligned), 1);
    }
}
