//! `sener bench dtype`: what `--dtype bf16` does to a real model's outputs. The same segments of
//! real documents go through the model in f32 and in bf16; it reports the largest and the mean
//! absolute difference of the band logits, the decisions that flip at the model's thresholds,
//! and the time of each pass (the F1 of both is `sener eval --dtype`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use sener::extract::Extractor;
use sener::gemm_bf16::DtypeChoice;
use sener_data::readers::{self, Format};

/// `sener bench dtype`'s flags.
#[derive(Args, Debug)]
pub struct BenchDtypeArgs {
    /// Model folder (or Hub id).
    #[arg(long)]
    pub model: PathBuf,
    /// Annotated or plain documents (any reader format with words).
    #[arg(long)]
    pub data: PathBuf,
    /// Reader format of --data.
    #[arg(long, default_value = "sener")]
    pub format: String,
    /// Documents to run (the first N).
    #[arg(long, default_value_t = 20)]
    pub docs: usize,
}

pub fn run(a: BenchDtypeArgs) -> Result<()> {
    if !(1..=100_000).contains(&a.docs) {
        bail!("--docs must be in 1..=100000");
    }
    let format: Format = a.format.parse().with_context(|| format!("--format {}", a.format))?;
    let read = readers::read_path(format, &a.data).with_context(|| format!("reading {}", a.data.display()))?;
    let docs: Vec<_> = read.documents.into_iter().filter(|d| d.words.as_ref().is_some_and(|w| !w.is_empty())).take(a.docs).collect();
    if docs.is_empty() {
        bail!("{}: no documents with words", a.data.display());
    }
    let precision = DtypeChoice::Bf16.resolve().context("bench dtype compares with bf16")?;
    let dir = crate::common::model_dir(&a.model)?;
    let mut ex = Extractor::load(&dir).with_context(|| format!("loading model {}", a.model.display()))?;
    let labels = ex.model.config.labels.len();
    let thresholds: Vec<f32> = match &ex.model.config.thresholds {
        Some(t) => t.clone(),
        None => vec![0.5; labels],
    };
    let mut segments = Vec::new();
    for d in &docs {
        segments.extend(ex.segments_of(d, &ex.options).with_context(|| format!("document {}", d.id))?);
    }
    let pad = ex.pad_id();
    let decode = ex.options.decode.clone();
    let run_all = |ex: &Extractor| -> Result<(Vec<f32>, f64)> {
        let t0 = Instant::now();
        let mut all = Vec::new();
        for s in &segments {
            let (logits, _) = ex.model.predict_segment(s, pad, &decode)?;
            all.extend(logits.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok((all, t0.elapsed().as_secs_f64()))
    };
    let (l32, t32) = run_all(&ex)?;
    ex.model.set_precision(precision)?;
    let (l16, t16) = run_all(&ex)?;
    let (mut worst, mut sum, mut flips, mut positive) = (0f32, 0f64, 0usize, 0usize);
    for (i, (&a32, &a16)) in l32.iter().zip(&l16).enumerate() {
        // cells outside a segment's band carry −1e-6 in both (`Sener::predict_segment`)
        if a32 == -1e-6 && a16 == -1e-6 {
            continue;
        }
        let d = (a32 - a16).abs();
        worst = worst.max(d);
        sum += d as f64;
        let t = thresholds[i % labels];
        let (p32, p16) = (sigmoid(a32) >= t, sigmoid(a16) >= t);
        positive += p32 as usize;
        flips += (p32 != p16) as usize;
    }
    let words: usize = segments.iter().map(|s| s.n_words).sum();
    println!("{} documents, {} segments, {words} words, {} band logits; bf16 path: {}", docs.len(), segments.len(), l32.len(), precision.describe());
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!("| largest abs. logit difference | {worst:.4} |");
    println!("| mean abs. logit difference | {:.2e} |", sum / l32.len().max(1) as f64);
    println!("| band cells above their type's threshold in f32 | {positive} |");
    println!("| decisions flipped by bf16 | {flips} |");
    println!("| f32 pass, s | {t32:.2} |");
    println!("| bf16 pass, s | {t16:.2} |");
    Ok(())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
