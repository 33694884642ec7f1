//! GLiNER training JSON: either a JSON array of objects or JSON lines, each object
//!
//! ```json
//! {"tokenized_text": ["Barack", "Obama", "visited", "Paris"], "ner": [[0, 1, "person"], [3, 3, "location"]]}
//! ```
//!
//! `ner` spans are word indices with an **inclusive** end. The text is the words joined by one
//! space; the document id is the object's `id` field when present, else its 0-based position.
//! Entities covering only empty words are dropped and reported.

use std::path::Path;

use serde_json::value::RawValue;
use serde_json::Value;

use super::json::{lines, Loc};
use super::ReadResult;
use crate::document::Document;
use crate::error::{DataError, Result};
use crate::report::Report;

/// Parses GLiNER JSON (array or lines) from `text` (named `source` in errors).
pub fn parse(source: &str, text: &str) -> Result<ReadResult> {
    let mut out = ReadResult::default();
    if text.trim_start().starts_with('[') {
        let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| DataError::Json {
            path: source.to_string(),
            line: e.line().max(1),
            message: e.to_string(),
        })?;
        for raw in items {
            let s = raw.get();
            // The raw value borrows from `text`: its position gives the line.
            let off = (s.as_ptr() as usize).saturating_sub(text.as_ptr() as usize).min(text.len());
            let line = 1 + text.as_bytes()[..off].iter().filter(|&&b| b == b'\n').count();
            let loc = Loc { source, line };
            let v = loc.parse(s)?;
            out.documents.push(object(&loc, &v, out.documents.len(), &mut out.report)?);
        }
    } else {
        for (line, l) in lines(text) {
            let loc = Loc { source, line };
            let v = loc.parse(l)?;
            out.documents.push(object(&loc, &v, out.documents.len(), &mut out.report)?);
        }
    }
    Ok(out)
}

fn object(loc: &Loc<'_>, v: &Value, index: usize, report: &mut Report) -> Result<Document> {
    let obj = loc.object(v, "<item>")?;
    let id = loc.id(obj, "id")?.unwrap_or_else(|| index.to_string());
    let words = loc.strings(loc.get(obj, "tokenized_text")?, "tokenized_text")?;
    let mut doc = Document::from_words(id, &words);
    let ents = match obj.get("ner") {
        None | Some(Value::Null) => &[][..],
        Some(v) => loc.array(v, "ner")?.as_slice(),
    };
    for (i, e) in ents.iter().enumerate() {
        let f = format!("ner[{i}]");
        let a = loc.array(e, &f)?;
        if a.len() < 3 {
            return Err(loc.err(&f, format!("expected [start, end_inclusive, label], found {} elements", a.len())));
        }
        let s = loc.usize(&a[0], &format!("{f}[0]"))?;
        let t = loc.usize(&a[1], &format!("{f}[1]"))?;
        let label = loc.str(&a[2], &format!("{f}[2]"))?;
        if s > t || t >= words.len() {
            return Err(loc.err(format!("{f}[1]"), format!("inclusive span {s}..={t} is reversed or outside the {} words", words.len())));
        }
        loc.add_word_entity(&mut doc, report, &f, (s, t + 1), label, &format!("{f}[2]"))?;
    }
    Ok(doc)
}

/// Reads a GLiNER JSON file.
pub fn read(path: &Path) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    parse(&path.display().to_string(), &text)
}
