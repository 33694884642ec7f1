//! `sener bench model`: the whole model (encoder → word pooling → biaffine band → BiSPA → head)
//! for a range of lengths, SeNER's arrow attention + span band against the same model with full
//! attention and a full L×L span tensor, on the CPU or a GPU. Each measurement runs in a child
//! process (`sener bench model-one`) so its peak memory is its own; on CUDA the parent samples
//! `nvidia-smi` while the child runs (the GPU's used memory above what it was before the child).
//! Writes a Markdown table to stdout, and optionally a JSON file and an SVG plot.

use std::path::PathBuf;
use clap::Args;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::DType;
use serde::{Deserialize, Serialize};
use sener::encoder::{ArrowConfig, EncoderOptions};
use sener::model::Batch;
use sener::nn::ForwardCtx;
use sener::span::{SpanConfig, SpanModel};

use crate::bench::{bench_encoder, forward_flops, random_shape, span_flops, synthetic_segment};
use crate::common::parse_device;
use crate::plot::{loglog_svg, Panel, Series};

#[derive(Args, Debug)]
pub struct BenchModelArgs {
    /// Models: deberta-v3-base, deberta-v3-large, minilm-shape (random weights in those shapes), or
    /// minilm (the real all-MiniLM-L6-v2 from --minilm / $SENER_MINILM_DIR).
    #[arg(long, value_delimiter = ',', default_value = "deberta-v3-base,minilm-shape")]
    pub models: Vec<String>,
    /// Token lengths.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,5120,8192,16384,32768")]
    pub lengths: Vec<usize>,
    /// sener (arrow attention + span band) and/or full (full attention + full L×L span tensor).
    #[arg(long, value_delimiter = ',', default_value = "sener,full")]
    pub modes: Vec<String>,
    /// cpu or cuda[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Precisions of the encoder's matrix products, each measured in turn: f32, bf16, auto
    /// (see `sener extract --dtype`). A bf16 run on a CPU without bf16 kernels is skipped with
    /// the reason.
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub dtypes: Vec<String>,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Timed forwards per measurement (after a short warm-up); the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Skip a run whose estimated peak memory exceeds this many GiB.
    #[arg(long, default_value_t = 16.0)]
    pub budget_gib: f64,
    /// Skip a run whose estimated span-side arithmetic exceeds this many TFLOP (a time budget).
    #[arg(long, default_value_t = 20.0)]
    pub max_tflop: f64,
    /// Kill a measurement after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout_s: u64,
    /// Entity types of the head.
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
    /// Write all runs and the log-log fits as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a log-log plot (time and peak memory against tokens) as SVG.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Measure nothing: draw --svg from the runs of a JSON file this command wrote with --json.
    #[arg(long, requires = "svg")]
    pub replot: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchModelOneArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub mode: String,
    #[arg(long)]
    pub length: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub dtype: crate::common::DtypeArgs,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ModelRun {
    pub model: String,
    /// `sener` (arrow attention w, span band w′) or `full` (full attention, full L×L span tensor).
    pub mode: String,
    pub device: String,
    /// Precision of the encoder's matrix products as run: `f32` or `bf16 (amx-bf16)`.
    #[serde(default = "f32_name")]
    pub dtype: String,
    pub tokens: usize,
    pub words: usize,
    /// Seconds of one whole forward (median of the timed runs), and its two parts.
    pub seconds: f64,
    pub encoder_seconds: f64,
    pub span_seconds: f64,
    pub tokens_per_s: f64,
    /// Peak memory of the process: host RSS on the CPU; on CUDA the GPU memory the child added
    /// (from `nvidia-smi`, context included), bytes.
    pub peak_bytes: u64,
    /// The same after loading the weights (CPU) — the activations are `peak_bytes - model_bytes`.
    pub model_bytes: u64,
    pub flops: f64,
    pub gflops_per_s: f64,
    /// Why the run was skipped or failed.
    pub skipped: Option<String>,
}

fn f32_name() -> String {
    "f32".into()
}

const ARROW_WINDOW: usize = 128;
const SPAN_WINDOW: usize = 128;

/// (hidden size, attention heads) of a model name, from its preset config, for the estimates.
fn shape(model: &str) -> Result<(f64, f64)> {
    let c = random_shape(if model == "minilm" { "minilm-shape" } else { model })?;
    let field = |k: &str| c[k].as_f64().ok_or_else(|| anyhow::anyhow!("preset {model} has no {k}"));
    Ok((field("hidden_size")?, field("num_attention_heads")?))
}

/// Words of a synthetic segment of `t` tokens (see [`synthetic_segment`]).
fn words_of(t: usize) -> usize {
    synthetic_segment(t, 30000, 1, 2).2
}

/// Rough peak bytes of one forward: (encoder, span side). Orders of magnitude from this command's
/// own measurements; used only to skip runs that cannot fit.
fn estimate(model: &str, mode: &str, t: usize) -> Result<(f64, f64)> {
    let (h, heads) = shape(model)?;
    let n = words_of(t) as f64;
    let t = t as f64;
    let copies = if model.starts_with("deberta") { 8.0 } else { 3.0 };
    let enc = if mode == "full" { heads * copies * t * t * 4.0 + 40.0 * t * h } else { 60.0 * t * h + heads * copies * t * 258.0 * 4.0 };
    let kk = if mode == "full" { 2.0 * n - 1.0 } else { (2 * SPAN_WINDOW + 1) as f64 };
    let span = 12.0 * n * kk * 32.0 * 4.0 + 4.0 * n.min(256.0) * kk * kk * 4.0;
    Ok((enc, span))
}

/// The GPU memory a child process adds: `nvidia-smi` sampled every 20 ms while it runs, minus the
/// reading before it started (so the CUDA context is included).
pub struct GpuUse {
    base: u64,
    child: std::process::Child,
    peak: Arc<AtomicU64>,
    reader: Option<std::thread::JoinHandle<()>>,
}

fn gpu_used_mib() -> Option<u64> {
    let out = Command::new("nvidia-smi").args(["--query-gpu=memory.used", "--format=csv,noheader,nounits"]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().parse().ok()
}

impl GpuUse {
    /// None where `nvidia-smi` is not there.
    pub fn start() -> Option<Self> {
        let base = gpu_used_mib()?;
        let mut child = Command::new("nvidia-smi")
            .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "20"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let out = child.stdout.take()?;
        let peak = Arc::new(AtomicU64::new(base));
        let p = peak.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                if let Ok(v) = line.trim().parse::<u64>() {
                    p.fetch_max(v, Ordering::Relaxed);
                }
            }
        });
        Some(Self { base, child, peak, reader: Some(reader) })
    }

    /// Stops sampling; the highest reading above the starting one, MiB.
    pub fn stop(mut self) -> u64 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.peak.load(Ordering::Relaxed).saturating_sub(self.base)
    }
}

fn skipped(model: &str, mode: &str, device: &str, tokens: usize, why: String) -> ModelRun {
    ModelRun {
        model: model.into(),
        mode: mode.into(),
        device: device.into(),
        dtype: f32_name(),
        tokens,
        words: words_of(tokens),
        seconds: f64::NAN,
        encoder_seconds: f64::NAN,
        span_seconds: f64::NAN,
        tokens_per_s: f64::NAN,
        peak_bytes: 0,
        model_bytes: 0,
        flops: 0.0,
        gflops_per_s: f64::NAN,
        skipped: Some(why),
    }
}

/// Runs `cmd` with a time limit; (stdout, stderr, success).
fn run_limited(mut cmd: Command, limit: Duration) -> Result<(String, String, bool)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("starting a bench child")?;
    let mut out = child.stdout.take().context("child stdout")?;
    let mut err = child.stderr.take().context("child stderr")?;
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (o, mut e) = (t_out.join().unwrap_or_default(), t_err.join().unwrap_or_default());
    if status.is_none() {
        e = format!("timed out after {} s", limit.as_secs());
    }
    Ok((o, e, status.is_some_and(|s| s.success())))
}

pub fn run(a: BenchModelArgs) -> Result<()> {
    if let (Some(src), Some(svg)) = (&a.replot, &a.svg) {
        let text = std::fs::read_to_string(src).with_context(|| format!("reading {}", src.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", src.display()))?;
        let runs: Vec<ModelRun> = serde_json::from_value(v["runs"].clone()).with_context(|| format!("{}: no `runs` of `sener bench model --json`", src.display()))?;
        let device = v["device"].as_str().unwrap_or("cpu");
        std::fs::write(svg, plot(&runs, device)).with_context(|| format!("writing {}", svg.display()))?;
        return Ok(());
    }
    let exe = std::env::current_exe().context("locating the sener binary")?;
    let cuda = a.device.starts_with("cuda");
    println!(
        "full model forward (encoder → max-pool → biaffine → 2 BiSPA → head), batch 1, {} types, device {}; \
         sener = arrow w {ARROW_WINDOW} + span band w′ {SPAN_WINDOW}; full = full attention + full L×L span tensor",
        a.labels, a.device
    );
    println!();
    for d in &a.dtypes {
        sener::gemm_bf16::DtypeChoice::parse(d).with_context(|| format!("--dtypes {d}"))?;
    }
    let kernel = sener::gemm_bf16::Bf16Kernel::detect();
    println!("bf16 kernel on this CPU: {}", kernel.map_or("none (bf16 runs are skipped, auto runs f32)", |k| k.name()));
    println!("encoder matrix products in the named dtype (f32 accumulation); span side, attention, LayerNorm and soft-max in f32");
    println!();
    println!("| model | mode | dtype | tokens | words | s / forward | encoder s | span s | tokens/s | peak {} (MiB) | GFLOP/s |", if cuda { "GPU" } else { "RSS" });
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut runs = Vec::new();
    for model in &a.models {
        shape(model)?; // an unknown name fails here, before any run
        for mode in &a.modes {
            if mode != "sener" && mode != "full" {
                bail!("--modes {mode}: expected sener or full");
            }
            for dtype in &a.dtypes {
            let mut failed = false;
            for &t in &a.lengths {
                let (e, s) = estimate(model, mode, t)?;
                let est_gib = (e + s) / (1u64 << 30) as f64;
                let n = words_of(t);
                let kk = if mode == "full" { 2 * n - 1 } else { 2 * SPAN_WINDOW + 1 };
                let (hidden, _) = shape(model)?;
                let tflop = span_flops(n, kk, hidden as usize, 100, 32, 2, a.labels) / 1e12;
                let skip = |why: String| {
                    let mut r = skipped(model, mode, &a.device, t, why);
                    r.dtype = dtype.clone();
                    r
                };
                let r = if failed {
                    skip("a shorter length failed".into())
                } else if dtype == "bf16" && (kernel.is_none() || cuda) {
                    skip("no bf16 kernel on this device".into())
                } else if est_gib > a.budget_gib {
                    skip(format!("est. {est_gib:.0} GiB > budget {:.0} GiB", a.budget_gib))
                } else if tflop > a.max_tflop {
                    skip(format!("est. {tflop:.0} TFLOP > {:.0}", a.max_tflop))
                } else {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["bench", "model-one", "--model", model, "--mode", mode, "--device", &a.device, "--dtype", dtype])
                        .args(["--length", &t.to_string(), "--repeat", &a.repeat.to_string(), "--labels", &a.labels.to_string()]);
                    if let Some(d) = &a.minilm {
                        cmd.arg("--minilm").arg(d);
                    }
                    let gpu = if cuda { GpuUse::start() } else { None };
                    let (out, err, ok) = run_limited(cmd, Duration::from_secs(a.timeout_s))?;
                    let gpu_mib = gpu.map(|g| g.stop());
                    match serde_json::from_str::<ModelRun>(out.trim()) {
                        Ok(mut m) if ok => {
                            if let Some(p) = gpu_mib {
                                m.peak_bytes = p << 20;
                                m.model_bytes = 0;
                            }
                            m
                        }
                        _ => {
                            failed = true;
                            let last = err.trim().lines().last().unwrap_or("no output").to_string();
                            skip(format!("failed: {last}"))
                        }
                    }
                };
                print_row(&r);
                runs.push(r);
            }
            }
        }
    }
    let fits = fit_exponents(&runs);
    if !fits.is_empty() {
        println!();
        println!("log-log fit over the measured lengths ≥ 1024 tokens (exponent 1 = linear):");
        println!();
        println!("| model | mode | dtype | points | time exponent | memory exponent (activations) |");
        println!("|---|---|---|---:|---:|---:|");
        for f in &fits {
            println!("| {} | {} | {} | {} | {:.3} | {:.3} |", f["model"].as_str().unwrap_or(""), f["mode"].as_str().unwrap_or(""), f["dtype"].as_str().unwrap_or(""), f["points"], f["time"].as_f64().unwrap_or(f64::NAN), f["memory"].as_f64().unwrap_or(f64::NAN));
        }
    }
    if let Some(p) = &a.json {
        let v = serde_json::json!({ "device": a.device, "labels": a.labels, "arrow_window": ARROW_WINDOW, "span_window": SPAN_WINDOW, "runs": runs, "fits": fits });
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.svg {
        std::fs::write(p, plot(&runs, &a.device)).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn print_row(m: &ModelRun) {
    let mib = |b: u64| b as f64 / 1048576.0;
    match &m.skipped {
        Some(why) => println!("| {} | {} | {} | {} | {} | — | — | — | — | — | {} |", m.model, m.mode, m.dtype, m.tokens, m.words, why),
        None => println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
            m.model, m.mode, m.dtype, m.tokens, m.words, m.seconds, m.encoder_seconds, m.span_seconds, m.tokens_per_s, mib(m.peak_bytes), m.gflops_per_s
        ),
    }
}

/// Least-squares slope of log(y) on log(x).
pub fn loglog_slope(points: &[(f64, f64)]) -> f64 {
    let pts: Vec<(f64, f64)> = points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxy: f64 = pts.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = pts.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

fn fit_exponents(runs: &[ModelRun]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut keys: Vec<(String, String, String)> = runs.iter().map(|r| (r.model.clone(), r.mode.clone(), r.dtype.clone())).collect();
    keys.dedup();
    for (model, mode, dtype) in keys {
        let ok: Vec<&ModelRun> =
            runs.iter().filter(|r| r.model == model && r.mode == mode && r.dtype == dtype && r.skipped.is_none() && r.tokens >= 1024).collect();
        if ok.len() < 2 {
            continue;
        }
        let time = loglog_slope(&ok.iter().map(|r| (r.tokens as f64, r.seconds)).collect::<Vec<_>>());
        let mem = loglog_slope(&ok.iter().map(|r| (r.tokens as f64, r.peak_bytes.saturating_sub(r.model_bytes) as f64)).collect::<Vec<_>>());
        out.push(serde_json::json!({"model": model, "mode": mode, "dtype": dtype, "points": ok.len(), "time": time, "memory": mem}));
    }
    out
}

fn plot(runs: &[ModelRun], device: &str) -> String {
    const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];
    let mut keys: Vec<(String, String, String)> = runs.iter().map(|r| (r.model.clone(), r.mode.clone(), r.dtype.clone())).collect();
    keys.dedup();
    // one colour per (model, dtype); full attention dashed in its model's colour
    let combos: Vec<(String, String)> = {
        let mut m: Vec<(String, String)> = keys.iter().map(|k| (k.0.clone(), k.2.clone())).collect();
        m.dedup();
        m
    };
    let series = |f: &dyn Fn(&ModelRun) -> f64| -> Vec<Series> {
        keys.iter()
            .map(|(model, mode, dtype)| Series {
                name: if dtype == "f32" { format!("{model} {mode}") } else { format!("{model} {mode} {dtype}") },
                color: COLORS[combos.iter().position(|(m, d)| m == model && d == dtype).unwrap_or(0) % COLORS.len()].to_string(),
                dashed: mode == "full",
                points: runs
                    .iter()
                    .filter(|r| &r.model == model && &r.mode == mode && &r.dtype == dtype && r.skipped.is_none())
                    .map(|r| (r.tokens as f64, f(r)))
                    .collect(),
            })
            .collect()
    };
    let mem_label = if device.starts_with("cuda") { "peak GPU memory (GiB)" } else { "peak RSS (GiB)" };
    loglog_svg(
        &format!("sener bench model ({device}): SeNER (solid) vs full attention + L×L span (dashed)"),
        &[
            Panel { title: "seconds per forward".into(), y_label: "s".into(), series: series(&|r| r.seconds) },
            Panel { title: mem_label.into(), y_label: "GiB".into(), series: series(&|r| r.peak_bytes as f64 / (1u64 << 30) as f64) },
        ],
    )
}

/// One measurement in this process; prints one JSON line.
pub fn run_one(a: BenchModelOneArgs) -> Result<()> {
    let dev = parse_device(&a.device)?;
    let arrow = match a.mode.as_str() {
        "sener" => ArrowConfig { window: ARROW_WINDOW, ..ArrowConfig::default() },
        "full" => ArrowConfig::full(),
        m => bail!("--mode {m}: expected sener or full"),
    };
    let opts = EncoderOptions { arrow: arrow.clone(), dtype: DType::F32, device: dev.clone() };
    // as `sener extract` does: the first forward's pages faulted in while the model loads
    let warm = (a.mode == "sener" && dev.is_cpu()).then(|| {
        let bytes = SpanConfig { window: SPAN_WINDOW, ..SpanConfig::default() }.working_set_bytes(a.length * 3 / 4);
        std::thread::spawn(move || sener::mem::warm_heap(bytes))
    });
    let mut enc = bench_encoder(&a.model, &a.minilm, &opts, false)?;
    let precision = a.dtype.precision(&dev)?;
    enc.set_precision(precision)?;
    if precision != sener::gemm_bf16::Precision::F32 {
        // as `extract --dtype bf16` runs: the packed bf16 weights only
        enc.release_f32_weights()?;
    }
    let (ids, idx, words) = synthetic_segment(a.length, enc.vocab_size() as u32, 1, 2);
    let window = if a.mode == "full" { words.saturating_sub(1).max(1) } else { SPAN_WINDOW };
    let mut span = SpanModel::init(SpanConfig { window, ..SpanConfig::default() }, enc.hidden_size(), a.labels, 0, DType::F32, &dev)?;
    span.set_precision(precision);
    let model_bytes = sener::mem::current_rss().unwrap_or(0);
    let forward = |ids: &[u32], idx: &[u32], words: usize| -> Result<(f64, f64)> {
        let batch = Batch::new(&[(ids.to_vec(), idx.to_vec(), words)], 0, &dev)?;
        let mut ctx = ForwardCtx::eval();
        let t0 = Instant::now();
        let hidden = enc.forward(&batch.ids, &batch.mask, &mut ctx)?;
        dev.synchronize()?;
        let te = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let w = batch.word_pooling()?.forward(&hidden)?;
        drop(hidden);
        let out = span.forward(&w, &batch.words, &mut ctx)?;
        dev.synchronize()?;
        drop(out);
        Ok((te, t1.elapsed().as_secs_f64()))
    };
    if let Some(h) = warm {
        let took = h.join().map_err(|_| anyhow::anyhow!("the allocator warm-up thread panicked"))?;
        tracing::info!(seconds = took.as_secs_f64(), "allocator warmed while the model loaded");
    }
    // warm-up (thread pools, kernels, first touch of the weights) on a short input
    let (wi, wx, ww) = synthetic_segment(a.length.min(256), enc.vocab_size() as u32, 1, 2);
    forward(&wi, &wx, ww)?;
    sener::mem::reset_peak_rss();
    let mut times = Vec::new();
    for _ in 0..a.repeat.max(1) {
        times.push(forward(&ids, &idx, words)?);
    }
    times.sort_by(|x, y| (x.0 + x.1).total_cmp(&(y.0 + y.1)));
    let (te, ts) = times[times.len() / 2];
    let seconds = te + ts;
    let kk = 2 * window + 1;
    let flops = forward_flops(&enc, a.length, &arrow) + span_flops(words, kk, enc.hidden_size(), 100, 32, 2, a.labels);
    let m = ModelRun {
        model: a.model.clone(),
        mode: a.mode.clone(),
        device: a.device.clone(),
        dtype: precision.describe(),
        tokens: a.length,
        words,
        seconds,
        encoder_seconds: te,
        span_seconds: ts,
        tokens_per_s: a.length as f64 / seconds,
        peak_bytes: sener::mem::peak_rss().unwrap_or(0),
        model_bytes,
        flops,
        gflops_per_s: flops / seconds / 1e9,
        skipped: None,
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loglog_slope_recovers_powers() {
        let lin: Vec<(f64, f64)> = [1024.0, 2048.0, 8192.0].iter().map(|&x| (x, 3.0 * x)).collect();
        assert!((loglog_slope(&lin) - 1.0).abs() < 1e-12);
        let quad: Vec<(f64, f64)> = [1024.0, 4096.0, 32768.0].iter().map(|&x| (x, 0.5 * x * x)).collect();
        assert!((loglog_slope(&quad) - 2.0).abs() < 1e-12);
        assert!(loglog_slope(&lin[..1]).is_nan());
    }

    #[test]
    fn full_mode_estimate_grows_quadratically_sener_linearly() {
        let (e1, s1) = estimate("deberta-v3-base", "full", 2048).unwrap();
        let (e2, s2) = estimate("deberta-v3-base", "full", 4096).unwrap();
        assert!((e2 + s2) / (e1 + s1) > 3.5);
        let (e1, s1) = estimate("deberta-v3-base", "sener", 2048).unwrap();
        let (e2, s2) = estimate("deberta-v3-base", "sener", 4096).unwrap();
        let r = (e2 + s2) / (e1 + s1);
        assert!((1.7..=2.05).contains(&r), "sener estimate ×{r} for ×2 tokens");
    }
}
