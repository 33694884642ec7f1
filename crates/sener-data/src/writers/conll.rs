//! Writes CoNLL: `token<TAB>tag` lines, a blank line after each sentence, and
//! `-DOCSTART-<TAB>O` plus a blank line before each document (document ids are not kept).
//!
//! - CoNLL holds flat entities only. Entities are taken by start, longest first, and kept when they
//!   do not overlap a kept one: outer spans win, and each dropped nested or overlapping entity is
//!   counted ([`Issue::NestedEntityDropped`]).
//! - Entities not aligned to words are dropped and counted ([`Issue::EntityNotWordAligned`]).
//! - A sentence break is not written inside a kept entity (the two sentences are merged), so no
//!   entity is cut.
//! - Documents without words are segmented at whitespace first. A word that is empty or contains
//!   whitespace cannot be a CoNLL token: that is an error.
//! - Scores are not written.

use std::path::Path;

use crate::document::{Document, WordEntity};
use crate::error::{DataError, Result};
use crate::readers::TagScheme;
use crate::report::{Issue, Report};

/// Renders documents as CoNLL text, with a report of what was dropped.
pub fn to_string(docs: &[Document], scheme: TagScheme) -> Result<(String, Report)> {
    let mut out = String::new();
    let mut report = Report::new();
    for doc in docs {
        let owned;
        let doc = if doc.words.is_some() {
            doc
        } else {
            let mut d = doc.clone();
            for _ in 0..d.segment_words_whitespace() {
                report.note(Issue::WordSplitAtEntityBoundary, || format!("document {}", doc.id));
            }
            owned = d;
            &owned
        };
        let words = doc.word_strs().ok_or_else(|| DataError::document(&doc.id, "word spans outside the text"))?;
        for (i, w) in words.iter().enumerate() {
            if w.is_empty() || w.chars().any(char::is_whitespace) {
                return Err(DataError::document(&doc.id, format!("word {i} ({w:?}) is empty or contains whitespace: not a CoNLL token")));
            }
        }
        if let Some(e) = doc.entities.iter().find(|e| e.label.is_empty() || e.label.chars().any(char::is_whitespace)) {
            return Err(DataError::document(&doc.id, format!("label {:?} is empty or contains whitespace: not a CoNLL tag", e.label)));
        }
        let (mut ents, r) = doc.word_entities()?;
        report.merge(r);
        ents.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        let mut kept: Vec<WordEntity> = Vec::new();
        for e in ents {
            match kept.last() {
                Some(k) if e.start < k.end => {
                    report.note(Issue::NestedEntityDropped, || format!("{} words {}..{} {}", doc.id, e.start, e.end, e.label));
                }
                _ => kept.push(e),
            }
        }
        let mut tags: Vec<String> = vec!["O".to_string(); words.len()];
        for e in &kept {
            for (k, tag) in tags.iter_mut().enumerate().take(e.end).skip(e.start) {
                let p = match scheme {
                    TagScheme::Bio => if k == e.start { "B" } else { "I" },
                    TagScheme::Bioes => match (k == e.start, k + 1 == e.end) {
                        (true, true) => "S",
                        (true, false) => "B",
                        (false, true) => "E",
                        (false, false) => "I",
                    },
                };
                *tag = format!("{p}-{}", e.label);
            }
        }
        // Sentence ends where a break may be written (not inside a kept entity).
        let mut breaks = vec![false; words.len()];
        if let Some(sents) = &doc.sentences {
            for s in sents {
                if s.end > 0 && s.end < words.len() && !kept.iter().any(|e| e.start < s.end && s.end < e.end) {
                    breaks[s.end - 1] = true;
                }
            }
        }
        out.push_str("-DOCSTART-\tO\n\n");
        for (i, w) in words.iter().enumerate() {
            out.push_str(w);
            out.push('\t');
            out.push_str(&tags[i]);
            out.push('\n');
            if breaks[i] {
                out.push('\n');
            }
        }
        if !words.is_empty() {
            out.push('\n');
        }
    }
    Ok((out, report))
}

/// Writes documents to a CoNLL file and returns what was dropped.
pub fn write(path: &Path, docs: &[Document], scheme: TagScheme) -> Result<Report> {
    let (s, r) = to_string(docs, scheme)?;
    super::write_file(path, &s)?;
    Ok(r)
}
