//! `sener convert` and `sener stats`: the data layer (`sener-data`) on the command line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use sener_data::align::{align, WordTokenizer};
use sener_data::readers::{self, Format, ReadResult};
use sener_data::segment::{segment, SegmentConfig};
use sener_data::stats::Stats;
use sener_data::writers::{self, OutputFormat};
use sener_data::Report;

use sener_data::split;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Input format: sener, scirex, conll, conll-bioes, gliner, brat (a folder), text, text-lines, jsonl.
    #[arg(long)]
    pub from: String,
    /// Output format: jsonl, jsonl-bytes, conll, conll-bioes, brat (a folder), sener.
    #[arg(long)]
    pub to: String,
    /// Input file ('-' = standard input).
    pub input: PathBuf,
    /// Output file (folder for brat).
    pub output: PathBuf,
    /// Rebuild natural text from the words (no space before `, . ) ;` and clitics, none after
    /// `(`, paired quotes; see `sener_data::detok`) with every word and entity kept exactly: raw
    /// text as users have it, to measure extraction on (write it as jsonl).
    #[arg(long)]
    pub detokenize: bool,
    /// Hold out this fraction of the documents (chosen by a hash of their ids, as `sener train
    /// --holdout` does) and write them to --held-out instead of OUTPUT.
    #[arg(long, requires = "held_out")]
    pub holdout: Option<f64>,
    /// Where the held-out documents go (same output format).
    #[arg(long, requires = "holdout")]
    pub held_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Input format (as for convert).
    #[arg(long, default_value = "sener")]
    pub format: String,
    /// Input files ('-' = standard input).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Model folder (tokenizer.json or spm.model): adds subword and segment counts.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Segment length in tokens, [CLS]/[SEP] included.
    #[arg(long, default_value_t = 5120)]
    pub max_len: usize,
    /// One-sided span window in words (spans up to window+1 words can be predicted).
    #[arg(long, default_value_t = 128)]
    pub span_window: usize,
    /// JSON output.
    #[arg(long)]
    pub json: bool,
    /// How well each word splitter reproduces the documents' words on their natural text
    /// (detokenized, as `convert --detokenize` writes it): word-span agreement per splitter.
    #[arg(long)]
    pub splitters: bool,
}

/// Reads one input ('-' = standard input), bounded and refused at a NUL byte as `extract` does
/// ([`crate::input`]; every format is text). brat folders are read by their reader.
fn read_input(format: Format, path: &Path) -> Result<ReadResult> {
    let limit = crate::input::DEFAULT_MAX_INPUT_BYTES;
    let (name, bytes) = if path.as_os_str() == "-" {
        ("<stdin>".to_string(), crate::input::read_bounded(std::io::stdin().lock(), "<stdin>", limit, true)?)
    } else if format == Format::Brat {
        return readers::read_path(format, path).with_context(|| format!("reading {} as {format:?}", path.display()));
    } else {
        (path.display().to_string(), crate::input::read_file(path, limit, true)?)
    };
    readers::read_bytes(format, &name, &bytes).with_context(|| format!("reading {name} as {format:?}"))
}

/// Prints a report's counts (and a few examples) to stderr; nothing is dropped silently.
pub fn print_report(what: &str, report: &Report) {
    for (issue, n) in report.counts() {
        eprintln!("{what}: {n} × {}", issue.describe());
        for ex in report.examples(*issue).iter().take(3) {
            eprintln!("    e.g. {ex}");
        }
    }
}

pub fn convert(a: ConvertArgs) -> Result<()> {
    let from: Format = a.from.parse()?;
    let to: OutputFormat = a.to.parse()?;
    let mut read = read_input(from, &a.input)?;
    print_report("read", &read.report);
    if a.detokenize {
        read.documents = read
            .documents
            .iter()
            .map(sener_data::detok::detokenize)
            .collect::<sener_data::Result<_>>()
            .with_context(|| format!("--detokenize: {}", a.input.display()))?;
    }
    if let (Some(f), Some(held_path)) = (a.holdout, &a.held_out) {
        if !(0.0..0.9).contains(&f) {
            anyhow::bail!("--holdout {f} must be in [0, 0.9)");
        }
        let (kept, held) = sener_data::holdout::holdout_split(std::mem::take(&mut read.documents), f);
        let report = writers::write_path(to, held_path, &held).with_context(|| format!("writing {}", held_path.display()))?;
        print_report("write", &report);
        eprintln!("held out {} documents -> {}", held.len(), held_path.display());
        read.documents = kept;
    }
    let report = writers::write_path(to, &a.output, &read.documents).with_context(|| format!("writing {}", a.output.display()))?;
    print_report("write", &report);
    let entities: usize = read.documents.iter().map(|d| d.entities.len()).sum();
    eprintln!("converted {} documents, {entities} entities -> {}", read.documents.len(), a.output.display());
    Ok(())
}

pub fn stats(a: StatsArgs) -> Result<()> {
    let format: Format = a.format.parse()?;
    let mut docs = Vec::new();
    let mut report = Report::new();
    for p in &a.inputs {
        let r = read_input(format, p)?;
        report.merge(r.report);
        docs.extend(r.documents);
    }
    print_report("read", &report);
    if a.splitters {
        return splitter_agreement(&docs);
    }
    let mut s = Stats::of_documents(&docs, a.span_window)?;
    if let Some(dir) = &a.tokenizer {
        let mut tok = WordTokenizer::from_path(dir)?;
        let special = *tok.special();
        let cfg = SegmentConfig { max_len: a.max_len, overlap: 0 };
        for d in &docs {
            if d.words.is_none() {
                continue;
            }
            let al = align(d, &mut tok).with_context(|| format!("tokenizing document {}", d.id))?;
            let (we, _) = d.word_entities()?;
            let seg = segment(d, &al, &we, &special, &cfg)?;
            s.add_segmentation(&al, &seg);
        }
    }
    let per_doc = |x: usize| x as f64 / s.documents.max(1) as f64;
    let buckets = [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 129), (130, usize::MAX)];
    let hist: Vec<(String, usize)> = buckets
        .iter()
        .map(|&(lo, hi)| {
            let n = s.length_histogram.range(lo..=hi).map(|(_, c)| c).sum();
            let name = if hi == usize::MAX { format!("≥{lo}") } else if lo == hi { lo.to_string() } else { format!("{lo}–{hi}") };
            (name, n)
        })
        .collect();
    if a.json {
        let v = serde_json::json!({
            "documents": s.documents, "words": s.words, "words_per_doc": per_doc(s.words), "max_words": s.max_words,
            "chars": s.chars, "entities": s.entities, "per_label": s.per_label,
            "length_histogram": s.length_histogram, "longer_than_span_window": s.longer_than_span_window,
            "span_window": a.span_window, "not_word_aligned": s.not_word_aligned,
            "subwords": s.subwords, "subwords_per_doc": per_doc(s.subwords), "max_subwords": s.max_subwords,
            "segments": s.segments, "max_len": a.max_len, "entities_outside_segments": s.entities_outside_segments,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("documents: {}", s.documents);
    println!("words: {} ({:.1} per document, max {})", s.words, per_doc(s.words), s.max_words);
    if a.tokenizer.is_some() {
        println!("subwords: {} ({:.1} per document, max {})", s.subwords, per_doc(s.subwords), s.max_subwords);
        println!("segments of at most {} tokens: {}", a.max_len, s.segments);
        println!("entities crossing a segment boundary: {}", s.entities_outside_segments);
    }
    println!("entities: {}", s.entities);
    for (label, n) in &s.per_label {
        println!("  {label}: {n}");
    }
    println!("entity length in words:");
    for (name, n) in &hist {
        println!("  {name}: {n}");
    }
    println!("entities longer than the span window ({} words): {}", a.span_window + 1, s.longer_than_span_window);
    if s.not_word_aligned > 0 {
        println!("entities not aligned to words: {}", s.not_word_aligned);
    }
    Ok(())
}

/// `stats --splitters`: each splitter against the documents' own words on their natural text.
fn splitter_agreement(docs: &[sener_data::Document]) -> Result<()> {
    let natural = docs
        .iter()
        .filter(|d| d.words.is_some())
        .map(sener_data::detok::detokenize)
        .collect::<sener_data::Result<Vec<_>>>()?;
    let (best, all) = split::best_for(&natural);
    println!("{} documents with words, {} words", natural.len(), all[0].1.gold_words);
    println!("| splitter | words found | same span | word F1 | disagreements per 1,000 words | documents exact |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (s, ag) in &all {
        println!(
            "| {}{} | {} | {} | {:.4} | {:.1} | {} / {} |",
            s,
            if *s == best { " (best)" } else { "" },
            ag.split_words,
            ag.same,
            ag.f1(),
            ag.disagreements_per_1000(),
            ag.exact_documents,
            ag.documents
        );
    }
    Ok(())
}
