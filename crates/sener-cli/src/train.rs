//! `sener train`: flags and an optional TOML file into one `TrainConfig`, printed at start and
//! saved beside the model (`<output>.train.json`).

use std::path::PathBuf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sener::train::trainer::{train_with, Progress, TrainConfig, TrainHooks};

use crate::cli::TrainArgs;

pub fn config_from(a: &TrainArgs) -> Result<TrainConfig> {
    let mut c: TrainConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}: invalid training config", p.display()))?
        }
        None => TrainConfig::default(),
    };
    macro_rules! set {
        ($($field:ident),*) => { $( if let Some(v) = a.$field.clone() { c.$field = v; } )* };
    }
    set!(train, base, output, epochs, batch_size, micro_batch, lr_encoder, lr_new, max_len, seed, wwm, patience, checkpoint_every);
    c.resume |= a.resume;
    if a.dev.is_some() {
        c.dev = a.dev.clone();
    }
    if a.max_steps.is_some() {
        c.max_steps = a.max_steps;
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
    c.prior_bias |= a.prior_bias;
    if let Some(r) = a.recompute {
        c.recompute = r;
    }
    if let Some(f) = a.finetune {
        c.finetune = f;
    }
    if c.train.as_os_str().is_empty() || c.base.as_os_str().is_empty() {
        bail!("--train and --base are required (flags or the --config file)");
    }
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
        let (dir, hub) = crate::hub::fetch_base(&c.base)?;
        eprintln!("base encoder {} -> {}", c.base.display(), dir.display());
        c.base = dir;
        c.base_hub = Some(hub);
        Ok(())
    }
    #[cfg(not(feature = "hub"))]
    bail!("--base {}: no such folder (this build has no Hugging Face Hub support: feature `hub`)", c.base.display())
}

pub fn run(a: TrainArgs) -> Result<()> {
    let mut cfg = config_from(&a)?;
    resolve_base(&mut cfg)?;
    let device = crate::cli::parse_device(&a.device)?;
    let json = serde_json::to_string_pretty(&cfg)?;
    eprintln!("training with:\n{json}");
    let out = &cfg.output;
    let name = out.file_name().and_then(|s| s.to_str()).unwrap_or("model");
    let parent = out.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&parent).ok();
    std::fs::write(parent.join(format!("{name}.train.json")), &json).context("writing the training config")?;
    let log_path = a.metrics_log.clone().unwrap_or_else(|| parent.join(format!("{name}.metrics.jsonl")));
    // A resumed run appends to its log; line-buffered so that a killed run's log is complete.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(cfg.resume)
        .write(true)
        .truncate(!cfg.resume)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut log = std::io::LineWriter::new(file);
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
    let hooks = TrainHooks { stop: Some(stop), progress: Some(Box::new(progress)) };
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
