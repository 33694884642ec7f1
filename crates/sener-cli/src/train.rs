//! `sener train`: the recipe's defaults, an optional TOML/JSON config file and the flags into one
//! `TrainConfig`, printed at start and saved beside the model (`<output>.train.json`).

use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sener::train::recompute::Recompute;
use sener::train::trainer::{train_with, Finetune, Progress, Recipe, TrainConfig, TrainHooks};
use sener_data::split::SplitterChoice;

/// `sener train`'s flags. Every flag overrides the same key of `--config`; keys set nowhere take
/// the recipe's default (shown in brackets).
#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Training config, TOML or JSON (by extension; any `TrainConfig` key). The effective config
    /// a run saves (`<output>.train.json`) can be given back here unchanged.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Defaults for every key not set: sener (small data, CPU budgets: prior bias, LR 1e-3 /
    /// 3e-3, batch 4, 512-token segments, LoRA on every linear layer, span window 64, thresholds
    /// calibrated on a 10 % held-out part) or paper (the official recipe). [sener]
    #[arg(long)]
    pub recipe: Option<Recipe>,
    /// Training data (any reader format, see --format).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Dev data: evaluated after every epoch; selects the best epoch and calibrates the
    /// thresholds. Without it, --holdout of the training documents is held out for that. [none]
    #[arg(long)]
    pub dev: Option<PathBuf>,
    /// Reader format of --train and --dev: sener, scirex, conll, conll-bioes, gliner, brat,
    /// text, text-lines, jsonl. Raw-text formats are cut into words by --splitter. [sener]
    #[arg(long)]
    pub format: Option<String>,
    /// How raw text is cut into words, recorded in the model and used by extract/serve: auto
    /// (the splitter that best reproduces the training data's own words; treebank for raw-text
    /// data), whitespace, treebank, punct or infix. [auto]
    #[arg(long)]
    pub splitter: Option<SplitterChoice>,
    /// Without --dev: fraction of the training documents held out (chosen by a hash of their
    /// ids, the same every run) for evaluation, selection and calibration. [sener: 0.1; paper: 0]
    #[arg(long)]
    pub holdout: Option<f64>,
    /// Base encoder: a folder (Hugging Face layout, with tokenizer.json or spm.model) or a Hugging
    /// Face Hub id (org/name or org/name@revision), fetched into the Hub cache when not there yet.
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Output model folder (the best model so far is written there atomically). [models/sener]
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Passes over the training data. [30]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Wall-clock budget for the whole run, evaluations included, e.g. 1h, 45m, 1h30m, 900s:
    /// after the first steps the schedule (warm-up and decay) is planned to end within it. [none]
    #[arg(long, value_parser = parse_duration)]
    pub max_time: Option<f64>,
    /// Segments per optimiser step (gradients accumulated). [sener: 4; paper: 16]
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Segments per forward pass; batch size must be a multiple of it. [2]
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Learning rate of the encoder side (LoRA A/B and the q/v biases; every encoder weight
    /// with --finetune full). [sener: 1e-3; paper: 4e-4]
    #[arg(long)]
    pub lr_encoder: Option<f64>,
    /// Learning rate of the new layers (biaffine, BiSPA, head). [sener: 3e-3; paper: 7e-4]
    #[arg(long)]
    pub lr_new: Option<f64>,
    /// Segment length in subword tokens, [CLS]/[SEP] included. [sener: 512; paper: 5120]
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Stop after this many optimiser steps (the schedule is planned for them). [none]
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Seed of the initialisation, batch order, masking and dropout. [42]
    #[arg(long)]
    pub seed: Option<u64>,
    /// Whole-word masking: share of subwords replaced per segment (0: off). [0.15]
    #[arg(long)]
    pub wwm: Option<f64>,
    /// Stop after this many epochs without a better dev F1. [10]
    #[arg(long)]
    pub patience: Option<usize>,
    /// Arrow-attention window (tokens, one side). [128]
    #[arg(long)]
    pub window: Option<usize>,
    /// Span window w′ (words, one side; spans of up to w′+1 words). [sener: 64; paper: 128]
    #[arg(long)]
    pub span_window: Option<usize>,
    /// Number of BiSPA blocks (0 = the "w/o BiSPA" ablation). [2]
    #[arg(long)]
    pub cnn_depth: Option<usize>,
    /// Plain sliding-window attention (the "w SWA" ablation). [off]
    #[arg(long)]
    pub no_global_cls: bool,
    /// Start the head's per-type bias at the training data's prior log-odds (a deviation from the
    /// official initialisation). [sener: on; paper: off]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub prior_bias: Option<bool>,
    /// Weight of the positive cells in the BCE loss (1: the paper's unweighted sum). [1]
    #[arg(long)]
    pub pos_weight: Option<f64>,
    /// Choose per-type decision thresholds on the dev/held-out data after every evaluation; the
    /// model keeps them. [sener: on; paper: off]
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub calibrate: Option<bool>,
    /// Recompute activations in the backward pass instead of keeping them: auto (always on the
    /// CPU's fused path, where it is faster too, keeping the encoder layers' states while they
    /// fit 3 GiB; elsewhere micro-batches of 2,048 tokens or more), always (every stage: the
    /// least memory) or never. Cuts a step's memory several-fold. [auto]
    #[arg(long)]
    pub recompute: Option<Recompute>,
    /// Precision of the frozen encoder weights' products: f32, bf16 (bf16 inputs, f32
    /// accumulation, on AMX or AVX512-BF16; adapters, span side and optimiser stay f32) or auto
    /// (bf16 where the CPU has a kernel). [f32]
    #[arg(long)]
    pub dtype: Option<sener::gemm_bf16::DtypeChoice>,
    /// Which ops a training step runs: auto (sener's fused CPU kernels where they apply, candle
    /// ops elsewhere), fused (CPU only) or generic (candle ops on every device, the BiSPA blocks
    /// in row chunks recomputed one at a time: the path a GPU takes, selectable here to measure
    /// it). [auto]
    #[arg(long)]
    pub kernels: Option<sener::nn::Kernels>,
    /// What of the encoder to train: lora (adapters on Q and V and their biases, the paper's
    /// recipe) or full (every encoder weight at --lr-encoder; the model then carries its own
    /// encoder folder). [lora]
    #[arg(long)]
    pub finetune: Option<Finetune>,
    /// LoRA: the linear layers of every encoder layer that get an adapter, comma-separated:
    /// query, key, value, attention_output, intermediate, output, or all. [sener: all; paper:
    /// query,value]
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,
    /// LoRA rank r. [8]
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA α (the update is scaled by α / r). [16]
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// Labels in logit order, comma-separated. [sorted labels of the training data]
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// Start from a trained sener model folder (its adapter and span side) instead of fresh
    /// layers: give a finished run a second schedule, or adapt a model to your own data (other
    /// types get a fresh type head, the rest transfers). Its span and arrow settings, LoRA shape
    /// and base must be this run's. [none]
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Continue an interrupted run from `<output>.resume/` (same configuration); an error when
    /// there is no checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Write the resume checkpoint every N optimiser steps (and after every epoch). [50]
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Licence id for the model card's Hub front matter (mit, apache-2.0, cc-by-4.0, …). [other]
    #[arg(long)]
    pub license: Option<String>,
    /// JSON-lines metrics log. [OUTPUT/../<name>.metrics.jsonl]
    #[arg(long)]
    pub metrics_log: Option<PathBuf>,
    /// cpu or cuda[:N] (needs a build with --features cuda). Under an MPI launcher, `cuda`
    /// without an ordinal gives each rank the GPU of its local rank (with --features nccl the
    /// gradients are then summed by NCCL).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `1h`, `45m`, `1h30m`, `90s`, `2h5m10s` or plain seconds → seconds.
pub fn parse_duration(s: &str) -> std::result::Result<f64, String> {
    let bad = || format!("`{s}` is not a duration such as 1h, 45m, 1h30m or 900s");
    if let Ok(v) = s.parse::<f64>() {
        return if v > 0.0 && v.is_finite() { Ok(v) } else { Err(bad()) };
    }
    let (mut total, mut num) = (0.0, String::new());
    for c in s.chars() {
        match c {
            '0'..='9' | '.' => num.push(c),
            'h' | 'm' | 's' => {
                let v: f64 = num.parse().map_err(|_| bad())?;
                total += v * match c {
                    'h' => 3600.0,
                    'm' => 60.0,
                    _ => 1.0,
                };
                num.clear();
            }
            _ => return Err(bad()),
        }
    }
    if !num.is_empty() || total <= 0.0 {
        return Err(bad());
    }
    Ok(total)
}

/// Reads a TOML or JSON config file into a JSON value (by extension; `.json` is JSON).
fn read_config_file(p: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    if p.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))
    } else {
        let v: toml::Value = toml::from_str(&text).with_context(|| format!("{}: invalid TOML", p.display()))?;
        serde_json::to_value(v).with_context(|| format!("{}: invalid training config", p.display()))
    }
}

/// The run's config: the recipe's defaults, then the config file, then the flags.
pub fn config_from(a: &TrainArgs) -> Result<TrainConfig> {
    let mut file = match &a.config {
        Some(p) => read_config_file(p)?,
        None => serde_json::json!({}),
    };
    if let (Some(r), Some(o)) = (a.recipe, file.as_object_mut()) {
        o.insert("recipe".into(), serde_json::to_value(r)?);
    }
    let where_ = a.config.as_ref().map_or("defaults".to_string(), |p| p.display().to_string());
    let mut c = TrainConfig::from_value(file).with_context(|| format!("{where_}: invalid training config"))?;
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { c.$field = v; } )* };
    }
    set!(train, base, output, epochs, batch_size, micro_batch, lr_encoder, lr_new, max_len, seed, wwm, patience, checkpoint_every, format, splitter, holdout, prior_bias, pos_weight, calibrate, recompute, finetune, dtype, kernels);
    c.resume |= a.resume;
    if a.dev.is_some() {
        c.dev = a.dev.clone();
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
    }
    if a.max_time.is_some() {
        c.max_time = a.max_time;
    }
    if a.license.is_some() {
        c.license = a.license.clone();
    }
    if a.init_from.is_some() {
        c.init_from = a.init_from.clone();
    }
    if let Some(t) = &a.lora_targets {
        c.lora.targets = if t.iter().any(|x| x == "all") { sener::encoder::lora::TARGETS.iter().map(|s| s.to_string()).collect() } else { t.clone() };
    }
    if let Some(r) = a.lora_r {
        c.lora.r = r;
    }
    if let Some(al) = a.lora_alpha {
        c.lora.alpha = al;
    }
    if a.labels.is_some() {
        c.labels = a.labels.clone();
    }
    if let Some(w) = a.window {
        c.arrow.window = w;
    }
    if let Some(w) = a.span_window {
        c.span.window = w;
    }
    if let Some(d) = a.cnn_depth {
        c.span.cnn_depth = d;
    }
    if a.no_global_cls {
        c.arrow.global_cls = false;
    }
    if c.train.as_os_str().is_empty() || c.base.as_os_str().is_empty() {
        bail!("--train and --base are required (flags or the --config file)");
    }
    c.validate()?;
    Ok(c)
}

/// `base` as a folder: local as it is, or (a Hub id such as `microsoft/deberta-v3-large`) fetched
/// into the Hugging Face cache, with `base_hub` set to `org/name@commit`.
fn resolve_base(c: &mut TrainConfig) -> Result<()> {
    if c.base.exists() {
        return Ok(());
    }
    #[cfg(feature = "hub")]
    {
        let (dir, hub) = sener::hub::fetch_base(&c.base)?;
        eprintln!("base encoder {} -> {}", c.base.display(), dir.display());
        c.base = dir;
        c.base_hub = Some(hub);
        Ok(())
    }
    #[cfg(not(feature = "hub"))]
    bail!("--base {}: no such folder (this build has no Hugging Face Hub support: feature `hub`)", c.base.display())
}

/// The collective of this run and the device this rank trains on. Started by an MPI launcher
/// (`mpirun`, `srun`) with the `mpi` feature: MPI, or NCCL where the device is a GPU and the
/// build has the `nccl` feature; one process otherwise. Under a launcher `--device cuda` (no
/// ordinal) means one GPU per rank: the rank's local rank on its machine. `singleton`: start MPI
/// even without a launcher (a one-rank world; `sener bench collective`).
pub(crate) fn collective(device: &str, singleton: bool) -> Result<(Box<dyn sener::train::collective::Collective>, candle_core::Device)> {
    use sener::train::collective;
    if !collective::launched_by_mpi() && !(singleton && cfg!(feature = "mpi")) {
        return Ok((Box::new(collective::Local), crate::common::parse_device(device)?));
    }
    let device = match (device, collective::local_rank()) {
        ("cuda", Some(local)) => format!("cuda:{local}"),
        _ => device.to_string(),
    };
    #[cfg(feature = "mpi")]
    {
        let mpi = collective::Mpi::init().context("starting MPI")?;
        let dev = crate::common::parse_device(&device)?;
        #[cfg(feature = "nccl")]
        if dev.is_cuda() {
            let nccl = collective::Nccl::init(mpi, &dev).context("starting NCCL over MPI")?;
            return Ok((Box::new(nccl), dev));
        }
        Ok((Box::new(mpi), dev))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = device;
        bail!("started by an MPI launcher, but this build has no MPI support (cargo build --release -p sener-cli --features mpi)")
    }
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut cfg = config_from(&a)?;
    let (coll, device) = collective(&a.device, false)?;
    let (rank, world) = (coll.rank(), coll.world());
    if rank > 0 {
        // Rank 0 reports, logs and writes; the others train quietly. A launcher forwards Ctrl-C
        // to every rank: here it is only noted, rank 0 decides (and every rank stops with it).
        ctrlc::set_handler(|| {}).context("installing the Ctrl-C handler")?;
        resolve_base(&mut cfg)?;
        let hooks = TrainHooks { stop: None, progress: None, collective: Some(coll.as_ref()) };
        train_with(&cfg, &device, &mut std::io::sink(), hooks).with_context(|| format!("training (rank {rank} of {world})"))?;
        return Ok(());
    }
    if world > 1 {
        eprintln!("data-parallel training: rank 0 of {world} ({})", if device.is_cuda() { "NCCL" } else { "MPI" });
    }
    resolve_base(&mut cfg)?;
    let json = serde_json::to_string_pretty(&cfg)?;
    eprintln!("training with:\n{json}");
    let out = &cfg.output;
    let (mut log, log_path) = sener::train::trainer::open_run_files(&cfg, a.metrics_log.as_deref()).context("writing the training config and opening the metrics log")?;
    // First Ctrl-C (or SIGTERM): finish the optimiser step, write the resume checkpoint, exit
    // cleanly. A second one exits at once (the last periodic checkpoint still resumes).
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                eprintln!("\nsecond interrupt: exiting without a new checkpoint");
                std::process::exit(130);
            }
            eprintln!("\ninterrupt: stopping after this optimiser step (Ctrl-C again to quit now)");
        })
        .context("installing the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} micro-batches  {msg}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let progress = |p: &Progress| {
        bar.set_length(p.micros as u64);
        bar.set_position(p.micro as u64);
        bar.set_prefix(format!("epoch {}/{}", p.epoch + 1, p.epochs));
        let tps = if p.seconds > 0.0 { p.tokens as f64 / p.seconds } else { 0.0 };
        bar.set_message(format!("step {}/{}  loss {:.4}  lr {:.2e}  {:.0} tok/s", p.step, p.total_steps, p.loss, p.lr_new, tps));
    };
    let hooks = TrainHooks { stop: Some(stop), progress: Some(Box::new(progress)), collective: Some(coll.as_ref()) };
    let report = train_with(&cfg, &device, &mut log, hooks).context("training")?;
    bar.finish_and_clear();
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    if report.interrupted {
        eprintln!(
            "interrupted: the weights so far are in {} (unless a better dev epoch was saved there); \
             resume with the same command plus --resume (checkpoint in {}.resume)",
            out.display(),
            out.display()
        );
    } else {
        eprintln!("model -> {}, metrics -> {}", out.display(), log_path.display());
    }
    Ok(())
}
