//! CoNLL column files with BIO (= IOB2), IOB1 or BIOES tags.
//!
//! - One token per line; columns are separated by whitespace; the **first** column is the token
//!   and the **last** is the tag (`O`, or `P-TYPE` with prefix `B`/`I` for BIO, plus `E`/`S`
//!   (or `L`/`U`) for BIOES).
//! - A blank line ends a sentence; a line whose first column is `-DOCSTART-` starts a document.
//!   If a file has no `-DOCSTART-` line at all, every sentence is its own document.
//! - Document ids are the 0-based document index. The text is the tokens joined by one space and
//!   [`Document::sentences`] holds the sentences.
//! - Ill-formed sequences are repaired, never rejected, and counted in the report: an `I-X` that
//!   does not continue an `X` entity starts a new one (this also decodes IOB1 correctly), and a
//!   BIOES entity not closed by `E-`/`S-` ends at its last token. Entities never cross sentences.

use std::path::Path;

use super::ReadResult;
use crate::document::{Document, Entity, Span};
use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// A tag scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TagScheme {
    /// `B-`, `I-`, `O` with every entity starting with `B-` (IOB2). IOB1 files also decode
    /// correctly (their `I-` starts are reported as repaired).
    #[default]
    Bio,
    /// `B-`, `I-`, `E-`, `S-`, `O` (`L-` and `U-` accepted as `E-` and `S-`).
    Bioes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    B,
    I,
    E,
    S,
}

/// Parses a tag; `None` for `O`.
fn parse_tag(tag: &str, scheme: TagScheme) -> std::result::Result<Option<(Prefix, &str)>, String> {
    if tag == "O" {
        return Ok(None);
    }
    let (p, label) = match tag.split_once(['-', '_']) {
        Some((p, l)) if !l.is_empty() => (p, l),
        _ => return Err(format!("expected O or PREFIX-TYPE, found {tag:?}")),
    };
    let prefix = match (p, scheme) {
        ("B", _) => Prefix::B,
        ("I", _) => Prefix::I,
        ("E" | "L", TagScheme::Bioes) => Prefix::E,
        ("S" | "U", TagScheme::Bioes) => Prefix::S,
        _ => return Err(format!("prefix {p:?} of tag {tag:?} is not valid in the {scheme:?} scheme")),
    };
    Ok(Some((prefix, label)))
}

struct Builder<'a> {
    source: &'a str,
    scheme: TagScheme,
    docstart: bool,
    docs: Vec<Document>,
    report: Report,
    tokens: Vec<&'a str>,
    sentences: Vec<Span>,
    sent_start: usize,
    ents: Vec<(usize, usize, String)>,
    open: Option<(usize, String, usize)>, // (start token, label, line)
}

impl<'a> Builder<'a> {
    fn close(&mut self, end: usize) {
        if let Some((s, l, _)) = self.open.take() {
            self.ents.push((s, end, l));
        }
    }

    /// Ends the current sentence; without `-DOCSTART-` lines it also ends the document.
    fn end_sentence(&mut self) {
        self.end_sentence_only();
        if !self.docstart {
            self.end_document();
        }
    }

    fn end_sentence_only(&mut self) {
        if let Some((_, _, l0)) = &self.open {
            if self.scheme == TagScheme::Bioes {
                let (src, l0) = (self.source, *l0);
                self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{l0}"));
            }
        }
        self.close(self.tokens.len());
        if self.tokens.len() > self.sent_start {
            self.sentences.push(Span::new(self.sent_start, self.tokens.len()));
        }
        self.sent_start = self.tokens.len();
    }

    fn end_document(&mut self) {
        self.end_sentence_only();
        if self.tokens.is_empty() {
            return;
        }
        let mut doc = Document::from_words(self.docs.len().to_string(), &self.tokens);
        for (s, e, l) in self.ents.drain(..) {
            // Ranges come from token positions and are non-empty by construction.
            if let Some(span) = doc.word_range_chars(s, e) {
                doc.entities.push(Entity::new(span.start, span.end, l));
            }
        }
        doc.sentences = Some(std::mem::take(&mut self.sentences));
        self.docs.push(doc);
        self.tokens.clear();
        self.sent_start = 0;
    }

    fn token(&mut self, tok: &'a str, tag: Option<(Prefix, &str)>, line: usize) {
        let i = self.tokens.len();
        self.tokens.push(tok);
        let src = self.source;
        match tag {
            None => {
                if self.open.is_some() && self.scheme == TagScheme::Bioes {
                    self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{line}"));
                }
                self.close(i);
            }
            Some((Prefix::B, l)) => {
                if self.open.is_some() && self.scheme == TagScheme::Bioes {
                    self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{line}"));
                }
                self.close(i);
                self.open = Some((i, l.to_string(), line));
            }
            Some((Prefix::I, l)) => {
                if !matches!(&self.open, Some((_, ol, _)) if ol == l) {
                    if self.open.is_some() && self.scheme == TagScheme::Bioes {
                        self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{line}"));
                    }
                    self.report.note(Issue::InsideTagWithoutBegin, || format!("{src}:{line}"));
                    self.close(i);
                    self.open = Some((i, l.to_string(), line));
                }
            }
            Some((Prefix::E, l)) => {
                if !matches!(&self.open, Some((_, ol, _)) if ol == l) {
                    if self.open.is_some() && self.scheme == TagScheme::Bioes {
                        self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{line}"));
                    }
                    self.report.note(Issue::InsideTagWithoutBegin, || format!("{src}:{line}"));
                    self.close(i);
                    self.open = Some((i, l.to_string(), line));
                }
                self.close(i + 1);
            }
            Some((Prefix::S, l)) => {
                if self.open.is_some() {
                    self.report.note(Issue::UnclosedBioesEntity, || format!("{src}:{line}"));
                }
                self.close(i);
                self.ents.push((i, i + 1, l.to_string()));
            }
        }
    }
}

/// Parses CoNLL text (named `source` in errors).
pub fn parse(source: &str, text: &str, scheme: TagScheme) -> Result<ReadResult> {
    let docstart = text.split('\n').any(|l| l.split_whitespace().next() == Some("-DOCSTART-"));
    let mut b = Builder {
        source,
        scheme,
        docstart,
        docs: Vec::new(),
        report: Report::new(),
        tokens: Vec::new(),
        sentences: Vec::new(),
        sent_start: 0,
        ents: Vec::new(),
        open: None,
    };
    let mut seen_docstart = false;
    let mut last_line = 0;
    for (i, l) in text.split('\n').enumerate() {
        let line = i + 1;
        last_line = line;
        let mut cols = l.split_whitespace();
        let Some(first) = cols.next() else {
            b.end_sentence();
            continue;
        };
        if first == "-DOCSTART-" {
            if seen_docstart && b.tokens.is_empty() {
                b.report.note(Issue::EmptyDocumentSkipped, || format!("{source}:{line}"));
            }
            b.end_document();
            seen_docstart = true;
            continue;
        }
        let Some(tag) = cols.last() else {
            return Err(DataError::field(source, line, "tag", format!("expected at least 2 columns (token and tag), found only {first:?}")));
        };
        let tag = parse_tag(tag, scheme).map_err(|m| DataError::field(source, line, "tag", m))?;
        b.token(first, tag, line);
    }
    if seen_docstart && b.tokens.is_empty() {
        b.report.note(Issue::EmptyDocumentSkipped, || format!("{source}:{last_line}"));
    }
    b.end_document();
    Ok(ReadResult { documents: b.docs, report: b.report })
}

/// Reads a CoNLL file.
pub fn read(path: &Path, scheme: TagScheme) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    parse(&path.display().to_string(), &text, scheme)
}
