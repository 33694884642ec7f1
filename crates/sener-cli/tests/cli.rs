//! End-to-end runs of the `sener` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../sener/tests/fixtures").join(name)
}

fn sener(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sener")).args(args).output().expect("running sener")
}

#[test]
fn encode_ids_matches_transformers() {
    // First sequence of the DeBERTa-v3 fixture (45 tokens, no padding) with full attention.
    let exp = candle_core::safetensors::load(fixture("deberta_v3_tiny/expected.safetensors"), &Device::Cpu).unwrap();
    let ids: Vec<i64> = exp["input_ids"].get(0).unwrap().to_vec1().unwrap();
    let ids_arg = ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",");
    let out = std::env::temp_dir().join(format!("sener-cli-encode-{}.safetensors", std::process::id()));
    let model = fixture("deberta_v3_tiny");
    let o = sener(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--ids",
        &ids_arg,
        "--window",
        "1000",
        "--no-logn",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(got["ids"].to_vec1::<i64>().unwrap(), ids);
    let want = exp["last_hidden_state"].get(0).unwrap();
    assert_eq!(got["hidden"].dims(), want.dims());
    let diff = (&got["hidden"] - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap();
    assert!(diff.to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap() <= 1e-4);
    std::fs::remove_file(out).ok();
}

#[test]
fn encode_reports_clear_errors() {
    let model = fixture("deberta_v3_tiny");
    let m = model.to_str().unwrap();
    // No tokenizer in the fixture folder: --text must say so, naming the file.
    let o = sener(&["encode", "--model", m, "--text", "hello", "--output", "/tmp/x.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("tokenizer.json") && err.contains("--ids"), "{err}");
    // Ids outside the vocabulary.
    let o = sener(&["encode", "--model", m, "--ids", "1,99999,2", "--output", "/tmp/x.safetensors"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the vocabulary"));
    // A missing model folder is named.
    let o = sener(&["encode", "--model", "/no/such/model", "--ids", "1,2", "--output", "/tmp/x.safetensors"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/model"));
    // Invalid UTF-8 input file.
    let bad = std::env::temp_dir().join(format!("sener-bad-{}.txt", std::process::id()));
    std::fs::write(&bad, [0x66, 0x6f, 0xff, 0x6f]).unwrap();
    let o = sener(&["encode", "--model", m, "--file", bad.to_str().unwrap(), "--output", "/tmp/x.safetensors"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid UTF-8"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_file(bad).ok();
    // --window 0 is rejected up front.
    let o = sener(&["encode", "--model", m, "--ids", "1,2", "--window", "0", "--output", "/tmp/x.safetensors"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--window"));
}

fn data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(rel);
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("SKIPPED: {} not found (the shared data folder sits beside the checkout)", p.display());
        None
    }
}

#[test]
fn stats_counts_the_shared_scholar_xl_test_split() {
    let Some(test) = data("scholar-xl/test.jsonl") else { return };
    let o = sener(&["stats", "--json", test.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["documents"], 350);
    assert_eq!(v["entities"], 3877);
    assert_eq!(v["max_words"], 624);
    // Spec §6: 23 test entities are longer than 129 words.
    assert_eq!(v["longer_than_span_window"], 23);
    assert_eq!(v["per_label"]["research_interests"], 772);
}

#[test]
fn convert_round_trips_and_reports_what_conll_cannot_hold() {
    let Some(dev) = data("scholar-xl/dev.jsonl") else { return };
    let dir = std::env::temp_dir().join(format!("sener-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let own = dir.join("dev.jsonl");
    let back = dir.join("dev.sener.jsonl");
    let o = sener(&["convert", "--from", "sener", "--to", "jsonl", dev.to_str().unwrap(), own.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sener(&["convert", "--from", "jsonl", "--to", "sener", own.to_str().unwrap(), back.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Same documents and entities as the original (entity order aside).
    let parse = |p: &Path| -> Vec<(String, Vec<String>, Vec<String>)> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let words = v["text"].as_array().unwrap().iter().map(|w| w.as_str().unwrap().to_string()).collect();
                let mut ents: Vec<String> = v["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| format!("{}-{}-{}", e[0], e[1], e[3]))
                    .collect();
                ents.sort();
                (v["doc_id"].as_str().unwrap().to_string(), words, ents)
            })
            .collect()
    };
    assert_eq!(parse(&dev), parse(&back));
    // CoNLL is flat: the nested entities it cannot hold are counted on stderr.
    let o = sener(&["convert", "--from", "sener", "--to", "conll", dev.to_str().unwrap(), dir.join("dev.conll").to_str().unwrap()]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nested or overlapping entity dropped"), "{err}");
    // Unknown formats are named.
    let o = sener(&["convert", "--from", "xml", "--to", "jsonl", dev.to_str().unwrap(), "/tmp/x"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("xml"));
    std::fs::remove_dir_all(dir).ok();
}
