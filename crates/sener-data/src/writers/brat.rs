//! Writes brat standoff: `<id>.txt` with the text and `<id>.ann` with one `T<n>` line per entity
//! (code-point offsets; an entity across line breaks as fragments between them, as brat does). A score is written as a
//! note `#<n>\tAnnotatorNotes T<n>\tscore=<x>`, which [`crate::readers::brat`] reads back. Words and
//! sentences are not written (brat has no place for them).

use std::collections::HashSet;
use std::path::Path;

use crate::document::Document;
use crate::error::{DataError, Result};

/// The `.txt` and `.ann` contents of one document.
pub fn render(doc: &Document) -> Result<(String, String)> {
    let map = doc.offsets();
    let mut ann = String::new();
    let mut note = 0usize;
    for (i, e) in doc.entities.iter().enumerate() {
        if e.label.is_empty() || e.label.chars().any(char::is_whitespace) {
            return Err(DataError::document(&doc.id, format!("entity {i}: label {:?} is empty or contains whitespace: not a brat type", e.label)));
        }
        let t = map
            .slice(&doc.text, e.start, e.end)
            .filter(|_| e.start < e.end)
            .ok_or_else(|| DataError::document(&doc.id, format!("entity {i} span {}..{} is empty or outside the text", e.start, e.end)))?;
        let k = i + 1;
        // An entity across line breaks is written as brat writes one: fragments between the
        // breaks (`a b;c d`), the text column their texts joined by a space, so the text column
        // is exactly the text its offsets cover (the reader joins such fragments back).
        // An entity that starts or ends with a break (never one the model predicts: words hold
        // no breaks) keeps one span, the breaks written as spaces, so its offsets stay exact.
        let frags = fragments(t, e.start);
        let exact = frags.first().is_some_and(|f| f.0 == e.start) && frags.last().is_some_and(|f| f.1 == e.end);
        let (offs, text) = if exact {
            (frags.iter().map(|(a, b, _)| format!("{a} {b}")).collect::<Vec<_>>().join(";"), frags.iter().map(|(_, _, s)| *s).collect::<Vec<_>>().join(" "))
        } else {
            (format!("{} {}", e.start, e.end), t.replace(['\n', '\r'], " "))
        };
        ann.push_str(&format!("T{k}\t{} {offs}\t{text}\n", e.label));
        if let Some(s) = e.score {
            note += 1;
            ann.push_str(&format!("#{note}\tAnnotatorNotes T{k}\tscore={s}\n"));
        }
    }
    Ok((doc.text.clone(), ann))
}

/// The pieces of `t` (which starts at code point `start`) between line breaks (`\n`, `\r`), as
/// `(start, end, text)` in code points; the whole of `t` when it has none (or only breaks).
fn fragments(t: &str, start: usize) -> Vec<(usize, usize, &str)> {
    let mut out = Vec::new();
    let mut piece: Option<(usize, usize)> = None; // (byte start, code point start)
    let mut cp = start;
    for (b, c) in t.char_indices() {
        let brk = c == '\n' || c == '\r';
        match (brk, piece) {
            (true, Some((pb, pc))) => {
                out.push((pc, cp, &t[pb..b]));
                piece = None;
            }
            (false, None) => piece = Some((b, cp)),
            _ => {}
        }
        cp += 1;
    }
    if let Some((pb, pc)) = piece {
        out.push((pc, cp, &t[pb..]));
    }
    if out.is_empty() {
        out.push((start, cp, t));
    }
    out
}

/// A file stem for a document id: the id itself when it is a safe, unused file name, else
/// `doc<index>`.
fn stem(id: &str, index: usize, used: &mut HashSet<String>) -> String {
    let safe = !id.is_empty()
        && id.len() <= 100
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.starts_with('.');
    let s = if safe && !used.contains(id) { id.to_string() } else { format!("doc{index}") };
    used.insert(s.clone());
    s
}

/// Writes every document into folder `dir` (created if needed) as `<stem>.txt` and `<stem>.ann`,
/// the stem being the id when it is a safe file name; returns the stems in document order.
pub fn write_dir(dir: &Path, docs: &[Document]) -> Result<Vec<String>> {
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    let mut used = HashSet::new();
    let mut stems = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        let s = stem(&d.id, i, &mut used);
        let (txt, ann) = render(d)?;
        super::write_file(&dir.join(format!("{s}.txt")), &txt)?;
        super::write_file(&dir.join(format!("{s}.ann")), &ann)?;
        stems.push(s);
    }
    Ok(stems)
}
