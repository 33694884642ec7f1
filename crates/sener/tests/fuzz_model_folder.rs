//! Fuzzing the model folder's configuration: `sener.json` and `adapter/adapter_config.json` of a
//! real (tiny) model folder are mutated, structurally (a field set to a hostile value, removed, or
//! an unknown one added) and byte-wise, and the folder is loaded and run on a short text. Loading
//! must either fail with a message or give a model that validates and extracts; it must never
//! panic or try to allocate without bound.
//!
//! CI runs `SENER_FUZZ_CASES` cases (default 48); for a longer run:
//! `SENER_FUZZ_CASES=5000 cargo test --release -p sener --test fuzz_model_folder`.

use std::path::PathBuf;
use std::sync::OnceLock;

use proptest::prelude::*;
use sener::extract::Extractor;
use serde_json::{json, Value};

mod common;

fn cases(default: u32) -> u32 {
    std::env::var("SENER_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The tiny model folder every case starts from, and the original texts of its two configs.
fn folder() -> &'static (PathBuf, String, String) {
    static F: OnceLock<(PathBuf, String, String)> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("sener-fuzz-folder-{}", std::process::id()));
        let out = common::tiny_model(&dir);
        let sener = std::fs::read_to_string(out.join("sener.json")).unwrap();
        let adapter = std::fs::read_to_string(out.join("adapter/adapter_config.json")).unwrap();
        (out, sener, adapter)
    })
}

/// Every path to a value in `v` (object keys and array indexes).
fn paths(v: &Value, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                out.push(p.clone());
                paths(x, p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let mut p = prefix.clone();
                p.push(i.to_string());
                out.push(p.clone());
                paths(x, p, out);
            }
        }
        _ => {}
    }
}

fn hostile() -> Vec<Value> {
    vec![
        json!(0), json!(-1), json!(1), json!(2), json!(7.5), json!(100000), json!(1e9), json!(1e300), json!(-0.0),
        json!(4294967297u64), json!(u64::MAX), json!("eight"), json!(""), json!("../../../etc/passwd"), json!(null),
        json!(true), json!([]), json!({}), json!([1, 2]), json!({"x": 1}), json!("query"), json!(["query", "key", "nope"]),
        json!(["a", "a"]), json!(0.5), json!("treebank"), json!("whitespace"), json!([0.5, 0.5]),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Set the value at the `path`-th path to the `value`-th hostile value.
    Set { path: prop::sample::Index, value: prop::sample::Index },
    /// Remove the value at that path.
    Remove { path: prop::sample::Index },
    /// Add an unknown key at the top level.
    Unknown,
    /// Flip bytes of the text.
    Bytes(Vec<(prop::sample::Index, u8)>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(path, value)| Mutation::Set { path, value }),
        1 => any::<prop::sample::Index>().prop_map(|path| Mutation::Remove { path }),
        1 => Just(Mutation::Unknown),
        2 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4).prop_map(Mutation::Bytes),
    ]
}

fn apply(text: &str, m: &[Mutation]) -> String {
    let mut v: Value = serde_json::from_str(text).unwrap();
    let mut bytes: Option<Vec<u8>> = None;
    for m in m {
        let mut all = Vec::new();
        paths(&v, Vec::new(), &mut all);
        match m {
            Mutation::Set { path, value } => {
                let p = path.get(&all).clone();
                let h = hostile();
                set(&mut v, &p, Some(value.get(&h).clone()));
            }
            Mutation::Remove { path } => {
                let p = path.get(&all).clone();
                set(&mut v, &p, None);
            }
            Mutation::Unknown => {
                v.as_object_mut().unwrap().insert("extra_field".into(), json!(1));
            }
            Mutation::Bytes(flips) => {
                let mut b = bytes.take().unwrap_or_else(|| serde_json::to_vec_pretty(&v).unwrap());
                for (i, x) in flips {
                    let k = i.index(b.len());
                    b[k] = *x;
                }
                bytes = Some(b);
            }
        }
    }
    match bytes {
        Some(b) => String::from_utf8_lossy(&b).into_owned(),
        None => serde_json::to_string_pretty(&v).unwrap(),
    }
}

fn set(v: &mut Value, path: &[String], to: Option<Value>) {
    let (last, parent_path) = path.split_last().unwrap();
    let mut cur = v;
    for k in parent_path {
        cur = match cur {
            Value::Object(m) => m.get_mut(k).unwrap(),
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            _ => unreachable!(),
        };
    }
    match (cur, to) {
        (Value::Object(m), Some(x)) => {
            m.insert(last.clone(), x);
        }
        (Value::Object(m), None) => {
            m.remove(last);
        }
        (Value::Array(a), Some(x)) => a[last.parse::<usize>().unwrap()] = x,
        (Value::Array(a), None) => {
            a.remove(last.parse::<usize>().unwrap());
        }
        _ => {}
    }
}

/// Loads the folder with these configs and extracts from a short text.
fn load_and_run(sener_json: &str, adapter_json: &str) -> std::thread::Result<Result<(), String>> {
    // One folder for every case: the tests of this file take turns.
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
    let (dir, _, _) = folder();
    std::fs::write(dir.join("sener.json"), sener_json).unwrap();
    std::fs::write(dir.join("adapter/adapter_config.json"), adapter_json).unwrap();
    std::panic::catch_unwind(|| {
        let ex = Extractor::load(dir).map_err(|e| e.to_string())?;
        ex.model.config.validate().map_err(|e| format!("loaded, but does not validate: {e}"))?;
        ex.extract("w5 w6 w7 w8 w9 w10 w11").map_err(|e| e.to_string())?;
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_model_configs_fail_cleanly_or_load(which in any::<bool>(), muts in prop::collection::vec(mutation(), 1..4)) {
        let (_, sener, adapter) = folder();
        let (s, a) = if which { (apply(sener, &muts), adapter.clone()) } else { (sener.clone(), apply(adapter, &muts)) };
        match load_and_run(&s, &a) {
            Err(_) => prop_assert!(false, "panicked on sener.json {s} / adapter_config.json {a}"),
            Ok(Err(e)) => prop_assert!(!e.trim().is_empty(), "an empty error message"),
            Ok(Ok(())) => {}
        }
    }
}

/// The unmutated folder loads and runs (the fuzz cases start from a valid folder).
#[test]
fn the_original_folder_loads() {
    let (_, sener, adapter) = folder();
    assert_eq!(load_and_run(sener, adapter).expect("no panic"), Ok(()));
}
