//! Readers: each turns a file (or a string) into [`Document`]s plus a [`Report`] of anything
//! dropped or adjusted. Bad input gives a [`DataError`] naming the source, the 1-based line and
//! the field; no reader panics on any input.
//!
//! Every format has a `parse_*` function on in-memory text (with a source name used in errors)
//! and a `read_*` function on a path. [`read_bytes`] and [`read_path`] dispatch on [`Format`].

pub mod brat;
pub mod conll;
pub mod gliner;
pub mod jsonl;
pub mod plain;
pub mod scirex;
pub mod sener;

mod json;

use std::path::Path;

use crate::document::Document;
use crate::error::{DataError, Result};
use crate::report::Report;

pub use conll::TagScheme;
pub use plain::PlainMode;

/// Documents read from a source, and what was dropped or adjusted on the way.
#[derive(Debug, Clone, Default)]
pub struct ReadResult {
    /// The documents, in source order.
    pub documents: Vec<Document>,
    /// Counts of dropped or adjusted items.
    pub report: Report,
}

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// SeNER / UTC-IE JSON lines: `text` word list, `entity` = `[start, end_excl, words, label]`.
    Sener,
    /// SciREX original JSON lines: `words`, `sentences`, `ner` = `[start, end_excl, type]`.
    Scirex,
    /// CoNLL columns (token first, tag last) with the given tag scheme.
    Conll(TagScheme),
    /// GLiNER JSON (array or JSON lines): `tokenized_text`, `ner` = `[start, end_incl, label]`.
    Gliner,
    /// brat standoff: a `.txt` with its `.ann` beside it (or a folder of such pairs).
    Brat,
    /// Plain text.
    Plain(PlainMode),
    /// This crate's own JSON lines (see [`jsonl`]).
    Jsonl,
}

impl Format {
    /// Whether the format gives each document's words (word lists, token columns). Raw-text
    /// formats (brat, text, and jsonl without `words`) have their words cut by a splitter: the
    /// readers use whitespace; training and extraction re-cut them with the model's
    /// [`crate::split::Splitter`].
    pub fn gives_words(self) -> bool {
        matches!(self, Format::Sener | Format::Scirex | Format::Conll(_) | Format::Gliner)
    }

    /// The names accepted by [`Format::from_str`](std::str::FromStr).
    pub const NAMES: &'static [&'static str] =
        &["sener", "scirex", "conll", "conll-bio", "conll-iob2", "conll-bioes", "gliner", "brat", "text", "text-lines", "jsonl"];
}

impl std::str::FromStr for Format {
    type Err = DataError;

    /// Parses a format name (see [`Format::NAMES`]; `conll` is BIO, `text` is one document per
    /// file, `text-lines` one per line).
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "sener" | "utcie" => Format::Sener,
            "scirex" => Format::Scirex,
            "conll" | "conll-bio" | "conll-iob2" => Format::Conll(TagScheme::Bio),
            "conll-bioes" => Format::Conll(TagScheme::Bioes),
            "gliner" => Format::Gliner,
            "brat" => Format::Brat,
            "text" | "plain" => Format::Plain(PlainMode::Whole),
            "text-lines" => Format::Plain(PlainMode::Lines),
            "jsonl" => Format::Jsonl,
            other => return Err(DataError::Config(format!("unknown input format {other:?}; known: {}", Format::NAMES.join(", ")))),
        })
    }
}

/// Reads `bytes` named `source` in `format`. For [`Format::Brat`] the bytes are the `.txt` text
/// and there are no annotations; use [`brat::parse`] to give both.
pub fn read_bytes(format: Format, source: &str, bytes: &[u8]) -> Result<ReadResult> {
    let text = decode_utf8(source, bytes)?;
    match format {
        Format::Sener => sener::parse(source, text),
        Format::Scirex => scirex::parse(source, text),
        Format::Conll(scheme) => conll::parse(source, text, scheme),
        Format::Gliner => gliner::parse(source, text),
        Format::Brat => brat::parse(source, text, ""),
        Format::Plain(mode) => Ok(plain::parse(source, text, mode)),
        Format::Jsonl => jsonl::parse(source, text),
    }
}

/// Reads the file (or, for brat, the file pair or folder) at `path` in `format`.
pub fn read_path(format: Format, path: &Path) -> Result<ReadResult> {
    match format {
        Format::Brat => brat::read(path),
        _ => {
            let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
            read_bytes(format, &path.display().to_string(), &bytes)
        }
    }
}

/// Reads everything from `r` (e.g. `std::io::stdin()`) in `format`, naming it `source` in
/// errors. [`Format::Brat`] reads the text only (no annotations).
pub fn read_from(format: Format, source: &str, mut r: impl std::io::Read) -> Result<ReadResult> {
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).map_err(|e| DataError::Io { path: source.to_string(), source: e })?;
    read_bytes(format, source, &bytes)
}

/// Decodes UTF-8, naming the line of the first invalid byte on error. A leading byte-order mark
/// is removed.
pub fn decode_utf8<'a>(source: &str, bytes: &'a [u8]) -> Result<&'a str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.strip_prefix('\u{feff}').unwrap_or(s)),
        Err(e) => {
            let byte = e.valid_up_to();
            let line = 1 + bytes[..byte].iter().filter(|&&b| b == b'\n').count();
            Err(DataError::Utf8 { path: source.to_string(), line, byte })
        }
    }
}

/// Reads a whole file as UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let src = path.display().to_string();
    decode_utf8(&src, &bytes).map(str::to_string)
}
