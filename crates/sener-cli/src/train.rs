//! `sener train`: flags and an optional TOML file into one `TrainConfig`, printed at start and
//! saved beside the model (`<output>.train.json`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sener::train::trainer::{train, TrainConfig};

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
    if c.train.as_os_str().is_empty() || c.base.as_os_str().is_empty() {
        bail!("--train and --base are required (flags or the --config file)");
    }
    Ok(c)
}

pub fn run(a: TrainArgs) -> Result<()> {
    let cfg = config_from(&a)?;
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
    let report = train(&cfg, &device, &mut log).context("training")?;
    eprintln!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("model -> {}, metrics -> {}", out.display(), log_path.display());
    Ok(())
}
