//! `sener train`'s configuration: recipes, the saved config given back unchanged, a held-out part
//! and its model card, the splitter recorded in the model, a time budget, and the errors a user
//! can run into.

use std::path::{Path, PathBuf};

mod common;
use common::{sener, tiny_deberta_base};

/// `dir/train.jsonl`: `n` synthetic SeNER documents with two entity types.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let mut lines = String::new();
    for d in 0..n {
        let words: Vec<String> = (0..18).map(|i| format!("\"w{}\"", 4 + (d * 7 + i * 3) % 60)).collect();
        let s = d % 10;
        lines.push_str(&format!(
            "{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [[{s}, {}, [{}], \"x\"], [{}, {}, [{}], \"y\"]]}}\n",
            words.join(", "),
            s + 2,
            words[s..s + 2].join(", "),
            s + 4,
            s + 5,
            words[s + 4]
        ));
    }
    let p = dir.join("train.jsonl");
    std::fs::write(&p, lines).unwrap();
    p
}

fn tmp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sener-traincfg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

const SMALL: [&str; 8] = ["--span-window", "4", "--cnn-depth", "1", "--batch-size", "2", "--micro-batch", "2"];

fn train(args: &[&str]) -> std::process::Output {
    let mut a = vec!["train"];
    a.extend(args);
    sener(&a)
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The effective config a run saves, given back to `--config`, makes the same run: the same
/// saved config and bit-identical weights. Holds for both recipes, and for TOML.
#[test]
fn the_saved_config_reproduces_the_run() {
    let dir = tmp("roundtrip");
    let base = tiny_deberta_base(&dir);
    let data = corpus(&dir, 8);
    let (d, b) = (data.display().to_string(), base.display().to_string());
    for recipe in ["sener", "paper"] {
        let out1 = dir.join(format!("{recipe}1/model")).display().to_string();
        let mut args = vec!["--train", &d, "--base", &b, "--output", &out1, "--max-steps", "3", "--recipe", recipe, "--epochs", "2", "--lr-new", "0.01"];
        args.extend(SMALL);
        let o = train(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let saved_path = dir.join(format!("{recipe}1/model.train.json"));
        let mut saved = read_json(&saved_path);
        assert_eq!(saved["recipe"], recipe);
        assert_eq!(saved["lr_new"], 0.01);
        assert_eq!(read_json(&dir.join(format!("{recipe}1/model/train.json"))), saved, "the model folder carries its config");
        // Given back with only the output changed (as a user would copy it), JSON and TOML.
        let out2 = dir.join(format!("{recipe}2/model"));
        saved["output"] = serde_json::Value::String(out2.display().to_string());
        let cfg_json = dir.join(format!("{recipe}.json"));
        std::fs::write(&cfg_json, serde_json::to_string_pretty(&saved).unwrap()).unwrap();
        let o = train(&["--config", cfg_json.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(read_json(&dir.join(format!("{recipe}2/model.train.json"))), saved);
        let w1 = std::fs::read(dir.join(format!("{recipe}1/model/span.safetensors"))).unwrap();
        let w2 = std::fs::read(out2.join("span.safetensors")).unwrap();
        assert!(w1 == w2, "{recipe}: the same config trains the same weights");
    }
    // An unknown key or an out-of-range value is refused, naming it.
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, format!("train = {d:?}\nbase = {b:?}\nlearning_rate = 0.1\n")).unwrap();
    let o = train(&["--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field `learning_rate`"), "{}", String::from_utf8_lossy(&o.stderr));
    for (flag, value, want) in [("--lr-new", "3", "lr_new = 3 must be in (0, 1]"), ("--holdout", "0.95", "holdout = 0.95"), ("--wwm", "0.7", "wwm = 0.7")] {
        let o = train(&["--train", &d, "--base", &b, flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(want), "{flag}: {}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::remove_dir_all(dir).ok();
}

/// Without --dev, the sener recipe holds out a fixed part of the training documents (by id hash,
/// logged), evaluates on it, calibrates the thresholds into `sener.json`, writes a model card with
/// Hub front matter, and records the splitter it measured. LoRA on every linear layer
/// (`--lora-targets all`) is saved in PEFT layout and extraction loads it.
#[test]
fn held_out_part_card_and_splitter() {
    let dir = tmp("holdout");
    let base = tiny_deberta_base(&dir);
    let data = corpus(&dir, 10);
    let (d, b, out) = (data.display().to_string(), base.display().to_string(), dir.join("m/model").display().to_string());
    let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--holdout", "0.2", "--epochs", "2", "--license", "mit", "--lora-targets", "all"];
    args.extend(SMALL);
    let o = train(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(dir.join("m/model.metrics.jsonl")).unwrap();
    let ev = |name: &str| -> serde_json::Value {
        serde_json::from_str(log.lines().find(|l| l.contains(&format!("\"event\":\"{name}\""))).unwrap_or_else(|| panic!("no {name} event"))).unwrap()
    };
    let held = ev("holdout");
    assert_eq!(held["documents"].as_array().unwrap().len(), 2);
    // On words like "w12" every splitter agrees: the first (whitespace) wins the tie.
    assert_eq!(ev("splitter")["splitter"], "whitespace");
    let eval = ev("eval");
    assert_eq!(eval["dev"]["gold"].as_u64(), Some(4), "2 held-out documents × 2 entities");
    let cfg = read_json(&dir.join("m/model/sener.json"));
    assert_eq!(cfg["splitter"], "whitespace");
    assert_eq!(cfg["thresholds"].as_array().map(Vec::len), Some(2), "{cfg}");
    let card = std::fs::read_to_string(dir.join("m/model/README.md")).unwrap();
    for want in ["---\nlibrary_name: sener\n", "license: mit\n", "pipeline_tag: token-classification\n", "base_model: \"base\"", "model-index:", "`x`, `y`", "huggingface-cli upload"] {
        assert!(card.contains(want), "model card lacks {want:?}:\n{card}");
    }
    let adapter = read_json(&dir.join("m/model/adapter/adapter_config.json"));
    assert_eq!(adapter["target_modules"].as_array().map(Vec::len), Some(6), "{adapter}");
    assert_eq!(cfg["lora"]["targets"].as_array().map(Vec::len), Some(6));
    let doc = dir.join("doc.txt");
    std::fs::write(&doc, "w4 w7 w10 w13 w16").unwrap();
    let o = sener(&["extract", "--model", &out, doc.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(dir).ok();
}

/// Raw-text training data (own JSON lines without words) is cut by the chosen splitter, and the
/// model records it; `auto` on data without its own words takes treebank.
#[test]
fn raw_text_training_data_is_split_with_the_recorded_splitter() {
    let dir = tmp("rawtrain");
    let base = tiny_deberta_base(&dir);
    let mut lines = String::new();
    for i in 0..6 {
        lines.push_str(&format!(
            "{{\"id\": \"r{i}\", \"text\": \"Ada Lovelace, born in London (UK). Number {i}.\", \"entities\": [{{\"start\": 0, \"end\": 12, \"label\": \"person\"}}, {{\"start\": 22, \"end\": 28, \"label\": \"place\"}}]}}\n"
        ));
    }
    let data = dir.join("raw.jsonl");
    std::fs::write(&data, lines).unwrap();
    let (d, b) = (data.display().to_string(), base.display().to_string());
    for (splitter, want) in [("auto", "treebank"), ("punct", "punct")] {
        let out = dir.join(splitter).join("model").display().to_string();
        let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--format", "jsonl", "--splitter", splitter, "--max-steps", "1"];
        args.extend(SMALL);
        let o = train(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(read_json(&dir.join(splitter).join("model/sener.json"))["splitter"], want);
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `--max-time`: the schedule is planned from the first steps to end within the budget (and
/// re-planned after every evaluation), the run stops in time, and the plan is logged.
#[test]
fn a_time_budget_plans_the_schedule_and_is_kept() {
    let dir = tmp("budget");
    let base = tiny_deberta_base(&dir);
    let data = corpus(&dir, 12);
    let (d, b, out) = (data.display().to_string(), base.display().to_string(), dir.join("m/model").display().to_string());
    let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--max-time", "6s", "--epochs", "10000"];
    args.extend(SMALL);
    let t = std::time::Instant::now();
    let o = train(&args);
    let took = t.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(dir.join("m/model.metrics.jsonl")).unwrap();
    // Planned after the first steps, re-planned after every evaluation: the last plan counts.
    let plan: serde_json::Value = serde_json::from_str(log.lines().filter(|l| l.contains("\"event\":\"planned\"")).last().expect("a plan")).unwrap();
    let planned = plan["total_steps"].as_u64().unwrap();
    let steps = log.lines().filter(|l| l.contains("\"event\":\"step\"")).count() as u64;
    assert!(planned >= 3 && planned < 10000 * 5, "{plan}");
    assert!(steps <= planned, "{steps} steps run, {planned} planned");
    // Loading the model and tokenizing come on top of the budget; the training itself keeps it.
    assert!(took < 6.0 + 20.0, "took {took:.1} s for a 6 s budget");
    let saved = read_json(&dir.join("m/model.train.json"));
    assert_eq!(saved["max_time"], 6.0);
    // A malformed duration is refused.
    let o = train(&["--train", &d, "--base", &b, "--max-time", "an hour"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a duration"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(dir).ok();
}

/// `--resume` with nothing to resume is an error, not a silent fresh start.
#[test]
fn resume_without_a_checkpoint_is_an_error() {
    let dir = tmp("noresume");
    let base = tiny_deberta_base(&dir);
    let data = corpus(&dir, 4);
    let (d, b, out) = (data.display().to_string(), base.display().to_string(), dir.join("m/model").display().to_string());
    let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--resume", "--max-steps", "1"];
    args.extend(SMALL);
    let o = train(&args);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no complete resume checkpoint"), "{err}");
    assert!(!dir.join("m/model").exists());
    std::fs::remove_dir_all(dir).ok();
}

/// `--kernels generic` trains through candle ops only (the path a GPU takes), is saved in the
/// config and logged; it refuses bf16 (one of sener's CPU kernels) and an unknown value.
#[test]
fn generic_kernels_train_and_are_recorded() {
    let dir = tmp("kernels");
    let base = tiny_deberta_base(&dir);
    let data = corpus(&dir, 6);
    let (d, b) = (data.display().to_string(), base.display().to_string());
    let out = dir.join("g/model").display().to_string();
    let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--max-steps", "2", "--kernels", "generic", "--recompute", "always"];
    args.extend(SMALL);
    let o = train(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(read_json(&dir.join("g/model.train.json"))["kernels"], "generic");
    let log = std::fs::read_to_string(dir.join("g/model.metrics.jsonl")).unwrap();
    let precision = log.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).find(|v| v["event"] == "precision").unwrap();
    assert_eq!(precision["kernels"], "generic");
    assert!(log.lines().any(|l| l.contains("\"event\":\"step\"") && l.contains("\"step\":2")), "two steps taken: {log}");

    let o = train(&["--train", &d, "--base", &b, "--kernels", "sometimes"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("kernels must be auto, fused or generic"), "{}", String::from_utf8_lossy(&o.stderr));
    if sener::gemm_bf16::Bf16Kernel::detect().is_some() {
        let out = dir.join("b/model").display().to_string();
        let mut args = vec!["--train", &d, "--base", &b, "--output", &out, "--max-steps", "1", "--kernels", "generic", "--dtype", "bf16"];
        args.extend(SMALL);
        let o = train(&args);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("kernels `generic` runs candle ops only"), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::remove_dir_all(dir).ok();
}
