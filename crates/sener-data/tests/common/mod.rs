//! Shared test helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared data folder (`../../../shared/data` from this crate), or `None` with a skip message.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    if p.join("README.md").is_file() {
        Some(p)
    } else {
        eprintln!("SKIP {test}: shared data folder {} not found", p.display());
        None
    }
}

/// The all-MiniLM-L6-v2 folder from `SENER_MINILM_DIR`, or `None` with a skip message.
pub fn minilm_dir(test: &str) -> Option<PathBuf> {
    match std::env::var_os("SENER_MINILM_DIR") {
        Some(d) => {
            let p = PathBuf::from(d);
            if p.join("tokenizer.json").is_file() {
                Some(p)
            } else {
                eprintln!("SKIP {test}: SENER_MINILM_DIR={} has no tokenizer.json", p.display());
                None
            }
        }
        None => {
            eprintln!("SKIP {test}: SENER_MINILM_DIR is not set (a folder with the all-MiniLM-L6-v2 tokenizer.json)");
            None
        }
    }
}

/// A fixture file's path.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
