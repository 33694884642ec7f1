//! The benchmarks say which precision ran, never silently: `sener bench model` and `sener bench
//! train-step` with `--dtypes f32,bf16` on a tiny random shape (MiniLM's, 64 tokens). The f32 rows
//! are measured; the bf16 rows are measured in bf16 where this CPU has a bf16 kernel (AMX or
//! AVX512-BF16, as `sener::gemm_bf16::Bf16Kernel::detect` finds it) and otherwise carry a reason
//! that says so. Both branches are exercised by the project's machines (Intel Xeon with AMX; AMD
//! EPYC with AVX2 only).

use std::path::Path;
use std::process::Command;

fn sener(args: &[&str], json: &Path) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_sener")).args(args).arg("--json").arg(json).env("RAYON_NUM_THREADS", "1").output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let v = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    std::fs::remove_file(json).ok();
    v
}

fn check_bf16_row(row: &serde_json::Value, what: &str) {
    match sener::gemm_bf16::Bf16Kernel::detect() {
        Some(k) => {
            assert!(row.get("skipped").is_none_or(|s| s.is_null()), "{what}: bf16 runs on {} here: {row}", k.name());
            assert_eq!(row["dtype"], "bf16", "{what}: {row}");
        }
        None => {
            let why = row["skipped"].as_str().unwrap_or_else(|| panic!("{what}: no bf16 kernel here, the row must say so: {row}"));
            assert!(why.contains("no bf16 kernel"), "{what}: {why}");
        }
    }
}

#[test]
fn bench_model_reports_the_precision_it_ran() {
    let json = std::env::temp_dir().join(format!("sener-bench-model-{}.json", std::process::id()));
    let v = sener(&["bench", "model", "--models", "minilm-shape", "--modes", "sener", "--lengths", "64", "--dtypes", "f32,bf16"], &json);
    let runs = v["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{v}");
    let (f32_row, bf16_row) = (&runs[0], &runs[1]);
    assert_eq!(f32_row["dtype"], "f32");
    assert!(f32_row["skipped"].is_null() && f32_row["seconds"].as_f64().unwrap() > 0.0, "{f32_row}");
    check_bf16_row(bf16_row, "bench model");
}

#[test]
fn bench_train_step_reports_the_precision_it_ran() {
    let json = std::env::temp_dir().join(format!("sener-bench-train-step-{}.json", std::process::id()));
    let v = sener(&["bench", "train-step", "--model", "minilm-shape", "--lengths", "64", "--steps", "2", "--span-window", "8", "--dtypes", "f32,bf16"], &json);
    let rows = v.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[0]["dtype"], "f32", "{}", rows[0]);
    assert!(rows[0]["step_seconds"].as_f64().unwrap() > 0.0, "{}", rows[0]);
    check_bf16_row(&rows[1], "bench train-step");
}
