//! `sener bench throughput`: words/s of extraction on many short documents against one long one.
//!
//! The documents are cut from a text (default: `examples/scholar-homepage.txt`, compiled in):
//! `--docs` documents of `--min-words`…`--max-words` words (a fixed pseudo-random draw), and one
//! long document of `--long-words` words from the same text. Three runs, side by side in one
//! process with the same model: the long document; the short ones one call each
//! (`Extractor::extract`); the short ones through `Extractor::extract_batch` in batches of
//! `--batch-size`, which packs their segments into shared forward passes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use sener::extract::Extractor;

/// `sener bench throughput`'s flags.
#[derive(Args, Debug)]
pub struct BenchThroughputArgs {
    /// Model folder.
    #[arg(long, default_value = "models/sener-minilm-scholarxl")]
    pub model: PathBuf,
    /// Text to cut the documents from (words at whitespace). [examples/scholar-homepage.txt]
    #[arg(long)]
    pub text: Option<PathBuf>,
    /// Number of short documents.
    #[arg(long, default_value_t = 1000)]
    pub docs: usize,
    /// Fewest words of a short document.
    #[arg(long, default_value_t = 50)]
    pub min_words: usize,
    /// Most words of a short document.
    #[arg(long, default_value_t = 150)]
    pub max_words: usize,
    /// Words of the long document.
    #[arg(long, default_value_t = 10_000)]
    pub long_words: usize,
    /// Documents per `extract_batch` call.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Also write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The validated plain values of [`BenchThroughputArgs`].
struct Plan {
    model: PathBuf,
    words: Vec<String>,
    docs: usize,
    min_words: usize,
    max_words: usize,
    long_words: usize,
    batch_size: usize,
    json: Option<PathBuf>,
}

impl Plan {
    fn from_args(a: BenchThroughputArgs) -> Result<Self> {
        let text = match &a.text {
            Some(p) => String::from_utf8(crate::input::read_file(p, 64 << 20, true)?).with_context(|| format!("{}: not UTF-8", p.display()))?,
            None => include_str!("../../../examples/scholar-homepage.txt").to_string(),
        };
        let words: Vec<String> = text.split_whitespace().map(String::from).collect();
        if words.is_empty() {
            bail!("--text has no words");
        }
        if !(1..=1_000_000).contains(&a.docs) {
            bail!("--docs {} must be in 1..=1000000", a.docs);
        }
        if a.min_words == 0 || a.min_words > a.max_words || a.max_words > 100_000 {
            bail!("--min-words {} and --max-words {} must satisfy 1 ≤ min ≤ max ≤ 100000", a.min_words, a.max_words);
        }
        if !(1..=10_000_000).contains(&a.long_words) {
            bail!("--long-words {} must be in 1..=10000000", a.long_words);
        }
        if !(1..=100_000).contains(&a.batch_size) {
            bail!("--batch-size {} must be in 1..=100000", a.batch_size);
        }
        Ok(Self { model: a.model, words, docs: a.docs, min_words: a.min_words, max_words: a.max_words, long_words: a.long_words, batch_size: a.batch_size, json: a.json })
    }

    /// `n` consecutive words of the text from word `at`, wrapping around.
    fn cut(&self, at: usize, n: usize) -> String {
        (0..n).map(|i| self.words[(at + i) % self.words.len()].as_str()).collect::<Vec<_>>().join(" ")
    }
}

#[derive(serde::Serialize)]
struct Run {
    mode: &'static str,
    documents: usize,
    words: usize,
    seconds: f64,
    words_per_s: f64,
    docs_per_s: f64,
}

pub fn run(a: BenchThroughputArgs) -> Result<()> {
    let plan = Plan::from_args(a)?;
    let ex = Extractor::load(&plan.model).with_context(|| format!("loading {}", plan.model.display()))?;
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut at = 0;
    let docs: Vec<String> = (0..plan.docs)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let n = plan.min_words + (x >> 33) as usize % (plan.max_words - plan.min_words + 1);
            at += n;
            plan.cut(at - n, n)
        })
        .collect();
    let long = plan.cut(0, plan.long_words);
    ex.extract("warm-up: Jie Tang is a professor at Tsinghua University.")?;

    let mut runs = Vec::new();
    let mut time = |mode: &'static str, texts: &[&str], f: &dyn Fn(&[&str]) -> sener::Result<Vec<sener::extract::Extraction>>| -> Result<()> {
        let t = Instant::now();
        let out = f(texts)?;
        let seconds = t.elapsed().as_secs_f64();
        let words: usize = out.iter().map(|r| r.words).sum();
        eprintln!("{mode}: {} documents, {words} words, {seconds:.2} s", texts.len());
        runs.push(Run { mode, documents: texts.len(), words, seconds, words_per_s: words as f64 / seconds, docs_per_s: texts.len() as f64 / seconds });
        Ok(())
    };
    let short: Vec<&str> = docs.iter().map(String::as_str).collect();
    time("one long document", &[long.as_str()], &|t| t.iter().map(|d| ex.extract(d)).collect())?;
    time("short, one call each", &short, &|t| t.iter().map(|d| ex.extract(d)).collect())?;
    time("short, extract_batch", &short, &|t| {
        let mut out = Vec::with_capacity(t.len());
        for chunk in t.chunks(plan.batch_size) {
            out.extend(ex.extract_batch(chunk)?);
        }
        Ok(out)
    })?;

    let threads = candle_core::utils::get_num_threads();
    println!("extraction throughput, {} ({} threads), short documents of {}–{} words, batches of {}\n", plan.model.display(), threads, plan.min_words, plan.max_words, plan.batch_size);
    println!("| run | documents | words | seconds | words/s | documents/s | words/s vs the long document |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let base = runs[0].words_per_s;
    for r in &runs {
        println!("| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} |", r.mode, r.documents, r.words, r.seconds, r.words_per_s, r.docs_per_s, r.words_per_s / base);
    }
    if let Some(p) = &plan.json {
        let v = serde_json::json!({"model": plan.model, "threads": threads, "batch_size": plan.batch_size, "runs": runs});
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
