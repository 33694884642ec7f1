//! Data-parallel training over MPI (`--features mpi`; `tools/test.sh` runs this file when
//! `mpirun` is installed): real `mpirun --oversubscribe -np 2` jobs of `sener train` on the tiny
//! fixtures, shared memory and loopback only.
//!
//! - Two ranks with two micro-batches each per step take the steps one process takes with four
//!   (dropout and whole-word masking on): weights equal to 1e-6 after 9 steps (0 measured: the
//!   gradient sums are f64, so their order does not matter; f32 sums left 6e-6 to 1.4e-5), and every rank
//!   ends with rank 0's weights.
//! - A rank killed mid-run stops the whole job within seconds, and `--resume` with the same world
//!   size then ends with exactly the weights of an uninterrupted two-rank run.
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

/// `dir` with the tiny base (DeBERTa fixture + word tokenizer) and 12 synthetic documents.
fn setup(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sener-mpi-{name}-{}", std::process::id()));
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixture("deberta_v3_tiny").join(f), base.join(f)).unwrap();
    }
    std::fs::copy(common::fixture("deberta_v3_tiny_tok/tokenizer.json"), base.join("tokenizer.json")).unwrap();
    let mut x: u64 = 1;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as usize
    };
    let mut out = String::new();
    for d in 0..12 {
        let (mut words, mut ents): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
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
    std::fs::write(dir.join("train.jsonl"), out).unwrap();
    dir
}

/// `sener train` arguments of these runs (output last).
fn train_args(dir: &Path, epochs: usize, output: &str) -> Vec<String> {
    let s = |p: &Path| p.display().to_string();
    [
        "train", "--recipe", "paper", "--span-window", "4", "--batch-size", "4", "--micro-batch", "1", "--lr-new", "1e-2", "--lr-encoder", "1e-2",
        "--wwm", "0.15", "--checkpoint-every", "1", "--epochs",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([epochs.to_string(), "--train".into(), s(&dir.join("train.jsonl")), "--base".into(), s(&dir.join("base")), "--output".into(), s(&dir.join(output))])
    .collect()
}

/// `mpirun -np n sener ARGS` on shared memory and loopback, allowed as root, oversubscribed.
fn mpirun(n: usize, args: &[String], tag: &str) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "--mca", "btl", "self,vader", "--mca", "oob_tcp_if_include", "lo", "-x", "SENER_TEST_TAG", "-np"])
        .arg(n.to_string())
        .arg(env!("CARGO_BIN_EXE_sener"))
        .args(args)
        .env("SENER_TEST_TAG", tag)
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn ok(o: &Output) {
    assert!(o.status.success(), "status {}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stderr));
}

fn params(dir: &Path, run: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(dir.join(format!("{run}.resume/params.safetensors")), &candle_core::Device::Cpu).unwrap()
}

fn max_diff(a: &std::collections::HashMap<String, candle_core::Tensor>, b: &std::collections::HashMap<String, candle_core::Tensor>) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().map(|(k, t)| (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()).fold(0.0, f32::max)
}

fn log_event(dir: &Path, run: &str, event: &str) -> Option<serde_json::Value> {
    std::fs::read_to_string(dir.join(format!("{run}.metrics.jsonl")))
        .ok()?
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .last()
}

#[test]
fn two_ranks_take_the_steps_of_one_process() {
    let dir = setup("equal");
    let one = Command::new(env!("CARGO_BIN_EXE_sener")).args(train_args(&dir, 3, "one")).env("RAYON_NUM_THREADS", "1").output().unwrap();
    ok(&one);
    let two = mpirun(2, &train_args(&dir, 3, "two"), "equal").output().unwrap();
    ok(&two);
    let d = max_diff(&params(&dir, "one"), &params(&dir, "two"));
    eprintln!("two ranks vs one process: largest weight difference {d:e}");
    assert!(d < 1e-6, "two ranks moved {d} away from one process");
    let agree = log_event(&dir, "two", "ranks_agree").expect("ranks_agree logged");
    assert_eq!(agree["world"], 2);
    assert_eq!(agree["max_weight_diff"].as_f64(), Some(0.0), "{agree}");
    assert_eq!(log_event(&dir, "two", "step").unwrap()["step"], 9, "3 epochs of 3 steps");
    // Only rank 0 wrote: one model folder, one log.
    assert!(dir.join("two/sener.json").is_file());
    std::fs::remove_dir_all(&dir).ok();
}

/// Pids of this tag's rank `rank` (found through the environment mpirun gives each rank).
fn rank_pid(tag: &str, rank: usize) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(env) = std::fs::read(e.path().join("environ")) else { continue };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        let has = |v: String| vars.iter().any(|x| *x == v.as_bytes());
        if has(format!("SENER_TEST_TAG={tag}")) && has(format!("OMPI_COMM_WORLD_RANK={rank}")) {
            return Some(pid);
        }
    }
    None
}

#[test]
fn a_dead_rank_stops_the_job_and_resume_is_exact() {
    let dir = setup("kill");
    let epochs = 30;
    ok(&mpirun(2, &train_args(&dir, epochs, "whole"), "whole").output().unwrap());

    let tag = format!("kill-{}", std::process::id());
    let mut job = mpirun(2, &train_args(&dir, epochs, "cut"), &tag).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for a few checkpointed steps, then kill rank 1.
    let start = Instant::now();
    loop {
        let step = log_event(&dir, "cut", "step").and_then(|v| v["step"].as_u64()).unwrap_or(0);
        if step >= 10 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the job made no progress");
        assert!(job.try_wait().unwrap().is_none(), "the job ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = rank_pid(&tag, 1).expect("rank 1's process");
    // SAFETY: kill(2) on a process this test started (through mpirun).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let killed = Instant::now();
    let status = loop {
        if let Some(s) = job.try_wait().unwrap() {
            break s;
        }
        assert!(killed.elapsed() < Duration::from_secs(20), "the job did not stop within 20 s of a rank's death");
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_after = killed.elapsed();
    assert!(!status.success(), "a job with a dead rank must fail");
    assert!(rank_pid(&tag, 0).is_none(), "rank 0 is still running");
    eprintln!("the job stopped {stopped_after:?} after rank 1 was killed");

    let mut args = train_args(&dir, epochs, "cut");
    args.push("--resume".into());
    ok(&mpirun(2, &args, "resume").output().unwrap());
    assert!(log_event(&dir, "cut", "resume").is_some(), "the run resumed from its checkpoint");
    let d = max_diff(&params(&dir, "whole"), &params(&dir, "cut"));
    assert!(d < 1e-6, "killed and resumed differs from uninterrupted by {d}");
    // The same checkpoint with another world size is refused.
    let mut other = train_args(&dir, epochs, "cut");
    other.push("--resume".into());
    let one = Command::new(env!("CARGO_BIN_EXE_sener")).args(&other).output().unwrap();
    assert!(!one.status.success() && String::from_utf8_lossy(&one.stderr).contains("different configuration"), "{}", String::from_utf8_lossy(&one.stderr));
    std::fs::remove_dir_all(&dir).ok();
}

/// `sener bench collective` on three ranks: every rank checks the all-reduced sum, the f64 sum
/// and rank 0's broadcast against the values it knows each rank sent (a wrong element fails
/// that rank, and mpirun with it), and rank 0 reports one row.
#[test]
fn collective_operations_check_out_on_three_ranks() {
    let args: Vec<String> = ["bench", "collective", "--elements", "100003", "--reps", "2"].iter().map(|s| s.to_string()).collect();
    let o = mpirun(3, &args, "collective").output().unwrap();
    ok(&o);
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| panic!("no JSON line in {out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!((v["backend"].as_str(), v["ranks"].as_u64(), v["ok"].as_bool()), (Some("mpi"), Some(3), Some(true)), "{v}");
}
