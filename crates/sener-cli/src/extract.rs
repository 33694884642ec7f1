//! `sener extract`: entities from files, folders or standard input.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sener::decode::{DecodeOptions, Threshold};
use sener::extract::{ExtractOptions, Extractor};
use sener_data::readers::{self, Format};

use crate::cli::ExtractArgs;

/// (source name, text) of every input document.
fn inputs(a: &ExtractArgs) -> Result<Vec<(String, String)>> {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in &a.inputs {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading folder {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file())
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    let stdin = files.is_empty() || files.iter().any(|f| f.as_os_str() == "-");
    let mut out = Vec::new();
    let read_text = |name: &str, bytes: Vec<u8>| -> Result<String> {
        String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{name}: not valid UTF-8 (first bad byte at offset {})", e.utf8_error().valid_up_to()))
    };
    if a.format == "text" {
        for f in files.iter().filter(|f| f.as_os_str() != "-") {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            out.push((f.display().to_string(), read_text(&f.display().to_string(), bytes)?));
        }
        if stdin {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
            out.push(("<stdin>".to_string(), read_text("<stdin>", bytes)?));
        }
    } else {
        let format: Format = a.format.parse()?;
        for f in &files {
            let read = if f.as_os_str() == "-" {
                readers::read_from(format, "<stdin>", std::io::stdin().lock())?
            } else {
                readers::read_path(format, f).with_context(|| format!("reading {}", f.display()))?
            };
            crate::data_cmds::print_report(&f.display().to_string(), &read.report);
            out.extend(read.documents.into_iter().map(|d| (format!("{}#{}", f.display(), d.id), d.text)));
        }
    }
    Ok(out)
}

pub fn run(a: ExtractArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&a.threshold) {
        bail!("--threshold {} is not a probability", a.threshold);
    }
    let device = crate::cli::parse_device(&a.device)?;
    let mut ex = Extractor::load_on(&a.model, &device).with_context(|| format!("loading model {}", a.model.display()))?;
    ex.options = ExtractOptions {
        decode: DecodeOptions { threshold: Threshold::Global(a.threshold), allow_nested: !a.flat, ..DecodeOptions::default() },
        max_len: a.max_len,
        overlap: a.overlap,
    };
    let docs = inputs(&a)?;
    let mut all = Vec::new();
    for (name, text) in &docs {
        let r = ex.extract(text).with_context(|| format!("extracting from {name}"))?;
        let v = serde_json::json!({"source": name, "words": r.words, "segments": r.segments, "entities": r.entities});
        match a.output_format.as_str() {
            "jsonl" => println!("{v}"),
            "json" => all.push(v),
            "table" => {
                println!("{name}: {} words, {} segment(s), {} entities", r.words, r.segments, r.entities.len());
                for e in &r.entities {
                    println!("  {:<20} {:>7} {:>7}  {:.3}  {}", e.label, e.start, e.end, e.score, e.text.replace('\n', " "));
                }
            }
            other => bail!("--output-format {other}: expected jsonl, json or table"),
        }
    }
    if a.output_format == "json" {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}
