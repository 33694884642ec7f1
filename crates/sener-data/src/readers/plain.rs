//! Plain text, for extraction: no entities. Words are found at Unicode whitespace
//! ([`Document::segment_words_whitespace`]); the text itself is kept byte for byte, so predicted
//! character offsets refer to the user's own text.

use std::io::Read;
use std::path::Path;

use super::ReadResult;
use crate::document::Document;
use crate::error::{DataError, Result};

/// How a plain-text input is split into documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainMode {
    /// The whole input is one document with id = the source name.
    #[default]
    Whole,
    /// Each non-blank line is a document (without its line ending) with id = its 1-based line
    /// number.
    Lines,
}

/// Splits `text` into documents.
pub fn parse(source: &str, text: &str, mode: PlainMode) -> ReadResult {
    let mut out = ReadResult::default();
    match mode {
        PlainMode::Whole => {
            let mut d = Document::new(source, text);
            d.segment_words_whitespace();
            out.documents.push(d);
        }
        PlainMode::Lines => {
            for (i, l) in text.split('\n').enumerate() {
                let l = l.strip_suffix('\r').unwrap_or(l);
                if l.trim().is_empty() {
                    continue;
                }
                let mut d = Document::new((i + 1).to_string(), l);
                d.segment_words_whitespace();
                out.documents.push(d);
            }
        }
    }
    out
}

/// Reads a plain-text file.
pub fn read(path: &Path, mode: PlainMode) -> Result<ReadResult> {
    let text = super::read_text(path)?;
    Ok(parse(&path.display().to_string(), &text, mode))
}

/// Reads plain text from any reader, e.g. `std::io::stdin()`, naming it `source` in errors.
pub fn read_from(source: &str, mut r: impl Read, mode: PlainMode) -> Result<ReadResult> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).map_err(|e| DataError::Io { path: source.to_string(), source: e })?;
    let text = super::decode_utf8(source, &bytes)?;
    Ok(parse(source, text, mode))
}
