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

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sener_data::align::{align, Alignment, SpecialTokens, WordTokenizer};
use sener_data::batch::{length_batches, whole_word_mask, MaskConfig};
use sener_data::readers::{self, Format};
use sener_data::segment::{segment, Segment, SegmentConfig};
use sener_data::split::{self as words, Splitter, SplitterChoice};
use sener_data::Document;

use super::calibrate::{calibrate, HeldOut};
use super::collective::{Collective, Local};
use super::card::CardInfo;
use super::optim::{linear_schedule, no_decay, AdamW, AdamWConfig, GroupConfig};
use crate::decode::DecodeOptions;
use crate::encoder::{ArrowConfig, Encoder, EncoderOptions, LoraConfig};
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

/// A set of defaults for [`TrainConfig`]; every field can still be set on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recipe {
    /// Tuned for small data and short CPU budgets (see `docs/training.md`): the paper's model
    /// and optimiser with the head's bias at the data's prior (`prior_bias`), higher learning
    /// rates (1e-3 encoder side, 3e-3 new layers), effective batch 4, 512-token segments, LoRA
    /// on every linear layer of the encoder, a span window of 64 words (spans of up to 65 words;
    /// 1.5× faster steps than 128), a 10 % held-out part of the training documents, and per-type
    /// thresholds calibrated on it.
    #[default]
    Sener,
    /// The official recipe (spec §8): LR 4e-4 / 7e-4, batch 16, 5,120-token segments, official
    /// initialisation, threshold 0.5.
    Paper,
}

impl Recipe {
    pub fn as_str(self) -> &'static str {
        match self {
            Recipe::Sener => "sener",
            Recipe::Paper => "paper",
        }
    }
}

impl std::str::FromStr for Recipe {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "sener" => Ok(Recipe::Sener),
            "paper" => Ok(Recipe::Paper),
            o => Err(format!("recipe must be sener or paper, not `{o}`")),
        }
    }
}

/// Everything a run needs. [`Default`] is the [`Recipe::Sener`] recipe, [`TrainConfig::paper`]
/// the official one ([`TrainConfig::for_recipe`]).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// The recipe the other defaults came from (recorded; changing it after the fact changes
    /// nothing by itself).
    pub recipe: Recipe,
    /// Training data.
    pub train: PathBuf,
    /// Dev data for per-epoch evaluation, model selection and threshold calibration (None: the
    /// `holdout` part of the training data, or without one the last epoch's model is kept).
    pub dev: Option<PathBuf>,
    /// Reader format of `train` and `dev` (`sener`, `scirex`, `conll`, `gliner`, `brat`, `jsonl`,
    /// …). Formats without their own words are cut into words by `splitter`.
    pub format: String,
    /// How raw text is cut into words, recorded in the model (`auto`: the splitter that best
    /// reproduces the training data's own words; see `sener_data::split`).
    pub splitter: SplitterChoice,
    /// Without `dev`: this fraction of the training documents (chosen by a hash of their ids,
    /// see `sener_data::holdout`) is held out for evaluation and selection instead of trained on.
    pub holdout: f64,
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
    /// (see [`super::recompute`]): `auto` (on the CPU's fused path always, keeping the encoder
    /// layers' states while they fit [`super::recompute::KEEP_ENCODER_BYTES`]; elsewhere
    /// micro-batches of ≥ 2,048 tokens), `always` (every stage, the least memory), `never`.
    pub recompute: Recompute,
    /// Weight of the positive cells in the BCE loss (1: the paper's unweighted sum).
    pub pos_weight: f64,
    /// Choose per-type decision thresholds on the dev/held-out data after every evaluation
    /// ([`super::calibrate`]); selection then uses the calibrated F1, and the model keeps them.
    pub calibrate: bool,
    /// Wall-clock budget in seconds for the whole run, evaluations included: after the first
    /// steps the schedule is planned to end within it (fewer steps, the same warm-up share), and
    /// the run stops at the budget in any case.
    pub max_time: Option<f64>,
    /// The licence named in the model card's front matter (a Hub licence id such as `mit`,
    /// `apache-2.0`, `cc-by-4.0`; default `other`).
    pub license: Option<String>,
    /// Start from a trained sener model folder (its LoRA adapter and span side, thresholds
    /// recalibrated) instead of freshly initialised layers: to give a finished run a second
    /// schedule, or to adapt a model to one's own data. With the model's types its type head is
    /// kept too (and `prior_bias` is not applied); with other types the head starts fresh and
    /// the rest transfers. Its arrow and span settings, LoRA shape and base encoder must be this
    /// run's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Precision of the frozen encoder weights' products ([`crate::gemm_bf16`]): `f32`; `bf16`
    /// (bf16 inputs, f32 accumulation; LoRA, the span side, the optimiser state and the master
    /// weights stay f32); `auto` (bf16 where the CPU has AMX or AVX512-BF16). Part of the
    /// resume key: a run resumes in the precision it started in.
    pub dtype: crate::gemm_bf16::DtypeChoice,
    /// Which ops run ([`crate::nn::Kernels`]): `auto` (the fused CPU kernels where they apply,
    /// candle ops elsewhere), `fused` (CPU only), `generic` (candle ops on every device, BiSPA in
    /// row chunks that recomputation differentiates one at a time: the path a GPU takes, here
    /// to be measured). Part of the resume key: the two paths draw different dropout masks.
    pub kernels: crate::nn::Kernels,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self::for_recipe(Recipe::Sener)
    }
}

impl TrainConfig {
    /// The official recipe (spec §8).
    pub fn paper() -> Self {
        Self::for_recipe(Recipe::Paper)
    }

    /// The defaults of `recipe`.
    pub fn for_recipe(recipe: Recipe) -> Self {
        let paper = Self {
            recipe,
            train: PathBuf::new(),
            dev: None,
            format: "sener".into(),
            splitter: SplitterChoice::Auto,
            holdout: 0.0,
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
            pos_weight: 1.0,
            calibrate: false,
            max_time: None,
            license: None,
            init_from: None,
            dtype: crate::gemm_bf16::DtypeChoice::F32,
            kernels: crate::nn::Kernels::Auto,
        };
        match recipe {
            Recipe::Paper => paper,
            Recipe::Sener => Self {
                prior_bias: true,
                lr_encoder: 1e-3,
                lr_new: 3e-3,
                batch_size: 4,
                micro_batch: 2,
                max_len: 512,
                calibrate: true,
                holdout: 0.1,
                lora: LoraConfig { targets: crate::encoder::lora::TARGETS.iter().map(|t| t.to_string()).collect(), ..LoraConfig::default() },
                span: SpanConfig { window: 64, ..SpanConfig::default() },
                ..paper
            },
        }
    }

    /// A config from JSON keys (a `--config` file, Python's `sener.train(**config)`): the
    /// defaults of its `recipe` (default sener), with every given key laid over them (objects
    /// such as `span` key by key). Unknown keys are refused; values are not yet validated
    /// ([`Self::validate`]).
    pub fn from_value(over: serde_json::Value) -> Result<Self> {
        let recipe: Recipe = match over.get("recipe") {
            Some(r) => serde_json::from_value(r.clone()).map_err(|e| Error::Input(format!("training config: recipe: {e}")))?,
            None => Recipe::default(),
        };
        let mut value = serde_json::to_value(Self::for_recipe(recipe)).map_err(|e| Error::Input(e.to_string()))?;
        merge_json(&mut value, over);
        serde_json::from_value(value).map_err(|e| Error::Input(format!("training config: {e}")))
    }

    /// Checks every value against its bounds; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::Input(format!("training config: {field} {why}")));
        let rate = |field: &str, v: f64| if v.is_finite() && v > 0.0 && v <= 1.0 { Ok(()) } else { bad(field, format!("= {v} must be in (0, 1]")) };
        rate("lr_encoder", self.lr_encoder)?;
        rate("lr_new", self.lr_new)?;
        if !(0.0..=1.0).contains(&self.weight_decay) {
            return bad("weight_decay", format!("= {} must be in [0, 1]", self.weight_decay));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return bad("warmup", format!("= {} must be in [0, 1)", self.warmup));
        }
        if !(self.clip_norm > 0.0 && self.clip_norm.is_finite()) {
            return bad("clip_norm", format!("= {} must be positive", self.clip_norm));
        }
        if self.micro_batch == 0 || self.batch_size == 0 || self.batch_size % self.micro_batch != 0 || self.batch_size > 4096 {
            return bad("batch_size", format!("{} must be a positive multiple of micro_batch {} (at most 4096)", self.batch_size, self.micro_batch));
        }
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad("epochs", format!("= {} must be in 1..=100000", self.epochs));
        }
        if !(0.0..0.5).contains(&self.wwm) {
            return bad("wwm", format!("= {} must be in [0, 0.5)", self.wwm));
        }
        if !(8..=1 << 20).contains(&self.max_len) {
            return bad("max_len", format!("= {} must be in 8..=1048576 tokens", self.max_len));
        }
        if !(0.0..0.9).contains(&self.holdout) {
            return bad("holdout", format!("= {} must be in [0, 0.9)", self.holdout));
        }
        if !(self.pos_weight > 0.0 && self.pos_weight <= 1e6) {
            return bad("pos_weight", format!("= {} must be in (0, 1e6]", self.pos_weight));
        }
        if let Some(t) = self.max_time {
            if !(t > 0.0 && t.is_finite()) {
                return bad("max_time", format!("= {t} must be a positive number of seconds"));
            }
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1".into());
        }
        if self.format.parse::<Format>().is_err() {
            return bad("format", format!("`{}` is not one of {}", self.format, Format::NAMES.join(", ")));
        }
        self.lora.validate()?;
        if self.arrow.window == 0 {
            return bad("arrow.window", "must be at least 1".into());
        }
        if self.span.window > 4096 || !(0.0..1.0).contains(&self.span.biaffine_dropout) || !(0.0..1.0).contains(&self.span.bispa_dropout) || self.span.cnn_depth > 64 {
            return bad("span", format!("window {} (≤ 4096), dropouts {} and {} (in [0, 1)), cnn_depth {} (≤ 64)", self.span.window, self.span.biaffine_dropout, self.span.bispa_dropout, self.span.cnn_depth));
        }
        self.span.validate()
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

/// The `sener.json` of `cfg.init_from`, checked against the run: a LoRA model (full fine-tuning
/// carries its own encoder, which `base` would have to name) whose arrow and span settings and
/// LoRA shape are the run's.
fn init_config(dir: &Path, cfg: &TrainConfig) -> Result<SenerConfig> {
    let icfg = SenerConfig::read(dir)?;
    let differs = |what: &str, theirs: String, ours: String| {
        Err(Error::model(dir, format!("init_from: the model's {what} ({theirs}) is not this run's ({ours})")))
    };
    if cfg.finetune != Finetune::Lora {
        return Err(Error::model(dir, "init_from: only LoRA runs (finetune = lora) can start from a model folder"));
    }
    match &icfg.lora {
        None => return Err(Error::model(dir, "init_from: the model carries no LoRA adapter (sener.json has no `lora`)")),
        Some(l) if *l != cfg.lora => return differs("LoRA settings", format!("{l:?}"), format!("{:?}", cfg.lora)),
        Some(_) => {}
    }
    if icfg.arrow != cfg.arrow {
        return differs("arrow settings", format!("{:?}", icfg.arrow), format!("{:?}", cfg.arrow));
    }
    if icfg.span != cfg.span {
        return differs("span settings", format!("{:?}", icfg.span), format!("{:?}", cfg.span));
    }
    Ok(icfg)
}

/// Sets the run's fresh adapter and span side to the weights of the model folder `dir` (checked
/// by [`init_config`]); the base encoder must be the one the model was trained on. The type head
/// (`down_fc`, one output per type) is taken only with `head` (the same types); otherwise it
/// keeps its fresh initialisation. Returns the number of tensors set.
fn load_init_weights(model: &Sener, dir: &Path, icfg: &SenerConfig, head: bool) -> Result<usize> {
    if let (Some(want), Some(got)) = (&icfg.base.sha256, &model.config.base.sha256) {
        if want != got {
            return Err(Error::model(dir, format!("init_from: the model was trained on a base encoder with sha256 {want}, this run's base has {got}")));
        }
    }
    let device = model.encoder.device();
    let load = |file: PathBuf| -> Result<HashMap<String, Tensor>> {
        if !file.is_file() {
            return Err(Error::model(dir, format!("init_from: no {}", file.display())));
        }
        candle_core::safetensors::load(&file, &device).map_err(|e| Error::model(&file, e.to_string()))
    };
    let adapter_file = dir.join("adapter").join("adapter_model.safetensors");
    let adapter = load(adapter_file.clone())?;
    let span_file = dir.join("span.safetensors");
    let span = load(span_file.clone())?;
    let set = |file: &Path, tensors: &HashMap<String, Tensor>, key: String, name: &str, var: &Var| -> Result<()> {
        let t = tensors.get(&key).ok_or_else(|| Error::Weight { path: file.to_path_buf(), name: key.clone(), message: "missing".into() })?;
        if t.dims() != var.dims() {
            return Err(Error::Weight { path: file.to_path_buf(), name: name.to_string(), message: format!("shape {:?}, the run expects {:?}", t.dims(), var.dims()) });
        }
        var.set(t)?;
        Ok(())
    };
    let mut n = 0;
    for (name, var) in model.encoder.trainable() {
        set(&adapter_file, &adapter, format!("base_model.model.{name}"), &name, &var)?;
        n += 1;
    }
    for (name, var) in model.span.params() {
        if !head && name.starts_with("down_fc.") {
            continue;
        }
        set(&span_file, &span, name.clone(), &name, &var)?;
        n += 1;
    }
    Ok(n)
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

/// `over` merged into `base`, objects key by key.
fn merge_json(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge_json(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Reads `path` in `format`; what the reader dropped or adjusted goes to the metrics log.
fn read_docs(path: &Path, format: Format, log: &mut dyn Write) -> Result<Vec<Document>> {
    let read = readers::read_path(format, path).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    if !read.report.is_empty() {
        let counts: serde_json::Map<String, serde_json::Value> =
            read.report.counts().iter().map(|(issue, n)| (issue.describe().to_string(), (*n).into())).collect();
        writeln!(log, "{}", serde_json::json!({"event": "read_report", "path": path, "counts": counts})).map_err(|e| Error::io("metrics log", e))?;
    }
    Ok(read.documents)
}

/// The splitter a run records, and (for `auto` on data with its own words) every splitter's
/// agreement with those words.
fn choose_splitter(choice: SplitterChoice, docs: &[Document], format: Format) -> Result<(Splitter, Vec<(Splitter, words::Agreement)>)> {
    match choice {
        SplitterChoice::Use(s) => Ok((s, Vec::new())),
        SplitterChoice::Auto if format.gives_words() || docs.iter().all(|d| d.words.is_some()) && format == Format::Jsonl => {
            let natural: Vec<Document> = docs
                .iter()
                .filter(|d| d.words.is_some())
                .map(sener_data::detok::detokenize)
                .collect::<sener_data::Result<_>>()
                .map_err(|e| Error::Input(e.to_string()))?;
            Ok(words::best_for(&natural))
        }
        SplitterChoice::Auto => Ok((Splitter::Treebank, Vec::new())),
    }
}

/// Cuts the documents of a raw-text format (read from `path`) into words with `splitter`
/// (documents of formats with their own words keep them). Words that had to be split further
/// because an entity starts or ends inside them go to the metrics log: the annotation disagrees
/// with the splitter there.
fn resegment(docs: &mut [Document], format: Format, splitter: Splitter, path: &Path, log: &mut dyn Write) -> Result<()> {
    if format.gives_words() {
        return Ok(());
    }
    let mut split = 0;
    for d in docs {
        if format != Format::Jsonl || d.words.is_none() {
            split += d.segment_words(splitter);
        }
    }
    if split > 0 {
        writeln!(log, "{}", serde_json::json!({"event": "words_split_at_entity_boundaries", "path": path, "words": split, "splitter": splitter}))
            .map_err(|e| Error::io("metrics log", e))?;
    }
    Ok(())
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
    /// Data-parallel training ([`super::collective`]): this process is one rank of several.
    /// None: one process.
    pub collective: Option<&'a dyn Collective>,
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
    /// The word splitter recorded in the model.
    pub splitter: Splitter,
    /// Documents evaluated after every epoch (dev, or the held-out part).
    pub dev_documents: usize,
    /// Per-type thresholds of the saved model (with `calibrate`).
    pub thresholds: Option<Vec<f32>>,
    /// The optimiser steps the schedule ran to (planned to fit `max_time` when set).
    pub planned_steps: usize,
    /// The run stopped at its time budget.
    pub time_budget_reached: bool,
}

/// Band logits of every segment of a split, with its gold spans, for scoring and calibration.
fn held_out_logits(model: &Sener, split: &Split, labels: &[String], pad: u32) -> Result<HeldOut> {
    let mut segments = Vec::with_capacity(split.examples.len());
    for ex in &split.examples {
        let (logits, _) = model.predict_segment(&ex.seg, pad, &DecodeOptions::default())?;
        segments.push((ex.doc, ex.seg.word_offset, ex.seg.n_words, logits.flatten_all()?.to_vec1::<f32>()?));
    }
    let mut gold = Vec::with_capacity(split.docs.len());
    for doc in &split.docs {
        let (we, _) = doc.word_entities().map_err(|e| Error::Input(e.to_string()))?;
        gold.push(we.iter().map(|e| (e.start, e.end - 1, e.label.clone())).collect());
    }
    Ok(HeldOut { segments, gold, labels: labels.to_vec(), window: model.span.config.window })
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

/// Writes the model into `dir` atomically (temporary sibling folder, then [`replace_dir`]), with
/// its model card (`README.md`) and the run's effective config (`train.json`).
fn save_atomic(model: &Sener, dir: &Path, card: &super::card::CardInfo) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let tmp = parent.join(format!(".{}.tmp-{}", dir.file_name().and_then(|s| s.to_str()).unwrap_or("model"), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    model.save(&tmp)?;
    let readme = tmp.join("README.md");
    std::fs::write(&readme, super::card::model_card(card)).map_err(|e| Error::io(&readme, e))?;
    let tj = tmp.join("train.json");
    let json = serde_json::to_string_pretty(card.train).map_err(|e| Error::Json { path: tj.clone(), message: e.to_string() })?;
    std::fs::write(&tj, json).map_err(|e| Error::io(&tj, e))?;
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
    /// The step count planned for a time budget (`max_time`), once planned.
    #[serde(default)]
    planned_total: Option<usize>,
    /// Seconds the run had taken when this was written (the budget counts them).
    #[serde(default)]
    elapsed: f64,
    /// Thresholds of the best model so far.
    #[serde(default)]
    thresholds: Option<Vec<f32>>,
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

/// The config fields that must not change across a resume, and the number of ranks (when more
/// than one).
fn resume_key(cfg: &TrainConfig, world: usize) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in ["resume", "checkpoint_every", "output"] {
            o.remove(k);
        }
        // f32 is what every run did before `dtype` existed: their checkpoints resume unchanged.
        if o.get("dtype").and_then(|d| d.as_str()) == Some("f32") {
            o.remove("dtype");
        }
        // Likewise `auto` kernels, what every run did before `kernels` existed.
        if o.get("kernels").and_then(|d| d.as_str()) == Some("auto") {
            o.remove("kernels");
        }
        if world > 1 {
            o.insert("world".into(), world.into());
        }
    }
    v
}

/// The tensors' values, one after another, as `T`.
fn flatten<T: candle_core::WithDType>(tensors: &[Tensor]) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for t in tensors {
        out.extend(t.flatten_all()?.to_dtype(T::DTYPE)?.to_vec1::<T>()?);
    }
    Ok(out)
}

/// Sets the variables to consecutive pieces of `flat` (as [`flatten`] laid them out).
fn unflatten_into(flat: &[f32], vars: &[(String, Var)]) -> Result<()> {
    let mut at = 0;
    for (_, v) in vars {
        let n = v.elem_count();
        let t = Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?.to_dtype(v.dtype())?;
        v.set(&t)?;
        at += n;
    }
    Ok(())
}

/// The seed of micro-batch `mi` of `epoch`: masking and dropout are drawn per micro-batch, so a
/// micro-batch gets the same draws whichever rank runs it, and after a resume.
fn micro_seed(seed: u64, epoch: usize, mi: usize, stream: u64) -> u64 {
    let mut x = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for v in [epoch as u64, mi as u64] {
        x = (x ^ v).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x ^= x >> 31;
    }
    x
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

/// The files a run writes beside its output folder: `<output>.train.json` (the effective
/// config, which `--config` takes back) is written, and the metrics log (`metrics_log`, default
/// `<output>.metrics.jsonl`; appended to on `resume`, else truncated; line-buffered so that a
/// killed run's log is complete) is opened. Returns the log and its path.
pub fn open_run_files(cfg: &TrainConfig, metrics_log: Option<&Path>) -> Result<(std::io::LineWriter<std::fs::File>, PathBuf)> {
    let name = cfg.output.file_name().and_then(|s| s.to_str()).unwrap_or("model");
    let parent = cfg.output.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let json = serde_json::to_string_pretty(cfg).map_err(|e| Error::Input(e.to_string()))?;
    let cfg_path = parent.join(format!("{name}.train.json"));
    std::fs::write(&cfg_path, json).map_err(|e| Error::io(&cfg_path, e))?;
    let log_path = metrics_log.map_or_else(|| parent.join(format!("{name}.metrics.jsonl")), Path::to_path_buf);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(cfg.resume)
        .write(true)
        .truncate(!cfg.resume)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;
    Ok((std::io::LineWriter::new(file), log_path))
}

/// Runs training; `log` receives one JSON line per optimiser step and per evaluation.
pub fn train(cfg: &TrainConfig, device: &Device, log: &mut dyn Write) -> Result<TrainReport> {
    train_with(cfg, device, log, TrainHooks::default())
}

/// [`train`] with a stop flag and a progress callback.
pub fn train_with(cfg: &TrainConfig, device: &Device, log: &mut dyn Write, mut hooks: TrainHooks) -> Result<TrainReport> {
    let t0 = Instant::now();
    let coll: &dyn Collective = hooks.collective.take().unwrap_or(&Local);
    let (rank, world) = (coll.rank(), coll.world());
    let rank0 = rank == 0;
    // Only rank 0 writes the log (and checkpoints and the model, below).
    let mut sink = std::io::sink();
    let log: &mut dyn Write = if rank0 { log } else { &mut sink };
    let stop_flag = hooks.stop.clone();
    let stop_requested = || stop_flag.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst));
    let mut interrupted = false;
    let mut tokens = 0usize;
    cfg.validate()?;
    let format: Format = cfg.format.parse().map_err(|e: sener_data::DataError| Error::Input(e.to_string()))?;
    let mut tok = WordTokenizer::from_path(&cfg.base).map_err(|e| Error::Tokenizer { path: cfg.base.clone(), message: e.to_string() })?;
    let special = *tok.special();
    let mut train_docs = read_docs(&cfg.train, format, log)?;
    let (splitter, agreement) = choose_splitter(cfg.splitter, &train_docs, format)?;
    writeln!(log, "{}", serde_json::json!({"event": "splitter", "choice": cfg.splitter.to_string(), "splitter": splitter,
        "agreement": agreement.iter().map(|(s, a)| serde_json::json!({"splitter": s, "word_f1": a.f1(), "disagreements_per_1000": a.disagreements_per_1000()})).collect::<Vec<_>>()}))
        .map_err(|e| Error::io("metrics log", e))?;
    resegment(&mut train_docs, format, splitter, &cfg.train, log)?;
    let (train_docs, held_docs) = if cfg.dev.is_none() { sener_data::holdout::holdout_split(train_docs, cfg.holdout) } else { (train_docs, Vec::new()) };
    if !held_docs.is_empty() {
        let ids: Vec<&str> = held_docs.iter().map(|d| d.id.as_str()).collect();
        writeln!(log, "{}", serde_json::json!({"event": "holdout", "fraction": cfg.holdout, "documents": ids}))
            .map_err(|e| Error::io("metrics log", e))?;
    }
    let init = match &cfg.init_from {
        Some(dir) => Some(init_config(dir, cfg)?),
        None => None,
    };
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
    let dev_split = match &cfg.dev {
        Some(p) => {
            let mut docs = read_docs(p, format, log)?;
            resegment(&mut docs, format, splitter, p, log)?;
            Some(prepare(p, docs, &mut tok, &special, &labels, cfg)?)
        }
        None if !held_docs.is_empty() => Some(prepare(&cfg.train, held_docs, &mut tok, &special, &labels, cfg)?),
        None => None,
    };

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
        splitter,
        thresholds: None,
    };
    let mut model = Sener { config, encoder, span };
    let precision = cfg.dtype.resolve_on(device.is_cpu())?;
    cfg.kernels.check(device)?;
    if cfg.kernels == crate::nn::Kernels::Generic && precision != crate::gemm_bf16::Precision::F32 {
        return Err(Error::Input("training config: kernels `generic` runs candle ops only, and dtype bf16 is one of sener's CPU kernels: use dtype f32 with it".into()));
    }
    model.set_precision(precision)?;
    writeln!(log, "{}", serde_json::json!({"event": "precision", "dtype": cfg.dtype.as_str(), "encoder_products": precision.describe(), "kernels": cfg.kernels.as_str()}))
        .map_err(|e| Error::io("metrics log", e))?;
    let mut fresh_head = true;
    if let (Some(dir), Some(icfg)) = (&cfg.init_from, &init) {
        let head = icfg.labels == labels;
        let n = load_init_weights(&model, dir, icfg, head)?;
        fresh_head = !head;
        writeln!(log, "{}", serde_json::json!({"event": "init_from", "path": dir, "tensors": n, "type_head": if head { "loaded" } else { "fresh (other types)" }}))
            .map_err(|e| Error::io("metrics log", e))?;
    }
    if cfg.prior_bias && fresh_head {
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
    let mut total = cfg.max_steps.unwrap_or(usize::MAX).min(steps_per_epoch * cfg.epochs);
    let mut warmup = (cfg.warmup * total as f64).round() as usize;
    // With a time budget the schedule is planned after the first steps have been timed.
    let mut planned = cfg.max_time.is_none();
    let mut elapsed_before = 0.0f64;
    let dev_tokens: usize = dev_split.as_ref().map_or(0, |d| d.examples.iter().map(|e| e.seg.input_ids.len()).sum());
    let band = Band::new(cfg.span.window);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut ctx = ForwardCtx::train(cfg.seed).with_kernels(cfg.kernels);
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
    if accum % world != 0 {
        return Err(Error::Input(format!(
            "training config: batch_size {} must be a multiple of micro_batch {} × {world} ranks (each rank runs its share of every step's micro-batches)",
            cfg.batch_size, cfg.micro_batch
        )));
    }
    if world > 1 {
        writeln!(log, "{}", serde_json::json!({"event": "distributed", "world": world, "micro_batches_per_rank_per_step": accum / world}))
            .map_err(|e| Error::io("metrics log", e))?;
        // Every rank starts from rank 0's weights.
        let mut flat = flatten::<f32>(trainable.iter().map(|(_, v)| v.as_tensor().clone()).collect::<Vec<_>>().as_slice())?;
        coll.broadcast(&mut flat)?;
        unflatten_into(&flat, &trainable)?;
    }
    let rdir = resume_dir(cfg);
    let (mut start_epoch, mut start_micro) = (0, 0);
    let found = if cfg.resume { complete_dir(&rdir, &sibling(&rdir, ".tmp"), "state.json") } else { None };
    if cfg.resume && found.is_none() {
        return Err(Error::model(&rdir, "resume asked for, but there is no complete resume checkpoint here (start the run without resume)"));
    }
    if let Some(rdir) = found {
        let sp = rdir.join("state.json");
        let text = std::fs::read_to_string(&sp).map_err(|e| Error::io(&sp, e))?;
        let st: ResumeState = serde_json::from_str(&text).map_err(|e| Error::Json { path: sp.clone(), message: e.to_string() })?;
        if st.config != resume_key(cfg, world) {
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
        if let Some(t) = st.planned_total {
            total = t;
            warmup = (cfg.warmup * total as f64).round() as usize;
            planned = true;
        }
        elapsed_before = st.elapsed;
        model.config.thresholds = st.thresholds.clone();
        start_epoch = st.epoch;
        start_micro = st.next_micro;
        writeln!(log, "{}", serde_json::json!({"event": "resume", "epoch": st.epoch, "next_micro": st.next_micro, "step": st.step}))
            .map_err(|e| Error::io("metrics log", e))?;
    }
    let key = resume_key(cfg, world);
    let elapsed = |t0: &Instant| elapsed_before + t0.elapsed().as_secs_f64();
    #[allow(clippy::too_many_arguments)]
    let snapshot = |epoch: usize, next_micro: usize, step: usize, best: Option<(usize, f64)>, rng: &ChaCha8Rng, ctx: &ForwardCtx, planned_total: Option<usize>, thresholds: Option<Vec<f32>>| ResumeState {
        epoch,
        next_micro,
        step,
        best,
        mask_rng: rng_state(rng),
        ctx_rng: rng_state(ctx.rng()),
        config: key.clone(),
        planned_total,
        elapsed: elapsed(&t0),
        thresholds,
    };
    let mut steps_timed: Vec<f64> = Vec::new();
    let mut last_step_end = Instant::now();
    let mut eval_seconds: Option<f64> = None;
    let mut budget_hit = false;
    let mut replan = false;
    let mut reached_total = opt.step >= total;
    'epochs: for epoch in start_epoch..cfg.epochs {
        if reached_total {
            break;
        }
        epochs_run = epoch + 1;
        let lengths: Vec<usize> = train_split.examples.iter().map(|e| e.seg.input_ids.len()).collect();
        let micro = length_batches(&lengths, cfg.micro_batch, Some(cfg.seed.wrapping_add(epoch as u64)))
            .map_err(|e| Error::Input(e.to_string()))?;
        let mut acc: HashMap<String, Tensor> = HashMap::new();
        let mut acc_loss = 0.0;
        let mut in_acc = 0;
        let skip = if epoch == start_epoch { start_micro } else { 0 };
        for (mi, idxs) in micro.iter().enumerate().skip(skip) {
            // Step groups start at multiples of accum (resume points are step ends); micro-batch
            // k of a group runs on rank k mod world.
            let mine = (mi % accum) % world == rank;
            tokens += idxs.iter().map(|&i| train_split.examples[i].seg.input_ids.len()).sum::<usize>();
            in_acc += 1;
            if mine {
            rng = ChaCha8Rng::seed_from_u64(micro_seed(cfg.seed, epoch, mi, 1));
            ctx.set_rng(ChaCha8Rng::seed_from_u64(micro_seed(cfg.seed, epoch, mi, 2)));
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
            let batch = Batch::new(&rows, special.pad, device)?;
            let n = batch.words.iter().copied().max().unwrap_or(1);
            let gold: Vec<Vec<GoldSpan>> = idxs.iter().map(|&i| train_split.examples[i].gold.clone()).collect();
            let lab = band_labels(&gold, &batch.words, n, band, labels.len(), device)?;
            // Mean over the effective batch: each micro-batch loss (mean over its rows) / accum.
            let plan = cfg.recompute.plan(batch.ids.elem_count(), ctx.fused_on(device), model.encoder.saved_layer_bytes());
            let step = loss_and_grads(&model, &batch, &lab.labels, 1.0 / accum as f64, cfg.pos_weight, &mut ctx, plan)?;
            acc_loss += step.loss;
            // Accumulated in f64 and rounded once before the step: the sum of a step's
            // micro-batch gradients then does not depend on their order, so N ranks (which add
            // them in another order) take the step one process takes, not one a rounding away.
            // A step of one micro-batch (one rank, then) has nothing to add: its gradient stays
            // as it is (the f32 → f64 → f32 round trip would give the same bits).
            for (name, g) in step.grads {
                let g = if accum > 1 { g.to_dtype(DType::F64)? } else { g };
                let sum = match acc.remove(&name) {
                    Some(a) => (a + g)?,
                    None => g,
                };
                acc.insert(name, sum);
            }
            }
            if in_acc == accum || mi + 1 == micro.len() {
                let mut allreduce_ms = None;
                if world > 1 {
                    let ta = Instant::now();
                    // Sum the gradients (and which tensors have one, and the loss) over the ranks.
                    let zeros: Vec<Tensor> = trainable
                        .iter()
                        .map(|(n, v)| acc.get(n).cloned().map_or_else(|| v.as_tensor().zeros_like()?.to_dtype(DType::F64), Ok))
                        .collect::<candle_core::Result<_>>()?;
                    let mut flat = flatten::<f64>(&zeros)?;
                    coll.all_reduce_sum_f64(&mut flat)?;
                    let mut meta: Vec<f64> = trainable.iter().map(|(n, _)| if acc.contains_key(n) { 1.0 } else { 0.0 }).collect();
                    meta.push(acc_loss);
                    coll.all_reduce_sum_f64(&mut meta)?;
                    acc_loss = meta[trainable.len()];
                    acc.clear();
                    let mut at = 0;
                    for ((name, v), has) in trainable.iter().zip(&meta) {
                        let n = v.elem_count();
                        if *has > 0.0 {
                            acc.insert(name.clone(), Tensor::from_slice(&flat[at..at + n], v.shape(), v.device())?);
                        }
                        at += n;
                    }
                    allreduce_ms = Some(ta.elapsed().as_secs_f64() * 1e3);
                }
                // One rounding from the f64 sum to the weights' dtype (a no-op without one).
                for (name, v) in &trainable {
                    if let Some(g) = acc.remove(name) {
                        acc.insert(name.clone(), g.to_dtype(v.dtype())?);
                    }
                }
                let factor = linear_schedule(opt.step, warmup, total);
                let info = opt.step_with(|name, _| acc.get(name).cloned(), factor)?;
                last_loss = acc_loss;
                steps_timed.push(last_step_end.elapsed().as_secs_f64());
                last_step_end = Instant::now();
                if cfg.max_time.is_some() && ((!planned && steps_timed.len() >= 3) || replan) {
                    // Plan the schedule to end within the budget: the median of the timed steps
                    // (the first one allocates everything; the last 50 after a re-plan), and the
                    // evaluations, measured, or estimated before the first one at a third of a
                    // training step's cost per token. Re-planned after every evaluation.
                    replan = false;
                    let budget = cfg.max_time.unwrap_or(f64::INFINITY);
                    let mut t = steps_timed[1.max(steps_timed.len().saturating_sub(50))..].to_vec();
                    t.sort_by(f64::total_cmp);
                    let per_step = t[t.len() / 2];
                    let tokens_per_step = tokens as f64 / (steps_timed.len().max(1)) as f64;
                    let eval_cost = eval_seconds.unwrap_or(dev_tokens as f64 / tokens_per_step.max(1.0) * per_step / 3.0);
                    let left = budget - elapsed(&t0);
                    let fit = |n: usize| n as f64 * per_step + (n.div_ceil(steps_per_epoch) as f64) * eval_cost;
                    let mut n = 0usize;
                    let most = steps_per_epoch * cfg.epochs;
                    while opt.step + n < cfg.max_steps.unwrap_or(usize::MAX).min(most) && fit(n + 1) <= left {
                        n += 1;
                    }
                    total = opt.step + n;
                    eval_seconds = eval_seconds.or(Some(eval_cost));
                    warmup = (cfg.warmup * total as f64).round() as usize;
                    planned = true;
                    writeln!(log, "{}", serde_json::json!({"event": "planned", "budget_seconds": budget, "seconds_per_step": per_step,
                        "eval_seconds_estimate": eval_cost, "total_steps": total, "warmup_steps": warmup}))
                        .map_err(|e| Error::io("metrics log", e))?;
                }
                // Decisions that depend on the clock or a signal are rank 0's: the planned schedule,
                // the time budget and a stop request.
                let mut budget_now = cfg.max_time.is_some_and(|b| elapsed(&t0) + steps_timed.last().copied().unwrap_or(0.0) + eval_seconds.unwrap_or(0.0) > b);
                let mut stop_now = stop_requested();
                if world > 1 {
                    let mut d = [total as f64, warmup as f64, planned as u8 as f64, budget_now as u8 as f64, stop_now as u8 as f64];
                    coll.broadcast_f64(&mut d)?;
                    (total, warmup, planned, budget_now, stop_now) = (d[0] as usize, d[1] as usize, d[2] > 0.0, d[3] > 0.0, d[4] > 0.0);
                }
                let line = serde_json::json!({"event": "step", "epoch": epoch, "step": opt.step, "loss": acc_loss,
                    "grad_norm": info.grad_norm, "lr_new": cfg.lr_new * factor, "lr_encoder": cfg.lr_encoder * factor,
                    "seconds": elapsed(&t0), "tokens": tokens,
                    "peak_rss_mib": crate::mem::peak_rss().map(|b| b as f64 / (1 << 20) as f64)});
                let mut line = line;
                if let (Some(ms), Some(o)) = (allreduce_ms, line.as_object_mut()) {
                    o.insert("allreduce_ms".into(), ms.into());
                }
                writeln!(log, "{line}").map_err(|e| Error::io("metrics log", e))?;
                acc.clear();
                acc_loss = 0.0;
                in_acc = 0;
                let plan = planned.then_some(total).filter(|_| cfg.max_time.is_some());
                if rank0 && cfg.checkpoint_every > 0 && opt.step % cfg.checkpoint_every == 0 {
                    save_resume(&rdir, &model, &opt, &snapshot(epoch, mi + 1, opt.step, best, &rng, &ctx, plan, model.config.thresholds.clone()))?;
                }
                if opt.step >= total {
                    reached_total = true;
                    break;
                }
                if budget_now {
                    writeln!(log, "{}", serde_json::json!({"event": "time_budget_reached", "epoch": epoch, "step": opt.step, "seconds": elapsed(&t0)}))
                        .map_err(|e| Error::io("metrics log", e))?;
                    budget_hit = true;
                    break;
                }
                if stop_now {
                    if rank0 {
                        save_resume(&rdir, &model, &opt, &snapshot(epoch, mi + 1, opt.step, best, &rng, &ctx, plan, model.config.thresholds.clone()))?;
                    }
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
        let plan = planned.then_some(total).filter(|_| cfg.max_time.is_some());
        if let Some(dev) = &dev_split {
            let te = Instant::now();
            let held = held_out_logits(&model, dev, &labels, special.pad)?;
            let plain = held.score(&DecodeOptions::default())?;
            let (thresholds, m) = if cfg.calibrate {
                let (t, m) = calibrate(&held)?;
                (Some(t), m)
            } else {
                (None, plain.clone())
            };
            let f1 = m.micro.f1;
            eval_seconds = Some(te.elapsed().as_secs_f64());
            replan = true;
            let line = serde_json::json!({"event": "eval", "epoch": epoch, "step": opt.step, "dev": m.micro, "dev_at_0.5": plain.micro,
                "thresholds": thresholds, "seconds": eval_seconds});
            writeln!(log, "{line}").map_err(|e| Error::io("metrics log", e))?;
            let mut stop = false;
            if best.is_none_or(|(_, b)| f1 > b) {
                best = Some((epoch, f1));
                model.config.thresholds = thresholds;
                let what = if cfg.dev.is_some() { "dev".to_string() } else { format!("held-out {} of {} training documents", dev.docs.len(), dev.docs.len() + train_split.docs.len()) };
                let card = CardInfo { train: cfg, model: &model.config, dev: Some((&m, what)), steps: opt.step, epoch: Some(epoch), train_documents: train_split.docs.len() };
                if rank0 {
                    save_atomic(&model, &cfg.output, &card)?;
                }
            } else if best.is_some_and(|(be, _)| epoch - be >= cfg.patience) {
                stop = true;
            }
            if rank0 {
                save_resume(&rdir, &model, &opt, &snapshot(epoch + 1, 0, opt.step, best, &rng, &ctx, plan, model.config.thresholds.clone()))?;
            }
            if stop || budget_hit || reached_total {
                break;
            }
        } else {
            if rank0 {
                save_resume(&rdir, &model, &opt, &snapshot(epoch + 1, 0, opt.step, best, &rng, &ctx, plan, None))?;
            }
            if budget_hit || reached_total {
                break;
            }
        }
    }
    if world > 1 {
        // Every rank must hold rank 0's weights: compare, and agree on the largest difference.
        let mine = flatten::<f32>(trainable.iter().map(|(_, v)| v.as_tensor().clone()).collect::<Vec<_>>().as_slice())?;
        let mut first = mine.clone();
        coll.broadcast(&mut first)?;
        let mut diff = vec![0.0f64; world];
        diff[rank] = mine.iter().zip(&first).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        coll.all_reduce_sum_f64(&mut diff)?;
        let max = diff.iter().copied().fold(0.0, f64::max);
        writeln!(log, "{}", serde_json::json!({"event": "ranks_agree", "world": world, "max_weight_diff": max, "per_rank": diff}))
            .map_err(|e| Error::io("metrics log", e))?;
        if max > 1e-5 {
            return Err(Error::Input(format!("the ranks' weights differ by up to {max:e} after training (rank-local state leaked into the step)")));
        }
    }
    // Without a dev split (or before its first evaluation) the model folder is written at the end —
    // also after an interrupt, so a stopped run leaves a usable model beside its resume checkpoint
    // (`--resume` continues the schedule and overwrites it).
    if dev_split.is_none() || best.is_none() {
        let card = CardInfo { train: cfg, model: &model.config, dev: None, steps: opt.step, epoch: None, train_documents: train_split.docs.len() };
        if rank0 {
            save_atomic(&model, &cfg.output, &card)?;
        }
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
        seconds: elapsed(&t0),
        splitter,
        dev_documents: dev_split.as_ref().map_or(0, |d| d.docs.len()),
        thresholds: model.config.thresholds.clone(),
        planned_steps: total,
        time_budget_reached: budget_hit,
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
