//! SciREX original JSON lines (allenai/SciREX release): one paper per line,
//!
//! ```json
//! {"doc_id": "...", "words": ["..."], "sentences": [[0, 11]], "sections": [[0, 11]], "ner": [[0, 5, "Method"]], "coref": {}}
//! ```
//!
//! Spans are `[start, end_exclusive]` word indices. Only `doc_id`, `words`, `sentences` (kept as
//! [`Document::sentences`]) and `ner` are read; other fields are ignored. The text is the words
//! joined by one space.

use std::path::Path;

use super::json::{lines, Loc};
use super::ReadResult;
use crate::document::{Document, Span};
use crate::error::Result;

/// Parses SciREX JSON lines from `text` (named `source` in errors).
pub fn parse(source: &str, text: &str) -> Result<ReadResult> {
    let mut out = ReadResult::default();
    for (line, l) in lines(text) {
        let loc = Loc { source, line };
        let v = loc.parse(l)?;
        let obj = loc.object(&v, "<line>")?;
        let id = loc.id(obj, "doc_id")?.unwrap_or_else(|| out.documents.len().to_string());
        let words = loc.strings(loc.get(obj, "words")?, "words")?;
        let mut doc = Document::from_words(id, &words);
        if let Some(sv) = obj.get("sentences").filter(|v| !v.is_null()) {
            let mut sents = Vec::new();
            for (i, s) in loc.array(sv, "sentences")?.iter().enumerate() {
                let f = format!("sentences[{i}]");
                let (a, b) = loc.pair(s, &f)?;
                if a > b || b > words.len() {
                    return Err(loc.err(f, format!("sentence {a}..{b} is reversed or outside the {} words", words.len())));
                }
                sents.push(Span::new(a, b));
            }
            doc.sentences = Some(sents);
        }
        for (i, e) in loc.array(loc.get(obj, "ner")?, "ner")?.iter().enumerate() {
            let f = format!("ner[{i}]");
            let a = loc.array(e, &f)?;
            if a.len() < 3 {
                return Err(loc.err(&f, format!("expected [start, end, type], found {} elements", a.len())));
            }
            let s = loc.usize(&a[0], &format!("{f}[0]"))?;
            let t = loc.usize(&a[1], &format!("{f}[1]"))?;
            let label = loc.str(&a[2], &format!("{f}[2]"))?;
            if s > t || t > words.len() {
                return Err(loc.err(format!("{f}[1]"), format!("span {s}..{t} is reversed or outside the {} words", words.len())));
            }
            loc.add_word_entity(&mut doc, &mut out.report, &f, (s, t), label, &format!("{f}[2]"))?;
        }
        out.documents.push(doc);
    }
    Ok(out)
}

/// Reads a SciREX JSON-lines file.
pub fn read(path: &Path) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    parse(&path.display().to_string(), &text)
}
