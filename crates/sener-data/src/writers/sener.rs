//! Writes SeNER / UTC-IE JSON lines (`doc_id`, `text` word list, `entity` =
//! `[start, end_exclusive, words, label]`), the official SeNER training format. Documents without
//! words are segmented at whitespace first; entities not aligned to words are dropped and counted
//! ([`Issue::EntityNotWordAligned`](crate::report::Issue)); scores and sentences are not written.

use std::path::Path;

use serde_json::{json, Value};

use crate::document::Document;
use crate::error::{DataError, Result};
use crate::report::{Issue, Report};

/// All documents as SeNER JSON lines, each ending with a newline, and what was dropped.
pub fn to_string(docs: &[Document]) -> Result<(String, Report)> {
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
        let (ents, r) = doc.word_entities()?;
        report.merge(r);
        let entity: Vec<Value> = ents.iter().map(|e| json!([e.start, e.end, &words[e.start..e.end], e.label])).collect();
        // Keys in the order of the official files: doc_id, text, entity.
        let enc = |v: &Value| serde_json::to_string(v).map_err(|e| DataError::document(&doc.id, e.to_string()));
        out.push_str(&format!("{{\"doc_id\":{},\"text\":{},\"entity\":{}}}\n", enc(&json!(doc.id))?, enc(&json!(words))?, enc(&Value::Array(entity))?));
    }
    Ok((out, report))
}

/// Writes documents to a SeNER JSON-lines file and returns what was dropped.
pub fn write(path: &Path, docs: &[Document]) -> Result<Report> {
    let (s, r) = to_string(docs)?;
    super::write_file(path, &s)?;
    Ok(r)
}
