//! `sener import-official` and `sener score`: the authors' checkpoints, and band logits of SeNER
//! JSON-lines documents computed the way the official code does.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use sener::decode::{merge_segments, DecodeOptions};
use sener::encoder::ArrowConfig;
use sener::model::Sener;
use sener::official::{import, task_labels, ImportOptions};
use sener::span::SpanConfig;
use sener_data::align::{align, WordTokenizer};
use sener_data::readers::{self, Format};
use sener_data::segment::{segment, SegmentConfig};

use crate::cli::{EvalArgs, ImportOfficialArgs, ScoreArgs};

pub fn import_official(a: ImportOfficialArgs) -> Result<()> {
    let labels = match (&a.task, &a.labels) {
        (Some(t), None) => task_labels(t).with_context(|| format!("--task {t}: expected scholar-xl, scirex or profiling-07"))?,
        (None, Some(l)) => l.clone(),
        _ => bail!("give exactly one of --task and --labels"),
    };
    let opts = ImportOptions {
        labels,
        span: SpanConfig {
            window: a.chunks_size,
            biaffine_size: a.biaffine_size,
            cnn_dim: a.cnn_dim,
            cnn_depth: a.cnn_depth,
            ..SpanConfig::default()
        },
        lora_alpha: a.lora_alpha,
        arrow: ArrowConfig::default(),
        max_len: 5120,
    };
    let r = import(&a.checkpoint, &a.base, &a.output, &opts)
        .with_context(|| format!("importing {}", a.checkpoint.display()))?;
    eprintln!(
        "imported {}: {} encoder tensors, {} LoRA projections, {} span tensors, {} labels; ignored {:?} (RoPE tables differ from sener's by at most {:.1e}) -> {}",
        a.checkpoint.display(),
        r.encoder_tensors,
        r.lora_layers,
        r.span_tensors,
        r.config.labels.len(),
        r.ignored,
        r.rope_max_diff,
        a.output.display()
    );
    Ok(())
}

fn word_tokenizer(dir: &Path) -> Result<WordTokenizer> {
    WordTokenizer::from_path(dir).with_context(|| format!("loading the encoder's tokenizer from {}", dir.display()))
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let dev = crate::cli::parse_device(&a.device)?;
    let model = Sener::load(&a.model, &dev).with_context(|| format!("loading model {}", a.model.display()))?;
    let mut tok = word_tokenizer(&model.config.base_dir(&a.model))?;
    let special = *tok.special();
    let read = readers::read_path(Format::Sener, &a.input).with_context(|| format!("reading {}", a.input.display()))?;
    crate::data_cmds::print_report("read", &read.report);
    let cfg = SegmentConfig::new(a.max_len.unwrap_or(model.config.max_len));
    let w = model.span.config.window;
    let opts = DecodeOptions::default();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut decoded_out = match &a.decoded {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?)),
        None => None,
    };
    let mut too_long = 0usize;
    for (line, doc) in read.documents.iter().enumerate() {
        let al = align(doc, &mut tok).with_context(|| format!("tokenizing document {} (line {})", doc.id, line + 1))?;
        let (we, _) = doc.word_entities()?;
        let seg = segment(doc, &al, &we, &special, &cfg)?;
        too_long += we.iter().filter(|e| e.end - e.start > w + 1).count();
        let mut per_segment = Vec::new();
        for (si, s) in seg.segments.iter().enumerate() {
            let (logits, spans) = model.predict_segment(s, special.pad, &opts)?;
            per_segment.push((s.word_offset, spans));
            let name = if si == 0 { format!("logits.{line}") } else { format!("logits.{line}.{si}") };
            tensors.insert(name, logits);
        }
        if let Some(out) = decoded_out.as_mut() {
            let spans: Vec<serde_json::Value> = merge_segments(&per_segment)
                .iter()
                .map(|s| serde_json::json!([s.start, s.end + 1, model.config.labels[s.label]]))
                .collect();
            writeln!(out, "{}", serde_json::json!({"doc_id": doc.id, "entity": spans}))?;
        }
        eprintln!("line {}: {} words, {} segment(s)", line + 1, doc.word_count(), seg.segments.len());
    }
    candle_core::safetensors::save(&tensors, &a.output).with_context(|| format!("writing {}", a.output.display()))?;
    if let Some(mut out) = decoded_out {
        out.flush()?;
    }
    eprintln!(
        "scored {} documents -> {}; {too_long} gold entities are longer than the span window ({} words) and cannot be predicted",
        read.documents.len(),
        a.output.display(),
        w + 1
    );
    Ok(())
}

/// Decoded word spans `(start, end_inclusive, label)` of every document of `docs`.
fn predict(model: &Sener, model_dir: &Path, docs: &[sener_data::Document], cfg: &SegmentConfig) -> Result<Vec<Vec<(usize, usize, String)>>> {
    let mut tok = word_tokenizer(&model.config.base_dir(model_dir))?;
    let special = *tok.special();
    let mut out = Vec::with_capacity(docs.len());
    for doc in docs {
        let al = align(doc, &mut tok).with_context(|| format!("tokenizing document {}", doc.id))?;
        let seg = segment(doc, &al, &[], &special, cfg)?;
        let mut per_segment = Vec::new();
        for s in &seg.segments {
            per_segment.push((s.word_offset, model.predict_segment(s, special.pad, &DecodeOptions::default())?.1));
        }
        out.push(merge_segments(&per_segment).iter().map(|s| (s.start, s.end, model.config.labels[s.label].clone())).collect());
    }
    Ok(out)
}

/// Predictions file → doc_id → spans (inclusive ends); errors name the line and field.
fn read_predictions(path: &Path) -> Result<HashMap<String, Vec<(usize, usize, String)>>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |field: &str| format!("{}:{}: field `{field}`", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        let id = v["doc_id"].as_str().with_context(|| format!("{}: missing or not a string", at("doc_id")))?.to_string();
        let ents = v["entity"].as_array().with_context(|| format!("{}: missing or not a list", at("entity")))?;
        let mut spans = Vec::new();
        for (j, e) in ents.iter().enumerate() {
            let f = format!("entity[{j}]");
            let (s, t, l) = (e[0].as_u64(), e[1].as_u64(), e[2].as_str());
            match (s, t, l) {
                (Some(s), Some(t), Some(l)) if t > s => spans.push((s as usize, t as usize - 1, l.to_string())),
                _ => bail!("{}: expected [start, end_exclusive > start, label]", at(&f)),
            }
        }
        if out.insert(id.clone(), spans).is_some() {
            bail!("{}: doc_id {id} appears twice", at("doc_id"));
        }
    }
    Ok(out)
}

pub fn eval(a: EvalArgs) -> Result<()> {
    let read = readers::read_path(Format::Sener, &a.data).with_context(|| format!("reading {}", a.data.display()))?;
    crate::data_cmds::print_report("read", &read.report);
    let docs = read.documents;
    let (preds, window) = match (&a.model, &a.pred) {
        (Some(m), None) => {
            let dev = crate::cli::parse_device(&a.device)?;
            let model = Sener::load(m, &dev).with_context(|| format!("loading model {}", m.display()))?;
            let w = model.span.config.window;
            let cfg = SegmentConfig::new(a.max_len.unwrap_or(model.config.max_len));
            cfg.validate().context("--max-len")?;
            (predict(&model, m, &docs, &cfg)?, a.span_window.unwrap_or(w))
        }
        (None, Some(p)) => {
            if a.max_len.is_some() {
                bail!("--max-len applies to --model (predictions from --pred are already segmented)");
            }
            let mut by_id = read_predictions(p)?;
            let preds = docs.iter().map(|d| by_id.remove(&d.id).unwrap_or_default()).collect();
            if !by_id.is_empty() {
                let mut extra: Vec<&String> = by_id.keys().collect();
                extra.sort();
                bail!("{}: predictions for documents not in {}: {:?}", p.display(), a.data.display(), extra);
            }
            (preds, a.span_window.unwrap_or(128))
        }
        _ => bail!("give exactly one of --model and --pred"),
    };
    let mut scorer = sener::metric::Scorer::new(window);
    for (doc, pred) in docs.iter().zip(&preds) {
        let (we, _) = doc.word_entities()?;
        let gold: Vec<(usize, usize, String)> = we.iter().map(|e| (e.start, e.end - 1, e.label.clone())).collect();
        scorer.add(&gold, pred).map_err(|e| anyhow::anyhow!("document {}: {e}", doc.id))?;
    }
    let r = scorer.result();
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut md = String::new();
    md.push_str(&format!("{} documents; {} gold entities longer than {} words cannot be predicted\n\n", r.documents, r.unreachable_gold, window + 1));
    md.push_str("| type | P | R | F1 | gold | pred | correct |\n|---|---:|---:|---:|---:|---:|---:|\n");
    let row = |name: &str, p: &sener::metric::Prf| format!("| {name} | {} | {} | {} | {} | {} | {} |\n", pct(p.precision), pct(p.recall), pct(p.f1), p.gold, p.pred, p.tp);
    md.push_str(&row("**micro**", &r.micro));
    for (t, p) in &r.per_type {
        md.push_str(&row(t, p));
    }
    md.push_str("\n| entity length (words) | P | R | F1 | gold | pred | correct |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for b in &r.by_length {
        md.push_str(&row(&b.bucket, &b.prf));
    }
    print!("{md}");
    if let Some(p) = &a.markdown {
        std::fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
