//! BERT-family encoder (`BertModel`: BERT, MiniLM, ...) with arrow attention (spec §3.2, §3.4
//! applied to BERT's scaled dot-product attention).
//!
//! Ports Hugging Face transformers `models/bert/modeling_bert.py` (v4.46), absolute positions only.
//! Deliberate deviations:
//! - the self-attention is [`arrow_attention`]; with a window ≥ the sequence and LogN off the valid
//!   rows equal stock BERT (stock BERT lets padding queries attend; here their rows are 0, which
//!   only changes the hidden states of padding positions);
//! - inputs longer than `max_position_embeddings` get block-wise repeated learned positions
//!   ([`extended_position_ids`]) instead of an index error;
//! - `query` / `value` can carry LoRA adapters.

use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::arrow_attention::{ArrowConfig, ArrowMask};
use super::block::{attend, extended_position_ids, merge_heads, project, split_heads, AttentionSaved, LayerTail};
use super::lora::{LoraConfig, LoraLinear};
use super::LayerShared;
use crate::nn::{mask_to_host, Activation, ForwardCtx, LayerNorm};
use crate::{Error, Result};

/// `config.json` of a BERT checkpoint; field names and defaults as in HF `BertConfig`.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "super::block::default_act")]
    pub hidden_act: String,
    #[serde(default = "super::block::default_dropout")]
    pub hidden_dropout_prob: f32,
    #[serde(default = "super::block::default_dropout")]
    pub attention_probs_dropout_prob: f32,
    #[serde(default = "super::block::default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    fn validate(&self, path: &Path) -> Result<()> {
        super::block::validate_common(path, self.hidden_size, self.num_attention_heads, &self.hidden_act)?;
        let bad = |m: String| Err(Error::model(path, m));
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return bad(format!("position_embedding_type `{p}` is not supported (absolute only)"));
            }
        }
        Ok(())
    }
}

struct Layer {
    query: LoraLinear,
    key: LoraLinear,
    value: LoraLinear,
    tail: LayerTail,
}

/// BERT encoder with arrow attention.
pub struct BertModel {
    pub config: BertConfig,
    word: super::word_table::WordTable,
    position: Tensor,
    token_type: Option<Tensor>,
    norm: LayerNorm,
    layers: Vec<Layer>,
    pub arrow: ArrowConfig,
    /// Full fine-tuning: every weight as a variable, by checkpoint name (empty: frozen encoder).
    pub(crate) full: Vec<(String, Var)>,
}

impl BertModel {
    /// Loads from a `VarBuilder` rooted at the base model (no `bert.` prefix).
    /// `word`: the word embeddings (`embeddings.word_embeddings.weight`, see `Encoder::build`).
    pub fn load(vb: VarBuilder, config: BertConfig, path: &Path, arrow: ArrowConfig, word: super::word_table::WordTable) -> Result<Self> {
        config.validate(path)?;
        let c = &config;
        let hd = c.hidden_size;
        let act = Activation::from_hf(&c.hidden_act).unwrap_or(Activation::Gelu);
        let e = vb.pp("embeddings");
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let lvb = vb.pp("encoder").pp("layer").pp(i);
            let svb = lvb.pp("attention").pp("self");
            let name = |m: &str| format!("encoder.layer.{i}.attention.self.{m}");
            layers.push(Layer {
                query: LoraLinear::load(svb.pp("query"), &name("query"), hd, hd)?,
                key: LoraLinear::load(svb.pp("key"), &name("key"), hd, hd)?,
                value: LoraLinear::load(svb.pp("value"), &name("value"), hd, hd)?,
                tail: LayerTail::load(&lvb, &format!("encoder.layer.{i}"), hd, c.intermediate_size, act, c.layer_norm_eps, c.hidden_dropout_prob)?,
            });
        }
        Ok(Self {
            word,
            position: e.get((c.max_position_embeddings, hd), "position_embeddings.weight")?,
            token_type: if c.type_vocab_size > 0 {
                Some(e.get((c.type_vocab_size, hd), "token_type_embeddings.weight")?)
            } else {
                None
            },
            norm: LayerNorm::load(e.pp("LayerNorm"), hd, c.layer_norm_eps)?,
            layers,
            arrow,
            config,
            full: Vec::new(),
        })
    }

    /// `ids`: `[B, T]` u32, `mask`: `[B, T]` (1 = token, 0 = padding). Returns `[B, T, hidden]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (mut x, shared) = self.begin(ids, mask, ctx)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &shared, ctx)?;
        }
        Ok(x)
    }

    /// Embeddings (trainable only under full fine-tuning) and what every layer shares.
    pub fn begin(&self, ids: &Tensor, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, LayerShared)> {
        let (b, t, valid) = mask_to_host(mask)?;
        let arrow_mask = ArrowMask::new(&valid, b, t, &self.arrow, self.dtype(), &ids.device().clone())?;
        let c = &self.config;
        let scale = 1.0 / ((c.hidden_size / c.num_attention_heads) as f64).sqrt();
        let pos = Tensor::from_vec(extended_position_ids(t, self.position.dim(0)?), t, ids.device())?;
        let mut x = self.word.embed(ids, ctx)?.broadcast_add(&ctx.weight(&self.position).index_select(&pos, 0)?)?;
        if let Some(tt) = &self.token_type {
            x = x.broadcast_add(&ctx.weight(tt).narrow(0, 0, 1)?)?;
        }
        let x0 = self.norm.forward(&x, ctx)?;
        let x = ctx.dropout(&x0, c.hidden_dropout_prob)?;
        Ok((x, LayerShared { mask: arrow_mask, scale, rel: None }))
    }

    /// Layer `i` on `x` `[B, T, hidden]`.
    pub fn layer(&self, i: usize, x: &Tensor, shared: &LayerShared, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (attn, tail) = self.layer_attention(i, x, shared, ctx, None)?;
        tail.forward(&attn, x, ctx)
    }

    /// Layer `i`'s tail (everything after the self-attention).
    pub(crate) fn layer_tail(&self, i: usize) -> Result<&LayerTail> {
        Ok(&self.layer_ref(i)?.tail)
    }

    fn layer_ref(&self, i: usize) -> Result<&Layer> {
        self.layers.get(i).ok_or_else(|| Error::Input(format!("no layer {i}")))
    }

    /// Layer `i` up to the merged heads of its self-attention `[B, T, hidden]`, and its tail.
    /// With `keep` (graph off, CPU f32), what [`Self::attention_backward`] needs is saved there.
    pub(crate) fn layer_attention(&self, i: usize, x: &Tensor, shared: &LayerShared, ctx: &mut ForwardCtx, mut keep: Option<&mut AttentionSaved>) -> Result<(Tensor, &LayerTail)> {
        let c = &self.config;
        let heads = c.num_attention_heads;
        let l = self.layer_ref(i)?;
        let q = split_heads(&project(&l.query, x, ctx, keep.as_deref_mut().map(|s| &mut s.query))?, heads)?;
        let k = split_heads(&project(&l.key, x, ctx, keep.as_deref_mut().map(|s| &mut s.key))?, heads)?;
        let v = split_heads(&project(&l.value, x, ctx, keep.as_deref_mut().map(|s| &mut s.value))?, heads)?;
        let a = attend(&q, &k, &v, shared, None, c.attention_probs_dropout_prob, ctx, keep)?;
        Ok((merge_heads(&a)?, &l.tail))
    }

    /// The backward pass of layer `i`'s self-attention from what [`Self::layer_attention`] kept
    /// (see [`AttentionSaved::backward`]).
    pub(crate) fn attention_backward(&self, i: usize, saved: &AttentionSaved, d_attn: &Tensor, grads: &mut Vec<(Var, Tensor)>) -> Result<Tensor> {
        let l = self.layer_ref(i)?;
        saved.backward(&l.query, &l.key, &l.value, None, None, d_attn, grads)
    }

    pub(crate) fn word_table(&self) -> &super::word_table::WordTable {
        &self.word
    }

    pub fn device(&self) -> candle_core::Device {
        self.position.device().clone()
    }

    pub fn dtype(&self) -> candle_core::DType {
        self.position.dtype()
    }

    /// Every linear layer that can carry an adapter, per layer: query, key, value, attention
    /// output, intermediate, output.
    pub fn lora_layers_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(|l| {
            let [ao, inter, out] = l.tail.lora_layers_mut();
            [&mut l.query, &mut l.key, &mut l.value, ao, inter, out]
        })
    }

    pub fn lora_layers(&self) -> impl Iterator<Item = &LoraLinear> {
        self.layers.iter().flat_map(|l| {
            let [ao, inter, out] = l.tail.lora_layers();
            [&l.query, &l.key, &l.value, ao, inter, out]
        })
    }

    pub fn add_lora(&mut self, cfg: &LoraConfig, rng: &mut ChaCha8Rng) -> Result<()> {
        for l in self.lora_layers_mut() {
            if cfg.targets_module(l.name()) {
                l.add_adapter(cfg, rng)?;
            }
        }
        Ok(())
    }

    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.lora_layers().flat_map(|l| l.trainable()).chain(self.full.iter().cloned()).collect()
    }
}
