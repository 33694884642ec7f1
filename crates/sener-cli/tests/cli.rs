//! End-to-end runs of the `sener` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device};

mod common;
use common::{data, fixture, sener, tiny_deberta_base};

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

/// `import-official` on a checkpoint in the official key layout (written by the fixture script
/// from deberta_v3_tiny + random LoRA + a span side), then `score` on two documents.
#[test]
fn import_official_then_score() {
    let dir = std::env::temp_dir().join(format!("sener-import-{}", std::process::id()));
    let model = dir.join("model");
    let ckpt = fixture("official_tiny.pth");
    let base = fixture("deberta_v3_tiny_tok");
    let o = sener(&[
        "import-official", "--checkpoint", ckpt.to_str().unwrap(), "--base", base.to_str().unwrap(),
        "--labels", "a,b,c,d,e", "--chunks-size", "4", "--biaffine-size", "10", "--cnn-dim", "8",
        "--output", model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("4 LoRA projections"));

    // The imported encoder with its adapter merged equals deberta_v3_tiny with the q/v weights
    // merged by the fixture script (W + 2·B·A), on the same input.
    let imported = sener::model::Sener::load(&model, &Device::Cpu).unwrap();
    let mut weights = candle_core::safetensors::load(fixture("deberta_v3_tiny/model.safetensors"), &Device::Cpu).unwrap();
    for (k, v) in candle_core::safetensors::load(fixture("official_tiny_expected.safetensors"), &Device::Cpu).unwrap() {
        weights.insert(k, v);
    }
    let merged_dir = dir.join("merged");
    std::fs::create_dir_all(&merged_dir).unwrap();
    std::fs::copy(fixture("deberta_v3_tiny/config.json"), merged_dir.join("config.json")).unwrap();
    candle_core::safetensors::save(&weights, merged_dir.join("model.safetensors")).unwrap();
    let arrow = imported.config.arrow.clone();
    let reference = sener::encoder::Encoder::load(&merged_dir, &sener::encoder::EncoderOptions { arrow, ..Default::default() }).unwrap();
    let ids = candle_core::Tensor::new(&[[1u32, 17, 33, 5, 90, 64, 2]], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let mut ctx = sener::nn::ForwardCtx::eval();
    let a = imported.encoder.forward(&ids, &mask, &mut ctx).unwrap();
    let b = reference.forward(&ids, &mask, &mut ctx).unwrap();
    let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "merged LoRA differs by {diff}");
    // The span tensors are the checkpoint's.
    let state: std::collections::HashMap<String, candle_core::Tensor> =
        candle_core::pickle::read_all(&ckpt).unwrap().into_iter().collect();
    let span = candle_core::safetensors::load(model.join("span.safetensors"), &Device::Cpu).unwrap();
    for name in ["U", "W", "cross_layers.1.conv2.conv2d.weight", "down_fc.bias"] {
        let want = &state[&format!("module.base_model.model.{name}")];
        let d = (&span[name] - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name}");
    }

    // score: two documents of 9 and 3 words.
    let input = dir.join("docs.jsonl");
    std::fs::write(
        &input,
        "{\"doc_id\": \"d1\", \"text\": [\"w5\", \"w6\", \"w7\", \"w8\", \"w9\", \"w10\", \"w11\", \"w12\", \"w13\"], \"entity\": [[1, 3, [\"w6\", \"w7\"], \"a\"]]}\n\
         {\"doc_id\": \"d2\", \"text\": [\"w20\", \"w21\", \"w22\"], \"entity\": []}\n",
    )
    .unwrap();
    let out = dir.join("logits.safetensors");
    let decoded = dir.join("decoded.jsonl");
    let o = sener(&[
        "score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output",
        out.to_str().unwrap(), "--decoded", decoded.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = candle_core::safetensors::load(&out, &Device::Cpu).unwrap();
    assert_eq!(t["logits.0"].dims(), &[9, 9, 5]);
    assert_eq!(t["logits.1"].dims(), &[3, 9, 5]);
    // Cells outside the document carry the official −1e-6; the others are finite model logits.
    let l1: Vec<Vec<Vec<f32>>> = t["logits.1"].to_vec3().unwrap();
    assert_eq!(l1[0][0], vec![-1e-6; 5]); // pair (0, −4)
    assert!(l1[0][4].iter().all(|x| x.is_finite() && *x != -1e-6)); // pair (0, 0)
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&decoded).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["doc_id"], "d1");
    for s in lines[0]["entity"].as_array().unwrap() {
        let (b, e) = (s[0].as_u64().unwrap(), s[1].as_u64().unwrap());
        assert!(b < e && e <= 9 && e - b <= 5, "{s}");
        assert!(["a", "b", "c", "d", "e"].contains(&s[2].as_str().unwrap()));
    }
    // `eval --model` scores the model's own decoding: identical to `eval --pred` on score's output.
    let (ja, jb) = (dir.join("eval_model.json"), dir.join("eval_pred.json"));
    let o = sener(&["eval", "--data", input.to_str().unwrap(), "--model", model.to_str().unwrap(), "--json", ja.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sener(&["eval", "--data", input.to_str().unwrap(), "--pred", decoded.to_str().unwrap(), "--span-window", "4", "--json", jb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&ja).unwrap(), std::fs::read_to_string(&jb).unwrap());
    // The same documents scored again give bit-identical logits.
    let o = sener(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--output", dir.join("again.safetensors").to_str().unwrap()]);
    assert!(o.status.success());
    let again = candle_core::safetensors::load(dir.join("again.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(again["logits.0"].to_vec3::<f32>().unwrap(), t["logits.0"].to_vec3::<f32>().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn extract_reads_files_and_stdin_and_reports_bad_input() {
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("sener-extract-cli-{}", std::process::id()));
    let model = dir.join("model");
    let o = sener(&[
        "import-official", "--checkpoint", fixture("official_tiny.pth").to_str().unwrap(), "--base",
        fixture("deberta_v3_tiny_tok").to_str().unwrap(), "--labels", "a,b,c,d,e", "--chunks-size", "4",
        "--biaffine-size", "10", "--cnn-dim", "8", "--output", model.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let docs = dir.join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    let text = "w5 Zoë w6\tw7 日本 w8\nw9 🎉 w10 w11 w12";
    std::fs::write(docs.join("a.txt"), text).unwrap();
    std::fs::write(docs.join("b.txt"), "").unwrap();
    let o = sener(&["extract", "--model", model.to_str().unwrap(), docs.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["entities"].as_array().unwrap().len(), 0);
    let chars: Vec<char> = text.chars().collect();
    for e in lines[0]["entities"].as_array().unwrap() {
        let (s, t) = (e["start"].as_u64().unwrap() as usize, e["end"].as_u64().unwrap() as usize);
        assert_eq!(chars[s..t].iter().collect::<String>(), e["text"].as_str().unwrap());
    }
    // Standard input gives the same entities as the file.
    let mut child = Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(["extract", "--model", model.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(v["entities"], lines[0]["entities"]);
    // Invalid UTF-8 is named, not a panic.
    std::fs::write(docs.join("c.txt"), [0xff, 0xfe, 0x41]).unwrap();
    let o = sener(&["extract", "--model", model.to_str().unwrap(), docs.join("c.txt").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not valid UTF-8"));
    std::fs::remove_dir_all(dir).ok();
}

/// A training run killed with SIGKILL mid-run and resumed ends with exactly the weights of an
/// uninterrupted run (tiny DeBERTa fixture, synthetic data); so does one stopped with Ctrl-C
/// (SIGINT), which must exit cleanly after writing its checkpoint. The runs recompute activations
/// (`recompute = "always"`), the path long segments take, so the dropout replay is covered too.
#[test]
fn train_killed_and_resumed_equals_uninterrupted() {
    killed_and_resumed_equals_uninterrupted("lora");
}

/// The same with full fine-tuning: every encoder weight and its AdamW moments resume exactly.
#[test]
fn full_finetuning_killed_and_resumed_equals_uninterrupted() {
    killed_and_resumed_equals_uninterrupted("full");
}

fn killed_and_resumed_equals_uninterrupted(finetune: &str) {
    use std::os::unix::process::ExitStatusExt;
    let dir = std::env::temp_dir().join(format!("sener-resume-{finetune}-{}", std::process::id()));
    let base = tiny_deberta_base(&dir);
    let mut lines = String::new();
    for d in 0..12 {
        let words: Vec<String> = (0..16).map(|i| format!("w{}", 4 + (d * 7 + i * 3) % 60)).collect();
        let text: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
        let s = d % 10;
        let q = |a: usize, b: usize| text[a..b].join(", ");
        lines.push_str(&format!(
            "{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [[{s}, {}, [{}], \"x\"], [{}, {}, [{}], \"y\"]]}}\n",
            text.join(", "),
            s + 2,
            q(s, s + 2),
            s + 3,
            s + 4,
            q(s + 3, s + 4)
        ));
    }
    std::fs::write(dir.join("train.jsonl"), &lines).unwrap();
    let config = |name: &str| -> PathBuf {
        let p = dir.join(format!("{name}.toml"));
        std::fs::write(
            &p,
            format!(
                "train = {:?}\ndev = {:?}\nbase = {:?}\noutput = {:?}\nlr_new = 0.01\nlr_encoder = 0.01\nbatch_size = 4\n\
                 micro_batch = 2\nepochs = 10\nwarmup = 0.05\ncheckpoint_every = 1\nrecompute = \"always\"\nfinetune = \"{finetune}\"\n\
                 [span]\nwindow = 4\nbiaffine_size = 16\ncnn_dim = 8\ncnn_depth = 1\n",
                dir.join("train.jsonl"),
                dir.join("train.jsonl"),
                base,
                dir.join(name).join("model")
            ),
        )
        .unwrap();
        p
    };
    let (a, b, c) = (config("a"), config("b"), config("c"));
    let o = sener(&["train", "--config", a.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Starts a run and returns once its log shows `steps` optimiser steps.
    let start = |cfg: &PathBuf, name: &str, steps: usize| {
        let child = Command::new(env!("CARGO_BIN_EXE_sener"))
            .args(["train", "--config", cfg.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = dir.join(format!("{name}/model.metrics.jsonl"));
        let started = std::time::Instant::now();
        loop {
            let done = std::fs::read_to_string(&log).unwrap_or_default().lines().filter(|l| l.contains("\"event\":\"step\"")).count();
            if done >= steps {
                break;
            }
            assert!(started.elapsed().as_secs() < 120, "run {name} made no progress");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        (child, log)
    };
    let (mut child, log) = start(&b, "b", 4);
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(9), "run b must be killed mid-run, not finish (status {status:?})");
    let o = sener(&["train", "--config", b.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read_to_string(&log).unwrap().contains("\"event\":\"resume\""));

    // Ctrl-C: a clean exit (status 0) with a checkpoint at a step boundary, then an exact resume.
    let (child, log_c) = start(&c, "c", 3);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "Ctrl-C must exit cleanly: {:?}\n{err}", out.status);
    assert!(err.contains("interrupted"), "{err}");
    assert!(std::fs::read_to_string(&log_c).unwrap().contains("\"event\":\"interrupted\""));
    let o = sener(&["train", "--config", c.to_str().unwrap(), "--resume"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let pa = candle_core::safetensors::load(dir.join("a/model.resume/params.safetensors"), &Device::Cpu).unwrap();
    let full_weights = pa.keys().any(|k| k.ends_with("embeddings.word_embeddings.weight"));
    assert_eq!(full_weights, finetune == "full", "the resume checkpoint holds every encoder weight exactly under full fine-tuning");
    for run in ["b", "c"] {
        let pb = candle_core::safetensors::load(dir.join(format!("{run}/model.resume/params.safetensors")), &Device::Cpu).unwrap();
        assert_eq!(pa.len(), pb.len());
        for (name, ta) in &pa {
            let (x, y): (Vec<f32>, Vec<f32>) = (ta.flatten_all().unwrap().to_vec1().unwrap(), pb[name].flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(x, y, "{name} differs after resuming run {run}");
        }
    }
    std::fs::remove_dir_all(dir).ok();
}

/// `sener eval --pred` on a hand-computed example (duplicates removed per document, exact
/// (start, end, type) matches, micro and per-type numbers).
#[test]
fn eval_predictions_match_hand_computed_metric() {
    let dir = std::env::temp_dir().join(format!("sener-eval-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gold = dir.join("gold.jsonl");
    std::fs::write(
        &gold,
        "{\"doc_id\": \"a\", \"text\": [\"A\", \"B\", \"C\", \"D\", \"E\", \"F\"], \"entity\": [[0, 2, [\"A\", \"B\"], \"x\"], [3, 4, [\"D\"], \"y\"], [3, 4, [\"D\"], \"y\"]]}\n\
         {\"doc_id\": \"b\", \"text\": [\"G\", \"H\", \"I\", \"J\"], \"entity\": [[1, 3, [\"H\", \"I\"], \"x\"]]}\n",
    )
    .unwrap();
    let pred = dir.join("pred.jsonl");
    std::fs::write(
        &pred,
        "{\"doc_id\": \"b\", \"entity\": [[1, 3, \"x\"], [1, 3, \"x\"]]}\n{\"doc_id\": \"a\", \"entity\": [[0, 2, \"x\"], [3, 4, \"x\"], [5, 6, \"y\"]]}\n",
    )
    .unwrap();
    let json = dir.join("r.json");
    let o = sener(&["eval", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap(), "--json", json.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // gold {a:(0,1,x),(3,3,y); b:(1,2,x)} = 3, pred {a:(0,1,x),(3,3,x),(5,5,y); b:(1,2,x)} = 4, correct 2
    let m = &r["micro"];
    assert_eq!((m["gold"].as_u64(), m["pred"].as_u64(), m["tp"].as_u64()), (Some(3), Some(4), Some(2)));
    assert!((m["precision"].as_f64().unwrap() - 0.5).abs() < 1e-12);
    assert!((m["recall"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
    assert!((m["f1"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-12);
    assert!((r["per_type"]["x"]["f1"].as_f64().unwrap() - 0.8).abs() < 1e-12);
    assert_eq!(r["per_type"]["y"]["tp"].as_u64(), Some(0));
    assert!(String::from_utf8_lossy(&o.stdout).contains("| **micro** | 50.00 | 66.67 | 57.14 | 3 | 4 | 2 |"));
    // A prediction for an unknown document, or a malformed span, is an error naming it.
    std::fs::write(&pred, "{\"doc_id\": \"zzz\", \"entity\": []}\n").unwrap();
    let o = sener(&["eval", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("zzz"));
    std::fs::write(&pred, "{\"doc_id\": \"a\", \"entity\": [[3, 3, \"x\"]]}\n").unwrap();
    let o = sener(&["eval", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("pred.jsonl:1: field `entity[0]`"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(dir).ok();
}

/// `--prior-bias` starts the head's bias at each type's log-odds in the training data: logged,
/// negative (sparse labels), and the first step's loss is far below the official initialisation's.
#[test]
fn train_prior_bias_starts_near_the_label_prior() {
    let dir = std::env::temp_dir().join(format!("sener-prior-{}", std::process::id()));
    let base = tiny_deberta_base(&dir);
    let mut lines = String::new();
    for d in 0..8 {
        let words: Vec<String> = (0..40).map(|i| format!("\"w{}\"", 4 + (d * 7 + i * 3) % 60)).collect();
        let s = d % 10;
        lines.push_str(&format!(
            "{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [[{s}, {}, [{}], \"x\"]]}}\n",
            words.join(", "),
            s + 2,
            words[s..s + 2].join(", ")
        ));
    }
    std::fs::write(dir.join("train.jsonl"), &lines).unwrap();
    let first_step = |name: &str, extra: &[&str]| -> (f64, String) {
        let out = dir.join(name).join("model");
        let (train, base, out) = (dir.join("train.jsonl").display().to_string(), base.display().to_string(), out.display().to_string());
        let mut args = vec!["train", "--train", &train, "--base", &base, "--output", &out, "--max-steps", "1"];
        args.extend(["--batch-size", "2", "--micro-batch", "2", "--span-window", "8", "--cnn-depth", "1"]);
        args.extend(extra);
        let o = sener(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let log = std::fs::read_to_string(dir.join(name).join("model.metrics.jsonl")).unwrap();
        let step: serde_json::Value = serde_json::from_str(log.lines().find(|l| l.contains("\"event\":\"step\"")).unwrap()).unwrap();
        (step["loss"].as_f64().unwrap(), log)
    };
    let (official, log) = first_step("official", &["--recipe", "paper"]);
    assert!(!log.contains("prior_bias"));
    let (prior, log) = first_step("prior", &["--recipe", "paper", "--prior-bias"]);
    let ev: serde_json::Value = serde_json::from_str(log.lines().find(|l| l.contains("\"event\":\"prior_bias\"")).unwrap()).unwrap();
    let bias: Vec<f64> = ev["bias"].as_array().unwrap().iter().map(|b| b.as_f64().unwrap()).collect();
    assert_eq!(bias.len(), 1);
    assert!(bias[0] < -3.0, "one positive cell type among hundreds of cells: {bias:?}");
    assert!(prior < official / 3.0, "first-step loss with the prior {prior} vs official init {official}");
    std::fs::remove_dir_all(&dir).ok();
}

/// `--finetune full` from the command line: the effective config records it, training with
/// recomputation works, the model carries its own encoder and `extract` runs on it; a bad value is
/// refused with a clear message.
#[test]
fn train_full_finetuning_from_flags() {
    let dir = std::env::temp_dir().join(format!("sener-full-{}", std::process::id()));
    let base = tiny_deberta_base(&dir);
    let mut lines = String::new();
    for d in 0..4 {
        let words: Vec<String> = (0..20).map(|i| format!("\"w{}\"", 4 + (d * 7 + i * 3) % 60)).collect();
        lines.push_str(&format!("{{\"doc_id\": \"d{d}\", \"text\": [{}], \"entity\": [[1, 3, [{}], \"x\"]]}}\n", words.join(", "), words[1..3].join(", ")));
    }
    std::fs::write(dir.join("train.jsonl"), &lines).unwrap();
    let (train, base_s, out) =
        (dir.join("train.jsonl").display().to_string(), base.display().to_string(), dir.join("model").display().to_string());
    let common = ["--batch-size", "2", "--micro-batch", "2", "--span-window", "4", "--cnn-depth", "1", "--max-steps", "2"];
    let mut args = vec!["train", "--train", &train, "--base", &base_s, "--output", &out, "--finetune", "full", "--recompute", "always"];
    args.extend(common);
    let o = sener(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("model.train.json")).unwrap()).unwrap();
    assert_eq!(saved["finetune"], "full");
    assert!(dir.join("model/encoder/model.safetensors").is_file() && !dir.join("model/adapter").exists());
    std::fs::write(dir.join("doc.txt"), "w4 w7 w10 w13 w16 w19").unwrap();
    let o = sener(&["extract", "--model", &out, dir.join("doc.txt").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut bad = vec!["train", "--train", &train, "--base", &base_s, "--output", &out, "--finetune", "half"];
    bad.extend(common);
    let o = sener(&bad);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("finetune must be lora or full"), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::remove_dir_all(&dir).ok();
}
