//! `sener bench encoder`: forward time, tokens/s, peak RSS and achieved GFLOP/s of the encoder for
//! several lengths, arrow vs full attention. Each measurement runs in a child process
//! (`sener bench encoder-one`), so peak RSS is that measurement's alone.

use crate::common::ArrowArgs;
use clap::Args;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sener::encoder::{presets, ArrowConfig, Encoder, EncoderKind, EncoderOptions};
use sener::nn::ForwardCtx;
use sener::train::trainer::Finetune;
use serde::{Deserialize, Serialize};


#[derive(Args, Debug)]
pub struct BenchEncoderArgs {
    /// all-MiniLM-L6-v2 folder (default: $SENER_MINILM_DIR); skipped when absent.
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Token lengths.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,8192,16384")]
    pub lengths: Vec<usize>,
    /// Models to run: minilm, deberta-v3-base (random weights), deberta-v3-large (random).
    #[arg(long, value_delimiter = ',', default_value = "minilm,deberta-v3-base")]
    pub models: Vec<String>,
    /// Timed forwards per measurement (after one warm-up).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Skip full attention where its estimated peak exceeds this many GiB.
    #[arg(long, default_value_t = 12.0)]
    pub full_budget_gib: f64,
    /// Arrow window.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchSpanArgs {
    /// Word counts.
    #[arg(long, value_delimiter = ',', default_value = "512,1024,2048,4096,8192,16384")]
    pub words: Vec<usize>,
    /// Span window w′.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Encoder hidden size of the word vectors (1024: DeBERTa-v3-large).
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    /// Entity types.
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
    /// Skip a run whose estimated peak exceeds this many GiB.
    #[arg(long, default_value_t = 16.0)]
    pub budget_gib: f64,
    /// Skip a full-L×L run whose estimated arithmetic exceeds this many TFLOP (time budget).
    #[arg(long, default_value_t = 3.0)]
    pub max_tflop: f64,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchRandomModelArgs {
    /// Shape: deberta-v3-base, deberta-v3-large or minilm-shape.
    #[arg(long)]
    pub model: String,
    /// The folder to write (`config.json` + `model.safetensors`).
    #[arg(long)]
    pub output: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Writes a model folder with random weights in a published shape, for benchmarks that load
/// their model from a file as `sener extract` does (`sener bench model --models FOLDER`).
pub fn run_random_model(a: BenchRandomModelArgs) -> Result<()> {
    let shape = random_shape(&a.model)?;
    let cfg_dir = std::env::temp_dir().join(format!("sener-random-model-{}", std::process::id()));
    std::fs::create_dir_all(&cfg_dir).with_context(|| format!("creating {}", cfg_dir.display()))?;
    std::fs::write(cfg_dir.join("config.json"), serde_json::to_string_pretty(&shape)?).context("writing config.json")?;
    let enc = Encoder::random_trainable(shape, &EncoderOptions::default(), a.seed)?;
    let written = enc.save_full(&a.output, &cfg_dir);
    std::fs::remove_dir_all(&cfg_dir).ok();
    let file = written.with_context(|| format!("writing {}", a.output.display()))?;
    println!("{} ({} weights) -> {}", a.model, enc.trainable().len(), file.display());
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchTrainStepArgs {
    /// MiniLM folder (default: $SENER_MINILM_DIR).
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// Encoder: minilm (the real weights), or random weights in the shape of deberta-v3-base,
    /// deberta-v3-large or minilm-shape.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// cpu or cuda[:N] (on CUDA the peak is the GPU memory the step added, from nvidia-smi).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Segment lengths in tokens.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048,4096,5120")]
    pub lengths: Vec<usize>,
    /// Steps per length (the first one is reported separately: it allocates everything).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Recompute activations in the backward pass: auto, always or never (see `sener train`).
    #[arg(long, default_value = "auto")]
    pub recompute: sener::train::recompute::Recompute,
    /// What of the encoder trains: lora (the paper's recipe) or full (see `sener train`).
    #[arg(long, default_value = "lora")]
    pub finetune: sener::train::trainer::Finetune,
    /// Span window w′ in words (one side; the band has 2w′+1 columns).
    #[arg(long, default_value_t = 128)]
    pub span_window: usize,
    /// Precisions of the frozen encoder products, each measured in turn (f32, bf16, auto).
    #[arg(long, value_delimiter = ',', default_value = "f32")]
    pub dtypes: Vec<String>,
    /// Which ops run, each measured in turn: auto, fused (CPU kernels) or generic (candle ops
    /// only, the path a GPU takes; see `sener train --kernels`).
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    pub kernels: Vec<sener::nn::Kernels>,
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct BenchTrainStepOneArgs {
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long, default_value = "minilm")]
    pub model: String,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub length: usize,
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    #[arg(long, default_value = "auto")]
    pub recompute: sener::train::recompute::Recompute,
    #[arg(long, default_value = "lora")]
    pub finetune: sener::train::trainer::Finetune,
    #[arg(long, default_value_t = 128)]
    pub span_window: usize,
    #[command(flatten)]
    pub dtype: crate::common::DtypeArgs,
    #[arg(long, default_value = "auto")]
    pub kernels: sener::nn::Kernels,
}

#[derive(Args, Debug, Clone)]
pub struct BenchSpanOneArgs {
    #[arg(long)]
    pub words: usize,
    /// banded or full
    #[arg(long)]
    pub mode: String,
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    #[arg(long, default_value_t = 1024)]
    pub hidden: usize,
    #[arg(long, default_value_t = 12)]
    pub labels: usize,
}

#[derive(Args, Debug, Clone)]
pub struct BenchOneArgs {
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    #[arg(long)]
    pub length: usize,
    /// arrow or full
    #[arg(long)]
    pub mode: String,
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long, default_value_t = 128)]
    pub window: usize,
}

#[derive(Args, Debug)]
pub struct BenchPositionsArgs {
    /// BERT-family model folder (default: $SENER_MINILM_DIR).
    #[arg(long)]
    pub minilm: Option<PathBuf>,
    /// UTF-8 text file, longer than 512 tokens.
    #[arg(long)]
    pub file: PathBuf,
    #[command(flatten)]
    pub arrow: ArrowArgs,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Measurement {
    pub model: String,
    pub mode: String,
    pub length: usize,
    pub window: usize,
    /// Seconds per forward (median of the timed runs).
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Peak RSS of the whole process (weights included), bytes.
    pub peak_rss: u64,
    /// RSS after loading the weights, bytes.
    pub model_rss: u64,
    /// Model FLOPs of one forward (dense layers + attention over the allowed pairs).
    pub flops: f64,
    pub gflops_per_s: f64,
    /// Set when the measurement was not run or failed.
    pub skipped: Option<String>,
}

fn minilm_dir(arg: &Option<PathBuf>) -> Option<PathBuf> {
    arg.clone().or_else(|| std::env::var_os("SENER_MINILM_DIR").map(PathBuf::from)).filter(|d| d.join("config.json").is_file())
}

/// `config.json` of a random-weight benchmark shape: deberta-v3-base, deberta-v3-large or
/// minilm-shape (all-MiniLM-L6-v2's shape).
pub(crate) fn random_shape(model: &str) -> Result<serde_json::Value> {
    let cfg = std::path::Path::new(model).join("config.json");
    if cfg.is_file() {
        // a model folder: its own config
        let text = std::fs::read_to_string(&cfg).with_context(|| format!("reading {}", cfg.display()))?;
        return serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", cfg.display()));
    }
    Ok(match model {
        "deberta-v3-base" => presets::deberta_v3_base(),
        "deberta-v3-large" => presets::deberta_v3_large(),
        "minilm-shape" => presets::minilm_l6(),
        m => bail!("unknown model {m}: expected minilm, deberta-v3-base, deberta-v3-large or minilm-shape"),
    })
}

/// The encoder a benchmark names: `minilm` loads the real all-MiniLM-L6-v2 (`--minilm` or
/// `$SENER_MINILM_DIR`), a model folder (one with a `config.json`, e.g. from `sener bench
/// random-model`) loads as `sener extract` would, the other names are random weights in that
/// shape ([`random_shape`]). `trainable`: every weight a variable (full fine-tuning).
pub(crate) fn bench_encoder(model: &str, minilm: &Option<PathBuf>, opts: &EncoderOptions, trainable: bool) -> Result<Encoder> {
    let folder = if model == "minilm" {
        Some(minilm_dir(minilm).context("minilm needs --minilm or $SENER_MINILM_DIR (the all-MiniLM-L6-v2 folder)")?)
    } else if std::path::Path::new(model).join("config.json").is_file() {
        Some(PathBuf::from(model))
    } else {
        None
    };
    if let Some(dir) = folder {
        let load = if trainable { Encoder::load_trainable(&dir, opts) } else { Encoder::load(&dir, opts) };
        return load.with_context(|| format!("loading {}", dir.display()));
    }
    let shape = random_shape(model)?;
    Ok(if trainable { Encoder::random_trainable(shape, opts, 0)? } else { Encoder::random(shape, opts, 0)? })
}

/// Model FLOPs of one forward over `t` tokens.
pub(crate) fn forward_flops(enc: &Encoder, t: usize, arrow: &ArrowConfig) -> f64 {
    let (d, i, layers) = (enc.hidden_size() as f64, enc.intermediate_size() as f64, enc.num_layers() as f64);
    let dense = 2.0 * (4.0 * d * d + 2.0 * d * i);
    let keys = if arrow.window >= t { t as f64 } else { (2 * arrow.window + 1).min(t) as f64 + 1.0 };
    // QKᵀ and PV; DeBERTa adds the c2p and p2c score terms.
    let score_terms = if enc.kind() == EncoderKind::DebertaV2 { 3.0 } else { 1.0 };
    let attn = 2.0 * d * keys * (score_terms + 1.0);
    layers * t as f64 * (dense + attn)
}

/// Rough peak of full attention (bytes): score-sized tensors per layer kept at once.
fn full_attention_estimate(model: &str, t: usize) -> f64 {
    let (heads, copies) = match model {
        "minilm" => (12.0, 3.0),
        "deberta-v3-large" => (16.0, 8.0),
        _ => (12.0, 8.0),
    };
    heads * copies * (t as f64) * (t as f64) * 4.0
}

pub fn run_encoder(a: BenchEncoderArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the sener binary")?;
    let minilm = minilm_dir(&a.minilm);
    let (gf_square, gf_linear) = matmul_throughput()?;
    println!(
        "candle f32 matmul on this machine: {gf_square:.0} GFLOP/s (1024³), {gf_linear:.0} GFLOP/s ([4096×768]·[768×3072])"
    );
    println!();
    println!("| model | attention | tokens | s / forward | tokens/s | peak RSS (MiB) | activations (MiB) | GFLOP/s |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for model in &a.models {
        if model == "minilm" && minilm.is_none() {
            eprintln!("skipping minilm: no --minilm folder and SENER_MINILM_DIR unset (tools/setup-minilm.sh)");
            continue;
        }
        for &t in &a.lengths {
            for mode in ["arrow", "full"] {
                let est = full_attention_estimate(model, t) / (1u64 << 30) as f64;
                let m = if mode == "full" && est > a.full_budget_gib {
                    skipped(model, mode, t, a.window, format!("est. {est:.0} GiB > budget {:.0} GiB", a.full_budget_gib))
                } else {
                    let mut cmd = Command::new(&exe);
                    cmd.args(["bench", "encoder-one", "--model", model, "--mode", mode])
                        .args(["--length", &t.to_string(), "--repeat", &a.repeat.to_string(), "--window", &a.window.to_string()]);
                    if let Some(d) = &minilm {
                        cmd.arg("--minilm").arg(d);
                    }
                    let out = cmd.output().context("running sener bench encoder-one")?;
                    let line = String::from_utf8_lossy(&out.stdout);
                    match serde_json::from_str::<Measurement>(line.trim()) {
                        Ok(m) if out.status.success() => m,
                        _ => skipped(model, mode, t, a.window, format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())),
                    }
                };
                print_row(&m);
                all.push(m);
            }
        }
    }
    if let Some(p) = &a.json {
        let v = serde_json::json!({ "matmul_gflops_1024": gf_square, "matmul_gflops_linear": gf_linear, "runs": all });
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn skipped(model: &str, mode: &str, length: usize, window: usize, why: String) -> Measurement {
    Measurement {
        model: model.into(),
        mode: mode.into(),
        length,
        window,
        seconds: f64::NAN,
        tokens_per_s: f64::NAN,
        peak_rss: 0,
        model_rss: 0,
        flops: 0.0,
        gflops_per_s: f64::NAN,
        skipped: Some(why),
    }
}

fn print_row(m: &Measurement) {
    let mib = |b: u64| b as f64 / 1048576.0;
    match &m.skipped {
        Some(why) => println!("| {} | {} | {} | — | — | — | — | {} |", m.model, m.mode, m.length, why),
        None => println!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} |",
            m.model,
            m.mode,
            m.length,
            m.seconds,
            m.tokens_per_s,
            mib(m.peak_rss),
            mib(m.peak_rss.saturating_sub(m.model_rss)),
            m.gflops_per_s
        ),
    }
}

pub fn run_one(a: BenchOneArgs) -> Result<()> {
    let arrow = match a.mode.as_str() {
        "arrow" => ArrowConfig { window: a.window, ..ArrowConfig::default() },
        "full" => ArrowConfig::full(),
        m => bail!("--mode {m}: expected arrow or full"),
    };
    let opts = EncoderOptions { arrow: arrow.clone(), dtype: DType::F32, device: Device::Cpu };
    let enc = bench_encoder(&a.model, &a.minilm, &opts, false)?;
    let model_rss = sener::mem::current_rss().unwrap_or(0);
    let vocab = enc.vocab_size() as u32;
    let ids = |t: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..t).map(|i| if i == 0 { 1 } else { 3 + (i as u32 * 2_654_435_761) % (vocab - 3) }).collect();
        Ok(Tensor::from_vec(v, (1, t), &Device::Cpu)?)
    };
    // Warm-up (thread pools, first-touch of the weights) on a short input.
    let w = ids(a.length.min(256))?;
    enc.forward(&w, &w.ones_like()?, &mut ForwardCtx::eval())?;
    sener::mem::reset_peak_rss();
    let x = ids(a.length)?;
    let mask = x.ones_like()?;
    let mut times = Vec::new();
    for _ in 0..a.repeat.max(1) {
        let t0 = Instant::now();
        let h = enc.forward(&x, &mask, &mut ForwardCtx::eval())?;
        drop(h);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let seconds = times[times.len() / 2];
    let flops = forward_flops(&enc, a.length, &arrow);
    let m = Measurement {
        model: a.model.clone(),
        mode: a.mode.clone(),
        length: a.length,
        window: a.window,
        seconds,
        tokens_per_s: a.length as f64 / seconds,
        peak_rss: sener::mem::peak_rss().unwrap_or(0),
        model_rss,
        flops,
        gflops_per_s: flops / seconds / 1e9,
        skipped: None,
    };
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}

/// GFLOP/s of candle's f32 matmul here: a 1024³ product and a typical linear-layer shape.
fn matmul_throughput() -> Result<(f64, f64)> {
    let time = |m: usize, k: usize, n: usize| -> Result<f64> {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu)?;
        a.matmul(&b)?; // warm-up
        let reps = 5;
        let t0 = Instant::now();
        for _ in 0..reps {
            a.matmul(&b)?;
        }
        Ok(2.0 * (m * k * n) as f64 * reps as f64 / t0.elapsed().as_secs_f64() / 1e9)
    };
    Ok((time(1024, 1024, 1024)?, time(4096, 768, 3072)?))
}

/// Mean and minimum cosine similarity of matching rows of two `[n, d]` tensors.
fn cosines(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let dot = (a * b)?.sum(1)?;
    let na = a.sqr()?.sum(1)?.sqrt()?;
    let nb = b.sqr()?.sum(1)?.sqrt()?;
    let c: Vec<f32> = (dot / (na * nb)?)?.to_vec1()?;
    let mean = c.iter().map(|&x| x as f64).sum::<f64>() / c.len().max(1) as f64;
    let min = c.iter().fold(f64::INFINITY, |m, &x| m.min(x as f64));
    Ok((mean, min))
}

pub fn run_positions(a: BenchPositionsArgs) -> Result<()> {
    let dir = minilm_dir(&a.minilm).context("no BERT folder: pass --minilm or set SENER_MINILM_DIR")?;
    let arrow = a.arrow.to_config()?;
    let opts = EncoderOptions { arrow: arrow.clone(), dtype: DType::F32, device: Device::Cpu };
    let enc = Encoder::load(&dir, &opts)?;
    if enc.kind() != EncoderKind::Bert {
        bail!("{}: positions only matter for BERT-family encoders", dir.display());
    }
    let tok = sener::tokenizer::load_tokenizer(&dir)?;
    let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let ids = sener::tokenizer::encode_with_special(&tok, &text)?;
    let n = ids.len();
    if n < 1024 {
        bail!("{}: {n} tokens; give a text of at least 1024 tokens", a.file.display());
    }
    let (cls, sep) = (ids[0], ids[n - 1]);
    let run = |v: &[u32]| -> Result<Tensor> {
        let x = Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu)?;
        Ok(enc.forward(&x, &x.ones_like()?, &mut ForwardCtx::eval())?.squeeze(0)?)
    };
    let long = run(&ids)?;
    println!("{}: {n} tokens, window {}, LogN {}", a.file.display(), arrow.window, arrow.logn);
    println!();
    println!("| block | tokens | positions in the long pass | mean cos(long, window) | min cos |");
    println!("|---:|---|---|---:|---:|");
    let body = n - 2;
    let per = 510;
    for m in 0..body.div_ceil(per) {
        let start = 1 + m * per;
        let len = per.min(n - 1 - start);
        if len < 16 {
            break;
        }
        let mut w = vec![cls];
        w.extend_from_slice(&ids[start..start + len]);
        w.push(sep);
        let win = run(&w)?.narrow(0, 1, len)?;
        let (mean, min) = cosines(&long.narrow(0, start, len)?, &win)?;
        let pos = sener::encoder::block::extended_position_ids(start + len, 512);
        println!("| {m} | {start}..{} | {}..{} | {mean:.4} | {min:.4} |", start + len, pos[start], pos[start + len - 1]);
    }
    Ok(())
}

/// Span-side FLOPs for n words and band width K (biaffine bilinear over the band, two attention
/// views, dense, two convs, head) — the useful arithmetic of one forward.
pub(crate) fn span_flops(n: usize, kk: usize, hidden: usize, size: usize, c: usize, depth: usize, labels: usize) -> f64 {
    let (n, kk, h, x, c) = (n as f64, kk as f64, hidden as f64, (size + 1) as f64, c as f64);
    let mlps = 2.0 * 2.0 * n * h * x;
    let bilinear = 2.0 * n * c * x * (x + kk);
    let per_block = 2.0 * (2.0 * n * kk * c * 3.0 * c + 2.0 * 2.0 * n * kk * kk * c) + 2.0 * n * kk * 2.0 * c * c + 2.0 * 2.0 * n * kk * 9.0 * c * c;
    mlps + bilinear + depth as f64 * per_block + 2.0 * n * kk * c * labels as f64
}

pub fn run_span(a: BenchSpanArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the sener binary")?;
    println!("span side: hidden {}, w′ {}, biaffine 100, c 32, 2 BiSPA blocks, {} types; f32, CPU", a.hidden, a.window, a.labels);
    println!();
    println!("| words | span tensor | band K | s / forward | peak RSS (MiB) | GFLOP/s |");
    println!("|---:|---|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for &n in &a.words {
        for mode in ["banded", "full"] {
            let kk = if mode == "full" { 2 * n - 1 } else { 2 * a.window + 1 };
            // ~12 live band-sized f32 tensors, plus ~4 copies of one row chunk's [256, K, K]
            // attention scores (orders of magnitude measured with this command)
            let est_gib = (12.0 * (n * kk * 32 * 4) as f64 + 4.0 * (n.min(256) * kk * kk * 4) as f64) / (1u64 << 30) as f64;
            let tflop = span_flops(n, kk, a.hidden, 100, 32, 2, a.labels) / 1e12;
            let skip = if est_gib > a.budget_gib {
                Some(format!("est. {est_gib:.0} GiB > {:.0} GiB", a.budget_gib))
            } else if mode == "full" && tflop > a.max_tflop {
                Some(format!("est. {tflop:.0} TFLOP > {:.0}", a.max_tflop))
            } else {
                None
            };
            let row = match skip {
                Some(why) => serde_json::json!({"words": n, "mode": mode, "k": kk, "skipped": why}),
                None => {
                    let out = Command::new(&exe)
                        .args(["bench", "span-one", "--words", &n.to_string(), "--mode", mode])
                        .args(["--window", &a.window.to_string(), "--hidden", &a.hidden.to_string(), "--labels", &a.labels.to_string()])
                        .output()
                        .context("running sener bench span-one")?;
                    match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                        Ok(v) if out.status.success() => v,
                        _ => serde_json::json!({"words": n, "mode": mode, "k": kk,
                            "skipped": format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())}),
                    }
                }
            };
            match row.get("skipped").and_then(|s| s.as_str()) {
                Some(why) => println!("| {n} | {mode} | {kk} | — | — | {why} |"),
                None => println!(
                    "| {n} | {mode} | {kk} | {:.2} | {:.0} | {:.0} |",
                    row["seconds"].as_f64().unwrap_or(f64::NAN),
                    row["peak_rss"].as_f64().unwrap_or(0.0) / 1048576.0,
                    row["gflops_per_s"].as_f64().unwrap_or(f64::NAN)
                ),
            }
            all.push(row);
        }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&all)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

pub fn run_span_one(a: BenchSpanOneArgs) -> Result<()> {
    use sener::span::{SpanConfig, SpanModel};
    let window = match a.mode.as_str() {
        "banded" => a.window,
        "full" => a.words.saturating_sub(1).max(1),
        m => bail!("--mode {m}: expected banded or full"),
    };
    let cfg = SpanConfig { window, ..SpanConfig::default() };
    let model = SpanModel::init(cfg, a.hidden, a.labels, 0, DType::F32, &Device::Cpu)?;
    let words = Tensor::randn(0f32, 1.0, (1, a.words, a.hidden), &Device::Cpu)?;
    // warm-up on a short input
    let short = words.narrow(1, 0, a.words.min(64))?;
    model.forward(&short, &[a.words.min(64)], &mut ForwardCtx::eval())?;
    sener::mem::reset_peak_rss();
    let t0 = Instant::now();
    let out = model.forward(&words, &[a.words], &mut ForwardCtx::eval())?;
    drop(out);
    let seconds = t0.elapsed().as_secs_f64();
    let kk = 2 * window + 1;
    let flops = span_flops(a.words, kk, a.hidden, 100, 32, 2, a.labels);
    let v = serde_json::json!({"words": a.words, "mode": a.mode, "k": kk, "seconds": seconds,
        "peak_rss": sener::mem::peak_rss().unwrap_or(0), "flops": flops, "gflops_per_s": flops / seconds / 1e9});
    println!("{v}");
    Ok(())
}

pub fn run_train_step(a: BenchTrainStepArgs) -> Result<()> {
    let exe = std::env::current_exe().context("locating the sener binary")?;
    let dir = if a.model == "minilm" {
        Some(minilm_dir(&a.minilm).context("--minilm or $SENER_MINILM_DIR: the all-MiniLM-L6-v2 folder")?)
    } else {
        None
    };
    let cuda = a.device.starts_with("cuda");
    println!(
        "training step (forward + backward + AdamW), {} + {} + span side (w′ {}, c 32, 2 BiSPA, 12 types), batch 1, {}, recompute {}; \
         the dtype is that of the frozen encoder products (adapters, span side, optimiser: f32); bf16 kernel here: {}",
        a.model,
        match a.finetune {
            Finetune::Lora => "LoRA r8",
            Finetune::Full => "full fine-tuning",
        },
        a.span_window,
        a.device,
        a.recompute.as_str(),
        sener::gemm_bf16::Bf16Kernel::detect().map_or("none", |k| k.name())
    );
    for d in &a.dtypes {
        sener::gemm_bf16::DtypeChoice::parse(d).with_context(|| format!("--dtypes {d}"))?;
    }
    println!();
    println!("| kernels | dtype | tokens | words | first step s | later step s | peak {} (MiB) |", if cuda { "GPU memory" } else { "RSS" });
    println!("|---|---|---:|---:|---:|---:|---:|");
    let mut all = Vec::new();
    for kernels in &a.kernels {
    for dtype in &a.dtypes {
    for &t in &a.lengths {
        if dtype == "bf16" && !cuda && sener::gemm_bf16::Bf16Kernel::detect().is_none() {
            let why = "no bf16 kernel on this CPU (neither AMX nor AVX512-BF16)";
            println!("| {} | bf16 | {t} | — | — | — | {why} |", kernels.as_str());
            all.push(serde_json::json!({"tokens": t, "dtype": "bf16", "kernels": kernels.as_str(), "skipped": why}));
            continue;
        }
        let mut cmd = Command::new(&exe);
        cmd.args(["bench", "train-step-one", "--length", &t.to_string(), "--steps", &a.steps.to_string(), "--dtype", dtype])
            .args(["--kernels", kernels.as_str()])
            .args(["--model", &a.model, "--device", &a.device, "--recompute", a.recompute.as_str(), "--finetune", a.finetune.as_str()])
            .args(["--span-window", &a.span_window.to_string()]);
        if let Some(d) = &dir {
            cmd.arg("--minilm").arg(d);
        }
        let gpu = if cuda { crate::bench_model::GpuUse::start() } else { None };
        let out = cmd.output().context("running sener bench train-step-one")?;
        let gpu_mib = gpu.map(|g| g.stop());
        let mut row = match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) if out.status.success() => v,
            _ => serde_json::json!({"tokens": t, "skipped": format!("failed: {}", String::from_utf8_lossy(&out.stderr).trim())}),
        };
        if let (Some(m), Some(o)) = (gpu_mib, row.as_object_mut()) {
            o.insert("peak_gpu_mib".into(), m.into());
        }
        if let Some(o) = row.as_object_mut() {
            o.insert("kernels".into(), kernels.as_str().into());
        }
        match row.get("skipped").and_then(|s| s.as_str()) {
            Some(why) => println!("| {} | {dtype} | {t} | — | — | — | {why} |", kernels.as_str()),
            None => println!(
                "| {} | {} | {t} | {} | {:.2} | {:.2} | {:.0} |",
                kernels.as_str(),
                row["dtype"].as_str().unwrap_or(dtype),
                row["words"],
                row["first_step_seconds"].as_f64().unwrap_or(f64::NAN),
                row["step_seconds"].as_f64().unwrap_or(f64::NAN),
                match gpu_mib {
                    Some(m) => m as f64,
                    None => row["peak_rss"].as_f64().unwrap_or(0.0) / 1048576.0,
                }
            ),
        }
        all.push(row);
    }
    }
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&all)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// One segment of `length` tokens: [CLS], words of 1, 1 and 2 subwords in turn (≈ 1.33 subwords
/// per word, as English text with this tokenizer), [SEP]; ids drawn from the ordinary vocabulary.
pub(crate) fn synthetic_segment(length: usize, vocab: u32, cls: u32, sep: u32) -> (Vec<u32>, Vec<u32>, usize) {
    let mut ids = vec![cls];
    let mut idx = vec![0u32];
    let mut word = 0u32;
    let mut x = 12345u64;
    while ids.len() + 1 < length {
        word += 1;
        let pieces = if word % 3 == 0 { 2 } else { 1 };
        for _ in 0..pieces {
            if ids.len() + 1 >= length {
                break;
            }
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ids.push(1000 + (x >> 33) as u32 % (vocab - 1000));
            idx.push(word);
        }
    }
    ids.push(sep);
    idx.push(0);
    (ids, idx, word as usize)
}

pub fn run_train_step_one(a: BenchTrainStepOneArgs) -> Result<()> {
    use sener::model::{BaseEncoder, Sener, SenerConfig};
    use sener::span::loss::{band_labels, GoldSpan};
    use sener::train::recompute::loss_and_grads;
    use sener::span::{band::Band, SpanConfig, SpanModel};
    use sener::train::optim::{AdamW, AdamWConfig};
    use sener::train::trainer::{paper_groups, TrainConfig};
    let dev = crate::common::parse_device(&a.device)?;
    // The model and optimiser `sener train` builds, with the paper's defaults.
    let recipe = TrainConfig::paper();
    let opts = EncoderOptions { arrow: recipe.arrow.clone(), dtype: DType::F32, device: dev.clone() };
    let dir = match a.model.as_str() {
        "minilm" => minilm_dir(&a.minilm).context("--minilm or $SENER_MINILM_DIR")?,
        m => PathBuf::from(format!("random:{m}")),
    };
    let mut encoder = bench_encoder(&a.model, &a.minilm, &opts, a.finetune == Finetune::Full)?;
    if a.finetune == Finetune::Lora {
        encoder.add_lora(&recipe.lora, 0)?;
    }
    let labels = 12;
    let span_cfg = SpanConfig { window: a.span_window, ..SpanConfig::default() };
    span_cfg.validate()?;
    let span = SpanModel::init(span_cfg.clone(), encoder.hidden_size(), labels, 0, DType::F32, &dev)?;
    let config = SenerConfig {
        base: BaseEncoder { path: dir.clone(), sha256: None, hub: None, finetuned_from: None },
        labels: (0..labels).map(|i| format!("type{i}")).collect(),
        arrow: recipe.arrow.clone(),
        span: span_cfg,
        lora: (a.finetune == Finetune::Lora).then(|| recipe.lora.clone()),
        max_len: a.length,
        splitter: Default::default(),
        thresholds: None,
    };
    let mut model = Sener { config, encoder, span };
    let precision = a.dtype.precision(&dev)?;
    a.kernels.check(&dev)?;
    if a.kernels == sener::nn::Kernels::Generic && precision != sener::gemm_bf16::Precision::F32 {
        bail!("--kernels generic runs candle ops only; --dtype bf16 is one of sener's CPU kernels");
    }
    // as `sener train` sets it: the encoder's linear layers and the span side's products
    model.set_precision(precision)?;
    let (params, groups) = paper_groups(&model.trainable(), recipe.lr_new, recipe.lr_encoder, recipe.weight_decay);
    let mut opt = AdamW::new(params, groups, AdamWConfig { clip_norm: recipe.clip_norm, ..AdamWConfig::default() })?;
    let (ids, idx, words) = synthetic_segment(a.length, model.encoder.vocab_size() as u32, 101, 102);
    let batch = sener::model::Batch::new(&[(ids, idx, words)], 0, &dev)?;
    // a few entities of several lengths (labels matter for the loss only, not the cost)
    let gold: Vec<GoldSpan> = (0..words.saturating_sub(40)).step_by(37).map(|s| GoldSpan { start: s, end: s + (s % 30), label: s % labels }).collect();
    let lab = band_labels(&[gold], &[words], words, Band::new(model.span.config.window), labels, &dev)?;
    let mut ctx = ForwardCtx::train(0).with_kernels(a.kernels);
    let mut times = Vec::new();
    sener::mem::reset_peak_rss();
    let plan = a.recompute.plan(batch.ids.elem_count(), ctx.fused_on(&dev), model.encoder.saved_layer_bytes());
    for _ in 0..a.steps.max(1) {
        let t0 = Instant::now();
        let step = loss_and_grads(&model, &batch, &lab.labels, 1.0, 1.0, &mut ctx, plan)?;
        opt.step_with(|name, _| step.grads.get(name).cloned(), 1.0)?;
        dev.synchronize()?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let later = if times.len() > 1 { times[1..].iter().sum::<f64>() / (times.len() - 1) as f64 } else { times[0] };
    let v = serde_json::json!({"tokens": a.length, "words": words, "dtype": precision.describe(), "recompute": plan.recompute, "keep_encoder": plan.keep_encoder, "kernels": a.kernels.as_str(), "finetune": a.finetune.as_str(), "first_step_seconds": times[0], "step_seconds": later,
        "peak_rss": sener::mem::peak_rss().unwrap_or(0)});
    println!("{v}");
    Ok(())
}
