//! The training loop (spec §8): documents → segments → (masked) micro-batches → loss → gradients
//! accumulated to the effective batch → clipped AdamW step on the linear schedule; dev evaluation
//! after every epoch with the official decoding and metric; the best model kept (written
//! atomically: temporary folder, then rename); early stopping; a JSON-lines metrics log.
//!
//! Resuming: every `checkpoint_every` optimiser steps and after every epoch the run writes
//! `<output>.resume/` atomically (trainable tensors, AdamW moments, step, epoch and position in
//! the epoch's deterministic batch order, both RNG states, best dev F1). `resume = true` continues
//! from it exactly: a run killed at any moment and resumed ends with the same weights as an
//! uninterrupted one.
//!
//! Memory: a micro-batch of 2,048 tokens or more is trained with recomputation (see
//! [`super::recompute`]; `recompute` in the config): one stage's graph at a time instead of the
//! whole model's. A 5,120-token MiniLM step then peaks at about 10 GB instead of ~30 GB.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sener_data::align::{align, Alignment, SpecialTokens, WordTokenizer};
use sener_data::batch::{length_batches, whole_word_mask, MaskConfig};
use sener_data::readers::{self, Format};
use sener_data::segment::{segment, Segment, SegmentConfig};
use sener_data::Document;

use super::optim::{linear_schedule, no_decay, AdamW, AdamWConfig, GroupConfig};
use crate::decode::{merge_segments, DecodeOptions};
use crate::encoder::{ArrowConfig, Encoder, EncoderOptions, LoraConfig};
use crate::metric::{MetricResult, Scorer};
use crate::model::{Batch, BaseEncoder, Sener, SenerConfig};
use crate::nn::ForwardCtx;
use crate::span::band::Band;
use crate::span::loss::{band_labels, GoldSpan};
use super::recompute::{loss_and_grads, Recompute};
use crate::span::{SpanConfig, SpanModel};
use crate::{Error, Result};

/// What of the encoder is trained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finetune {
    /// LoRA adapters on Q and V plus their biases (the paper's recipe); the rest frozen.
    #[default]
    Lora,
    /// Every encoder weight, embeddings included, at `lr_encoder` (no adapters). The model then
    /// carries its own encoder folder (`encoder/`). A deviation from the paper, for small
    /// encoders where a low-rank update may be too little.
    Full,
}

impl Finetune {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lora => "lora",
            Self::Full => "full",
        }
    }
}

impl std::str::FromStr for Finetune {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "lora" => Ok(Self::Lora),
            "full" => Ok(Self::Full),
            o => Err(format!("finetune must be lora or full, not `{o}`")),
        }
    }
}

/// Everything a run needs; defaults are the paper's recipe.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Training data (SeNER JSON lines).
    pub train: PathBuf,
    /// Dev data for per-epoch evaluation (None: the last epoch's model is kept).
    pub dev: Option<PathBuf>,
    /// Base encoder (Hugging Face folder).
    pub base: PathBuf,
    /// `org/name@commit` when `base` is a Hugging Face Hub snapshot (`sener train --base org/name`
    /// fetches it and sets both); recorded in the model's `sener.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_hub: Option<String>,
    /// Output model folder.
    pub output: PathBuf,
    /// Entity types in logit order (None: sorted labels of the training data).
    pub labels: Option<Vec<String>>,
    pub arrow: ArrowConfig,
    pub span: SpanConfig,
    /// LoRA (default) or full fine-tuning of the encoder.
    pub finetune: Finetune,
    /// Used when `finetune` is `lora`.
    pub lora: LoraConfig,
    /// LR of the encoder side (LoRA A/B, q/v biases).
    pub lr_encoder: f64,
    /// LR of the new layers (biaffine, BiSPA, head).
    pub lr_new: f64,
    pub weight_decay: f64,
    /// Fraction of steps for linear warm-up.
    pub warmup: f64,
    pub clip_norm: f64,
    /// Effective batch (segments per optimiser step).
    pub batch_size: usize,
    /// Segments per forward pass (gradients accumulate up to `batch_size`).
    pub micro_batch: usize,
    pub epochs: usize,
    /// Stop after this many epochs without dev improvement.
    pub patience: usize,
    /// Whole-word masking probability (0: off).
    pub wwm: f64,
    /// Segment length in tokens, [CLS]/[SEP] included.
    pub max_len: usize,
    pub seed: u64,
    /// Stop after this many optimiser steps (smoke runs).
    pub max_steps: Option<usize>,
    /// Write the resume checkpoint every this many optimiser steps (and after every epoch).
    pub checkpoint_every: usize,
    /// Continue from `<output>.resume/` when it exists.
    pub resume: bool,
    /// Start the head's bias of each type at the log-odds of its share of positive band cells in
    /// the training data (the usual prior initialisation of sparse sigmoid outputs) instead of the
    /// official ±1/√c draw. Deliberate deviation, off by default: with a million negative cells per
    /// segment, the official start spends its first steps only pushing every logit down (a summed
    /// BCE of ~10⁵ at step 1 against ~10² for a constant predictor).
    pub prior_bias: bool,
    /// Recompute stage activations in the backward pass instead of keeping the whole graph
    /// (see [`super::recompute`]): `auto` (micro-batches of ≥ 2,048 tokens), `always`, `never`.
    pub recompute: Recompute,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::new(),
            dev: None,
            base: PathBuf::new(),
            base_hub: None,
            output: PathBuf::from("models/sener"),
            labels: None,
            arrow: ArrowConfig::default(),
            span: SpanConfig::default(),
            finetune: Finetune::Lora,
            lora: LoraConfig::default(),
            lr_encoder: 4e-4,
            lr_new: 7e-4,
            weight_decay: 0.01,
            warmup: 0.1,
            clip_norm: 1.0,
            batch_size: 16,
            micro_batch: 2,
            epochs: 30,
            patience: 10,
            wwm: 0.15,
            max_len: 5120,
            seed: 42,
            max_steps: None,
            checkpoint_every: 50,
            resume: false,
            prior_bias: false,
            recompute: Recompute::Auto,
        }
    }
}

/// One training segment with its labels.
struct Example {
    doc: usize,
    seg: Segment,
    gold: Vec<GoldSpan>,
}

/// A tokenized split.
struct Split {
    docs: Vec<Document>,
    aligns: Vec<Alignment>,
    examples: Vec<Example>,
    /// Entities that can never be labelled (longer than the span window or outside segments).
    unreachable: usize,
}

/// Per type, `ln(p / (1 − p))` with p the share of valid band cells that are positive for that
/// type over the training segments (labels as [`band_labels`] marks them: two cells per entity of
/// two or more words, one for a one-word entity; a type with no cell counts half a cell).
fn prior_log_odds(split: &Split, band: Band, labels: usize) -> Vec<f64> {
    let w = band.w;
    let mut pos = vec![0f64; labels];
    let mut cells = 0f64;
    for ex in &split.examples {
        let n = ex.seg.n_words;
        cells += (0..n).map(|i| ((i + w).min(n.saturating_sub(1)) + 1 - i.saturating_sub(w)) as f64).sum::<f64>();
        for g in &ex.gold {
            let d = g.end - g.start;
            if d <= w && g.label < labels {
                pos[g.label] += if d == 0 { 1.0 } else { 2.0 };
            }
        }
    }
    pos.iter()
        .map(|&p| {
            let p = p.max(0.5) / cells.max(1.0);
            (p / (1.0 - p)).ln()
        })
        .collect()
}

/// Reads a SeNER JSON-lines file.
fn read_docs(path: &Path) -> Result<Vec<Document>> {
    Ok(readers::read_path(Format::Sener, path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?.documents)
}

/// Tokenizes and segments `docs` (read from `path`, named in errors) into labelled examples.
fn prepare(path: &Path, docs: Vec<Document>, tok: &mut WordTokenizer, special: &SpecialTokens, labels: &[String], cfg: &TrainConfig) -> Result<Split> {
    let seg_cfg = SegmentConfig::new(cfg.max_len);
    let index: HashMap<&str, usize> = labels.iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let mut split = Split { docs: Vec::new(), aligns: Vec::new(), examples: Vec::new(), unreachable: 0 };
    for (d, doc) in docs.into_iter().enumerate() {
        let al = align(&doc, tok).map_err(|e| Error::Input(format!("{}: document {}: {e}", path.display(), doc.id)))?;
        let (we, _) = doc.word_entities().map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        let seg = segment(&doc, &al, &we, special, &seg_cfg).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
        split.unreachable += seg.report.counts().values().sum::<usize>();
        for s in seg.segments {
            let mut gold = Vec::new();
            for e in &s.entities {
                let label = *index.get(e.label.as_str()).ok_or_else(|| {
                    Error::Input(format!("{}: document {}: label `{}` is not among the model's labels", path.display(), doc.id, e.label))
                })?;
                if e.end - e.start > cfg.span.window + 1 {
                    split.unreachable += 1;
                }
                gold.push(GoldSpan { start: e.start, end: e.end - 1, label });
            }
            split.examples.push(Example { doc: d, seg: s, gold });
        }
        split.docs.push(doc);
        split.aligns.push(al);
    }
    Ok(split)
}

/// The paper's four AdamW groups over a model's trainable tensors ([`Sener::trainable`] names):
/// new layers and the encoder side (`encoder.*`: LoRA and q/v biases, or every encoder weight), each with weight decay except
/// norms and biases ([`no_decay`]). Returns the tensors with their group index, and the groups.
pub fn paper_groups(
    trainable: &[(String, candle_core::Var)],
    lr_new: f64,
    lr_encoder: f64,
    weight_decay: f64,
) -> (Vec<(String, candle_core::Var, usize)>, Vec<GroupConfig>) {
    let params = trainable
        .iter()
        .cloned()
        .map(|(name, var)| {
            let encoder_side = name.starts_with("encoder.");
            let group = (encoder_side as usize) * 2 + no_decay(&name) as usize; // 0 new, 1 new no-decay, 2 enc, 3 enc no-decay
            (name, var, group)
        })
        .collect();
    let groups = vec![
        GroupConfig { lr: lr_new, weight_decay },
        GroupConfig { lr: lr_new, weight_decay: 0.0 },
        GroupConfig { lr: lr_encoder, weight_decay },
        GroupConfig { lr: lr_encoder, weight_decay: 0.0 },
    ];
    (params, groups)
}

/// Where a run stands, for progress displays (sent after every micro-batch).
#[derive(Clone, Debug)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    /// Micro-batches done in this epoch / in it.
    pub micro: usize,
    pub micros: usize,
    /// Optimiser steps done / planned.
    pub step: usize,
    pub total_steps: usize,
    /// Loss of the last optimiser step (NaN before the first).
    pub loss: f64,
    pub lr_new: f64,
    /// Subword tokens trained on since this process started, and the seconds it took.
    pub tokens: usize,
    pub seconds: f64,
}

/// Hooks into a run: a stop flag (set by a Ctrl-C handler: the run stops at the next optimiser
/// step boundary, writes its resume checkpoint and returns with `interrupted`), and a progress
/// callback.
#[derive(Default)]
pub struct TrainHooks<'a> {
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    pub progress: Option<Box<dyn FnMut(&Progress) + 'a>>,
}

/// Outcome of a run.
#[derive(Debug, serde::Serialize)]
pub struct TrainReport {
    /// Stopped early by the stop flag (resume with `resume = true`).
    pub interrupted: bool,
    /// Highest resident set size of the process (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
    pub steps: usize,
    pub epochs: usize,
    pub best_epoch: Option<usize>,
    pub best_dev_f1: Option<f64>,
    pub final_loss: f64,
    pub seconds: f64,
    /// Training entities no label cell can hold (longer than the span window, or crossing a
    /// segment boundary): counted, never silently dropped.
    pub unreachable_entities: usize,
    pub train_segments: usize,
}

/// Evaluates `model` on a split with the official decoding; returns the metric.
fn evaluate(model: &Sener, split: &Split, labels: &[String], pad: u32) -> Result<MetricResult> {
    let mut per_doc: Vec<Vec<(usize, Vec<crate::decode::Span>)>> = vec![Vec::new(); split.docs.len()];
    for ex in &split.examples {
        let (_, spans) = model.predict_segment(&ex.seg, pad, &DecodeOptions::default())?;
        per_doc[ex.doc].push((ex.seg.word_offset, spans));
    }
    let mut scorer = Scorer::new(model.span.config.window);
    for (d, doc) in split.docs.iter().enumerate() {
        let (we, _) = doc.word_entities().map_err(|e| Error::Input(e.to_string()))?;
        let gold: Vec<(usize, usize, String)> = we.iter().map(|e| (e.start, e.end - 1, e.label.clone())).collect();
        let pred: Vec<(usize, usize, String)> =
            merge_segments(&per_doc[d]).iter().map(|s| (s.start, s.end, labels[s.label].clone())).collect();
        scorer.add(&gold, &pred).map_err(|e| Error::Input(e.to_string()))?;
    }
    Ok(scorer.result())
}

/// Puts the complete folder `tmp` in place of `dir` without a moment where neither exists:
/// `dir` → `dir.old`, `tmp` → `dir`, then `dir.old` is removed. A kill at any point leaves a
/// complete `dir`, `tmp` or `dir.old` behind ([`complete_dir`] finds it).
fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = sibling(dir, ".old");
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(tmp, dir).map_err(|e| Error::io(dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    }
    Ok(())
}

/// The newest complete copy of a folder written with [`replace_dir`]: `dir`, else the temporary
/// one if its marker file (written last) exists, else `dir.old`.
fn complete_dir(dir: &Path, tmp: &Path, marker: &str) -> Option<PathBuf> {
    [dir.to_path_buf(), tmp.to_path_buf(), sibling(dir, ".old")].into_iter().find(|d| d.join(marker).is_file())
}

/// `dir` with `suffix` appended to its last component (`models/x` → `models/x.old`).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "model".into());
    name.push(suffix);
    dir.with_file_name(name)
}

/// Writes the model into `dir` atomically (temporary sibling folder, then [`replace_dir`]).
fn save_atomic(model: &Sener, dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{}", dir.file_name().and_then(|s| s.to_str()).unwrap_or("model"), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    model.save(&tmp)?;
    replace_dir(&tmp, dir)
}

/// Where a run stands, saved with its tensors in `<output>.resume/`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ResumeState {
    /// Epoch to continue in.
    epoch: usize,
    /// First micro-batch of that epoch not yet trained on.
    next_micro: usize,
    step: usize,
    best: Option<(usize, f64)>,
    /// (seed, word position) of the masking RNG and of the dropout RNG.
    mask_rng: (Vec<u8>, String),
    ctx_rng: (Vec<u8>, String),
    /// The config the run started with (resuming with another one is refused).
    config: serde_json::Value,
}

fn rng_state(r: &ChaCha8Rng) -> (Vec<u8>, String) {
    (r.get_seed().to_vec(), r.get_word_pos().to_string())
}

fn rng_from(s: &(Vec<u8>, String), path: &Path) -> Result<ChaCha8Rng> {
    let seed: [u8; 32] = s.0.clone().try_into().map_err(|_| Error::model(path, "bad RNG seed in state.json"))?;
    let pos: u128 = s.1.parse().map_err(|_| Error::model(path, "bad RNG position in state.json"))?;
    let mut r = ChaCha8Rng::from_seed(seed);
    r.set_word_pos(pos);
    Ok(r)
}

fn resume_dir(cfg: &TrainConfig) -> PathBuf {
    let mut name = cfg.output.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "model".into());
    name.push(".resume");
    cfg.output.with_file_name(name)
}

/// The config fields that must not change across a resume.
fn resume_key(cfg: &TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in ["resume", "checkpoint_every", "output"] {
            o.remove(k);
        }
    }
    v
}

fn save_resume(dir: &Path, model: &Sener, opt: &AdamW, state: &ResumeState) -> Result<()> {
    let tmp = sibling(dir, ".tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let params: HashMap<String, Tensor> = model.trainable().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
    candle_core::safetensors::save(&params, tmp.join("params.safetensors")).map_err(|e| Error::model(&tmp, e.to_string()))?;
    candle_core::safetensors::save(&opt.state_tensors(), tmp.join("optim.safetensors")).map_err(|e| Error::model(&tmp, e.to_string()))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| Error::Json { path: tmp.clone(), message: e.to_string() })?;
    // state.json last: its presence marks a complete checkpoint.
    std::fs::write(tmp.join("state.json"), json).map_err(|e| Error::io(&tmp, e))?;
    replace_dir(&tmp, dir)
}

/// Runs training; `log` receives one JSON line per optimiser step and per evaluation.
pub fn train(cfg: &TrainConfig, device: &Device, log: &mut dyn Write) -> Result<TrainReport> {
    train_with(cfg, device, log, TrainHooks::default())
}

/// [`train`] with a stop flag and a progress callback.
pub fn train_with(cfg: &TrainConfig, device: &Device, log: &mut dyn Write, mut hooks: TrainHooks) -> Result<TrainReport> {
    let t0 = Instant::now();
    let stop_flag = hooks.stop.clone();
    let stop_requested = || stop_flag.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
    let mut interrupted = false;
    let mut tokens = 0usize;
    if cfg.micro_batch == 0 || cfg.batch_size == 0 || cfg.batch_size % cfg.micro_batch != 0 {
        return Err(Error::Input(format!("batch_size {} must be a positive multiple of micro_batch {}", cfg.batch_size, cfg.micro_batch)));
    }
    let mut tok = WordTokenizer::from_path(&cfg.base).map_err(|e| Error::Tokenizer { path: cfg.base.clone(), message: e.to_string() })?;
    let special = *tok.special();
    let train_docs = read_docs(&cfg.train)?;
    let labels = match &cfg.labels {
        Some(l) => l.clone(),
        None => {
            let mut set: Vec<String> = train_docs.iter().flat_map(|d| d.entities.iter().map(|e| e.label.clone())).collect();
            set.sort();
            set.dedup();
            set
        }
    };
    let train_split = prepare(&cfg.train, train_docs, &mut tok, &special, &labels, cfg)?;
    let dev_split = cfg.dev.as_ref().map(|p| prepare(p, read_docs(p)?, &mut tok, &special, &labels, cfg)).transpose()?;

    let opts = EncoderOptions { arrow: cfg.arrow.clone(), dtype: DType::F32, device: device.clone() };
    let encoder = match cfg.finetune {
        Finetune::Lora => {
            let mut e = Encoder::load(&cfg.base, &opts)?;
            e.add_lora(&cfg.lora, cfg.seed)?;
            e
        }
        Finetune::Full => Encoder::load_trainable(&cfg.base, &opts)?,
    };
    let span = SpanModel::init(cfg.span.clone(), encoder.hidden_size(), labels.len(), cfg.seed, DType::F32, device)?;
    let weights = crate::weights::WeightFiles::find(&cfg.base)?;
    let base_path = std::fs::canonicalize(&cfg.base).unwrap_or_else(|_| cfg.base.clone());
    let config = SenerConfig {
        base: BaseEncoder { path: base_path, sha256: Some(crate::model::sha256_file(&weights.display_path())?), hub: cfg.base_hub.clone(), finetuned_from: None },
        labels: labels.clone(),
        arrow: cfg.arrow.clone(),
        span: cfg.span.clone(),
        lora: (cfg.finetune == Finetune::Lora).then(|| cfg.lora.clone()),
        max_len: cfg.max_len,
    };
    let model = Sener { config, encoder, span };
    if cfg.prior_bias {
        let bias = prior_log_odds(&train_split, Band::new(cfg.span.window), labels.len());
        for (name, var) in model.span.params() {
            if name == "down_fc.bias" {
                var.set(&Tensor::from_vec(bias.iter().map(|&b| b as f32).collect::<Vec<f32>>(), labels.len(), device)?)?;
            }
        }
        writeln!(log, "{}", serde_json::json!({"event": "prior_bias", "bias": bias})).map_err(|e| Error::io("metrics log", e))?;
    }

    let trainable = model.trainable();
    let (params, groups) = paper_groups(&trainable, cfg.lr_new, cfg.lr_encoder, cfg.weight_decay);
    let mut opt = AdamW::new(params, groups, AdamWConfig { clip_norm: cfg.clip_norm, ..AdamWConfig::default() })?;

    // Official step count: (⌊#segments / batch⌋ + 1) · epochs.
    let steps_per_epoch = train_split.examples.len() / cfg.batch_size + 1;
    let total = cfg.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch * cfg.epochs);
    let warmup = (cfg.warmup * total as f64).round() as usize;
    let band = Band::new(cfg.span.window);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ctx = ForwardCtx::train(cfg.seed);
    let mask_cfg = special.mask.filter(|_| cfg.wwm > 0.0).map(|mask_id| MaskConfig {
        probability: cfg.wwm,
        mask_id,
        vocab_size: tok.vocab_size() as u32,
        document_positions: true,
    });
    let mut best: Option<(usize, f64)> = None;
    let mut last_loss = f64::NAN;
    let mut epochs_run = 0;
    let accum = cfg.batch_size / cfg.micro_batch;
    let rdir = resume_dir(cfg);
    let (mut start_epoch, mut start_micro) = (0, 0);
    let found = if cfg.resume { complete_dir(&rdir, &sibling(&rdir, ".tmp"), "state.json") } else { None };
    if let Some(rdir) = found {
        let sp = rdir.join("state.json");
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        let st: ResumeState = serde_json::from_str(&text).map_err(|e| Error::Json { path: sp.clone(), message: e.to_string() })?;
        if st.config != resume_key(cfg) {
            return Err(Error::model(&sp, "the run being resumed used a different configuration"));
        }
        let params = candle_core::safetensors::load(rdir.join("params.safetensors"), device)
            .map_err(|e| Error::model(&rdir, e.to_string()))?;
        for (name, var) in &trainable {
            let t = params.get(name).ok_or_else(|| Error::Weight { path: rdir.clone(), name: name.clone(), message: "missing".into() })?;
            var.set(t)?;
        }
        let ost = candle_core::safetensors::load(rdir.join("optim.safetensors"), device).map_err(|e| Error::model(&rdir, e.to_string()))?;
        opt.load_state(&ost, st.step, &rdir)?;
        rng = rng_from(&st.mask_rng, &sp)?;
        ctx.set_rng(rng_from(&st.ctx_rng, &sp)?);
        best = st.best;
        start_epoch = st.epoch;
        start_micro = st.next_micro;
        writeln!(log, "{}", serde_json::json!({"event": "resume", "epoch": st.epoch, "next_micro": st.next_micro, "step": st.step}))
            .map_err(|e| Error::io("metrics log", e))?;
    }
    let key = resume_key(cfg);
    let snapshot = |epoch: usize, next_micro: usize, step: usize, best: Option<(usize, f64)>, rng: &ChaCha8Rng, ctx: &ForwardCtx| ResumeState {
        epoch,
        next_micro,
        step,
        best,
        mask_rng: rng_state(rng),
        ctx_rng: rng_state(ctx.rng()),
        config: key.clone(),
    };
    'epochs: for epoch in start_epoch..cfg.epochs {
        epochs_run = epoch + 1;
        let lengths: Vec<usize> = train_split.examples.iter().map(|e| e.seg.input_ids.len()).collect();
        let micro = length_batches(&lengths, cfg.micro_batch, Some(cfg.seed.wrapping_add(epoch as u64)))
            .map_err(|e| Error::Input(e.to_string()))?;
        let mut acc: HashMap<String, Tensor> = HashMap::new();
        let mut acc_loss = 0.0;
        let mut in_acc = 0;
        let skip = if epoch == start_epoch { start_micro } else { 0 };
        for (mi, idxs) in micro.iter().enumerate().skip(skip) {
            let rows: Vec<(Vec<u32>, Vec<u32>, usize)> = idxs
                .iter()
                .map(|&i| {
                    let ex = &train_split.examples[i];
                    let ids = match &mask_cfg {
                        Some(mc) => whole_word_mask(&ex.seg, &train_split.aligns[ex.doc], &special, mc, &mut rng).input_ids,
                        None => ex.seg.input_ids.clone(),
                    };
                    (ids, ex.seg.indexes.clone(), ex.seg.n_words)
                })
                .collect();
            tokens += rows.iter().map(|r| r.0.len()).sum::<usize>();
            let batch = Batch::new(&rows, special.pad, device)?;
            let n = batch.words.iter().copied().max().unwrap_or(1);
            let gold: Vec<Vec<GoldSpan>> = idxs.iter().map(|&i| train_split.examples[i].gold.clone()).collect();
            let lab = band_labels(&gold, &batch.words, n, band, labels.len(), device)?;
            // Mean over the effective batch: each micro-batch loss (mean over its rows) / accum.
            let recompute = cfg.recompute.applies(batch.ids.elem_count());
            let step = loss_and_grads(&model, &batch, &lab.labels, 1.0 / accum as f64, &mut ctx, recompute)?;
            acc_loss += step.loss;
            for (name, g) in step.grads {
                let sum = match acc.remove(&name) {
                    Some(a) => (a + g)?,
                    None => g,
                };
                acc.insert(name, sum);
            }
            in_acc += 1;
            if in_acc == accum || mi + 1 == micro.len() {
                let factor = linear_schedule(opt.step, warmup, total);
                let info = opt.step_with(|name, _| acc.get(name).cloned(), factor)?;
                last_loss = acc_loss;
                let line = serde_json::json!({"event": "step", "epoch": epoch, "step": opt.step, "loss": acc_loss,
                    "grad_norm": info.grad_norm, "lr_new": cfg.lr_new * factor, "lr_encoder": cfg.lr_encoder * factor,
                    "seconds": t0.elapsed().as_secs_f64(), "tokens": tokens,
                    "peak_rss_mib": crate::mem::peak_rss().map(|b| b as f64 / (1 << 20) as f64)});
                writeln!(log, "{line}").map_err(|e| Error::io("metrics log", e))?;
                acc.clear();
                acc_loss = 0.0;
                in_acc = 0;
                if cfg.checkpoint_every > 0 && opt.step % cfg.checkpoint_every == 0 {
                    save_resume(&rdir, &model, &opt, &snapshot(epoch, mi + 1, opt.step, best, &rng, &ctx))?;
                }
                if opt.step >= total {
                    break 'epochs;
                }
                if stop_requested() {
                    save_resume(&rdir, &model, &opt, &snapshot(epoch, mi + 1, opt.step, best, &rng, &ctx))?;
                    writeln!(log, "{}", serde_json::json!({"event": "interrupted", "epoch": epoch, "step": opt.step}))
                        .map_err(|e| Error::io("metrics log", e))?;
                    interrupted = true;
                    break 'epochs;
                }
            }
            if let Some(cb) = hooks.progress.as_mut() {
                cb(&Progress {
                    epoch,
                    epochs: cfg.epochs,
                    micro: mi + 1,
                    micros: micro.len(),
                    step: opt.step,
                    total_steps: total,
                    loss: last_loss,
                    lr_new: cfg.lr_new * linear_schedule(opt.step, warmup, total),
                    tokens,
                    seconds: t0.elapsed().as_secs_f64(),
                });
            }
        }
        if let Some(dev) = &dev_split {
            let m = evaluate(&model, dev, &labels, special.pad)?;
            let f1 = m.micro.f1;
            let line = serde_json::json!({"event": "eval", "epoch": epoch, "step": opt.step, "dev": m.micro});
            writeln!(log, "{line}").map_err(|e| Error::io("metrics log", e))?;
            let mut stop = false;
            if best.is_none_or(|(_, b)| f1 > b) {
                best = Some((epoch, f1));
                save_atomic(&model, &cfg.output)?;
            } else if best.is_some_and(|(be, _)| epoch - be >= cfg.patience) {
                stop = true;
            }
            save_resume(&rdir, &model, &opt, &snapshot(epoch + 1, 0, opt.step, best, &rng, &ctx))?;
            if stop {
                break;
            }
        } else {
            save_resume(&rdir, &model, &opt, &snapshot(epoch + 1, 0, opt.step, best, &rng, &ctx))?;
        }
    }
    // Without a dev split (or before its first evaluation) the model folder is written at the end —
    // also after an interrupt, so a stopped run leaves a usable model beside its resume checkpoint
    // (`--resume` continues the schedule and overwrites it).
    if dev_split.is_none() || best.is_none() {
        save_atomic(&model, &cfg.output)?;
        if interrupted {
            writeln!(log, "{}", serde_json::json!({"event": "saved_partial", "step": opt.step, "output": cfg.output}))
                .map_err(|e| Error::io("metrics log", e))?;
        }
    }
    Ok(TrainReport {
        interrupted,
        peak_rss_mib: crate::mem::peak_rss().map(|b| b as f64 / (1 << 20) as f64),
        unreachable_entities: train_split.unreachable,
        train_segments: train_split.examples.len(),
        steps: opt.step,
        epochs: epochs_run,
        best_epoch: best.map(|b| b.0),
        best_dev_f1: best.map(|b| b.1),
        final_loss: last_loss,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_checkpoint_survives_a_kill_at_any_point_of_the_replace() {
        let root = std::env::temp_dir().join(format!("sener-replace-{}", std::process::id()));
        let dir = root.join("m.resume");
        let tmp = sibling(&dir, ".tmp");
        let write = |d: &Path, v: &str| {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("state.json"), v).unwrap();
        };
        let found = |want: &str| {
            let d = complete_dir(&dir, &tmp, "state.json").expect("a complete checkpoint");
            assert_eq!(std::fs::read_to_string(d.join("state.json")).unwrap(), want);
        };
        write(&dir, "1");
        found("1");
        // killed while writing the new one: tmp has no marker yet → the old one is used
        std::fs::create_dir_all(&tmp).unwrap();
        found("1");
        write(&tmp, "2");
        // killed after dir → dir.old, before tmp → dir
        std::fs::rename(&dir, sibling(&dir, ".old")).unwrap();
        found("2");
        std::fs::remove_dir_all(&tmp).unwrap();
        found("1"); // only dir.old left
        // a full replace leaves exactly the new folder
        write(&tmp, "3");
        replace_dir(&tmp, &dir).unwrap();
        found("3");
        assert!(!tmp.exists() && !sibling(&dir, ".old").exists());
        std::fs::remove_dir_all(root).ok();
    }
}
