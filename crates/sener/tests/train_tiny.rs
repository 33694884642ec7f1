//! End-to-end training on a tiny synthetic task (tiny DeBERTa fixture + word-level tokenizer):
//! the loss falls, the dev F1 rises, the best model folder is written and loads back.

use std::path::{Path, PathBuf};

use candle_core::Device;
use sener::span::SpanConfig;
use sener::train::trainer::{train, TrainConfig};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// `dir/base`: the tiny DeBERTa fixture with the word-level tokenizer.
fn tiny_base(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("deberta_v3_tiny").join(f), base.join(f)).unwrap();
    }
    std::fs::copy(fixture("deberta_v3_tiny_tok/tokenizer.json"), base.join("tokenizer.json")).unwrap();
    base
}

/// Documents of words w4…w60 where "w7 w8 w9" is a `skill` and "w20" a `place`, nested and
/// repeated at varying positions.
fn synthetic(n_docs: usize, seed: u64) -> String {
    let mut out = String::new();
    let mut x = seed;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    for d in 0..n_docs {
        let mut words: Vec<String> = Vec::new();
        let mut ents: Vec<String> = Vec::new();
        while words.len() < 18 {
            match next() % 5 {
                0 => {
                    let s = words.len();
                    words.extend(["w7", "w8", "w9"].map(String::from));
                    ents.push(format!("[{s}, {}, [\"w7\", \"w8\", \"w9\"], \"skill\"]", s + 3));
                }
                1 => {
                    let s = words.len();
                    words.push("w20".into());
                    ents.push(format!("[{s}, {}, [\"w20\"], \"place\"]", s + 1));
                }
                _ => words.push(format!("w{}", 30 + next() % 30)),
            }
        }
        let text: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        out.push_str(&format!("{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [{}]}}\n", text.join(", "), ents.join(", ")));
    }
    out
}

#[test]
fn tiny_training_run_learns_and_saves() {
    let dir = std::env::temp_dir().join(format!("sener-train-{}", std::process::id()));
    let base = tiny_base(&dir);
    std::fs::write(dir.join("train.jsonl"), synthetic(12, 1)).unwrap();
    std::fs::write(dir.join("dev.jsonl"), synthetic(6, 2)).unwrap();
    let cfg = TrainConfig {
        train: dir.join("train.jsonl"),
        dev: Some(dir.join("dev.jsonl")),
        base: base.clone(),
        output: dir.join("model"),
        span: SpanConfig { window: 4, biaffine_size: 16, cnn_dim: 8, cnn_depth: 1, ..SpanConfig::default() },
        lr_new: 1e-2,
        lr_encoder: 1e-2,
        batch_size: 4,
        micro_batch: 2,
        epochs: 25,
        warmup: 0.05,
        wwm: 0.0,
        ..TrainConfig::paper()
    };
    let mut log = Vec::new();
    let report = train(&cfg, &Device::Cpu, &mut log).unwrap();
    let lines: Vec<serde_json::Value> =
        String::from_utf8(log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let losses: Vec<f64> = lines.iter().filter(|l| l["event"] == "step").map(|l| l["loss"].as_f64().unwrap()).collect();
    assert_eq!(report.steps, losses.len());
    assert_eq!(report.steps, 3 * report.epochs, "3 optimiser steps per epoch (12 segments / 4)");
    assert!(report.epochs < 25, "early stopping (patience 10) should end the run");
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.2 * first, "loss {first} → {last}");
    let f1 = report.best_dev_f1.unwrap();
    let first_f1 = lines.iter().find(|l| l["event"] == "eval").unwrap()["dev"]["f1"].as_f64().unwrap();
    // Deterministic run: dev F1 goes from 0.02 after the first epoch to 0.82 (recall 1.0).
    assert!(first_f1 < 0.2 && f1 > 0.75, "dev F1 {first_f1} → {f1}; log: {lines:?}");
    // The best model folder loads back and scores the dev set the same.
    let model = sener::model::Sener::load(&cfg.output, &Device::Cpu).unwrap();
    assert_eq!(model.config.labels, vec!["place".to_string(), "skill".to_string()]);
    assert!(cfg.output.join("adapter/adapter_model.safetensors").is_file());
    std::fs::remove_dir_all(dir).ok();
}

/// Full fine-tuning (`finetune = "full"`): every encoder weight trains, the model folder carries
/// its own Hugging Face encoder (`encoder/`: weights under their original names, config and
/// tokenizer copied) instead of a LoRA adapter, and it loads back with exactly the trained weights.
#[test]
fn full_finetuning_trains_every_weight_and_saves_the_encoder() {
    use sener::train::trainer::Finetune;
    let dir = std::env::temp_dir().join(format!("sener-train-full-{}", std::process::id()));
    let base = tiny_base(&dir);
    std::fs::write(dir.join("train.jsonl"), synthetic(12, 1)).unwrap();
    let cfg = TrainConfig {
        train: dir.join("train.jsonl"),
        dev: None,
        base: base.clone(),
        output: dir.join("model"),
        span: SpanConfig { window: 4, biaffine_size: 16, cnn_dim: 8, cnn_depth: 1, ..SpanConfig::default() },
        finetune: Finetune::Full,
        lr_new: 1e-2,
        lr_encoder: 1e-3,
        batch_size: 4,
        micro_batch: 2,
        epochs: 6,
        warmup: 0.05,
        wwm: 0.0,
        ..TrainConfig::paper()
    };
    let mut log = Vec::new();
    let report = train(&cfg, &Device::Cpu, &mut log).unwrap();
    let losses: Vec<f64> = String::from_utf8(log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "step")
        .map(|l| l["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(report.steps, 18);
    let first: f64 = losses[..3].iter().sum::<f64>() / 3.0;
    let last: f64 = losses[losses.len() - 3..].iter().sum::<f64>() / 3.0;
    assert!(last < 0.2 * first, "loss {first} → {last}");

    let out = &cfg.output;
    assert!(!out.join("adapter").exists(), "no adapter under full fine-tuning");
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(out.join("encoder").join(f).is_file(), "encoder/{f} missing");
    }
    let model = sener::model::Sener::load(out, &Device::Cpu).unwrap();
    assert_eq!(model.config.base.path, PathBuf::from("encoder"));
    assert!(model.config.lora.is_none());
    let origin = model.config.base.finetuned_from.as_ref().expect("provenance of the fine-tuned encoder");
    assert_eq!(origin.path, std::fs::canonicalize(&base).unwrap());

    // The saved encoder holds exactly the trained tensors (the resume checkpoint's, written after
    // the last epoch), under the base file's names, and they moved away from the base.
    let trained = candle_core::safetensors::load(dir.join("model.resume/params.safetensors"), &Device::Cpu).unwrap();
    let saved = candle_core::safetensors::load(out.join("encoder/model.safetensors"), &Device::Cpu).unwrap();
    let original = candle_core::safetensors::load(base.join("model.safetensors"), &Device::Cpu).unwrap();
    let max_diff = |a: &candle_core::Tensor, b: &candle_core::Tensor| {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    };
    let mut moved = 0;
    for (name, t) in &saved {
        let key = format!("encoder.{name}");
        let tr = trained.get(&key).unwrap_or_else(|| panic!("{key} not in the trained tensors"));
        assert_eq!(max_diff(t, tr), 0.0, "{name}: saved differs from trained");
        let base_t = original.get(name).unwrap_or_else(|| panic!("{name} is not a name of the base file"));
        if max_diff(t, base_t) > 1e-4 {
            moved += 1;
        }
    }
    let encoder_trained = trained.keys().filter(|k| k.starts_with("encoder.")).count();
    assert_eq!(saved.len(), encoder_trained, "every trained encoder tensor is saved");
    assert!(moved * 10 >= saved.len() * 9, "only {moved} of {} encoder tensors changed", saved.len());
    std::fs::remove_dir_all(dir).ok();
}

/// `init_from`: a run starts from a trained model folder's adapter and span side (with a learning
/// rate of 1e-9 its one step leaves them as they were, where a fresh start has other weights);
/// with other types everything but the type head transfers; a model whose settings are not the
/// run's is refused with the field named.
#[test]
fn init_from_starts_from_the_trained_weights_and_refuses_a_mismatch() {
    let dir = std::env::temp_dir().join(format!("sener-train-init-{}", std::process::id()));
    let base = tiny_base(&dir);
    std::fs::write(dir.join("train.jsonl"), synthetic(12, 1)).unwrap();
    let first = TrainConfig {
        train: dir.join("train.jsonl"),
        dev: None,
        base: base.clone(),
        output: dir.join("a"),
        span: SpanConfig { window: 4, biaffine_size: 16, cnn_dim: 8, cnn_depth: 1, ..SpanConfig::default() },
        lr_new: 1e-2,
        lr_encoder: 1e-2,
        batch_size: 4,
        micro_batch: 2,
        epochs: 2,
        wwm: 0.0,
        ..TrainConfig::paper()
    };
    train(&first, &Device::Cpu, &mut Vec::new()).unwrap();
    let still = |output: &str, init: Option<PathBuf>| TrainConfig {
        output: dir.join(output),
        init_from: init,
        lr_new: 1e-9,
        lr_encoder: 1e-9,
        weight_decay: 0.0,
        max_steps: Some(1),
        seed: 7,
        ..first.clone()
    };
    let mut log = Vec::new();
    train(&still("b", Some(first.output.clone())), &Device::Cpu, &mut log).unwrap();
    assert!(String::from_utf8(log).unwrap().contains("\"event\":\"init_from\""));
    train(&still("c", None), &Device::Cpu, &mut Vec::new()).unwrap();

    let load = |p: PathBuf| candle_core::safetensors::load(p, &Device::Cpu).unwrap();
    let max_diff = |a: &std::collections::HashMap<String, candle_core::Tensor>, b: &std::collections::HashMap<String, candle_core::Tensor>| {
        assert_eq!(a.len(), b.len());
        a.iter()
            .map(|(k, t)| (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
            .fold(0.0f32, f32::max)
    };
    for file in ["span.safetensors", "adapter/adapter_model.safetensors"] {
        let (a, b, c) = (load(dir.join("a").join(file)), load(dir.join("b").join(file)), load(dir.join("c").join(file)));
        assert!(max_diff(&a, &b) < 1e-6, "{file}: the initialised run moved {}", max_diff(&a, &b));
        assert!(max_diff(&a, &c) > 1e-3, "{file}: a fresh start should differ from the trained model");
    }

    let refused = |cfg: TrainConfig| train(&cfg, &Device::Cpu, &mut Vec::new()).unwrap_err().to_string();
    let other_span = TrainConfig { span: SpanConfig { window: 5, ..first.span.clone() }, ..still("d", Some(first.output.clone())) };
    let e = refused(other_span);
    assert!(e.contains("init_from") && e.contains("span settings"), "{e}");
    // Other types (here: the same two in the other order): everything but the type head
    // transfers; the head starts fresh.
    train(&TrainConfig { labels: Some(vec!["skill".into(), "place".into()]), ..still("e", Some(first.output.clone())) }, &Device::Cpu, &mut Vec::new()).unwrap();
    let (a, e) = (load(dir.join("a/span.safetensors")), load(dir.join("e/span.safetensors")));
    for (k, t) in &a {
        let d = (t - &e[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        if k.starts_with("down_fc.") {
            assert!(d > 1e-3, "{k}: the type head of other types should start fresh");
        } else {
            assert!(d < 1e-6, "{k}: moved {d}");
        }
    }
    let (aa, ea) = (load(dir.join("a/adapter/adapter_model.safetensors")), load(dir.join("e/adapter/adapter_model.safetensors")));
    assert!(max_diff(&aa, &ea) < 1e-6, "the adapter transfers to other types");
    let e = refused(still("d", Some(dir.join("nowhere"))));
    assert!(e.contains("nowhere"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}
