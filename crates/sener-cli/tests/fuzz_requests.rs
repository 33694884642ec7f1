//! Fuzzing `POST /v1/extract` of a real `sener serve` (tiny model, loopback, port 0): JSON-ish
//! bodies built from the request's own keys and hostile values, and valid bodies with bytes
//! flipped. Every answer must be 200 with entities whose offsets are exact, or a 400/413/422 JSON
//! error with a code and a message; never a 5xx, a dropped connection or a dead server.
//!
//! CI runs `SENER_FUZZ_CASES` cases per property (default 150); for a longer run:
//! `SENER_FUZZ_CASES=20000 cargo test --release -p sener-cli --test fuzz_requests`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;

mod common;

fn cases(default: u32) -> u32 {
    std::env::var("SENER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One server for the whole file, killed when the test process ends.
struct Server {
    port: u16,
    _child: Child,
}

fn server() -> &'static Server {
    static S: OnceLock<Server> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sener-fuzz-serve-{}", std::process::id()));
        let model = common::tiny_model(&dir);
        // The server's life is bound to this process: it exits when its stdin (our pipe) closes.
        let mut child = Command::new(env!("CARGO_BIN_EXE_sener"))
            .args(["--log-level", "warn", "serve", "--addr", "127.0.0.1:0", "--max-body-bytes", "20000", "--max-text-chars", "3000", "--max-batch", "8", "--model"])
            .arg(&model)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sener serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
        // A watchdog: kill the server when this process ends (the test harness exits without
        // running destructors of statics).
        let pid = child.id();
        std::thread::spawn(move || {
            let me = std::process::id();
            let watchdog = format!("while kill -0 {me} 2>/dev/null; do sleep 0.2; done; kill {pid} 2>/dev/null; rm -rf {}", dir.display());
            let _ = Command::new("sh").args(["-c", &watchdog]).stdin(Stdio::null()).spawn();
        });
        Server { port, _child: child }
    })
}

/// Posts raw bytes; returns the status and the body.
fn post(body: &[u8]) -> (u16, String) {
    let port = server().port;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the server is gone");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!("POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("reading the answer");
    let text = String::from_utf8(raw).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, body.to_string())
}

/// Checks one answer to `body` against the API's promises.
fn check(body: &[u8]) -> Result<(), TestCaseError> {
    let (status, answer) = post(body);
    let v: Value = serde_json::from_str(&answer).map_err(|e| TestCaseError::fail(format!("{status}: not JSON ({e}): {answer:?}")))?;
    match status {
        200 => {
            let req: Value = serde_json::from_slice(body).map_err(|e| TestCaseError::fail(format!("200 for a body that is not JSON ({e})")))?;
            let (texts, results): (Vec<&str>, Vec<&Value>) = match (&req["text"], v["results"].as_array()) {
                (Value::String(t), None) => (vec![t.as_str()], vec![&v]),
                (_, Some(r)) => (req["texts"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default(), r.iter().collect()),
                _ => return Err(TestCaseError::fail(format!("200 without results: {answer}"))),
            };
            prop_assert_eq!(texts.len(), results.len());
            for (t, r) in texts.iter().zip(results) {
                let chars: Vec<char> = t.chars().collect();
                for e in r["entities"].as_array().into_iter().flatten() {
                    let (s, n) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
                    prop_assert!(s < n && n <= chars.len(), "{e} outside a text of {} characters", chars.len());
                    prop_assert_eq!(chars[s..n].iter().collect::<String>(), e["text"].as_str().unwrap_or_default());
                }
            }
        }
        400 | 413 | 422 => {
            prop_assert!(v["error"]["code"].as_str().is_some_and(|c| !c.is_empty()), "{status}: {answer}");
            prop_assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{status}: {answer}");
        }
        other => return Err(TestCaseError::fail(format!("status {other} for {:?}: {answer}", String::from_utf8_lossy(body)))),
    }
    Ok(())
}

/// JSON-ish bodies from the request's keys and hostile values.
fn jsonish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "{", "}", "[", "]", ",", ":", "\"text\"", "\"texts\"", "\"threshold\"", "\"flat\"", "\"byte_offsets\"", "\"extra\"",
        "\"w5 w6 w7\"", "\"w5 Zoë 日本 👍🏽 w9\"", "\"\"", "\"\\u0000\"", "\"\\ud800\"", "\" \\n\\t \"", "0", "1", "-1", "0.5", "1e400", "-0.0",
        "NaN", "null", "true", "false", "\"0.5\"", "18446744073709551616", " ", "\n",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

/// Valid bodies with a few bytes flipped.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let seeds = prop::sample::select(vec![
        r#"{"text": "w5 w6 w7 w8 w9 w10 w11 w12", "threshold": 0.3}"#,
        r#"{"texts": ["w5 w6", "Zoë w7 日本語 w8 🎉", ""], "flat": true, "byte_offsets": true}"#,
        r#"{"text": "w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20"}"#,
    ]);
    (seeds, prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..5)).prop_map(|(s, flips)| {
        let mut b = s.as_bytes().to_vec();
        for (i, x) in flips {
            let k = i.index(b.len());
            b[k] = x;
        }
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(150), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn jsonish_bodies_get_an_answer(s in jsonish()) {
        check(s.as_bytes())?;
    }

    #[test]
    fn mutated_bodies_get_an_answer(b in mutated()) {
        check(&b)?;
    }

    #[test]
    fn arbitrary_texts_keep_exact_offsets(texts in prop::collection::vec("\\PC{0,60}", 1..4), threshold in prop::option::of(0.0f32..=1.0), flat in any::<bool>()) {
        let body = serde_json::json!({"texts": texts, "threshold": threshold, "flat": flat}).to_string();
        check(body.as_bytes())?;
    }
}
