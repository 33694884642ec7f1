//! Helpers shared by the library's integration tests (each test file is its own crate and uses
//! only some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sener::official::{import, ImportOptions};
use sener::span::SpanConfig;

/// A file or folder of `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// A tiny model folder `dir/model` (labels a–e, span window 4, random weights, LoRA on Q and V)
/// imported from the official-layout fixture checkpoint.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    let opts = ImportOptions {
        labels: ["a", "b", "c", "d", "e"].map(String::from).to_vec(),
        span: SpanConfig { window: 4, biaffine_size: 10, cnn_dim: 8, cnn_depth: 2, ..SpanConfig::default() },
        lora_alpha: 16.0,
        arrow: Default::default(),
        max_len: 5120,
        splitter: Default::default(),
    };
    import(&fixture("official_tiny.pth"), &fixture("deberta_v3_tiny_tok"), &out, &opts).unwrap();
    out
}
