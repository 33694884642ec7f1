//! `sener eval` against the official metric (spec section 7, step 6) on the shared Scholar-XL test
//! split: the predictions in tests/fixtures/metric/ were made and scored by tools/metric_fixture.py,
//! an independent Python implementation of the official metric written from the spec.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;
use common::data;

fn metric_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/metric").join(name)
}

/// Counts equal, ratios equal to 1e-12 (both sides compute the same IEEE operations, so they are
/// normally bit-identical).
fn assert_prf(what: &str, got: &Value, want: &Value) {
    for k in ["gold", "pred", "tp"] {
        assert_eq!(got[k].as_u64(), want[k].as_u64(), "{what}: {k}: got {got}, want {want}");
        assert!(want[k].is_u64(), "{what}: fixture lacks {k}");
    }
    for k in ["precision", "recall", "f1"] {
        let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
        assert!((g - w).abs() <= 1e-12, "{what}: {k}: got {g}, want {w}");
    }
    let (gold, pred, tp) = (want["gold"].as_u64().unwrap(), want["pred"].as_u64().unwrap(), want["tp"].as_u64().unwrap());
    assert_eq!(got["fp"].as_u64(), Some(pred - tp), "{what}: fp");
    assert_eq!(got["fn"].as_u64(), Some(gold - tp), "{what}: fn");
}

#[test]
fn eval_matches_python_official_metric_on_scholar_xl_test() {
    let Some(gold) = data("scholar-xl/test.jsonl") else { return };
    let want: Value = serde_json::from_str(&std::fs::read_to_string(metric_fixture("scholar-xl-test.expected.json")).unwrap()).unwrap();
    assert!(want["first_n_documents"].is_null(), "this test scores the whole split");
    let pred = metric_fixture(want["predictions"].as_str().unwrap());
    let dir = std::env::temp_dir().join(format!("sener-eval-official-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("r.json");
    let o = Command::new(env!("CARGO_BIN_EXE_sener"))
        .args(["eval", "--data", gold.to_str().unwrap(), "--pred", pred.to_str().unwrap(), "--allow-missing", "--json", json.to_str().unwrap()])
        .output()
        .expect("running sener");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).ok();

    assert_eq!(got["documents"], want["documents"]);
    // The fixture leaves out a few documents on purpose (the Python metric scores them as
    // predicting nothing); without --allow-missing that is an error, with it they are listed.
    let listed = std::fs::read_to_string(&pred).unwrap().lines().filter(|l| !l.trim().is_empty()).count();
    let missing = got["missing_documents"].as_array().unwrap().len();
    assert_eq!(missing + listed, want["documents"].as_u64().unwrap() as usize);
    assert!(missing > 0);
    assert_eq!(got["max_span_words"], want["max_span_words"]);
    assert_eq!(got["unreachable_gold"], want["unreachable_gold"]);
    assert_prf("micro", &got["micro"], &want["micro"]);
    // The fixture really exercises the metric: all three numbers strictly inside (0, 1).
    for k in ["precision", "recall", "f1"] {
        let x = want["micro"][k].as_f64().unwrap();
        assert!(x > 0.05 && x < 0.95, "micro {k} = {x}");
    }

    let got_types: Vec<&String> = got["per_type"].as_object().unwrap().keys().collect();
    let want_types: Vec<&String> = want["per_type"].as_object().unwrap().keys().collect();
    assert_eq!(got_types, want_types);
    assert_eq!(want_types.len(), 12);
    // The official `result` lists gold types only; here every type occurs in the gold.
    let official: Vec<&str> = want["official_types"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(official, want_types.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    for t in want_types {
        assert_prf(t, &got["per_type"][t], &want["per_type"][t]);
    }

    // The Markdown table printed to stdout shows the same micro numbers (percent, 2 decimals).
    let m = &want["micro"];
    let pct = |k: &str| format!("{:.2}", 100.0 * m[k].as_f64().unwrap());
    let row = format!("| **micro** | {} | {} | {} | {} | {} | {} |", pct("precision"), pct("recall"), pct("f1"), m["gold"], m["pred"], m["tp"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&row), "missing {row}");
}
