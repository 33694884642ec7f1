//! The parts of a transformer layer that BERT and DeBERTa share word for word: the attention
//! output (`attention.output.{dense,LayerNorm}`) and the feed-forward block
//! (`intermediate.dense`, `output.{dense,LayerNorm}`), both post-LayerNorm with residuals.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::lora::LoraLinear;
use crate::nn::{Activation, ForwardCtx, LayerNorm};
use crate::Result;

/// `LayerNorm(x + dropout(dense(h)))`, HF `*SelfOutput` / `*Output`.
#[derive(Debug)]
pub struct ResidualDense {
    dense: LoraLinear,
    norm: LayerNorm,
    dropout: f32,
}

impl ResidualDense {
    /// `name`: the checkpoint name of the module (`encoder.layer.3.output`).
    pub fn load(vb: VarBuilder, name: &str, in_dim: usize, out_dim: usize, eps: f64, dropout: f32) -> Result<Self> {
        Ok(Self {
            dense: LoraLinear::load(vb.pp("dense"), &format!("{name}.dense"), in_dim, out_dim)?,
            norm: LayerNorm::load(vb.pp("LayerNorm"), out_dim, eps)?,
            dropout,
        })
    }

    pub fn forward(&self, h: &Tensor, residual: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = self.dense.forward(h, ctx)?;
        let y = ctx.dropout(&y, self.dropout)?;
        self.norm.forward(&(y + residual)?, ctx)
    }
}

/// Everything of a layer after the self-attention core.
#[derive(Debug)]
pub struct LayerTail {
    attention_output: ResidualDense,
    intermediate: LoraLinear,
    activation: Activation,
    output: ResidualDense,
}

impl LayerTail {
    /// `vb` is the layer's root (`encoder.layer.{i}`), `name` its checkpoint name.
    pub fn load(vb: &VarBuilder, name: &str, hidden: usize, inter: usize, act: Activation, eps: f64, dropout: f32) -> Result<Self> {
        Ok(Self {
            attention_output: ResidualDense::load(vb.pp("attention").pp("output"), &format!("{name}.attention.output"), hidden, hidden, eps, dropout)?,
            intermediate: LoraLinear::load(vb.pp("intermediate").pp("dense"), &format!("{name}.intermediate.dense"), hidden, inter)?,
            activation: act,
            output: ResidualDense::load(vb.pp("output"), &format!("{name}.output"), inter, hidden, eps, dropout)?,
        })
    }

    /// The linear layers that can carry LoRA adapters: attention output, intermediate, output.
    pub fn lora_layers_mut(&mut self) -> [&mut LoraLinear; 3] {
        [&mut self.attention_output.dense, &mut self.intermediate, &mut self.output.dense]
    }

    pub fn lora_layers(&self) -> [&LoraLinear; 3] {
        [&self.attention_output.dense, &self.intermediate, &self.output.dense]
    }

    /// `attn`: the merged heads of the self-attention, `x`: the layer input.
    pub fn forward(&self, attn: &Tensor, x: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let a = self.attention_output.forward(attn, x, ctx)?;
        let i = self.activation.forward_in(&self.intermediate.forward(&a, ctx)?, ctx)?;
        self.output.forward(&i, &a, ctx)
    }
}

/// `[B, T, H·d]` → `[B, H, T, d]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    Ok(x.reshape((b, t, heads, hd / heads))?.transpose(1, 2)?.contiguous()?)
}

/// `[B, H, T, d]` → `[B, T, H·d]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    Ok(x.transpose(1, 2)?.reshape((b, t, h * d))?)
}

/// Position ids past a learned table of `max` rows (spec-silent; our choice, documented in the
/// README): positions `0..max` are used as they are, and from `max` on the learned rows
/// `1..max` are repeated block-wise (Longformer copied RoBERTa's 512 positions the same way).
/// Row 0 stays unique to [CLS], which is always at position 0.
pub fn extended_position_ids(t: usize, max: usize) -> Vec<u32> {
    (0..t)
        .map(|k| if k < max || max < 2 { k.min(max.saturating_sub(1)) as u32 } else { (1 + (k - 1) % (max - 1)) as u32 })
        .collect()
}

// ---- config.json defaults and checks shared by the HF config structs (`serde(default = …)`) ----

pub(crate) fn default_act() -> String {
    "gelu".into()
}
pub(crate) fn default_dropout() -> f32 {
    0.1
}
pub(crate) fn default_max_pos() -> usize {
    512
}

/// Checks shared by every family: heads divide the hidden size, the activation is known.
pub(crate) fn validate_common(path: &std::path::Path, hidden: usize, heads: usize, act: &str) -> Result<()> {
    if heads == 0 || hidden % heads != 0 {
        return Err(crate::Error::model(path, format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}")));
    }
    if Activation::from_hf(act).is_none() {
        return Err(crate::Error::model(path, format!("hidden_act `{act}` is not supported (gelu, gelu_new, relu)")));
    }
    Ok(())
}
