//! Typed errors of the `sener` library.

use std::path::PathBuf;

/// Everything that can go wrong inside the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed (shape mismatch, unsupported dtype, device error, ...).
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON file (e.g. `config.json`) could not be parsed; `field` names what was wrong where known.
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },

    /// A model folder or its configuration is not usable.
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },

    /// A checkpoint lacks a tensor the model needs, or has it with the wrong shape.
    #[error("{path}: tensor `{name}`: {message}")]
    Weight { path: PathBuf, name: String, message: String },

    /// A tokenizer file could not be loaded or used.
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// Band logits that cannot be decoded (wrong shape, NaN, bad thresholds).
    #[error(transparent)]
    Decode(#[from] crate::decode::DecodeError),

    /// Invalid input from the caller (ids out of range, empty batch, bad option values, ...).
    #[error("invalid input: {0}")]
    Input(String),

    /// A model or encoder could not be fetched from the Hugging Face Hub.
    #[error("{0}")]
    Hub(String),

    /// The caller gave up on the work (e.g. a server request past its deadline): see
    /// [`crate::extract::Extractor::extract_until`].
    #[error("cancelled")]
    Cancelled,
}

/// Result alias used throughout the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model { path: path.into(), message: message.into() }
    }
}
