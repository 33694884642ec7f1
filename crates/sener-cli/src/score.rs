//! `sener import-official` and `sener score`: the authors' checkpoints, and band logits of SeNER
//! JSON-lines documents computed the way the official code does.

use std::path::PathBuf;
use clap::Args;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use sener::decode::{merge_segments, DecodeOptions};
use sener::encoder::ArrowConfig;
use sener::model::Sener;
use sener::official::{import, task_labels, task_splitter, ImportOptions};
use sener::span::SpanConfig;
use sener_data::align::{align, WordTokenizer};
use sener_data::readers::{self, Format};
use sener_data::segment::{segment, SegmentConfig};


#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("label_set").required(true).args(["task", "labels"])))]
pub struct ImportOfficialArgs {
    /// The checkpoint (`torch.save` of the official model's state dict).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Hugging Face folder of the encoder it was trained from (config.json, tokenizer).
    #[arg(long)]
    pub base: PathBuf,
    /// Label preset: scholar-xl, scirex, profiling-07.
    #[arg(long)]
    pub task: Option<String>,
    /// Labels in logit order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    #[arg(long, default_value_t = 128)]
    pub chunks_size: usize,
    #[arg(long, default_value_t = 100)]
    pub biaffine_size: usize,
    #[arg(long, default_value_t = 32)]
    pub cnn_dim: usize,
    #[arg(long, default_value_t = 2)]
    pub cnn_depth: usize,
    /// LoRA alpha of the checkpoint (the official recipe: 16).
    #[arg(long, default_value_t = 16.0)]
    pub lora_alpha: f64,
    /// Word splitter of the checkpoint's training data, for raw text (default: the --task's,
    /// else whitespace): whitespace, treebank, punct or infix.
    #[arg(long)]
    pub splitter: Option<sener_data::split::Splitter>,
    /// Output model folder.
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// sener model folder (sener.json, span.safetensors, adapter/).
    #[arg(long)]
    pub model: PathBuf,
    /// SeNER JSON lines (`text` word list, `entity`).
    #[arg(long)]
    pub input: PathBuf,
    /// Output .safetensors: `logits.<line>` [words, 2w+1, labels] per document (`logits.<line>.<k>`
    /// for its k-th further segment when it is longer than the maximum length).
    #[arg(long)]
    pub output: PathBuf,
    /// Also write decoded entities per document as `[start, end_exclusive, label]` word spans.
    #[arg(long)]
    pub decoded: Option<PathBuf>,
    /// Segment length in tokens (default: the model's, 5120).
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

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
        splitter: a.task.as_deref().and_then(task_splitter).or(a.splitter).unwrap_or_default(),
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
    let dev = crate::common::parse_device(&a.device)?;
    let model_dir = crate::common::model_dir(&a.model)?;
    let model = Sener::load(&model_dir, &dev).with_context(|| format!("loading model {}", a.model.display()))?;
    let mut tok = word_tokenizer(&model.config.base_dir(&model_dir))?;
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
