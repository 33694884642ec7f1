//! brat standoff: a `.txt` file and its `.ann` file.
//!
//! - Text-bound annotations `T<n>\t<Type> <start> <end>\t<text>` become entities. brat offsets are
//!   Unicode code points with an exclusive end, like [`Document`]'s.
//! - Discontinuous ones (`<start> <end>;<start> <end>`) cannot be represented as one span: they are
//!   dropped and counted ([`Issue::DiscontinuousEntityDropped`]).
//! - The text column is compared with the document text at the offsets (newlines read as spaces,
//!   as brat writes them); a difference is counted ([`Issue::AnnotationTextMismatch`]) and the
//!   offsets are kept.
//! - `#<n>\tAnnotatorNotes T<k>\tscore=<x>` notes (as written by [`crate::writers::brat`]) set the
//!   entity's score; every other line (relations, events, attributes, other notes) is counted as
//!   [`Issue::NonTextBoundAnnotationIgnored`].
//! - Words are found with [`Document::segment_words_whitespace`], so every entity is word-aligned.
//! - The document id is the file stem.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ReadResult;
use crate::document::{Document, Entity};
use crate::error::{DataError, Result};
use crate::report::Issue;

/// Parses one document from its text and the content of its `.ann` file; `source` names the
/// `.ann` file in errors and is the document id.
pub fn parse(source: &str, text: &str, ann: &str) -> Result<ReadResult> {
    let mut out = ReadResult::default();
    let mut doc = Document::new(source, text);
    let map = doc.offsets();
    let n = map.char_len();
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut scores: Vec<(usize, &str, &str)> = Vec::new();
    for (i, l) in ann.split('\n').enumerate() {
        let line = i + 1;
        let l = l.strip_suffix('\r').unwrap_or(l);
        if l.trim().is_empty() {
            continue;
        }
        let mut cols = l.splitn(3, '\t');
        let id = cols.next().unwrap_or("");
        if id.starts_with('T') {
            let Some(mid) = cols.next() else {
                return Err(DataError::field(source, line, "type", "expected `T<n>\\t<Type> <start> <end>\\t<text>`"));
            };
            let ann_text = cols.next().unwrap_or("");
            let Some((label, offs)) = mid.split_once(' ') else {
                return Err(DataError::field(source, line, "offsets", format!("expected `<Type> <start> <end>`, found {mid:?}")));
            };
            if label.is_empty() {
                return Err(DataError::field(source, line, "type", "empty type"));
            }
            let mut frags = Vec::new();
            for frag in offs.split(';') {
                let mut it = frag.split_whitespace();
                let (Some(a), Some(b), None) = (it.next(), it.next(), it.next()) else {
                    return Err(DataError::field(source, line, "offsets", format!("expected `<start> <end>`, found {frag:?}")));
                };
                let parse = |x: &str| {
                    x.parse::<usize>().map_err(|_| DataError::field(source, line, "offsets", format!("expected a non-negative integer, found {x:?}")))
                };
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b || b > n {
                    return Err(DataError::field(source, line, "offsets", format!("span {a}..{b} is reversed or outside the text of {n} characters")));
                }
                frags.push((a, b));
            }
            // Fragments separated only by line breaks (how brat, and our writer, write an entity
            // across lines) are one entity; any other gap makes it discontinuous.
            let joined = frags.windows(2).all(|w| {
                w[0].1 < w[1].0 && map.slice(text, w[0].1, w[1].0).is_some_and(|g| g.chars().all(|c| c == '\n' || c == '\r'))
            });
            if frags.len() > 1 && !joined {
                out.report.note(Issue::DiscontinuousEntityDropped, || format!("{source}:{line} {id}"));
                continue;
            }
            let (a, b) = (frags[0].0, frags[frags.len() - 1].1);
            if a == b {
                out.report.note(Issue::EmptyEntityDropped, || format!("{source}:{line} {id}"));
                continue;
            }
            let got = if frags.len() > 1 {
                frags.iter().map(|&(x, y)| map.slice(text, x, y).unwrap_or("")).collect::<Vec<_>>().join(" ")
            } else {
                map.slice(text, a, b).unwrap_or("").replace(['\n', '\r'], " ")
            };
            if got != ann_text {
                out.report.note(Issue::AnnotationTextMismatch, || format!("{source}:{line} {id}"));
            }
            ids.insert(id, doc.entities.len());
            doc.entities.push(Entity::new(a, b, label));
        } else if id.starts_with('#') {
            let mid = cols.next().unwrap_or("");
            let note = cols.next().unwrap_or("");
            match (mid.strip_prefix("AnnotatorNotes "), note.strip_prefix("score=")) {
                (Some(target), Some(x)) => scores.push((line, target, x)),
                _ => out.report.note(Issue::NonTextBoundAnnotationIgnored, || format!("{source}:{line} {id}")),
            }
        } else {
            out.report.note(Issue::NonTextBoundAnnotationIgnored, || format!("{source}:{line} {id}"));
        }
    }
    for (line, target, x) in scores {
        let v: f32 = x.trim().parse().map_err(|_| DataError::field(source, line, "score", format!("expected a number, found {x:?}")))?;
        match ids.get(target) {
            Some(&k) => doc.entities[k].score = Some(v),
            None => out.report.note(Issue::NonTextBoundAnnotationIgnored, || format!("{source}:{line} note on unknown {target}")),
        }
    }
    doc.segment_words_whitespace();
    out.documents.push(doc);
    Ok(out)
}

/// Reads a brat document given its `.txt` or `.ann` path, or every `.txt` file (sorted by name)
/// of a folder. A `.txt` without an `.ann` beside it is a document with no entities.
pub fn read(path: &Path) -> Result<ReadResult> {
    if path.is_dir() {
        let rd = std::fs::read_dir(path).map_err(|e| DataError::io(path, e))?;
        let mut txts: Vec<PathBuf> = Vec::new();
        for ent in rd {
            let p = ent.map_err(|e| DataError::io(path, e))?.path();
            if p.extension().is_some_and(|x| x == "txt") {
                txts.push(p);
            }
        }
        txts.sort();
        let mut out = ReadResult::default();
        for t in txts {
            let r = read_pair(&t)?;
            out.documents.extend(r.documents);
            out.report.merge(r.report);
        }
        return Ok(out);
    }
    read_pair(&path.with_extension("txt"))
}

fn read_pair(txt: &Path) -> Result<ReadResult> {
    let ann_path = txt.with_extension("ann");
    let text = super::read_text(txt)?;
    let ann = if ann_path.exists() { super::read_text(&ann_path)? } else { String::new() };
    let mut r = parse(&ann_path.display().to_string(), &text, &ann)?;
    let stem = txt.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    for d in &mut r.documents {
        d.id = stem.clone();
    }
    Ok(r)
}
