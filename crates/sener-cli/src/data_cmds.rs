//! `sener convert` and `sener stats`: the data layer (`sener-data`) on the command line.

use std::path::Path;

use anyhow::{Context, Result};
use sener_data::align::{align, WordTokenizer};
use sener_data::readers::{self, Format, ReadResult};
use sener_data::segment::{segment, SegmentConfig};
use sener_data::stats::Stats;
use sener_data::writers::{self, OutputFormat};
use sener_data::Report;

use crate::cli::{ConvertArgs, StatsArgs};

/// Reads one input ('-' = standard input).
fn read_input(format: Format, path: &Path) -> Result<ReadResult> {
    if path.as_os_str() == "-" {
        Ok(readers::read_from(format, "<stdin>", std::io::stdin().lock())?)
    } else {
        readers::read_path(format, path).with_context(|| format!("reading {} as {format:?}", path.display()))
    }
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
    let read = read_input(from, &a.input)?;
    print_report("read", &read.report);
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
