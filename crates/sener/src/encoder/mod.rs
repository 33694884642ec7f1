//! The encoder: one interface over the supported families (DeBERTa-v2/v3, BERT), all with arrow
//! attention, LogN and LoRA. The rest of the model calls [`Encoder::forward`] and never needs to
//! know which family it has.

pub mod arrow_attention;
pub mod arrow_attention_cpu;
pub mod bert;
pub mod block;
pub mod deberta;
pub mod lora;
pub mod relative_position;
pub mod word_table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

pub use arrow_attention::ArrowConfig;
use arrow_attention::ArrowMask;
pub use lora::LoraConfig;

use crate::nn::ForwardCtx;
use crate::weights::{base_model_builder, read_config, WeightFiles};
use crate::{Error, Result};

/// Which family a checkpoint belongs to (`model_type` of `config.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderKind {
    DebertaV2,
    Bert,
}

/// How to load an encoder.
#[derive(Clone, Debug)]
pub struct EncoderOptions {
    pub arrow: ArrowConfig,
    pub dtype: DType,
    pub device: Device,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self { arrow: ArrowConfig::default(), dtype: DType::F32, device: Device::Cpu }
    }
}

/// A pretrained encoder with arrow attention.
pub enum Encoder {
    Deberta(deberta::DebertaV2Model),
    Bert(bert::BertModel),
}

/// What the backward pass by hand of one layer needs ([`Encoder::layer_forward_saved`]).
pub struct LayerSaved {
    attn: block::AttentionSaved,
    tail: block::TailSaved,
}

/// What every encoder layer of one batch shares: the arrow masks, the score scale and (DeBERTa)
/// the normalised relative-position table. Built by [`Encoder::begin`].
pub struct LayerShared {
    pub(crate) mask: ArrowMask,
    pub(crate) scale: f64,
    pub(crate) rel: Option<Tensor>,
}

impl Encoder {
    /// Loads a Hugging Face model folder (`config.json` + weights) as it is.
    pub fn load(dir: &Path, opts: &EncoderOptions) -> Result<Self> {
        Self::load_with(dir, opts, false)
    }

    /// [`Self::load`] for full fine-tuning: every weight of the encoder is trainable (listed by
    /// [`Self::trainable`] under its name in the weight file). Use it without LoRA.
    pub fn load_trainable(dir: &Path, opts: &EncoderOptions) -> Result<Self> {
        Self::load_with(dir, opts, true)
    }

    fn load_with(dir: &Path, opts: &EncoderOptions, trainable: bool) -> Result<Self> {
        let (_, raw): (serde_json::Value, _) = read_config(dir)?;
        let files = WeightFiles::find(dir)?;
        let wpath = files.display_path();
        let vb = files.var_builder(opts.dtype, &opts.device)?;
        let cfg_path = dir.join("config.json");
        let built = if trainable {
            Self::trainable_from_config(raw, vb, &cfg_path, opts)
        } else {
            // A frozen f32 table on the CPU is read in place from the file (see `word_table`).
            let in_file = match &files {
                WeightFiles::Safetensors(f) if opts.device.is_cpu() && opts.dtype == candle_core::DType::F32 => Some(f.as_slice()),
                _ => None,
            };
            Self::build(raw, vb, &cfg_path, opts, in_file)
        };
        built.map_err(|e| match e {
            Error::Candle(c) => Error::Weight { path: wpath.clone(), name: String::new(), message: c.to_string() },
            other => other,
        })
    }

    /// A randomly initialised encoder of the shape `config` (a `config.json` value) describes, for
    /// benchmarks: see [`presets`].
    pub fn random(config: serde_json::Value, opts: &EncoderOptions, seed: u64) -> Result<Self> {
        Self::from_config(config, random_weights(opts, seed), Path::new("<random>"), opts)
    }

    /// [`Self::random`], every weight trainable (tests and benchmarks of full fine-tuning).
    pub fn random_trainable(config: serde_json::Value, opts: &EncoderOptions, seed: u64) -> Result<Self> {
        Self::trainable_from_config(config, random_weights(opts, seed), Path::new("<random>"), opts)
    }

    fn trainable_from_config(
        raw: serde_json::Value,
        inner: candle_nn::VarBuilder<'static>,
        cfg_path: &Path,
        opts: &EncoderOptions,
    ) -> Result<Self> {
        let vars = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let backend = crate::weights::Trainable { inner, vars: vars.clone() };
        let vb = candle_nn::VarBuilder::from_backend(Box::new(backend), opts.dtype, opts.device.clone());
        let mut enc = Self::from_config(raw, vb, cfg_path, opts)?;
        let full: Vec<(String, Var)> = match vars.lock() {
            Ok(v) => v.iter().map(|(n, v)| (n.clone(), v.clone())).collect(),
            Err(_) => return Err(Error::Input("weight recorder poisoned".into())),
        };
        match &mut enc {
            Self::Deberta(m) => m.full = full,
            Self::Bert(m) => m.full = full,
        }
        Ok(enc)
    }

    /// Every weight as a variable under full fine-tuning ([`Self::load_trainable`]); empty otherwise.
    fn full_weights(&self) -> &[(String, Var)] {
        match self {
            Self::Deberta(m) => &m.full,
            Self::Bert(m) => &m.full,
        }
    }

    /// Whether every weight is trainable ([`Self::load_trainable`]).
    pub fn is_fully_trainable(&self) -> bool {
        !self.full_weights().is_empty()
    }

    /// Writes a fully trainable encoder as a Hugging Face folder `dir`: `model.safetensors` with
    /// every weight under its original name, plus every other top-level file of `base` (config,
    /// tokenizer) copied as it is. Returns the weight file.
    pub fn save_full(&self, dir: &Path, base: &Path) -> Result<PathBuf> {
        let full = self.full_weights();
        if full.is_empty() {
            return Err(Error::Input("save_full: the encoder is not fully trainable".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let entries = std::fs::read_dir(base).map_err(|e| Error::io(base, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(base, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if !path.is_file() || is_weight_file(&name) {
                continue;
            }
            std::fs::copy(&path, dir.join(&name)).map_err(|e| Error::io(&path, e))?;
        }
        let tensors: HashMap<String, Tensor> = full.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let file = dir.join("model.safetensors");
        candle_core::safetensors::save(&tensors, &file)
            .map_err(|e| Error::Weight { path: file.clone(), name: String::new(), message: e.to_string() })?;
        Ok(file)
    }

    /// Builds the family named by `model_type` from a parsed `config.json` and a weight source.
    pub fn from_config(
        raw: serde_json::Value,
        vb: candle_nn::VarBuilder<'static>,
        cfg_path: &Path,
        opts: &EncoderOptions,
    ) -> Result<Self> {
        Self::build(raw, vb, cfg_path, opts, None)
    }

    /// [`Self::from_config`]; with `in_file`, the word embeddings are read in place from those
    /// safetensors files when one holds them in a type it can widen ([`word_table`]).
    fn build(
        raw: serde_json::Value,
        vb: candle_nn::VarBuilder<'static>,
        cfg_path: &Path,
        opts: &EncoderOptions,
        in_file: Option<&[std::path::PathBuf]>,
    ) -> Result<Self> {
        let json_err = |e: serde_json::Error| Error::Json { path: cfg_path.to_path_buf(), message: e.to_string() };
        let model_type = raw.get("model_type").and_then(|v| v.as_str()).map(str::to_string);
        match model_type.as_deref() {
            Some("deberta-v2") => {
                let cfg: deberta::DebertaV2Config = serde_json::from_value(raw).map_err(json_err)?;
                let vb = base_model_builder(vb, "deberta", "embeddings.word_embeddings.weight");
                let e = cfg.embedding_size.unwrap_or(cfg.hidden_size);
                let word = word_table(&vb, in_file, cfg.vocab_size, e)?;
                Ok(Self::Deberta(deberta::DebertaV2Model::load(vb, cfg, cfg_path, opts.arrow.clone(), word)?))
            }
            Some("bert") => {
                let cfg: bert::BertConfig = serde_json::from_value(raw).map_err(json_err)?;
                let vb = base_model_builder(vb, "bert", "embeddings.word_embeddings.weight");
                let word = word_table(&vb, in_file, cfg.vocab_size, cfg.hidden_size)?;
                Ok(Self::Bert(bert::BertModel::load(vb, cfg, cfg_path, opts.arrow.clone(), word)?))
            }
            Some(other) => Err(Error::model(
                cfg_path,
                format!("model_type `{other}` is not supported (supported: deberta-v2, bert)"),
            )),
            None => Err(Error::model(cfg_path, "field `model_type` is missing")),
        }
    }

    pub fn kind(&self) -> EncoderKind {
        match self {
            Self::Deberta(_) => EncoderKind::DebertaV2,
            Self::Bert(_) => EncoderKind::Bert,
        }
    }

    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Deberta(m) => m.config.hidden_size,
            Self::Bert(m) => m.config.hidden_size,
        }
    }

    pub fn num_layers(&self) -> usize {
        match self {
            Self::Deberta(m) => m.config.num_hidden_layers,
            Self::Bert(m) => m.config.num_hidden_layers,
        }
    }

    pub fn num_heads(&self) -> usize {
        match self {
            Self::Deberta(m) => m.config.num_attention_heads,
            Self::Bert(m) => m.config.num_attention_heads,
        }
    }

    /// Whether the word embeddings are read in place from the weight file ([`word_table`]).
    pub fn word_embeddings_in_file(&self) -> bool {
        let w = match self {
            Self::Deberta(m) => m.word_table(),
            Self::Bert(m) => m.word_table(),
        };
        matches!(w, word_table::WordTable::InFile(_))
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Deberta(m) => m.config.vocab_size,
            Self::Bert(m) => m.config.vocab_size,
        }
    }

    pub fn intermediate_size(&self) -> usize {
        match self {
            Self::Deberta(m) => m.config.intermediate_size,
            Self::Bert(m) => m.config.intermediate_size,
        }
    }

    pub fn arrow(&self) -> &ArrowConfig {
        match self {
            Self::Deberta(m) => &m.arrow,
            Self::Bert(m) => &m.arrow,
        }
    }

    pub fn set_arrow(&mut self, arrow: ArrowConfig) {
        match self {
            Self::Deberta(m) => m.arrow = arrow,
            Self::Bert(m) => m.arrow = arrow,
        }
    }

    /// Last hidden states `[B, T, hidden]` for `ids` `[B, T]` (u32) and `mask` `[B, T]`
    /// (1 = token, 0 = padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.check_input(ids, mask)?;
        match self {
            Self::Deberta(m) => m.forward(ids, mask, ctx),
            Self::Bert(m) => m.forward(ids, mask, ctx),
        }
    }

    /// The forward pass in pieces, for recomputation (`crate::train::recompute`): embeddings
    /// (trainable only under full fine-tuning) and what the layers share; then [`Self::layer`] for each layer in turn.
    /// `forward` is exactly `begin` followed by every layer.
    pub fn begin(&self, ids: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, LayerShared)> {
        self.check_input(ids, mask)?;
        match self {
            Self::Deberta(m) => m.begin(ids, mask, ctx),
            Self::Bert(m) => m.begin(ids, mask, ctx),
        }
    }

    /// Layer `i` (0-based, below [`Self::num_layers`]) on hidden states `[B, T, hidden]`.
    pub fn layer(&self, i: usize, x: &Tensor, shared: &LayerShared, ctx: &mut ForwardCtx) -> Result<Tensor> {
        match self {
            Self::Deberta(m) => m.layer(i, x, shared, ctx),
            Self::Bert(m) => m.layer(i, x, shared, ctx),
        }
    }

    /// Recomputation's backward of layer `i`, by hand and without a graph:
    /// [`Self::layer_forward_saved`] again from `x` (same dropout draws), then
    /// [`Self::layer_backward_saved`]. Returns the gradient at `x` from the output gradient `g`;
    /// parameter gradients go to `sink`. `None` (nothing drawn or computed) where it does not
    /// apply (see [`Self::layer_forward_saved`]).
    pub fn layer_backward(
        &self,
        i: usize,
        x: &Tensor,
        g: &Tensor,
        shared: &LayerShared,
        ctx: &mut ForwardCtx,
        sink: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<Option<Tensor>> {
        match self.layer_forward_saved(i, x, shared, ctx)? {
            Some((_, saved)) => Ok(Some(self.layer_backward_saved(i, &saved, g, sink)?)),
            None => Ok(None),
        }
    }

    /// Layer `i` ([`Self::layer`], the same value and dropout draws) without a graph, keeping
    /// what its backward pass by hand needs ([`Self::layer_backward_saved`]): the
    /// self-attention's ([`block::AttentionSaved`]) and the tail's ([`block::TailSaved`]).
    /// About `(12·hidden + 2·intermediate)` floats a token ([`Self::saved_layer_bytes`]).
    /// `None` (nothing drawn or computed) where the backward by hand does not apply: off the
    /// CPU's fused path, under full fine-tuning, or with another activation than exact GELU.
    pub fn layer_forward_saved(&self, i: usize, x: &Tensor, shared: &LayerShared, ctx: &mut ForwardCtx) -> Result<Option<(Tensor, LayerSaved)>> {
        let tail = match self {
            Self::Deberta(m) => m.layer_tail(i)?,
            Self::Bert(m) => m.layer_tail(i)?,
        };
        if self.is_fully_trainable() || !tail.by_hand(x, ctx) {
            return Ok(None);
        }
        ctx.untracked(|ctx| {
            let mut attn_saved = block::AttentionSaved::default();
            let (attn, _) = match self {
                Self::Deberta(m) => m.layer_attention(i, x, shared, ctx, Some(&mut attn_saved))?,
                Self::Bert(m) => m.layer_attention(i, x, shared, ctx, Some(&mut attn_saved))?,
            };
            let (y, tail_saved) = tail.forward_saved(&attn, x, ctx)?;
            Ok(Some((y, LayerSaved { attn: attn_saved, tail: tail_saved })))
        })
    }

    /// The backward pass of layer `i` from what [`Self::layer_forward_saved`] kept: the tail's
    /// ([`block::LayerTail::backward`]) and the self-attention's ([`block::AttentionSaved::backward`]:
    /// the arrow attention op's own backward and the projections'), without a graph. Returns the
    /// gradient at the layer input from the output gradient `g`; parameter gradients go to `sink`.
    pub fn layer_backward_saved(&self, i: usize, saved: &LayerSaved, g: &Tensor, sink: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>) -> Result<Tensor> {
        let tail = match self {
            Self::Deberta(m) => m.layer_tail(i)?,
            Self::Bert(m) => m.layer_tail(i)?,
        };
        let mut grads = Vec::new();
        let (d_attn, d_res) = tail.backward(&saved.tail, g, &mut grads)?;
        let d_x = match self {
            Self::Deberta(m) => m.attention_backward(i, &saved.attn, &d_attn, &mut grads)?,
            Self::Bert(m) => m.attention_backward(i, &saved.attn, &d_attn, &mut grads)?,
        };
        crate::span::bispa::sink_grads(&grads, sink)?;
        Ok((d_x + d_res)?)
    }

    /// Bytes that [`Self::layer_forward_saved`] keeps per token, for every layer together
    /// (f32): the q/k/v copies, output and adapter dropout masks of the self-attention, and the
    /// tail's LayerNorm inputs, dropout masks and intermediate activations.
    pub fn saved_layer_bytes(&self) -> usize {
        (12 * self.hidden_size() + 2 * self.intermediate_size()) * 4 * self.num_layers()
    }

    fn check_input(&self, ids: &Tensor, mask: &Tensor) -> Result<()> {
        let (b, t) = ids.dims2()?;
        if b == 0 || t == 0 {
            return Err(Error::Input(format!("empty batch [{b}, {t}]")));
        }
        if mask.dims() != ids.dims() {
            return Err(Error::Input(format!("mask shape {:?} differs from ids shape {:?}", mask.dims(), ids.dims())));
        }
        let max_id = ids.max_all()?.to_dtype(DType::U32)?.to_scalar::<u32>()? as usize;
        if max_id >= self.vocab_size() {
            return Err(Error::Input(format!("token id {max_id} is outside the vocabulary (size {})", self.vocab_size())));
        }
        Ok(())
    }

    fn lora_layers_mut(&mut self) -> Box<dyn Iterator<Item = &mut lora::LoraLinear> + '_> {
        match self {
            Self::Deberta(m) => Box::new(m.lora_layers_mut()),
            Self::Bert(m) => Box::new(m.lora_layers_mut()),
        }
    }

    /// Attach fresh LoRA adapters to the layers `cfg.targets` names (the paper: query and value)
    /// in every layer.
    pub fn add_lora(&mut self, cfg: &LoraConfig, seed: u64) -> Result<()> {
        cfg.validate()?;
        let mut rng = lora::init_rng(seed);
        for l in self.lora_layers_mut() {
            if cfg.targets_module(l.name()) {
                l.add_adapter(cfg, &mut rng)?;
            }
        }
        Ok(())
    }

    /// The trainable tensors with their checkpoint names: LoRA A/B and adapted biases, and under
    /// full fine-tuning ([`Self::load_trainable`]) every weight. Everything else is frozen.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        match self {
            Self::Deberta(m) => m.trainable(),
            Self::Bert(m) => m.trainable(),
        }
    }

    /// Multiply every linear layer's frozen weight in `p` (bf16: [`crate::gemm_bf16`]). The
    /// embeddings, attention, LayerNorms and LoRA adapters stay f32. Refused for a fully
    /// trainable encoder (its weights change every step) and off the CPU.
    pub fn set_precision(&mut self, p: crate::gemm_bf16::Precision) -> Result<()> {
        if p != crate::gemm_bf16::Precision::F32 {
            if self.is_fully_trainable() {
                return Err(Error::Input("bf16 products need frozen encoder weights (LoRA); full fine-tuning runs in f32".into()));
            }
            if !self.device().is_cpu() {
                return Err(Error::Input("the bf16 kernels are CPU kernels; on this device use f32".into()));
            }
        }
        for l in self.lora_layers_mut() {
            l.set_precision(p)?;
        }
        Ok(())
    }

    /// bf16 inference: every linear layer drops its f32 weight and keeps the packed bf16 one
    /// ([`lora::LoraLinear::release_f32_weight`]; DeBERTa-v3-base: 340 MB). Needs bf16 and
    /// merged adapters; afterwards the encoder cannot train, merge or return to f32.
    pub fn release_f32_weights(&mut self) -> Result<()> {
        if self.precision() == crate::gemm_bf16::Precision::F32 {
            return Err(Error::Input("release_f32_weights: the encoder runs in f32".into()));
        }
        for l in self.lora_layers_mut() {
            l.release_f32_weight()?;
        }
        Ok(())
    }

    /// The precision of the linear layers ([`Self::set_precision`]).
    pub fn precision(&self) -> crate::gemm_bf16::Precision {
        let first = match self {
            Self::Deberta(m) => m.lora_layers().next().map(|l| l.precision()),
            Self::Bert(m) => m.lora_layers().next().map(|l| l.precision()),
        };
        first.unwrap_or_default()
    }

    /// Fold the adapters into the weights (inference fast path).
    pub fn merge_lora(&mut self) -> Result<()> {
        for l in self.lora_layers_mut() {
            l.merge()?;
        }
        Ok(())
    }

    pub fn unmerge_lora(&mut self) -> Result<()> {
        for l in self.lora_layers_mut() {
            l.unmerge()?;
        }
        Ok(())
    }

    /// Loads a LoRA adapter: a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`)
    /// or a bare `.safetensors` file with PEFT key names (any prefix before `encoder.layer.`, with
    /// or without peft's `.default` segment). Adapters are attached first when the model has none
    /// (the rank is read from the tensors, α from `adapter_config.json` or `alpha`).
    pub fn load_adapter(&mut self, path: &Path, alpha: Option<f64>) -> Result<AdapterReport> {
        let (file, cfg_alpha) = adapter_paths(path)?;
        let dev = self.device();
        let tensors = candle_core::safetensors::load(&file, &dev)
            .map_err(|e| Error::Weight { path: file.clone(), name: String::new(), message: e.to_string() })?;
        let by_name: HashMap<String, Tensor> =
            tensors.into_iter().filter_map(|(k, v)| normalise_adapter_key(&k).map(|n| (n, v))).collect();
        let mut report = AdapterReport { path: file.clone(), layers: 0 };
        let alpha = alpha.or(cfg_alpha);
        let mut rng = lora::init_rng(0);
        for l in self.lora_layers_mut() {
            let a = by_name.get(&format!("{}.lora_A.weight", l.name()));
            let b = by_name.get(&format!("{}.lora_B.weight", l.name()));
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, None) => continue,
                _ => {
                    return Err(Error::Weight {
                        path: file.clone(),
                        name: l.name().to_string(),
                        message: "has only one of lora_A / lora_B".into(),
                    })
                }
            };
            if !l.has_adapter() {
                let r = a.dim(0)?;
                let cfg = LoraConfig { r, alpha: alpha.unwrap_or(r as f64), ..LoraConfig::default() };
                l.add_adapter(&cfg, &mut rng)?;
            }
            let bias = by_name.get(&format!("{}.bias", l.name()));
            l.set_adapter(a, b, bias)
                .map_err(|e| Error::Weight { path: file.clone(), name: l.name().to_string(), message: e.to_string() })?;
            report.layers += 1;
        }
        if report.layers == 0 {
            return Err(Error::Weight {
                path: file,
                name: String::new(),
                message: "no LoRA tensor matches this encoder's linear layers".into(),
            });
        }
        Ok(report)
    }

    /// Writes the trainable tensors as a PEFT-compatible adapter folder.
    pub fn save_adapter(&self, dir: &Path, cfg: &LoraConfig) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self
            .trainable()
            .into_iter()
            .map(|(n, v)| (format!("base_model.model.{n}"), v.as_tensor().clone()))
            .collect();
        let file = dir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&tensors, &file).map_err(|e| Error::Weight {
            path: file.clone(),
            name: String::new(),
            message: e.to_string(),
        })?;
        let targets = cfg.peft_target_modules(self.kind() == EncoderKind::DebertaV2);
        let config = serde_json::json!({
            "peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
            "target_modules": targets, "bias": if cfg.train_bias { "lora_only" } else { "none" },
        });
        let cpath = dir.join("adapter_config.json");
        std::fs::write(&cpath, serde_json::to_string_pretty(&config).unwrap_or_default()).map_err(|e| Error::io(&cpath, e))
    }

    pub fn device(&self) -> Device {
        match self {
            Self::Deberta(m) => m.device(),
            Self::Bert(m) => m.device(),
        }
    }
}

/// A weight source that invents every tensor ([`crate::weights::RandomInit`]).
fn random_weights(opts: &EncoderOptions, seed: u64) -> candle_nn::VarBuilder<'static> {
    candle_nn::VarBuilder::from_backend(Box::new(crate::weights::RandomInit { seed }), opts.dtype, opts.device.clone())
}

/// Weight files of a Hugging Face folder (not copied when a fine-tuned encoder is saved).
fn is_weight_file(name: &str) -> bool {
    let weights = [".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".ot", ".pt", ".pth", ".ckpt", ".gguf"];
    name == "model.safetensors.index.json"
        || name == "pytorch_model.bin.index.json"
        || weights.iter().any(|ext| name.ends_with(ext))
}

/// `config.json` values of published encoder shapes, for random models in benchmarks.
/// The word embeddings of a model being built: read in place from `files` when given and one
/// holds them ([`word_table::FileRows`]), loaded through `vb` otherwise.
fn word_table(vb: &candle_nn::VarBuilder<'static>, files: Option<&[std::path::PathBuf]>, vocab: usize, width: usize) -> Result<word_table::WordTable> {
    let name = "embeddings.word_embeddings.weight";
    if let Some(files) = files {
        let prefix = vb.prefix();
        let full = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        if let Some(m) = word_table::FileRows::find(files, &full, vocab, width)? {
            return Ok(word_table::WordTable::InFile(m));
        }
    }
    Ok(word_table::WordTable::Owned(vb.get((vocab, width), name)?))
}

pub mod presets {
    /// microsoft/deberta-v3-base.
    pub fn deberta_v3_base() -> serde_json::Value {
        serde_json::json!({
            "model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768, "num_hidden_layers": 12,
            "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
            "max_position_embeddings": 512, "type_vocab_size": 0, "layer_norm_eps": 1e-7,
            "relative_attention": true, "max_relative_positions": -1, "position_buckets": 256,
            "position_biased_input": false, "pos_att_type": ["p2c", "c2p"], "share_att_key": true,
            "norm_rel_ebd": "layer_norm", "pad_token_id": 0
        })
    }
    /// microsoft/deberta-v3-large (the paper's encoder).
    pub fn deberta_v3_large() -> serde_json::Value {
        let mut v = deberta_v3_base();
        v["hidden_size"] = 1024.into();
        v["num_hidden_layers"] = 24.into();
        v["num_attention_heads"] = 16.into();
        v["intermediate_size"] = 4096.into();
        v
    }
    /// sentence-transformers/all-MiniLM-L6-v2.
    pub fn minilm_l6() -> serde_json::Value {
        serde_json::json!({
            "model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6,
            "num_attention_heads": 12, "intermediate_size": 1536, "hidden_act": "gelu",
            "max_position_embeddings": 512, "type_vocab_size": 2, "layer_norm_eps": 1e-12
        })
    }
}

/// What [`Encoder::load_adapter`] applied.
#[derive(Debug)]
pub struct AdapterReport {
    pub path: PathBuf,
    /// Number of projections that received an adapter.
    pub layers: usize,
}

fn adapter_paths(path: &Path) -> Result<(PathBuf, Option<f64>)> {
    if path.is_dir() {
        let file = path.join("adapter_model.safetensors");
        if !file.is_file() {
            return Err(Error::model(path, "no adapter_model.safetensors in this adapter folder"));
        }
        let cpath = path.join("adapter_config.json");
        let alpha = if cpath.is_file() { peft_alpha(&cpath)? } else { None };
        Ok((file, alpha))
    } else if path.is_file() {
        Ok((path.to_path_buf(), None))
    } else {
        Err(Error::model(path, "adapter not found (expected a PEFT folder or a .safetensors file)"))
    }
}

/// Reads a PEFT `adapter_config.json` and returns its `lora_alpha`. The fields sener reads or
/// that change what the adapter means are checked (`peft_type` LORA, `r` a positive integer,
/// `lora_alpha` positive, `lora_dropout` in [0, 1), `use_dora`/`use_rslora` off); PEFT's many
/// other fields are left alone (they differ between PEFT versions).
fn peft_alpha(cpath: &Path) -> Result<Option<f64>> {
    let bad = |m: String| Error::Json { path: cpath.to_path_buf(), message: m };
    let text = crate::weights::read_config_text(cpath, "an adapter config")?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let o = v.as_object().ok_or_else(|| bad("not a JSON object".into()))?;
    if let Some(t) = o.get("peft_type").filter(|t| !t.is_null()) {
        if t.as_str() != Some("LORA") {
            return Err(bad(format!("field `peft_type`: {t}, only LORA adapters are supported")));
        }
    }
    if let Some(r) = o.get("r") {
        if !r.as_u64().is_some_and(|r| (1..=4096).contains(&r)) {
            return Err(bad(format!("field `r`: {r} is not a rank from 1 to 4096")));
        }
    }
    let alpha = match o.get("lora_alpha") {
        None | Some(serde_json::Value::Null) => None,
        Some(a) => Some(a.as_f64().filter(|a| *a > 0.0 && a.is_finite()).ok_or_else(|| bad(format!("field `lora_alpha`: {a} is not a positive number")))?),
    };
    if let Some(d) = o.get("lora_dropout").filter(|d| !d.is_null()) {
        if !d.as_f64().is_some_and(|d| (0.0..1.0).contains(&d)) {
            return Err(bad(format!("field `lora_dropout`: {d} is not in [0, 1)")));
        }
    }
    for k in ["use_dora", "use_rslora"] {
        if o.get(k).and_then(|x| x.as_bool()) == Some(true) {
            return Err(bad(format!("field `{k}`: true is not supported (plain LoRA only)")));
        }
    }
    Ok(alpha)
}

/// `base_model.model.pretrain_model.encoder.layer.3.attention.self.query_proj.lora_A.default.weight`
/// → `encoder.layer.3.attention.self.query_proj.lora_A.weight`; keys without `encoder.layer.` → None.
fn normalise_adapter_key(k: &str) -> Option<String> {
    let start = k.find("encoder.layer.")?;
    Some(k[start..].replace(".default.", ".").replace(".base_layer.", "."))
}


#[cfg(test)]
mod tests {
    use super::normalise_adapter_key;

    #[test]
    fn adapter_keys_are_normalised() {
        assert_eq!(
            normalise_adapter_key("base_model.model.pretrain_model.encoder.layer.3.attention.self.query_proj.lora_A.default.weight")
                .as_deref(),
            Some("encoder.layer.3.attention.self.query_proj.lora_A.weight")
        );
        assert_eq!(
            normalise_adapter_key("module.base_model.model.pretrain_model.encoder.layer.0.attention.self.value_proj.base_layer.bias")
                .as_deref(),
            Some("encoder.layer.0.attention.self.value_proj.bias")
        );
        assert_eq!(normalise_adapter_key("base_model.model.U"), None);
    }
}
