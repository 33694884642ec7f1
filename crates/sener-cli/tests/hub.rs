//! `sener train --base org/name`: the base encoder fetched from a Hugging Face Hub endpoint.
//!
//! There is no network to huggingface.co here, so the test serves the tiny DeBERTa fixture from a
//! real HTTP server on a loopback port that answers the Hub's `resolve` protocol (as
//! `huggingface_hub` and `hf-hub` use it: a `Range: bytes=0-0` probe answered 206 with `ETag`,
//! `X-Repo-Commit` and `Content-Range`, then the ranged download; 404 for files the repository
//! lacks), and points `HF_ENDPOINT` at it. A closed port stands for "no network".

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{fixture, sener};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` as repository `org/tiny` at any revision; returns the endpoint and the list of
/// requested paths.
fn hub_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    hub_server_repos(files.into_iter().map(|(k, v)| (format!("org/tiny/{k}"), v)).collect())
}

/// Serves `files` keyed `org/name/path/in/repo`, every repository at any revision (answered with
/// commit [`COMMIT`]).
fn hub_server_repos(files: HashMap<String, Vec<u8>>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            let mut range_start = 0usize;
            let mut probe = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(r) = lower.strip_prefix("range: bytes=") {
                    let r = r.trim();
                    probe = r == "0-0";
                    range_start = r.split('-').next().and_then(|s| s.parse().ok()).unwrap_or(0);
                }
            }
            let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
            seen.lock().unwrap().push(path.clone());
            // /{org}/{name}/resolve/{revision}/{file...}
            let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
            let file = match parts.as_slice() {
                [org, name, "resolve", _rev, rest] => files.get(&format!("{org}/{name}/{rest}")),
                _ => None,
            };
            let response = match file {
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                Some(body) => {
                    let etag = format!("\"{:016x}{}\"", body.len(), body.iter().fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64)));
                    let part = if probe { &body[..1.min(body.len())] } else { &body[range_start.min(body.len())..] };
                    let end = (range_start + part.len()).saturating_sub(1);
                    let mut r = format!(
                        "HTTP/1.1 206 Partial Content\r\nETag: {etag}\r\nX-Repo-Commit: {COMMIT}\r\nContent-Range: bytes {range_start}-{end}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        part.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(part);
                    r
                }
            };
            stream.write_all(&response).ok();
        }
    });
    (format!("http://{addr}"), log)
}

fn train_args(dir: &Path) -> Vec<String> {
    let mut lines = String::new();
    for d in 0..4 {
        let words: Vec<String> = (0..20).map(|i| format!("\"w{}\"", 4 + (d * 5 + i * 3) % 60)).collect();
        lines.push_str(&format!("{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [[1, 3, [{}], \"x\"]]}}\n", words.join(", "), words[1..3].join(", ")));
    }
    std::fs::write(dir.join("train.jsonl"), lines).unwrap();
    ["train", "--base", "org/tiny", "--max-steps", "1", "--batch-size", "2", "--micro-batch", "2", "--span-window", "4", "--cnn-depth", "1"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--train".into(), dir.join("train.jsonl").display().to_string(), "--output".into(), dir.join("model").display().to_string()])
        .collect()
}

fn sener_env(args: &[String], endpoint: &str, hf_home: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .output()
        .expect("running sener")
}

#[test]
fn a_hub_id_is_fetched_into_the_hub_cache_and_recorded() {
    let dir = std::env::temp_dir().join(format!("sener-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = HashMap::new();
    for f in ["config.json", "model.safetensors"] {
        files.insert(f.to_string(), std::fs::read(fixture("deberta_v3_tiny").join(f)).unwrap());
    }
    files.insert("tokenizer.json".to_string(), std::fs::read(fixture("deberta_v3_tiny_tok/tokenizer.json")).unwrap());
    let (endpoint, log) = hub_server(files);
    let hf_home = dir.join("hf");
    let o = sener_env(&train_args(&dir), &endpoint, &hf_home);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Hub cache layout, as Python's huggingface_hub writes it.
    let snapshot = hf_home.join("hub/models--org--tiny/snapshots").join(COMMIT);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let got = std::fs::read(snapshot.join(f)).unwrap();
        let want = if f == "tokenizer.json" { fixture("deberta_v3_tiny_tok").join(f) } else { fixture("deberta_v3_tiny").join(f) };
        assert_eq!(got, std::fs::read(want).unwrap(), "{f} arrived intact");
    }
    let requested = log.lock().unwrap().clone();
    assert!(!requested.iter().any(|p| p.ends_with("pytorch_model.bin")), "safetensors found first: {requested:?}");

    // The model names where its base came from.
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model/sener.json")).unwrap()).unwrap();
    assert_eq!(cfg["base"]["hub"], format!("org/tiny@{COMMIT}"));

    // A second run needs no network: the cached snapshot is used as it is.
    let before = log.lock().unwrap().len();
    let o = sener_env(&train_args(&dir), "http://127.0.0.1:9", &hf_home);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(log.lock().unwrap().len(), before);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn no_network_gives_a_clear_error() {
    let dir = std::env::temp_dir().join(format!("sener-hub-offline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Port 9 (discard) is closed here: the connection is refused at once.
    let o = sener_env(&train_args(&dir), "http://127.0.0.1:9", &dir.join("hf"));
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("could not fetch org/tiny@main from the Hugging Face Hub"), "{err}");
    assert!(err.contains("pass its path to --base"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // Neither a folder nor a hub id.
    let mut args = train_args(&dir);
    let i = args.iter().position(|a| a == "org/tiny").unwrap();
    args[i] = "no/such/folder".into();
    let o = sener_env(&args, "http://127.0.0.1:9", &dir.join("hf"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such folder"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// The tiny base encoder's files, as the Hub holds them.
fn tiny_encoder_files() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for f in ["config.json", "model.safetensors"] {
        files.insert(f.to_string(), std::fs::read(fixture("deberta_v3_tiny").join(f)).unwrap());
    }
    files.insert("tokenizer.json".to_string(), std::fs::read(fixture("deberta_v3_tiny_tok/tokenizer.json")).unwrap());
    files
}

fn run_env(args: &[&str], endpoint: &str, hf_home: &Path, sener_cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env("SENER_CACHE", sener_cache)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .output()
        .expect("running sener")
}

/// `--model org/name`: a trained model folder published on the Hub (as `huggingface-cli upload`
/// would) is fetched with its base encoder into an empty cache and extracts exactly what the
/// local folder does; once cached it works offline; a repository that is not a sener model, and
/// no network, give clear errors.
#[test]
fn a_trained_model_loads_by_hub_id() {
    let dir = std::env::temp_dir().join(format!("sener-hub-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Train a tiny model on the Hub-served base (recorded as base.hub = org/tiny@COMMIT).
    let (endpoint, _) = hub_server(tiny_encoder_files());
    let o = sener_env(&train_args(&dir), &endpoint, &dir.join("hf-train"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let local = dir.join("model");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(local.join("sener.json")).unwrap()).unwrap();
    assert_eq!(cfg["base"]["hub"], format!("org/tiny@{COMMIT}"));
    // Published from another machine: its base path means nothing here.
    cfg["base"]["path"] = serde_json::Value::String("/elsewhere/tiny".into());
    let mut files: HashMap<String, Vec<u8>> = tiny_encoder_files().into_iter().map(|(k, v)| (format!("org/tiny/{k}"), v)).collect();
    files.insert("org/tinyner/sener.json".into(), serde_json::to_vec_pretty(&cfg).unwrap());
    for f in ["span.safetensors", "README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"] {
        files.insert(format!("org/tinyner/{f}"), std::fs::read(local.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")));
    }
    let (endpoint, log) = hub_server_repos(files);
    let doc = dir.join("doc.txt");
    std::fs::write(&doc, "w4 w7 w10 w13 w16 w19 w22").unwrap();
    let (hf, cache) = (dir.join("hf-user"), dir.join("sener-cache"));
    std::fs::create_dir_all(&cache).unwrap();
    let args = |m: &str| -> Vec<String> { ["extract", "--model", m, "--threshold", "0.2", doc.to_str().unwrap()].iter().map(|s| s.to_string()).collect() };
    let a: Vec<String> = args("org/tinyner");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let o = run_env(&a, &endpoint, &hf, &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let requested = log.lock().unwrap().clone();
    assert!(requested.iter().any(|p| p.starts_with("/org/tinyner/resolve/main/sener.json")), "{requested:?}");
    assert!(requested.iter().any(|p| p.starts_with(&format!("/org/tiny/resolve/{COMMIT}/model.safetensors"))), "the base at the recorded commit: {requested:?}");
    assert!(hf.join(format!("hub/models--org--tinyner/snapshots/{COMMIT}/adapter/adapter_model.safetensors")).is_file());
    // The same entities as the local folder.
    let want = sener(&["extract", "--model", local.to_str().unwrap(), "--threshold", "0.2", doc.to_str().unwrap()]);
    assert!(want.status.success(), "{}", String::from_utf8_lossy(&want.stderr));
    let strip = |out: &[u8]| -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_slice(out).unwrap();
        v.as_object_mut().unwrap().remove("source");
        v
    };
    assert_eq!(strip(&o.stdout), strip(&want.stdout));
    assert!(!strip(&o.stdout)["entities"].as_array().unwrap().is_empty(), "a low threshold finds spans to compare");
    // Cached: no network needed.
    let before = log.lock().unwrap().len();
    let o = run_env(&a, "http://127.0.0.1:9", &hf, &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(log.lock().unwrap().len(), before);
    // An encoder repository is not a model; no network gives the --model hint.
    let o = run_env(&["extract", "--model", "org/tiny", doc.to_str().unwrap()], &endpoint, &dir.join("hf-3"), &cache);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no sener.json, so it is not a sener model folder"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = run_env(&["eval", "--model", "org/tinyner", "--data", doc.to_str().unwrap(), "--format", "text"], "http://127.0.0.1:9", &dir.join("hf-4"), &cache);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("could not fetch org/tinyner@main from the Hugging Face Hub") && err.contains("pass its path to --model"), "{err}");
    assert_eq!(err.matches("could not fetch").count(), 1, "said once: {err}");
    std::fs::remove_dir_all(&dir).ok();
}
