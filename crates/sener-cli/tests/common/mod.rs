//! Helpers shared by the `sener` binary's integration tests (each test file is its own crate and
//! uses only some of them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fixture of the library crate (`crates/sener/tests/fixtures`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sener/tests/fixtures").join(name)
}

/// Runs the `sener` binary with `args`.
pub fn sener(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sener")).args(args).output().expect("running sener")
}

/// A file of the shared data folder beside the checkout; `None` (with a SKIPPED note) without it.
pub fn data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} not found (the shared data folder sits beside the checkout)", p.display());
        None
    }
}

/// A tiny model folder `dir/model` (labels a–e, span window 4, random weights) imported with
/// `sener import-official` from the official-layout fixture checkpoint.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let out = dir.join("model");
    let o = Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(["import-official", "--checkpoint"])
        .arg(fixture("official_tiny.pth"))
        .arg("--base")
        .arg(fixture("deberta_v3_tiny_tok"))
        .args(["--labels", "a,b,c,d,e", "--chunks-size", "4", "--biaffine-size", "10", "--cnn-dim", "8", "--output"])
        .arg(&out)
        .output()
        .expect("running sener import-official");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// `dir/base`: the tiny DeBERTa-v3 fixture (config + weights) with its tokenizer, as a base
/// encoder folder for `sener train`.
pub fn tiny_deberta_base(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).expect("creating the base folder");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("deberta_v3_tiny").join(f), base.join(f)).expect("copying the tiny fixture");
    }
    std::fs::copy(fixture("deberta_v3_tiny_tok/tokenizer.json"), base.join("tokenizer.json")).expect("copying the tokenizer");
    base
}
