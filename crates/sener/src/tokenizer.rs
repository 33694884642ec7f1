//! Loading a `tokenizer.json` the way sener needs it: no padding, no truncation (many published
//! tokenizer files ship with both switched on, e.g. all-MiniLM-L6-v2's pads and cuts at 128, which
//! would silently cut long documents).

use std::path::Path;

use crate::{Error, Result};

/// Loads `dir/tokenizer.json` (or the file itself) with padding and truncation switched off.
pub fn load_tokenizer(path: &Path) -> Result<tokenizers::Tokenizer> {
    let file = if path.is_dir() { path.join("tokenizer.json") } else { path.to_path_buf() };
    if !file.is_file() {
        return Err(Error::Tokenizer {
            path: file,
            message: "not found (SentencePiece spm.model folders are not supported by this command yet; pass --ids)".into(),
        });
    }
    let mut tok = tokenizers::Tokenizer::from_file(&file)
        .map_err(|e| Error::Tokenizer { path: file.clone(), message: e.to_string() })?;
    tok.with_padding(None);
    tok.with_truncation(None).map_err(|e| Error::Tokenizer { path: file.clone(), message: e.to_string() })?;
    Ok(tok)
}

/// Token ids of `text` with the tokenizer's special tokens ([CLS] … [SEP]).
pub fn encode_with_special(tok: &tokenizers::Tokenizer, text: &str) -> Result<Vec<u32>> {
    let enc = tok
        .encode(text, true)
        .map_err(|e| Error::Tokenizer { path: Default::default(), message: e.to_string() })?;
    Ok(enc.get_ids().to_vec())
}
