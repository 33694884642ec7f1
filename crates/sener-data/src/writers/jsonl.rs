//! Writes this crate's own JSON lines (schema in [`crate::readers::jsonl`]). Nothing is lost:
//! id, text, entities with scores, words and sentences are all written.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::document::{Document, OffsetMap};
use crate::error::{DataError, Result};

/// The unit of written offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetUnit {
    /// Unicode code points (Python `str` indices).
    #[default]
    Char,
    /// UTF-8 bytes (the line then carries `"offset_unit": "byte"`).
    Byte,
}

/// One document as a JSON line (without the newline).
pub fn to_line(doc: &Document, unit: OffsetUnit) -> Result<String> {
    let map = OffsetMap::new(&doc.text);
    let conv = |c: usize| -> Result<usize> {
        match unit {
            OffsetUnit::Char => Ok(c),
            OffsetUnit::Byte => map.char_to_byte(c).ok_or_else(|| DataError::document(&doc.id, format!("offset {c} is outside the text"))),
        }
    };
    let mut o = Map::new();
    o.insert("id".into(), Value::String(doc.id.clone()));
    o.insert("text".into(), Value::String(doc.text.clone()));
    let mut ents = Vec::with_capacity(doc.entities.len());
    for e in &doc.entities {
        let mut eo = Map::new();
        eo.insert("start".into(), json!(conv(e.start)?));
        eo.insert("end".into(), json!(conv(e.end)?));
        eo.insert("label".into(), json!(e.label));
        if let Some(s) = e.score {
            eo.insert("score".into(), json!(s));
        }
        ents.push(Value::Object(eo));
    }
    o.insert("entities".into(), Value::Array(ents));
    if let Some(words) = &doc.words {
        let w: Result<Vec<Value>> = words.iter().map(|w| Ok(json!([conv(w.start)?, conv(w.end)?]))).collect();
        o.insert("words".into(), Value::Array(w?));
    }
    if let Some(sents) = &doc.sentences {
        o.insert("sentences".into(), Value::Array(sents.iter().map(|s| json!([s.start, s.end])).collect()));
    }
    if unit == OffsetUnit::Byte {
        o.insert("offset_unit".into(), json!("byte"));
    }
    serde_json::to_string(&Value::Object(o)).map_err(|e| DataError::document(&doc.id, e.to_string()))
}

/// All documents as JSON lines, each ending with a newline.
pub fn to_string(docs: &[Document], unit: OffsetUnit) -> Result<String> {
    let mut s = String::new();
    for d in docs {
        s.push_str(&to_line(d, unit)?);
        s.push('\n');
    }
    Ok(s)
}

/// Writes all documents to `path`.
pub fn write(path: &Path, docs: &[Document], unit: OffsetUnit) -> Result<()> {
    super::write_file(path, &to_string(docs, unit)?)
}
