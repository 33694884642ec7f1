//! SeNER / UTC-IE JSON lines, as in the official SeNER release (`scholar-xl`, `profiling-07`):
//!
//! ```json
//! {"doc_id": "dev1", "text": ["His", "major", "..."], "entity": [[8, 12, ["Ceramics", "with", "..."], "research_interests"]]}
//! ```
//!
//! `text` is the word list; each entity is `[start, end_exclusive, words, label]` with word
//! indices, and `words` must equal `text[start..end]`. Entities may nest. The document text is
//! the words joined by one space (see [`crate::document`]). A missing `doc_id` becomes the
//! 0-based document index.
//!
//! Empty entities (`start == end`, or covering only empty words) are dropped and counted
//! ([`Issue::EmptyEntityDropped`]). The official loader instead keeps `start == end` as
//! `(s, s − 1)` and writes meaningless label cells for it; the released files have none.

use std::path::Path;

use super::json::{lines, Loc};
use super::ReadResult;
use crate::document::Document;
use crate::error::Result;

/// Parses SeNER JSON lines from `text` (named `source` in errors).
pub fn parse(source: &str, text: &str) -> Result<ReadResult> {
    let mut out = ReadResult::default();
    for (line, l) in lines(text) {
        let loc = Loc { source, line };
        let v = loc.parse(l)?;
        let obj = loc.object(&v, "<line>")?;
        let id = loc.id(obj, "doc_id")?.unwrap_or_else(|| out.documents.len().to_string());
        let words = loc.strings(loc.get(obj, "text")?, "text")?;
        let mut doc = Document::from_words(id, &words);
        let ents = match obj.get("entity") {
            None | Some(serde_json::Value::Null) => &[][..],
            Some(v) => loc.array(v, "entity")?.as_slice(),
        };
        for (i, e) in ents.iter().enumerate() {
            let f = format!("entity[{i}]");
            let a = loc.array(e, &f)?;
            if a.len() < 4 {
                return Err(loc.err(&f, format!("expected [start, end, words, label], found {} elements", a.len())));
            }
            let s = loc.usize(&a[0], &format!("{f}[0]"))?;
            let t = loc.usize(&a[1], &format!("{f}[1]"))?;
            let ewords = loc.strings(&a[2], &format!("{f}[2]"))?;
            let label = loc.str(&a[3], &format!("{f}[3]"))?;
            if s > t || t > words.len() {
                return Err(loc.err(format!("{f}[1]"), format!("span {s}..{t} is reversed or outside the {} words", words.len())));
            }
            if words[s..t] != ewords[..] {
                return Err(loc.err(format!("{f}[2]"), format!("entity words {:?} differ from text[{s}..{t}] = {:?}", ewords, &words[s..t])));
            }
            loc.add_word_entity(&mut doc, &mut out.report, &f, (s, t), label, &format!("{f}[3]"))?;
        }
        out.documents.push(doc);
    }
    Ok(out)
}

/// Reads a SeNER JSON-lines file.
pub fn read(path: &Path) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    parse(&path.display().to_string(), &text)
}
