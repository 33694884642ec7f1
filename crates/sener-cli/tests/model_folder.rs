//! A model folder is checked as a whole when it loads (it may come from anywhere, e.g. the Hub):
//! every fault gives one clear error naming the file and the field, and nothing is loaded
//! silently wrong or allowed to exhaust memory.

use std::path::Path;

mod common;
use common::{sener, tiny_model};

fn edit_json(path: &Path, f: impl Fn(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn every_fault_of_a_model_folder_is_named() {
    let dir = std::env::temp_dir().join(format!("sener-model-folder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = tiny_model(&dir);
    let doc = dir.join("doc.txt");
    std::fs::write(&doc, "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen").unwrap();
    let extract = |m: &Path| sener(&["extract", "--model", m.to_str().unwrap(), doc.to_str().unwrap()]);
    assert!(extract(&good).status.success());
    let copy = |tag: &str| -> std::path::PathBuf {
        let m = dir.join(tag);
        std::fs::create_dir_all(m.join("adapter")).unwrap();
        for f in ["sener.json", "span.safetensors", "adapter/adapter_config.json", "adapter/adapter_model.safetensors"] {
            std::fs::copy(good.join(f), m.join(f)).unwrap();
        }
        // the base encoder folder is named relative to the model folder
        edit_json(&m.join("sener.json"), |c| c["base"]["path"] = serde_json::Value::String(good.join("encoder").display().to_string()));
        m
    };
    let cases: Vec<(&str, Box<dyn Fn(&Path)>, &str)> = vec![
        ("no-adapter", Box::new(|m: &Path| std::fs::remove_dir_all(m.join("adapter")).unwrap()), "carries a LoRA adapter (`lora`), but the folder has no adapter/"),
        ("huge-window", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["span"]["window"] = 100_000.into())), "span.window: 100000 (1 to 1,024 words)"),
        ("arrow-zero", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["arrow"]["window"] = 0.into())), "arrow.window: 0"),
        ("dup-labels", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["labels"][1] = "a".into())), "labels[1]: `a` appears twice"),
        ("unknown-field", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["colour"] = "red".into())), "unknown field `colour`"),
        ("lora-r", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["lora"]["r"] = 0.into())), "lora: r = 0"),
        ("adapter-r", Box::new(|m: &Path| edit_json(&m.join("adapter/adapter_config.json"), |c| c["r"] = "eight".into())), "field `r`: \"eight\" is not a rank"),
        ("adapter-dora", Box::new(|m: &Path| edit_json(&m.join("adapter/adapter_config.json"), |c| c["use_dora"] = true.into())), "field `use_dora`"),
        ("thresholds", Box::new(|m: &Path| edit_json(&m.join("sener.json"), |c| c["thresholds"] = serde_json::json!([0.5]))), "thresholds: 1 values for 5 labels"),
        ("no-span", Box::new(|m: &Path| std::fs::remove_file(m.join("span.safetensors")).unwrap()), "no span.safetensors"),
    ];
    for (tag, break_it, want) in cases {
        let m = copy(tag);
        assert!(extract(&m).status.success(), "{tag}: the unbroken copy loads");
        break_it(&m);
        let t = std::time::Instant::now();
        let o = extract(&m);
        assert_eq!(o.status.code(), Some(2), "{tag}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{tag}: {err}");
        assert!(!err.contains("panicked"), "{tag}: {err}");
        assert!(t.elapsed().as_secs() < 30, "{tag}: refused at load, not after running out of memory");
    }
    std::fs::remove_dir_all(&dir).ok();
}
