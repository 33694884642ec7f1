//! Input is read with a bound and the same NUL rule everywhere it enters (`extract`, `convert`,
//! `stats`), and a writer that has to change the words says so.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;
use common::{sener, tiny_model};

fn tmp(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("sener-bounded-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `/dev/zero` and an endless pipe are refused at once (the first chunk holds a NUL, or the limit
/// is passed), not after filling memory.
#[test]
fn endless_and_binary_sources_are_refused_early() {
    let dir = tmp("endless");
    let model = tiny_model(&dir);
    let m = model.to_str().unwrap();
    let t = std::time::Instant::now();
    let o = sener(&["extract", "--model", m, "/dev/zero"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/dev/zero: looks binary (NUL byte at offset 0)"), "{err}");
    assert!(t.elapsed().as_secs() < 20);
    // An endless stream of text on standard input stops at --max-input-bytes.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(["extract", "--model", m, "--max-input-bytes", "1000000", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = b"word ".repeat(1000);
        // stops when sener closes the pipe
        for _ in 0..10_000 {
            if stdin.write_all(&chunk).is_err() {
                return true;
            }
        }
        false
    });
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("<stdin>: more than 1000000 bytes (--max-input-bytes)"), "{err}");
    assert!(writer.join().unwrap(), "sener stopped reading long before 50 MB");
    std::fs::remove_dir_all(&dir).ok();
}

/// The NUL rule of `extract` holds for `convert` and `stats` too.
#[test]
fn nul_bytes_are_refused_by_every_command() {
    let dir = tmp("nul");
    let f = dir.join("doc.txt");
    std::fs::write(&f, b"some text\0more").unwrap();
    let fs = f.to_str().unwrap();
    let out = dir.join("out.jsonl");
    for args in [vec!["convert", "--from", "text", "--to", "jsonl", fs, out.to_str().unwrap()], vec!["stats", "--format", "text", fs]] {
        let o = sener(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("looks binary (NUL byte at offset 9)"), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Writing raw-text annotations as word lists splits a word where an entity boundary falls
/// inside it (`Wei` → `We` `i`); the words then differ from the text's, which is reported.
#[test]
fn word_splits_at_entity_boundaries_are_reported() {
    let dir = tmp("split");
    let f = dir.join("in.jsonl");
    std::fs::write(&f, "{\"id\": \"d\", \"text\": \"Wei Wang works here\", \"entities\": [{\"start\": 0, \"end\": 2, \"label\": \"x\"}, {\"start\": 4, \"end\": 8, \"label\": \"y\"}]}\n").unwrap();
    let out = dir.join("out.jsonl");
    let o = sener(&["convert", "--from", "jsonl", "--to", "sener", f.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("write: 1 × word split where an entity starts or ends inside it"), "{err}");
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], serde_json::json!(["We", "i", "Wang", "works", "here"]));
    std::fs::remove_dir_all(&dir).ok();
}
