//! Writers: this crate's JSON lines ([`jsonl`]), CoNLL ([`conll`], flat entities only), brat
//! standoff ([`brat`]) and SeNER JSON lines ([`sener`]). Anything a format cannot hold is counted in a [`crate::report::Report`].

pub mod brat;
pub mod conll;
pub mod jsonl;
pub mod sener;

use std::path::Path;

use crate::document::Document;
use crate::error::{DataError, Result};
use crate::readers::TagScheme;
use crate::report::Report;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Own JSON lines with offsets in the given unit.
    Jsonl(jsonl::OffsetUnit),
    /// CoNLL with the given tag scheme (flat entities only).
    Conll(TagScheme),
    /// brat standoff: the path is a folder receiving `<id>.txt` and `<id>.ann`.
    Brat,
    /// SeNER / UTC-IE JSON lines (word lists and word-index entities).
    Sener,
}

impl OutputFormat {
    /// The names accepted by [`OutputFormat::from_str`](std::str::FromStr).
    pub const NAMES: &'static [&'static str] = &["jsonl", "jsonl-bytes", "conll", "conll-bio", "conll-iob2", "conll-bioes", "brat", "sener"];
}

impl std::str::FromStr for OutputFormat {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "jsonl" => OutputFormat::Jsonl(jsonl::OffsetUnit::Char),
            "jsonl-bytes" => OutputFormat::Jsonl(jsonl::OffsetUnit::Byte),
            "conll" | "conll-bio" | "conll-iob2" => OutputFormat::Conll(TagScheme::Bio),
            "conll-bioes" => OutputFormat::Conll(TagScheme::Bioes),
            "brat" => OutputFormat::Brat,
            "sener" => OutputFormat::Sener,
            other => return Err(DataError::Config(format!("unknown output format {other:?}; known: {}", OutputFormat::NAMES.join(", ")))),
        })
    }
}

/// Writes `docs` to `path` in `format` and returns what the format could not hold.
pub fn write_path(format: OutputFormat, path: &Path, docs: &[Document]) -> Result<Report> {
    match format {
        OutputFormat::Jsonl(unit) => jsonl::write(path, docs, unit).map(|_| Report::new()),
        OutputFormat::Conll(scheme) => conll::write(path, docs, scheme),
        OutputFormat::Brat => brat::write_dir(path, docs).map(|_| Report::new()),
        OutputFormat::Sener => sener::write(path, docs),
    }
}

/// Writes `content` to `path`.
pub(crate) fn write_file(path: &Path, content: &str) -> Result<()> {
    std::fs::write(path, content).map_err(|e| DataError::io(path, e))
}
