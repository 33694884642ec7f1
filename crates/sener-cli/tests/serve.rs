//! `sener serve` end to end: the real binary on a tiny model (imported from the official-layout
//! fixture checkpoint), spoken to over plain HTTP/1.1 on a std `TcpStream`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::tiny_model;

/// Words the tiny tokenizer knows (w4…w96), `n` of them.
fn long_text(n: usize, seed: usize) -> String {
    (0..n).map(|i| format!("w{}", 4 + (i * 7 + seed) % 90)).collect::<Vec<_>>().join(" ")
}

struct Server {
    child: Child,
    port: u16,
    _stdout: BufReader<ChildStdout>,
    /// Temporary folder holding the model; removed on drop.
    dir: PathBuf,
    model: PathBuf,
}

impl Server {
    /// Starts `sener serve --addr 127.0.0.1:0 EXTRA…` and reads the port it prints.
    fn start(extra: &[&str]) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!("sener-serve-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
        let model = tiny_model(&dir);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sener"))
            .args(["serve", "--model"])
            .arg(&model)
            .args(["--addr", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting sener serve");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("reading the server's first line");
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let status = child.wait().expect("waiting for sener serve");
            std::fs::remove_dir_all(&dir).ok();
            panic!("unexpected first line {line:?} (server exited: {status})");
        };
        let port = addr.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
        Server { child, port, _stdout: stdout, dir, model }
    }

    fn get(&self, path: &str) -> Resp {
        http(self.port, "GET", path, None)
    }

    fn post(&self, path: &str, body: &Value) -> Resp {
        http(self.port, "POST", path, Some(body.to_string().as_bytes()))
    }

    /// Sends `signal` and waits (at most 30 s) for the process to end.
    fn stop(mut self, signal: i32) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("waiting for sener serve") {
                return s;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "server did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Asserts a JSON error answer with this status and code.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "{self:?}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
fn http(port: u16, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
    http_with(port, method, path, &[("Host", &format!("127.0.0.1:{port}"))], body)
}

/// A request with the given headers (`Host` among them, or none).
fn http_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the server");
    s.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).expect("sending the request head");
    if let Some(b) = body {
        // The server may answer (413) before reading everything: a failed write is not an error.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if raw.windows(4).any(|w| w == b"\r\n\r\n") && e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response to {method} {path}: {e}"),
        }
    }
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).split(';').next().unwrap_or("").trim(), 16).expect("chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    } else if let Some((_, n)) = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")) {
        let n: usize = n.parse().expect("content-length");
        assert!(body.len() >= n, "short body: {} of {n} bytes", body.len());
        body.truncate(n);
    }
    Resp { status, headers, body: String::from_utf8(body).expect("UTF-8 body") }
}

/// A batched answer equals the single request's: the same words, segments and entities (offsets,
/// labels, texts), scores to 1e-5. The texts of a batch share padded forward passes, and the
/// CPU's matrix kernels may round a padded product differently (AVX2 does, by 6e-8; AVX-512
/// does not), as in `sener`'s own batching test.
fn same_answer(batched: &Value, single: &Value) {
    assert_eq!((&batched["words"], &batched["segments"]), (&single["words"], &single["segments"]), "{batched}\n{single}");
    let (b, s) = (batched["entities"].as_array().expect("entities"), single["entities"].as_array().expect("entities"));
    assert_eq!(b.len(), s.len(), "{batched}\n{single}");
    for (x, y) in b.iter().zip(s) {
        let key = |e: &Value| (e["start"].clone(), e["end"].clone(), e["label"].clone(), e["text"].clone());
        assert_eq!(key(x), key(y));
        let (p, q) = (x["score"].as_f64().expect("score"), y["score"].as_f64().expect("score"));
        assert!((p - q).abs() < 1e-5, "{x} {y}");
    }
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>());
    assert_eq!(keys(batched), keys(single));
}

/// Offsets are code points of the input: `text.chars().skip(start).take(end − start)` is the
/// entity's text; byte offsets appear exactly when asked for.
fn check_entities(text: &str, result: &Value, byte_offsets: bool) {
    let entities = result["entities"].as_array().unwrap_or_else(|| panic!("no entities array in {result}"));
    for e in entities {
        let (s, t) = (e["start"].as_u64().expect("start") as usize, e["end"].as_u64().expect("end") as usize);
        assert!(s < t, "{e}");
        let by_chars: String = text.chars().skip(s).take(t - s).collect();
        assert_eq!(by_chars, e["text"].as_str().expect("text"), "{e}");
        assert!(["a", "b", "c", "d", "e"].contains(&e["label"].as_str().expect("label")), "{e}");
        let score = e["score"].as_f64().expect("score");
        assert!((0.0..=1.0).contains(&score), "{e}");
        if byte_offsets {
            let (bs, be) = (e["byte_start"].as_u64().expect("byte_start") as usize, e["byte_end"].as_u64().expect("byte_end") as usize);
            assert_eq!(&text[bs..be], e["text"].as_str().expect("text"), "{e}");
        } else {
            assert!(e.get("byte_start").is_none() && e.get("byte_end").is_none(), "{e}");
        }
    }
}

#[test]
fn routes_answers_and_json_errors() {
    let srv = Server::start(&["--max-body-bytes", "65536", "--max-text-chars", "3000", "--max-batch", "4"]);

    let r = srv.get("/healthz");
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    assert_eq!(r.header("content-type"), Some("application/json"));

    let r = srv.get("/v1/model");
    assert_eq!(r.status, 200, "{r:?}");
    let m = r.json();
    assert_eq!(m["labels"], json!(["a", "b", "c", "d", "e"]));
    assert_eq!(m["span_window"], 4);
    assert_eq!(m["arrow_window"], 128);
    assert_eq!(m["max_len"], 5120);
    assert_eq!(m["encoder"]["kind"], "deberta-v2");
    assert_eq!(m["encoder"]["name"], "encoder");
    assert_eq!(m["base_sha256"].as_str().map(str::len), Some(64), "{m}");
    assert_eq!(m["limits"]["max_batch"], 4);
    assert_eq!(m["limits"]["max_text_chars"], 3000);

    // One unicode-heavy text: offsets in code points; byte offsets only on request.
    let text = "w5 Zoë\u{301} w6\tw7 日本語 w8\n\nw9 🎉🎉 w10 שלום w11\u{200b} w12 w13 w14 w15";
    let r = srv.post("/v1/extract", &json!({"text": text}));
    assert_eq!(r.status, 200, "{r:?}");
    let single = r.json();
    assert_eq!((single["words"].as_u64(), single["segments"].as_u64()), (Some(15), Some(1)), "{single}");
    assert!(!single["entities"].as_array().expect("entities").is_empty(), "the random tiny model predicts some spans");
    check_entities(text, &single, false);
    let r = srv.post("/v1/extract", &json!({"text": text, "byte_offsets": true}));
    assert_eq!(r.status, 200, "{r:?}");
    check_entities(text, &r.json(), true);

    // A batch answers each text as a single request would; an empty text has no entities.
    let plain = long_text(40, 3);
    let r = srv.post("/v1/extract", &json!({"texts": [text, plain, "", "  \n "]}));
    assert_eq!(r.status, 200, "{r:?}");
    let batch = r.json();
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 4);
    same_answer(&results[0], &single);
    check_entities(&plain, &results[1], false);
    same_answer(&results[1], &srv.post("/v1/extract", &json!({"text": plain})).json());
    for empty in &results[2..] {
        assert_eq!(empty, &json!({"entities": [], "words": 0, "segments": 0}));
    }
    let r = srv.post("/v1/extract", &json!({"text": ""}));
    assert_eq!((r.status, r.json()), (200, json!({"entities": [], "words": 0, "segments": 0})));

    // Threshold and flat decoding are per request.
    let r = srv.post("/v1/extract", &json!({"text": plain, "threshold": 0.6}));
    assert_eq!(r.status, 200, "{r:?}");
    for e in r.json()["entities"].as_array().expect("entities") {
        assert!(e["score"].as_f64().expect("score") >= 0.6 - 1e-6, "{e}");
    }
    let r = srv.post("/v1/extract", &json!({"text": plain, "flat": true, "threshold": 0.0}));
    assert_eq!(r.status, 200, "{r:?}");
    check_entities(&plain, &r.json(), false);

    // Characters, not bytes, count against --max-text-chars: 3000 two-byte characters pass.
    let r = srv.post("/v1/extract", &json!({"text": "é".repeat(3000)}));
    assert_eq!(r.status, 200, "{r:?}");

    // 400: not JSON, truncated JSON, wrong types, missing / conflicting / unknown fields.
    for body in [&b"hello"[..], b"{\"text\": ", b""] {
        http(srv.port, "POST", "/v1/extract", Some(body)).assert_error(400, "invalid_json");
    }
    for body in [
        json!({"text": 5}),
        json!({"texts": "w5 w6"}),
        json!({"texts": ["w5", 7]}),
        json!({"text": "w5", "threshold": "high"}),
        json!({"text": "w5", "flat": "yes"}),
        json!(["w5"]),
        json!({"txt": "w5"}),
    ] {
        srv.post("/v1/extract", &body).assert_error(400, "invalid_request");
    }
    srv.post("/v1/extract", &json!({})).assert_error(400, "invalid_request");
    srv.post("/v1/extract", &json!({"text": "w5", "texts": ["w6"]})).assert_error(400, "invalid_request");

    // 422: too long, too many, threshold outside [0, 1].
    srv.post("/v1/extract", &json!({"text": "é".repeat(3001)})).assert_error(422, "text_too_long");
    srv.post("/v1/extract", &json!({"texts": ["w5", "w6", "x".repeat(3001)]})).assert_error(422, "text_too_long");
    srv.post("/v1/extract", &json!({"texts": ["w5", "w6", "w7", "w8", "w9"]})).assert_error(422, "too_many_texts");
    srv.post("/v1/extract", &json!({"text": "w5", "threshold": 1.5})).assert_error(422, "invalid_threshold");

    // 413: a body over --max-body-bytes.
    let big = json!({"text": "w5 ".repeat(40_000)});
    srv.post("/v1/extract", &big).assert_error(413, "body_too_large");
    // ... and a declared length over it is refused at once, without waiting for the body.
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).expect("connecting");
    s.write_all(b"POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n{").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t0 = Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") || !raw.ends_with(b"}") {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer to a declared 1 GB body within {:?}: {e}", t0.elapsed()),
        }
    }
    parse_response(&raw).assert_error(413, "body_too_large");
    assert!(t0.elapsed() < Duration::from_secs(3), "answered after {:?}", t0.elapsed());

    // 404 and 405 (with Allow).
    srv.get("/nope").assert_error(404, "not_found");
    srv.post("/v1/nope", &json!({"text": "w5"})).assert_error(404, "not_found");
    let r = srv.get("/v1/extract");
    r.assert_error(405, "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("POST")), "{r:?}");
    let r = srv.post("/healthz", &json!({}));
    r.assert_error(405, "method_not_allowed");
    assert!(r.header("allow").is_some_and(|a| a.contains("GET")), "{r:?}");

    // Still healthy after all that; SIGTERM ends it cleanly.
    assert_eq!(srv.get("/healthz").status, 200);
    let status = srv.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

#[test]
fn full_queue_answers_503_with_retry_after() {
    let srv = Server::start(&["--queue", "1"]);
    let port = srv.port;
    let (mut ok, mut busy) = (0, 0);
    for _round in 0..5 {
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let body = json!({"text": long_text(1500, i)}).to_string();
                    barrier.wait();
                    http(port, "POST", "/v1/extract", Some(body.as_bytes()))
                })
            })
            .collect();
        for h in handles {
            let r = h.join().expect("client thread");
            match r.status {
                200 => {
                    ok += 1;
                    assert_eq!(r.json()["words"], 1500);
                }
                503 => {
                    busy += 1;
                    r.assert_error(503, "queue_full");
                    assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
                }
                other => panic!("status {other}: {r:?}"),
            }
        }
        if ok > 0 && busy > 0 {
            break;
        }
    }
    assert!(ok > 0 && busy > 0, "{ok} answered, {busy} refused: expected both");
    let status = srv.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

#[test]
fn request_past_the_deadline_gets_504() {
    let srv = Server::start(&["--timeout-secs", "0.001", "--max-work-factor", "0"]);
    let r = srv.post("/v1/extract", &json!({"text": long_text(2000, 1)}));
    r.assert_error(504, "timeout");
    // Other routes have no deadline, and the server goes on serving.
    assert_eq!(srv.get("/healthz").status, 200);
    let status = srv.stop(libc::SIGINT);
    assert!(status.success(), "{status}");
}

/// Work is bounded by what the client waits for: a request far longer than the deadline gets its
/// 504, and the model thread drops the rest of its work between segments, so a small request sent
/// right after it is answered within its own work time instead of waiting for the big one.
#[test]
fn a_timed_out_request_does_not_keep_the_model_busy() {
    // Refusal by estimated cost off: the request is admitted and must be cut off by its deadline.
    let srv = Server::start(&["--timeout-secs", "2", "--max-work-factor", "0"]);
    // The model's speed here, on a 10,000-word text (well inside the deadline).
    let t = Instant::now();
    let r = srv.post("/v1/extract", &json!({"text": long_text(10_000, 5)}));
    assert_eq!(r.status, 200, "{}", r.body);
    let per_10k = t.elapsed().as_secs_f64();
    // 240,000 words (under the 1,000,000-character limit) take 24 times that.
    let big = long_text(240_000, 3);
    assert!(big.chars().count() < 1_000_000);
    let limit = (3.0 * per_10k).max(1.5);
    assert!(24.0 * per_10k > 2.0 + limit + 3.0, "the big request ({:.1} s) is too fast to tell", 24.0 * per_10k);
    let t = Instant::now();
    srv.post("/v1/extract", &json!({"text": big})).assert_error(504, "timeout");
    assert!(t.elapsed().as_secs_f64() < 2.0 + limit, "504 after {:?}", t.elapsed());
    let t = Instant::now();
    let r = srv.post("/v1/extract", &json!({"text": "w5 w6 w7"}));
    let waited = t.elapsed().as_secs_f64();
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(waited < limit, "the small request waited {waited:.1} s behind the abandoned one (limit {limit:.1} s)");
    let status = srv.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

/// A request whose estimated model time (its words at the speed the server measured) is far
/// beyond the deadline is refused at once with 422, naming the limit, and never reaches the
/// model: a small request right after it is answered at once.
#[test]
fn a_request_far_beyond_the_deadline_is_refused_up_front() {
    let srv = Server::start(&["--timeout-secs", "2"]);
    // The model's speed here, on 2,000 words (admitted unless the model runs below 500 words/s).
    let t = Instant::now();
    let r = srv.post("/v1/extract", &json!({"text": long_text(2_000, 5)}));
    assert_eq!(r.status, 200, "{}", r.body);
    let per_2k = t.elapsed().as_secs_f64();
    assert!(120.0 * per_2k > 2.0 * 2.0 * 1.5, "the model is too fast here to tell ({per_2k:.2} s per 2,000 words)");
    let t = Instant::now();
    let r = srv.post("/v1/extract", &json!({"texts": ["w5 w6", long_text(240_000, 3)]}));
    let refused_after = t.elapsed().as_secs_f64();
    r.assert_error(422, "too_much_work");
    let msg = r.json()["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("240002 words") && msg.contains("--timeout-secs"), "{msg}");
    assert!(refused_after < 1.0 + per_2k, "refused after {refused_after:.2} s: it ran on the model");
    let t = Instant::now();
    let r = srv.post("/v1/extract", &json!({"text": "w5 w6 w7"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(t.elapsed().as_secs_f64() < 1.0 + per_2k, "the small request waited {:?}", t.elapsed());
    let status = srv.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

/// `--log-format json`: one JSON line per request on stderr with its method, path, status,
/// words, queue wait, model time and total time.
#[test]
fn requests_are_logged_as_json_lines() {
    let dir = std::env::temp_dir().join(format!("sener-serve-log-{}", std::process::id()));
    let model = tiny_model(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(["--log-format", "json", "serve", "--model"])
        .arg(&model)
        .args(["--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sener serve");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reading the server's first line");
    let port: u16 = line.trim().rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {line:?}"));
    let body = json!({"texts": [long_text(30, 1), long_text(12, 2)]}).to_string();
    assert_eq!(http(port, "POST", "/v1/extract", Some(body.as_bytes())).status, 200);
    assert_eq!(http(port, "GET", "/nowhere", None).status, 404);
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().expect("waiting for sener serve");
    assert!(out.status.success(), "{}", out.status);
    let logs: Vec<Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l:?}")))
        .collect();
    let req = |path: &str| logs.iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("no log line for {path}: {logs:?}"));
    let x = req("/v1/extract");
    assert_eq!((x["method"].as_str(), x["status"].as_u64(), x["texts"].as_u64(), x["words"].as_u64()), (Some("POST"), Some(200), Some(2), Some(42)), "{x}");
    for k in ["queue_ms", "model_ms", "total_ms"] {
        assert!(x[k].as_f64().is_some_and(|v| v >= 0.0), "{k} in {x}");
    }
    assert!(x["model_ms"].as_f64() <= x["total_ms"].as_f64(), "{x}");
    assert_eq!(req("/nowhere")["status"], 404);
    assert!(logs.iter().any(|l| l["message"] == "warm-up done" && l["words_per_s"].as_f64().is_some_and(|v| v > 0.0)), "{logs:?}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn shutdown_finishes_requests_in_flight() {
    let srv = Server::start(&[]);
    let port = srv.port;
    let handles: Vec<_> = (0..3)
        .map(|i| {
            std::thread::spawn(move || {
                let body = json!({"texts": [long_text(800, i), long_text(800, i + 10)]}).to_string();
                http(port, "POST", "/v1/extract", Some(body.as_bytes()))
            })
        })
        .collect();
    // Let the requests reach the server, then stop it while the model works on them.
    std::thread::sleep(Duration::from_millis(300));
    let status = srv.stop(libc::SIGTERM);
    let mut most_batched = 0;
    for h in handles {
        let r = h.join().expect("client thread");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.json()["results"].as_array().map(Vec::len), Some(2));
        let shared: usize = r.header("x-sener-batch-requests").and_then(|v| v.parse().ok()).expect("batch header");
        most_batched = most_batched.max(shared);
    }
    assert!(status.success(), "{status}");
    // Requests that waited while the model was busy went onto it together.
    assert!(most_batched >= 2, "no two requests shared a model call");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "still accepting after shutdown");
}

/// Browser pages and DNS rebinding cannot use a loopback server; an API key guards `/v1/`.
#[test]
fn origins_hosts_and_api_keys_are_checked() {
    let srv = Server::start(&[]);
    let p = srv.port;
    let host = format!("127.0.0.1:{p}");
    let body = br#"{"text": "w5 w6"}"#;
    assert_eq!(http_with(p, "GET", "/healthz", &[("Host", &format!("localhost:{p}"))], None).status, 200);
    assert_eq!(http_with(p, "GET", "/healthz", &[("Host", &format!("[::1]:{p}"))], None).status, 200);
    // a rebinding page's Host, a wrong port, no Host at all
    for h in [vec![("Host", "evil.example")], vec![("Host", "127.0.0.1:1")], vec![]] {
        http_with(p, "POST", "/v1/extract", &h, Some(body)).assert_error(403, "forbidden_host");
    }
    // a browser on another origin (text/plain is a "simple" cross-origin request)
    let r = http_with(p, "POST", "/v1/extract", &[("Host", &host), ("Origin", "https://evil.example"), ("Content-Type", "text/plain")], Some(body));
    r.assert_error(403, "forbidden_origin");
    assert_eq!(http_with(p, "POST", "/v1/extract", &[("Host", &host)], Some(body)).status, 200, "no Origin: curl, scripts");
    drop(srv);

    let dir = std::env::temp_dir().join(format!("sener-serve-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("key");
    std::fs::write(&key_file, "s3cret-key-of-32-characters-long\n").unwrap();
    let srv = Server::start(&["--allow-origin", "https://app.example.org", "--api-key-file", key_file.to_str().unwrap()]);
    let p = srv.port;
    let host = format!("127.0.0.1:{p}");
    let app = ("Origin", "https://app.example.org");
    let ok = ("Authorization", "Bearer s3cret-key-of-32-characters-long");
    assert_eq!(http_with(p, "POST", "/v1/extract", &[("Host", &host), app, ok], Some(body)).status, 200);
    assert_eq!(http_with(p, "GET", "/v1/model", &[("Host", &host), ok], None).status, 200);
    let r = http_with(p, "GET", "/v1/model", &[("Host", &host), app], None);
    r.assert_error(401, "unauthorized");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    http_with(p, "GET", "/v1/model", &[("Host", &host), ("Authorization", "Bearer s3cret-key-of-32-characters-lonG")], None).assert_error(401, "unauthorized");
    http_with(p, "GET", "/v1/model", &[("Host", &host), ("Origin", "https://app.example.org.evil"), ok], None).assert_error(403, "forbidden_origin");
    assert_eq!(http_with(p, "GET", "/healthz", &[("Host", &host)], None).status, 200, "health needs no key");
    drop(srv);

    // bad settings
    std::fs::write(&key_file, "short").unwrap();
    for (args, needle) in [
        (vec!["--allow-origin", "app.example.org"], "--allow-origin"),
        (vec!["--allow-origin", "https://app.example.org/"], "--allow-origin"),
        (vec!["--api-key-file", key_file.to_str().unwrap()], "at least 16 characters"),
        (vec!["--api-key-file", "/no/such/key"], "--api-key-file"),
    ] {
        let model = dir.join("model");
        if !model.exists() {
            tiny_model(&dir);
        }
        let o = Command::new(env!("CARGO_BIN_EXE_sener"))
            .args(["serve", "--model", model.to_str().unwrap(), "--addr", "127.0.0.1:0"])
            .args(&args)
            .output()
            .expect("running sener serve");
        assert!(!o.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A second signal ends the server at once with 130, whatever the shutdown is waiting for: a
/// connection whose request is on the model, or (client gone) only the model thread.
#[test]
fn a_second_signal_stops_at_once() {
    for client_stays in [true, false] {
        let srv = Server::start(&[]);
        let port = srv.port;
        let body = json!({"text": long_text(240_000, 1)}).to_string();
        let client = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting");
            let head = format!("POST /v1/extract HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).and_then(|_| s.write_all(body.as_bytes())).expect("sending");
            if client_stays {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        });
        std::thread::sleep(Duration::from_millis(800));
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(srv.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let status = srv.stop(libc::SIGTERM);
        assert!(t.elapsed() < Duration::from_secs(3), "client_stays {client_stays}: stopped after {:?}", t.elapsed());
        assert!(status.code() == Some(130) || status.success(), "client_stays {client_stays}: {status}");
        if client_stays {
            assert_eq!(status.code(), Some(130), "the first signal waits for the request; the second stops");
        }
        client.join().expect("client thread");
    }
}

#[test]
fn bad_settings_fail_at_startup_and_a_signal_right_after_start_is_clean() {
    let srv = Server::start(&[]);
    // The address is taken: a clear error, before any model work.
    let taken = format!("127.0.0.1:{}", srv.port);
    // Every other case binds port 0, never a fixed port something else may hold.
    for (args, needle) in [
        (vec!["--addr", taken.as_str()], "binding"),
        (vec!["--addr", "127.0.0.1:0", "--queue", "0"], "--queue"),
        (vec!["--addr", "127.0.0.1:0", "--timeout-secs", "0"], "--timeout-secs"),
        (vec!["--addr", "127.0.0.1:0", "--header-timeout-secs", "0"], "--header-timeout-secs"),
        (vec!["--addr", "127.0.0.1:0", "--threshold", "2"], "--threshold"),
        (vec!["--addr", "127.0.0.1:0", "--max-len", "2"], "--max-len"),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_sener")).args(["serve", "--model"]).arg(&srv.model).args(&args).output().expect("running sener serve");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // SIGTERM as soon as the address is printed: handled, exit 0.
    let status = srv.stop(libc::SIGTERM);
    assert!(status.success(), "{status}");
}

/// A client that never finishes its headers is disconnected after `--header-timeout-secs`, while
/// other connections are served meanwhile.
#[test]
fn slow_headers_are_cut_off() {
    let srv = Server::start(&["--header-timeout-secs", "1"]);
    let mut slow = TcpStream::connect(("127.0.0.1", srv.port)).expect("connecting");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").expect("partial headers");
    assert_eq!(srv.get("/healthz").status, 200, "another client is served meanwhile");
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = Vec::new();
    // EOF (or a reset) once the server gives up on the headers; a read timeout would be Err(WouldBlock).
    let r = slow.read_to_end(&mut buf);
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(8) && r.as_ref().map_or_else(|e| e.kind() != std::io::ErrorKind::WouldBlock, |_| true),
        "connection held for {waited:?}: {r:?}"
    );
    assert!(buf.is_empty() || String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&buf));
    assert!(srv.stop(libc::SIGTERM).success());
}
