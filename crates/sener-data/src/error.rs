//! The crate's error type.

use std::path::Path;

/// Everything that can go wrong when reading, writing, aligning or segmenting documents.
///
/// File errors name the source (a path, or a name such as `<stdin>`), the 1-based line and the
/// field (a JSON path such as `entity[3][1]`, or a column name such as `tag`).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8 (byte {byte} of the file)")]
    Utf8 {
        /// The source name.
        path: String,
        /// 1-based line of the first bad byte.
        line: usize,
        /// 0-based byte offset of the first bad byte.
        byte: usize,
    },
    /// A line is not valid JSON.
    #[error("{path}:{line}: invalid JSON: {message}")]
    Json {
        /// The source name.
        path: String,
        /// 1-based line.
        line: usize,
        /// serde_json's message.
        message: String,
    },
    /// A field has a wrong type or value.
    #[error("{path}:{line}: field `{field}`: {message}")]
    Field {
        /// The source name.
        path: String,
        /// 1-based line.
        line: usize,
        /// The field (JSON path or column name).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A document (not a file position) is invalid, e.g. for a writer or the aligner.
    #[error("document `{doc}`: {message}")]
    Document {
        /// The document id.
        doc: String,
        /// What is wrong.
        message: String,
    },
    /// A tokenizer could not be loaded or failed.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file (or `<memory>`).
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl DataError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io { path: path.display().to_string(), source }
    }

    /// A field error.
    pub fn field(path: &str, line: usize, field: impl Into<String>, message: impl Into<String>) -> Self {
        DataError::Field { path: path.to_string(), line, field: field.into(), message: message.into() }
    }

    /// A document error.
    pub fn document(doc: &str, message: impl Into<String>) -> Self {
        DataError::Document { doc: doc.to_string(), message: message.into() }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
