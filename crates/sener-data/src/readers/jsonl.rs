//! This crate's own JSON-lines format: one document per line, text plus character spans.
//!
//! ```json
//! {"id": "doc-1", "text": "Ada Lovelace wrote", "entities": [{"start": 0, "end": 12, "label": "person", "score": 0.97}],
//!  "words": [[0, 3], [4, 12], [13, 18]], "sentences": [[0, 3]], "offset_unit": "char"}
//! ```
//!
//! | field | required | meaning |
//! |---|---|---|
//! | `id` | no | document id (string or number); default: 0-based line index among documents |
//! | `text` | yes | the raw text |
//! | `entities` | no | objects with `start`, `end` (exclusive), `label` and optional `score` |
//! | `words` | no | `[start, end]` span of each word, in order, non-overlapping |
//! | `sentences` | no | `[first_word, end_word]` word-index ranges (needs `words`) |
//! | `offset_unit` | no | `"char"` (default: Unicode code points, as Python's `str`) or `"byte"` (UTF-8 bytes) |
//!
//! Entity and word offsets are in `offset_unit`; byte offsets must fall on character boundaries.
//! Unknown fields are ignored. Empty entities (`start == end`) are dropped and reported.

use std::path::Path;

use serde_json::Value;

use super::json::{lines, Loc};
use super::ReadResult;
use crate::document::{Document, Entity, OffsetMap, Span};
use crate::error::Result;
use crate::report::Issue;

/// Parses own-format JSON lines from `text` (named `source` in errors).
pub fn parse(source: &str, text: &str) -> Result<ReadResult> {
    let mut out = ReadResult::default();
    for (line, l) in lines(text) {
        let loc = Loc { source, line };
        let v = loc.parse(l)?;
        let obj = loc.object(&v, "<line>")?;
        let id = loc.id(obj, "id")?.unwrap_or_else(|| out.documents.len().to_string());
        let body = loc.str(loc.get(obj, "text")?, "text")?;
        let bytes = match obj.get("offset_unit") {
            None | Some(Value::Null) => false,
            Some(u) => match loc.str(u, "offset_unit")? {
                "char" => false,
                "byte" => true,
                other => return Err(loc.err("offset_unit", format!("expected \"char\" or \"byte\", found {other:?}"))),
            },
        };
        let map = OffsetMap::new(body);
        let n = map.char_len();
        // Converts an offset in the file's unit to a char offset.
        let conv = |x: usize, field: &str| -> Result<usize> {
            if bytes {
                map.byte_to_char(x).ok_or_else(|| loc.err(field, format!("byte offset {x} is not a character boundary of the {}-byte text", body.len())))
            } else if x <= n {
                Ok(x)
            } else {
                Err(loc.err(field, format!("offset {x} is past the end of the {n}-character text")))
            }
        };
        let mut doc = Document::new(id, body);
        if let Some(wv) = obj.get("words").filter(|v| !v.is_null()) {
            let mut words = Vec::new();
            let mut prev = 0usize;
            for (i, w) in loc.array(wv, "words")?.iter().enumerate() {
                let f = format!("words[{i}]");
                let (a, b) = loc.pair(w, &f)?;
                let (a, b) = (conv(a, &f)?, conv(b, &f)?);
                if a > b || a < prev {
                    return Err(loc.err(f, format!("word span {a}..{b} is reversed or overlaps the previous word")));
                }
                prev = b;
                words.push(Span::new(a, b));
            }
            doc.words = Some(words);
        }
        if let Some(sv) = obj.get("sentences").filter(|v| !v.is_null()) {
            let nw = match &doc.words {
                Some(w) => w.len(),
                None => return Err(loc.err("sentences", "sentences need `words`")),
            };
            let mut sents = Vec::new();
            for (i, s) in loc.array(sv, "sentences")?.iter().enumerate() {
                let f = format!("sentences[{i}]");
                let (a, b) = loc.pair(s, &f)?;
                if a > b || b > nw {
                    return Err(loc.err(f, format!("word range {a}..{b} is reversed or outside the {nw} words")));
                }
                sents.push(Span::new(a, b));
            }
            doc.sentences = Some(sents);
        }
        if let Some(ev) = obj.get("entities").filter(|v| !v.is_null()) {
            for (i, e) in loc.array(ev, "entities")?.iter().enumerate() {
                let f = format!("entities[{i}]");
                let eo = loc.object(e, &f)?;
                let get = |k: &str| eo.get(k).ok_or_else(|| loc.err(format!("{f}.{k}"), "missing"));
                let s = conv(loc.usize(get("start")?, &format!("{f}.start"))?, &format!("{f}.start"))?;
                let t = conv(loc.usize(get("end")?, &format!("{f}.end"))?, &format!("{f}.end"))?;
                let label = loc.str(get("label")?, &format!("{f}.label"))?;
                let score = match eo.get("score") {
                    None | Some(Value::Null) => None,
                    Some(x) => Some(loc.f32(x, &format!("{f}.score"))?),
                };
                if s > t {
                    return Err(loc.err(format!("{f}.end"), format!("span {s}..{t} is reversed")));
                }
                if label.is_empty() {
                    return Err(loc.err(format!("{f}.label"), "empty label"));
                }
                if s == t {
                    out.report.note(Issue::EmptyEntityDropped, || format!("{source}:{line} {f}"));
                    continue;
                }
                doc.entities.push(Entity { start: s, end: t, label: label.to_string(), score });
            }
        }
        out.documents.push(doc);
    }
    Ok(out)
}

/// Reads an own-format JSON-lines file.
pub fn read(path: &Path) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    parse(&path.display().to_string(), &text)
}
