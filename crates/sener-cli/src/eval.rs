//! `sener eval`: the official metric (micro, macro, per type, per length) of a model or of a
//! predictions file against gold documents in any reader format.
//!
//! Two units:
//! - **words** (the official metric): gold with its own words (SeNER, SciREX, CoNLL, GLiNER)
//!   scored on word spans: a model runs on the given words, or `--pred` holds word spans
//!   (`{"doc_id", "entity": [[start, end_exclusive, label], …]}`, what `sener score --decoded`
//!   writes);
//! - **characters**: raw text, as users have it: a model extracts from each gold document's text
//!   exactly as `sener extract` does (its own word splitter), or `--pred` holds what `sener
//!   extract --output-format jsonl` writes (`{"id", "entities": [{"start", "end", "label", …}]}`,
//!   code points, end exclusive). Used for formats without their own words (brat, text, jsonl)
//!   and with `--raw`.
//!
//! Predictions are checked against the gold documents: a document the gold does not have, a span
//! outside its text, a `text` that differs from the gold text at the span, or a document listed
//! twice is an error naming the line; labels the gold does not have are reported (and scored as
//! wrong); a gold document without predictions is an error unless `--allow-missing` (then it is
//! scored as predicting nothing, and counted).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use sener::decode::{DecodeOptions, Threshold};
use sener::extract::{ExtractOptions, Extractor};
use sener::metric::{score_documents, MetricResult, Prf, Spans};
use sener_data::readers::{self, Format};
use sener_data::segment::SegmentConfig;

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("predictions").required(true).args(["model", "pred"])))]
pub struct EvalArgs {
    /// Gold data.
    #[arg(long)]
    pub data: PathBuf,
    /// Reader format of --data: sener, scirex, conll, conll-bioes, gliner, brat, text, jsonl.
    /// Formats without their own words (brat, text, jsonl) are scored on character spans.
    #[arg(long, default_value = "sener")]
    pub format: String,
    /// Model folder to run on the data.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Predictions instead of a model: word spans (`{"doc_id", "entity": [[start, end_excl,
    /// label], …]}`, as `sener score --decoded` writes) or character spans (`{"id", "entities":
    /// [{"start", "end", "label"}, …]}`, as `sener extract` writes), matched to the gold
    /// documents by id.
    #[arg(long)]
    pub pred: Option<PathBuf>,
    /// With --model on gold that has its own words: ignore them and extract from the document
    /// text as raw text (the model's word splitter, as `sener extract`), scored on characters.
    #[arg(long)]
    pub raw: bool,
    /// Decision threshold for --model (default: the model's calibrated per-type thresholds, or
    /// 0.5).
    #[arg(long)]
    pub threshold: Option<f32>,
    /// Score gold documents that have no line in --pred as predicting nothing (counted and
    /// reported) instead of failing.
    #[arg(long)]
    pub allow_missing: bool,
    /// Span window used to count unreachable gold entities (default: the model's, else 128).
    #[arg(long)]
    pub span_window: Option<usize>,
    /// Segment length in subword tokens for --model (default: the model's `max_len`). Longer
    /// segments than the encoder's learned positions reuse them (see the README).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Write the full result as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a Markdown report here.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub dtype: crate::common::DtypeArgs,
}

/// One line of a predictions file, parsed.
struct PredLine {
    line: usize,
    chars: bool,
    /// `(start, end_exclusive, label, text)`.
    spans: Vec<(usize, usize, String, Option<String>)>,
}

/// Reads a predictions file (either kind, not mixed): doc id → its line.
fn read_predictions(path: &Path) -> Result<HashMap<String, PredLine>> {
    let bytes = crate::input::read_file(path, crate::input::DEFAULT_MAX_INPUT_BYTES, true)?;
    let text = String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 (byte {})", path.display(), e.utf8_error().valid_up_to()))?;
    let mut out: HashMap<String, PredLine> = HashMap::new();
    let mut kind: Option<bool> = None;
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let at = |field: &str| format!("{}:{}: field `{field}`", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))?;
        let id_field = ["doc_id", "id"].into_iter().find(|k| v.get(*k).is_some_and(|x| !x.is_null()));
        let id = match id_field.map(|k| &v[k]) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => bail!("{}: a document id is missing (or not a string)", at("doc_id / id")),
        };
        let chars = match (v.get("entity"), v.get("entities")) {
            (Some(_), None) => false,
            (None, Some(_)) => true,
            _ => bail!("{}:{}: expected exactly one of `entity` (word spans) and `entities` (character spans)", path.display(), i + 1),
        };
        if kind.is_some_and(|k| k != chars) {
            bail!("{}:{}: mixes word-span lines (`entity`) and character-span lines (`entities`)", path.display(), i + 1);
        }
        kind = Some(chars);
        let mut spans = Vec::new();
        if chars {
            let ents = v["entities"].as_array().with_context(|| format!("{}: not a list", at("entities")))?;
            for (j, e) in ents.iter().enumerate() {
                let f = format!("entities[{j}]");
                let (s, t, l) = (e["start"].as_u64(), e["end"].as_u64(), e["label"].as_str());
                match (s, t, l) {
                    (Some(s), Some(t), Some(l)) if t > s && !l.is_empty() => {
                        spans.push((s as usize, t as usize, l.to_string(), e["text"].as_str().map(str::to_string)))
                    }
                    _ => bail!("{}: expected {{\"start\", \"end\" > start, \"label\"}} (code points, end exclusive)", at(&f)),
                }
            }
        } else {
            let ents = v["entity"].as_array().with_context(|| format!("{}: not a list", at("entity")))?;
            for (j, e) in ents.iter().enumerate() {
                let f = format!("entity[{j}]");
                match (e[0].as_u64(), e[1].as_u64(), e[2].as_str()) {
                    (Some(s), Some(t), Some(l)) if t > s && !l.is_empty() => spans.push((s as usize, t as usize, l.to_string(), None)),
                    _ => bail!("{}: expected [start, end_exclusive > start, label]", at(&f)),
                }
            }
        }
        if out.insert(id.clone(), PredLine { line: i + 1, chars, spans }).is_some() {
            bail!("{}: document {id} appears twice", at(id_field.unwrap_or("id")));
        }
    }
    Ok(out)
}

pub fn run(a: EvalArgs) -> Result<()> {
    let format: Format = a.format.parse().with_context(|| format!("--format {}", a.format))?;
    let read = readers::read_path(format, &a.data).with_context(|| format!("reading {}", a.data.display()))?;
    crate::data_cmds::print_report("read", &read.report);
    let docs = read.documents;
    if let Some(t) = a.threshold {
        if !(0.0..=1.0).contains(&t) {
            bail!("--threshold {t} is not a probability");
        }
    }
    let mut missing: Vec<String> = Vec::new();
    // Predictions per gold document, in words or (`chars`) characters.
    let (preds, chars, window): (Vec<Spans>, bool, usize) = match (&a.model, &a.pred) {
        (Some(spec), None) => {
            let m = crate::common::model_dir(spec)?;
            let dev = crate::common::parse_device(&a.device)?;
            let mut ex = Extractor::load_on(&m, &dev).with_context(|| format!("loading model {}", spec.display()))?;
            a.dtype.apply(&mut ex.model)?;
            SegmentConfig::new(a.max_len.unwrap_or(ex.model.config.max_len)).validate().context("--max-len")?;
            let threshold = a.threshold.map_or_else(|| ex.model.config.threshold(), Threshold::Global);
            let opts = ExtractOptions { decode: DecodeOptions { threshold, ..DecodeOptions::default() }, max_len: a.max_len, overlap: 0 };
            let (preds, chars) = ex.predict_documents(&docs, a.raw || !format.gives_words(), &opts)?;
            (preds, chars, a.span_window.unwrap_or(ex.model.span.config.window))
        }
        (None, Some(p)) => {
            if a.max_len.is_some() || a.threshold.is_some() || a.raw {
                bail!("--max-len, --threshold and --raw apply to --model (predictions from --pred are already decoded)");
            }
            let mut by_id = read_predictions(p)?;
            let chars = match by_id.values().next() {
                Some(l) => l.chars,
                None => !format.gives_words(),
            };
            if !chars && !format.gives_words() {
                bail!("{}: word-span predictions need gold with its own words; --format {} has none (give character spans, as `sener extract` writes)", p.display(), a.format);
            }
            let mut preds = Vec::with_capacity(docs.len());
            for d in &docs {
                let Some(pl) = by_id.remove(&d.id) else {
                    missing.push(d.id.clone());
                    preds.push(Vec::new());
                    continue;
                };
                let limit = if chars { d.char_len() } else { d.word_count() };
                let map = d.offsets();
                let mut pred = Vec::with_capacity(pl.spans.len());
                for (j, (s, e, label, text)) in pl.spans.into_iter().enumerate() {
                    let field = if chars { format!("entities[{j}]") } else { format!("entity[{j}]") };
                    if e > limit {
                        bail!(
                            "{}:{}: field `{field}`: span {s}..{e} is past the end of document {} ({limit} {})",
                            p.display(),
                            pl.line,
                            d.id,
                            if chars { "characters" } else { "words" }
                        );
                    }
                    if let Some(t) = text {
                        let gold_text = map.slice(&d.text, s, e).unwrap_or_default();
                        if t != gold_text {
                            bail!(
                                "{}:{}: field `{field}.text` is {t:?} but the gold document {} has {gold_text:?} at {s}..{e}: the predictions were made on another text",
                                p.display(),
                                pl.line,
                                d.id
                            );
                        }
                    }
                    pred.push((s, e - 1, label));
                }
                preds.push(pred);
            }
            if !by_id.is_empty() {
                let mut extra: Vec<(usize, &String)> = by_id.iter().map(|(k, v)| (v.line, k)).collect();
                extra.sort();
                let list: Vec<String> = extra.iter().take(10).map(|(l, k)| format!("{k} (line {l})")).collect();
                bail!("{}: predictions for {} document(s) not in {}: {}", p.display(), extra.len(), a.data.display(), list.join(", "));
            }
            if !missing.is_empty() && !a.allow_missing {
                let list: Vec<&str> = missing.iter().take(10).map(String::as_str).collect();
                bail!(
                    "{}: no predictions for {} of the {} gold documents (e.g. {}); give --allow-missing to score them as predicting nothing",
                    p.display(),
                    missing.len(),
                    docs.len(),
                    list.join(", ")
                );
            }
            (preds, chars, a.span_window.unwrap_or(128))
        }
        _ => bail!("give exactly one of --model and --pred"),
    };
    // Predicted labels the gold data never uses (scored as wrong, and said).
    let gold_labels: std::collections::HashSet<&str> = docs.iter().flat_map(|d| d.entities.iter().map(|e| e.label.as_str())).collect();
    let mut unknown_labels: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, label) in preds.iter().flatten() {
        if !gold_labels.contains(label.as_str()) {
            *unknown_labels.entry(label.clone()).or_default() += 1;
        }
    }
    let r = score_documents(&docs, &preds, chars, window).map_err(|e| anyhow::anyhow!(e))?;
    report(&a, &r, chars, window, &missing, &unknown_labels)
}

fn report(a: &EvalArgs, r: &MetricResult, chars: bool, window: usize, missing: &[String], unknown: &BTreeMap<String, usize>) -> Result<()> {
    let pct = |x: f64| format!("{:.2}", 100.0 * x);
    let mut md = String::new();
    md.push_str(&format!(
        "{} documents, scored on {} spans; {} gold entities longer than {} words cannot be predicted\n",
        r.documents,
        if chars { "character" } else { "word" },
        r.unreachable_gold,
        window + 1
    ));
    if !missing.is_empty() {
        md.push_str(&format!("{} gold documents had no predictions (scored as predicting nothing)\n", missing.len()));
    }
    for (l, n) in unknown {
        md.push_str(&format!("{n} predicted entities have the label `{l}`, which the gold data does not have\n"));
    }
    md.push_str("\n| type | P | R | F1 | gold | pred | correct |\n|---|---:|---:|---:|---:|---:|---:|\n");
    let row = |name: &str, p: &Prf| format!("| {name} | {} | {} | {} | {} | {} | {} |\n", pct(p.precision), pct(p.recall), pct(p.f1), p.gold, p.pred, p.tp);
    md.push_str(&row("**micro**", &r.micro));
    let macro_avg = r.macro_avg();
    md.push_str(&row("**macro**", &macro_avg));
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
        let mut v = serde_json::to_value(r)?;
        v["macro"] = serde_json::to_value(macro_avg)?;
        v["unit"] = serde_json::json!(if chars { "char" } else { "word" });
        v["missing_documents"] = serde_json::json!(missing);
        v["unknown_labels"] = serde_json::to_value(unknown)?;
        std::fs::write(p, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
