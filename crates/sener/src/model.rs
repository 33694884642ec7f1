//! The whole model: `Sener` = encoder (arrow attention, LoRA) + word pooling + span side, with
//! one config saved beside every checkpoint.
//!
//! A model folder holds:
//! - `sener.json`: [`SenerConfig`] (labels, windows, dimensions, where the base encoder is);
//! - `span.safetensors`: the span side, official parameter names (`U`, `W`, `head_mlp.1.*`,
//!   `cross_layers.N.*`, `down_fc.*`);
//! - `adapter/`: the encoder's LoRA adapter in PEFT layout (absent when the encoder is not adapted);
//! - optionally `encoder/`: a Hugging Face encoder folder (config.json, weights, tokenizer), used
//!   when `sener.json` names it as the base: a converted official checkpoint, or an encoder that
//!   was fully fine-tuned (`finetune = "full"`; then there is no `adapter/`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use sener_data::segment::Segment;
use sener_data::split::Splitter;

use crate::decode::{decode_segment, DecodeOptions, Span};
use crate::encoder::{ArrowConfig, Encoder, EncoderOptions, LoraConfig};
use crate::nn::ForwardCtx;
use crate::span::pooling::WordPooling;
use crate::span::{SpanConfig, SpanModel, SpanOutput};
use crate::{Error, Result};

/// Where the base encoder comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseEncoder {
    /// Hugging Face folder; relative paths are relative to the model folder.
    pub path: PathBuf,
    /// sha256 of its weight file, checked at load when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// `org/name@commit` when the base came from the Hugging Face Hub: where it came from, and
    /// where to find it again in the Hub cache ([`hub_cache_dir`]) when `path` is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// The encoder this one was fully fine-tuned from (then `path` is the model's own `encoder/`
    /// folder); provenance only, never loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetuned_from: Option<Box<BaseEncoder>>,
}

/// Everything needed to rebuild a model (saved as `sener.json`). Defaults are the paper's.
/// Unknown fields are refused, and [`SenerConfig::read`] checks every value against its bounds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenerConfig {
    pub base: BaseEncoder,
    /// Entity types, in logit order.
    pub labels: Vec<String>,
    #[serde(default)]
    pub arrow: ArrowConfig,
    #[serde(default)]
    pub span: SpanConfig,
    /// LoRA on the encoder's query/value projections (None: encoder frozen as is).
    #[serde(default)]
    pub lora: Option<LoraConfig>,
    /// Segment length in subword tokens, [CLS]/[SEP] included.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// How raw text is cut into words: the convention of the words the model was trained on
    /// (`sener train` measures it on the training data). Folders written before it existed
    /// split at whitespace.
    #[serde(default)]
    pub splitter: Splitter,
    /// Per-type decision thresholds (logit order), calibrated on held-out data by `sener train`;
    /// absent: the official 0.5 for every type. An explicit threshold (`--threshold`, a
    /// request's `threshold`) replaces them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Vec<f32>>,
}

fn default_max_len() -> usize {
    5120
}

impl SenerConfig {
    /// [`SpanConfig::working_set_bytes`] for the first segment of a document of `tokens`
    /// subwords (at most `max_len`; about 4 subwords to 3 words, as in English text).
    pub fn working_set_bytes(&self, tokens: usize) -> usize {
        self.span.working_set_bytes(tokens.min(self.max_len) * 3 / 4)
    }
}

/// Padded tokens per forward pass when [`Sener::predict_batch`] packs segments (a 512-token
/// model runs 8 segments a pass; a segment longer than this runs alone).
pub const BATCH_TOKENS: usize = 4096;

/// One batch of segments, ready for the model.
pub struct Batch {
    /// `[B, T]` u32 token ids ([CLS] … [SEP], padded).
    pub ids: Tensor,
    /// `[B, T]` 1/0.
    pub mask: Tensor,
    /// Per row: subword → word index + 1 (0 for special and padding tokens).
    pub indexes: Vec<Vec<u32>>,
    /// Per row: number of words.
    pub words: Vec<usize>,
}

impl Batch {
    /// Pads rows of `(ids, indexes, words)` to the longest; `pad` is the padding id.
    pub fn new(rows: &[(Vec<u32>, Vec<u32>, usize)], pad: u32, dev: &Device) -> Result<Self> {
        let t = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        if rows.is_empty() || t == 0 {
            return Err(Error::Input("empty batch".into()));
        }
        let mut ids = Vec::with_capacity(rows.len() * t);
        let mut mask = Vec::with_capacity(rows.len() * t);
        for (row, idx, _) in rows {
            if idx.len() != row.len() {
                return Err(Error::Input(format!("{} ids but {} word indexes", row.len(), idx.len())));
            }
            ids.extend(row.iter().copied().chain(std::iter::repeat(pad)).take(t));
            mask.extend((0..t).map(|i| if i < row.len() { 1u32 } else { 0 }));
        }
        Ok(Self {
            ids: Tensor::from_vec(ids, (rows.len(), t), dev)?,
            mask: Tensor::from_vec(mask, (rows.len(), t), dev)?,
            indexes: rows.iter().map(|r| r.1.clone()).collect(),
            words: rows.iter().map(|r| r.2).collect(),
        })
    }

    /// The subword → word max-pooling plan of this batch (rows padded to its longest word count).
    pub fn word_pooling(&self) -> Result<WordPooling> {
        let n = self.words.iter().copied().max().unwrap_or(0).max(1);
        WordPooling::new(&self.indexes, self.ids.dim(1)?, n)
    }
}

/// Encoder + pooling + span side.
pub struct Sener {
    pub config: SenerConfig,
    pub encoder: Encoder,
    pub span: SpanModel,
}

impl Sener {
    /// Loads a model folder (see the module docs). LoRA is merged for inference.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = SenerConfig::read(dir)?;
        let base = config.base_dir(dir);
        if let Some(want) = &config.base.sha256 {
            let files = crate::weights::WeightFiles::find(&base)?;
            let got = sha256_file(&files.display_path())?;
            if &got != want {
                return Err(Error::model(
                    files.display_path(),
                    format!("base encoder sha256 is {got}, the model was trained on {want}"),
                ));
            }
        }
        let opts = EncoderOptions { arrow: config.arrow.clone(), dtype: DType::F32, device: device.clone() };
        let mut encoder = Encoder::load(&base, &opts)?;
        let adapter = dir.join("adapter");
        match (&config.lora, adapter.is_dir()) {
            (Some(l), true) => {
                encoder.load_adapter(&adapter, Some(l.alpha))?;
                encoder.merge_lora()?;
            }
            (Some(_), false) => {
                return Err(Error::model(dir, "sener.json says the encoder carries a LoRA adapter (`lora`), but the folder has no adapter/"));
            }
            (None, true) => {
                return Err(Error::model(dir, "the folder has an adapter/ but sener.json has no `lora` section: which one is right cannot be told"));
            }
            (None, false) => {}
        }
        let span_file = dir.join("span.safetensors");
        if !span_file.is_file() {
            return Err(Error::model(dir, "no span.safetensors in this model folder"));
        }
        // SAFETY: read-only mmap of a file we do not modify while loading.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&span_file], DType::F32, device) }
            .map_err(|e| Error::model(&span_file, e.to_string()))?;
        let span = SpanModel::load(&vb, config.span.clone(), encoder.hidden_size(), config.labels.len())
            .map_err(|e| Error::model(&span_file, e.to_string()))?;
        Ok(Self { config, encoder, span })
    }

    /// Multiply in `p` ([`crate::gemm_bf16`]): the encoder's linear layers and the span side's
    /// BiSPA products ([`SpanModel::set_precision`]). See [`Encoder::set_precision`].
    pub fn set_precision(&mut self, p: crate::gemm_bf16::Precision) -> Result<()> {
        self.encoder.set_precision(p)?;
        self.span.set_precision(p);
        Ok(())
    }

    /// Writes `sener.json`, `span.safetensors` and (when adapted) `adapter/`. A fully fine-tuned
    /// encoder ([`Encoder::load_trainable`]) is written as the Hugging Face folder `encoder/`
    /// (its config and tokenizer copied from the base), which `sener.json` then names as the
    /// base, with its own sha256; the original base is kept as `base.finetuned_from`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut config = self.config.clone();
        if self.encoder.is_fully_trainable() {
            let weights = self.encoder.save_full(&dir.join("encoder"), &self.config.base_dir(dir))?;
            let mut origin = self.config.base.clone();
            origin.finetuned_from = None;
            config.base = BaseEncoder {
                path: PathBuf::from("encoder"),
                sha256: Some(sha256_file(&weights)?),
                hub: None,
                finetuned_from: Some(Box::new(origin)),
            };
            config.lora = None;
        }
        let cfg = dir.join("sener.json");
        let json = serde_json::to_string_pretty(&config).map_err(|e| Error::Json { path: cfg.clone(), message: e.to_string() })?;
        std::fs::write(&cfg, json).map_err(|e| Error::io(&cfg, e))?;
        let tensors: HashMap<String, Tensor> =
            self.span.params().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let file = dir.join("span.safetensors");
        candle_core::safetensors::save(&tensors, &file).map_err(|e| Error::model(&file, e.to_string()))?;
        if let Some(l) = &config.lora {
            if !self.encoder.trainable().is_empty() {
                self.encoder.save_adapter(&dir.join("adapter"), l)?;
            }
        }
        Ok(())
    }

    /// Trainable tensors: encoder LoRA (+ q/v biases) and the whole span side.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut v: Vec<(String, Var)> = self.encoder.trainable().into_iter().map(|(n, t)| (format!("encoder.{n}"), t)).collect();
        v.extend(self.span.params());
        v
    }

    /// Inference band logits of one segment, `[n_words, 2w′+1, labels]` on the CPU (cells outside
    /// the segment −1e-6, as the official code), and its decoded spans (segment word indices).
    pub fn predict_segment(&self, seg: &Segment, pad: u32, opts: &DecodeOptions) -> Result<(Tensor, Vec<Span>)> {
        let batch = Batch::new(&[(seg.input_ids.clone(), seg.indexes.clone(), seg.n_words)], pad, &self.encoder.device())?;
        let out = self.forward(&batch, &mut ForwardCtx::eval())?;
        let logits = SpanModel::inference_logits(&out)?.squeeze(0)?.narrow(0, 0, seg.n_words)?.to_device(&Device::Cpu)?;
        let flat: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        let spans = decode_segment(&flat, seg.n_words, self.span.config.window, self.config.labels.len(), opts)?;
        Ok((logits, spans))
    }

    /// Decoded spans (segment word indices) of many segments, in input order, with several
    /// segments per forward pass: segments are sorted by length and packed, up to
    /// [`BATCH_TOKENS`] padded tokens a pass, among those whose length LogN rounds to the same N
    /// (the [CLS] row's scale depends on the batch's padded length), so each segment's logits are
    /// those it gets alone. `cancelled` is asked before every pass.
    pub fn predict_batch(&self, segs: &[&Segment], pad: u32, opts: &DecodeOptions, cancelled: &dyn Fn() -> bool) -> Result<Vec<Vec<Span>>> {
        let arrow = &self.config.arrow;
        let mut order: Vec<usize> = (0..segs.len()).collect();
        order.sort_by_key(|&i| (arrow.logn_length(segs[i].input_ids.len()), segs[i].input_ids.len()));
        let mut out: Vec<Vec<Span>> = vec![Vec::new(); segs.len()];
        let mut start = 0;
        while start < order.len() {
            let bucket = arrow.logn_length(segs[order[start]].input_ids.len());
            let mut end = start + 1;
            while end < order.len() && arrow.logn_length(segs[order[end]].input_ids.len()) == bucket {
                let longest = segs[order[end]].input_ids.len(); // sorted: the new one is the longest
                if (end - start + 1) * longest > BATCH_TOKENS {
                    break;
                }
                end += 1;
            }
            if cancelled() {
                return Err(Error::Cancelled);
            }
            let group = &order[start..end];
            let rows: Vec<(Vec<u32>, Vec<u32>, usize)> =
                group.iter().map(|&i| (segs[i].input_ids.clone(), segs[i].indexes.clone(), segs[i].n_words)).collect();
            let batch = Batch::new(&rows, pad, &self.encoder.device())?;
            let logits = SpanModel::inference_logits(&self.forward(&batch, &mut ForwardCtx::eval())?)?.to_device(&Device::Cpu)?;
            for (r, &i) in group.iter().enumerate() {
                let n = segs[i].n_words;
                let flat: Vec<f32> = logits.get(r)?.narrow(0, 0, n)?.flatten_all()?.to_vec1()?;
                out[i] = decode_segment(&flat, n, self.span.config.window, self.config.labels.len(), opts)?;
            }
            start = end;
        }
        Ok(out)
    }

    /// Band logits of a batch (invalid cells 0; see [`SpanModel::inference_logits`]).
    pub fn forward(&self, batch: &Batch, ctx: &mut ForwardCtx) -> Result<SpanOutput> {
        let hidden = self.encoder.forward(&batch.ids, &batch.mask, ctx)?;
        let words = batch.word_pooling()?.forward(&hidden)?;
        self.span.forward(&words, &batch.words, ctx)
    }
}

impl SenerConfig {
    /// Reads `sener.json` of a model folder.
    pub fn read(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("sener.json");
        if !dir.is_dir() {
            return Err(Error::model(dir, "no such model folder"));
        }
        let text = crate::weights::read_config_text(&cfg_path, "a model config")?;
        let config: SenerConfig = serde_json::from_str(&text).map_err(|e| Error::Json { path: cfg_path.clone(), message: e.to_string() })?;
        config.validate().map_err(|m| Error::model(&cfg_path, m))?;
        Ok(config)
    }

    /// Every value against its bounds: a model folder from anywhere (the Hub) cannot make the
    /// program allocate without limit or misbehave. The message names the field.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.labels.is_empty() || self.labels.len() > 10_000 {
            return Err(format!("labels: {} labels (1 to 10,000)", self.labels.len()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, l) in self.labels.iter().enumerate() {
            if l.is_empty() || l.len() > 256 {
                return Err(format!("labels[{i}]: empty or longer than 256 bytes"));
            }
            if !seen.insert(l) {
                return Err(format!("labels[{i}]: `{l}` appears twice"));
            }
        }
        if let Some(s) = &self.base.sha256 {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("base.sha256: `{s}` is not 64 hex digits"));
            }
        }
        let a = &self.arrow;
        if !(1..=1 << 16).contains(&a.window) {
            return Err(format!("arrow.window: {} (1 to 65,536 tokens)", a.window));
        }
        if !(2..=1 << 20).contains(&a.logn_base) {
            return Err(format!("arrow.logn_base: {} (2 to 1,048,576)", a.logn_base));
        }
        let s = &self.span;
        if !(1..=1024).contains(&s.window) {
            return Err(format!("span.window: {} (1 to 1,024 words)", s.window));
        }
        if !(1..=4096).contains(&s.biaffine_size) || !(2..=1024).contains(&s.cnn_dim) || s.cnn_dim % 2 != 0 || s.cnn_depth > 64 {
            return Err(format!(
                "span: biaffine_size {} (1 to 4,096), cnn_dim {} (even, 2 to 1,024), cnn_depth {} (at most 64)",
                s.biaffine_size, s.cnn_dim, s.cnn_depth
            ));
        }
        for (name, p) in [("span.biaffine_dropout", s.biaffine_dropout), ("span.bispa_dropout", s.bispa_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name}: {p} (0 to 1, excluded)"));
            }
        }
        if let Some(l) = &self.lora {
            l.validate().map_err(|e| e.to_string())?;
        }
        if !(8..=1 << 20).contains(&self.max_len) {
            return Err(format!("max_len: {} (8 to 1,048,576 tokens)", self.max_len));
        }
        if let Some(t) = &self.thresholds {
            if t.len() != self.labels.len() {
                return Err(format!("thresholds: {} values for {} labels", t.len(), self.labels.len()));
            }
            if let Some(i) = t.iter().position(|x| !(0.0..=1.0).contains(x)) {
                return Err(format!("thresholds[{i}]: {} is not a probability", t[i]));
            }
        }
        Ok(())
    }

    /// The model's own decision threshold: its calibrated per-type thresholds, else 0.5.
    pub fn threshold(&self) -> crate::decode::Threshold {
        match &self.thresholds {
            Some(t) => crate::decode::Threshold::PerType(t.clone()),
            None => crate::decode::Threshold::Global(crate::decode::DEFAULT_THRESHOLD),
        }
    }

    /// The base encoder folder: the path as written (relative paths against the model folder),
    /// else a folder of the same name in the sener cache ([`cache_dir`]), where
    /// `tools/setup-minilm.sh` puts the encoder a shipped model names. The first one that exists;
    /// the path as written when none does (so the error names it). The sha256 in `sener.json`
    /// is checked at load whichever folder is found.
    pub fn base_dir(&self, model_dir: &Path) -> PathBuf {
        let found = resolve_base(&self.base.path, model_dir, cache_dir().as_deref());
        if !found.is_dir() {
            if let Some(snapshot) = self.base.hub.as_deref().and_then(|h| hub_snapshot(h, hub_cache_dir().as_deref()?)) {
                if snapshot.is_dir() {
                    return snapshot;
                }
            }
        }
        found
    }
}

/// The Hugging Face Hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
/// `$HOME/.cache/huggingface/hub` (as Python's `huggingface_hub`).
pub fn hub_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// The snapshot folder of `org/name@commit` in a Hub cache.
fn hub_snapshot(hub: &str, cache: &Path) -> Option<PathBuf> {
    let (repo, commit) = hub.split_once('@')?;
    Some(cache.join(format!("models--{}", repo.replace('/', "--"))).join("snapshots").join(commit))
}

/// The sener cache folder: `$SENER_CACHE`, else `$HOME/.cache/sener`.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SENER_CACHE") {
        Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
        _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sener")),
    }
}

fn resolve_base(path: &Path, model_dir: &Path, cache: Option<&Path>) -> PathBuf {
    let primary = if path.is_absolute() { path.to_path_buf() } else { model_dir.join(path) };
    if primary.is_dir() {
        return primary;
    }
    if let (Some(cache), Some(name)) = (cache, path.file_name()) {
        let cached = cache.join(name);
        if cached.is_dir() {
            return cached;
        }
    }
    primary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_found_beside_the_model_then_in_the_cache() {
        let root = std::env::temp_dir().join(format!("sener-base-{}", std::process::id()));
        let (model, cache) = (root.join("model"), root.join("cache"));
        std::fs::create_dir_all(cache.join("enc")).unwrap();
        std::fs::create_dir_all(&model).unwrap();
        // not beside the model: the cache copy
        assert_eq!(resolve_base(Path::new("enc"), &model, Some(&cache)), cache.join("enc"));
        assert_eq!(resolve_base(&root.join("gone/enc"), &model, Some(&cache)), cache.join("enc"));
        // beside the model wins
        std::fs::create_dir_all(model.join("enc")).unwrap();
        assert_eq!(resolve_base(Path::new("enc"), &model, Some(&cache)), model.join("enc"));
        // nowhere: the path as written, for the error message
        assert_eq!(resolve_base(Path::new("other"), &model, Some(&cache)), model.join("other"));
        std::fs::remove_dir_all(root).ok();
    }

    #[test]
    fn a_model_config_is_checked_field_by_field() {
        let good = r#"{"base": {"path": "enc"}, "labels": ["a", "b"], "max_len": 512}"#;
        let parse = |s: &str| -> std::result::Result<SenerConfig, String> {
            let c: SenerConfig = serde_json::from_str(s).map_err(|e| e.to_string())?;
            c.validate().map(|_| c)
        };
        let c = parse(good).unwrap();
        assert_eq!(c.splitter, Splitter::Whitespace, "older folders split at whitespace");
        assert_eq!(c.threshold(), crate::decode::Threshold::Global(0.5));
        for (edit, want) in [
            (r#""labels": ["a", "a"]"#, "labels[1]: `a` appears twice"),
            (r#""labels": []"#, "labels: 0 labels"),
            (r#""labels": ["a", "b"], "span": {"window": 100000}"#, "span.window: 100000"),
            (r#""labels": ["a", "b"], "span": {"cnn_dim": 7}"#, "cnn_dim 7"),
            (r#""labels": ["a", "b"], "span": {"bispa_dropout": 7.5}"#, "span.bispa_dropout: 7.5"),
            (r#""labels": ["a", "b"], "arrow": {"window": 0}"#, "arrow.window: 0"),
            (r#""labels": ["a", "b"], "arrow": {"logn_base": 0}"#, "arrow.logn_base: 0"),
            (r#""labels": ["a", "b"], "lora": {"r": 0}"#, "r = 0"),
            (r#""labels": ["a", "b"], "lora": {"r": "eight"}"#, "invalid type"),
            (r#""labels": ["a", "b"], "lora": {"dropout": 7.5}"#, "dropout = 7.5"),
            (r#""labels": ["a", "b"], "thresholds": [0.5]"#, "thresholds: 1 values for 2 labels"),
            (r#""labels": ["a", "b"], "thresholds": [0.5, 2.0]"#, "thresholds[1]"),
            (r#""labels": ["a", "b"], "colour": "red""#, "unknown field `colour`"),
            (r#""labels": ["a", "b"], "span": {"windw": 4}"#, "unknown field `windw`"),
        ] {
            let s = good.replace(r#""labels": ["a", "b"]"#, edit);
            let err = parse(&s).expect_err(edit);
            assert!(err.contains(want), "{edit}: {err}");
        }
        assert!(parse(&good.replace(r#""path": "enc""#, r#""path": "enc", "sha256": "xyz""#)).unwrap_err().contains("base.sha256"));
        assert!(parse(&good.replace(r#""max_len": 512"#, r#""max_len": 0"#)).unwrap_err().contains("max_len: 0"));
    }

    #[test]
    fn hub_bases_are_found_in_the_hub_cache_layout() {
        let c = Path::new("/c");
        assert_eq!(hub_snapshot("org/m-1@abc123", c), Some(PathBuf::from("/c/models--org--m-1/snapshots/abc123")));
        assert_eq!(hub_snapshot("org/m", c), None);
    }
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
