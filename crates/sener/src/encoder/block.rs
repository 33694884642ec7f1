//! The parts of a transformer layer that BERT and DeBERTa share word for word: the attention
//! output (`attention.output.{dense,LayerNorm}`) and the feed-forward block
//! (`intermediate.dense`, `output.{dense,LayerNorm}`), both post-LayerNorm with residuals.

use candle_nn::VarBuilder;

use candle_core::{Tensor, Var};

use super::arrow_attention::{arrow_attention, RelativeTerms};
use super::arrow_attention_cpu::{arrow_attention_saved, ArrowSaved};
use super::lora::{LinearSaved, LoraLinear};
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

    /// Whether [`Self::backward_by_hand`] applies: exact GELU, f32 on the CPU's fused path
    /// (fused LayerNorm and GELU ops), frozen base weights.
    pub fn by_hand(&self, x: &Tensor, ctx: &ForwardCtx) -> bool {
        self.activation == Activation::Gelu && ctx.fused(x) && !self.attention_output.norm.weight.is_variable() && !self.output.norm.weight.is_variable()
    }

    /// Recomputation's backward of the tail, by hand (`ctx.track` off): [`Self::forward_saved`]
    /// (the same dropout draws as [`Self::forward`]), then [`Self::backward`]. Returns the
    /// gradients at `attn` and at `x` (the residual) from the output gradient `g`; adapter
    /// gradients are added to `grads`.
    pub fn backward_by_hand(&self, attn: &Tensor, x: &Tensor, g: &Tensor, ctx: &mut ForwardCtx, grads: &mut Vec<(Var, Tensor)>) -> Result<(Tensor, Tensor)> {
        let (_, saved) = self.forward_saved(attn, x, ctx)?;
        self.backward(&saved, g, grads)
    }

    /// [`Self::forward`] without a graph, the same ops and dropout draws, keeping what
    /// [`Self::backward`] needs (applies where [`Self::by_hand`] says so).
    pub(crate) fn forward_saved(&self, attn: &Tensor, x: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, TailSaved)> {
        let hidden = x.dim(candle_core::D::Minus1)?;
        let rows = x.elem_count() / hidden.max(1);
        let times = |y: &Tensor, m: &Option<Tensor>| crate::nn::mask_mul(y, m.as_ref());
        let (ao, ao_s) = self.attention_output.dense.forward_saved(attn, ctx)?;
        let m1 = ctx.dropout_mask(&ao, self.attention_output.dropout)?;
        let u1 = (times(&ao, &m1)? + x)?.contiguous()?.reshape((rows, hidden))?;
        drop(ao);
        let (op1, w1, b1) = norm_op(&self.attention_output);
        let a = u1.apply_op3_no_bwd(&w1, &b1, &op1)?;
        let (pre, pre_s) = self.intermediate.forward_saved(&a, ctx)?;
        let pre = pre.contiguous()?;
        let act = pre.apply_op1_no_bwd(&crate::nn::GeluErfOp)?;
        let (o, o_s) = self.output.dense.forward_saved(&act, ctx)?;
        let m2 = ctx.dropout_mask(&o, self.output.dropout)?;
        let u2 = (times(&o, &m2)? + &a)?.contiguous()?;
        let (op2, w2, b2) = norm_op(&self.output);
        let y = u2.apply_op3_no_bwd(&w2, &b2, &op2)?.reshape(x.shape())?;
        Ok((y, TailSaved { shape: x.shape().clone(), ao_s, m1, u1, pre_s, pre, act, o_s, m2, u2 }))
    }

    /// The gradients at the tail's `attn` and `x` from the output gradient `g`, through the fused
    /// LayerNorm and GELU ops' own backward passes; adapter gradients are added to `grads`.
    /// candle's recorded backward of the same ops cost about three times their forward (a
    /// `zeros_like` and an `add` per op input).
    pub(crate) fn backward(&self, s: &TailSaved, g: &Tensor, grads: &mut Vec<(Var, Tensor)>) -> Result<(Tensor, Tensor)> {
        use candle_core::{CustomOp1, CustomOp3};
        let times = |y: &Tensor, m: &Option<Tensor>| crate::nn::mask_mul(y, m.as_ref());
        let (op2, w2, b2) = norm_op(&self.output);
        let (du2, _, _) = op2.bwd(&s.u2, &w2, &b2, &s.u2, &g.contiguous()?.reshape(s.u2.shape())?)?;
        let du2 = du2.ok_or_else(crate::nn::no_grad)?;
        let d_act = self.output.dense.backward(&s.o_s, &times(&du2, &s.m2)?, grads)?;
        let d_pre = crate::nn::GeluErfOp.bwd(&s.pre, &s.act, &d_act.contiguous()?)?.ok_or_else(crate::nn::no_grad)?;
        let d_a = (self.intermediate.backward(&s.pre_s, &d_pre, grads)? + du2)?;
        let (op1, w1, b1) = norm_op(&self.attention_output);
        let (du1, _, _) = op1.bwd(&s.u1, &w1, &b1, &s.u1, &d_a.contiguous()?)?;
        let du1 = du1.ok_or_else(crate::nn::no_grad)?.reshape(&s.shape)?;
        let d_attn = self.attention_output.dense.backward(&s.ao_s, &times(&du1, &s.m1)?, grads)?;
        Ok((d_attn, du1))
    }
}

/// The fused LayerNorm op of a residual block with its (frozen) weight and bias.
fn norm_op(r: &ResidualDense) -> (crate::nn::LayerNormOp, Tensor, Tensor) {
    (crate::nn::LayerNormOp { eps: r.norm.eps }, r.norm.weight.detach(), r.norm.bias.detach())
}

/// What [`LayerTail::backward`] needs from [`LayerTail::forward_saved`]: the linear layers'
/// saved inputs, the dropout masks, the LayerNorms' inputs (`[rows, hidden]`) and the GELU's
/// input and output.
pub(crate) struct TailSaved {
    shape: candle_core::Shape,
    ao_s: LinearSaved,
    m1: Option<Tensor>,
    u1: Tensor,
    pre_s: LinearSaved,
    pre: Tensor,
    act: Tensor,
    o_s: LinearSaved,
    m2: Option<Tensor>,
    u2: Tensor,
}

/// What the hand-written backward of a self-attention needs from its forward pass: the saved
/// inputs of its projections and the arrow attention's own state. Filled by a layer's
/// `layer_attention` run with the graph off (`keep`), in the same order and with the same dropout
/// draws as the plain forward pass, since both go through [`project`] and [`attend`].
#[derive(Default)]
pub(crate) struct AttentionSaved {
    pub(crate) query: Option<LinearSaved>,
    pub(crate) key: Option<LinearSaved>,
    pub(crate) value: Option<LinearSaved>,
    /// DeBERTa's relative tables, where an adapter-carrying projection made them (`share_att_key`).
    pub(crate) pos_key: Option<LinearSaved>,
    pub(crate) pos_query: Option<LinearSaved>,
    arrow: Option<ArrowSaved>,
}

/// `l(x)`; with `keep` (graph off), the same value through [`LoraLinear::forward_saved`], whose
/// state goes to the slot.
pub(crate) fn project(l: &LoraLinear, x: &Tensor, ctx: &mut ForwardCtx, keep: Option<&mut Option<LinearSaved>>) -> Result<Tensor> {
    match keep {
        None => l.forward(x, ctx),
        Some(slot) => {
            let (y, s) = l.forward_saved(x, ctx)?;
            *slot = Some(s);
            Ok(y)
        }
    }
}

/// [`arrow_attention`] on `[B, H, T, d]` heads; with `keep` (graph off, CPU f32) the same value,
/// dropout draws included, with its state kept for [`AttentionSaved::backward`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    shared: &super::LayerShared,
    rel: Option<&RelativeTerms>,
    dropout: f32,
    ctx: &mut ForwardCtx,
    keep: Option<&mut AttentionSaved>,
) -> Result<Tensor> {
    match keep {
        None => arrow_attention(q, k, v, &shared.mask, rel, shared.scale, dropout, ctx),
        Some(saved) => {
            // the draws of `arrow_attention`'s fused training path
            let dropout = if ctx.train { dropout } else { 0.0 };
            let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
            let (y, s) = arrow_attention_saved(q, k, v, &shared.mask, rel, shared.scale, dropout, seed)?;
            saved.arrow = Some(s);
            Ok(y)
        }
    }
}

impl AttentionSaved {
    /// The gradient at the layer input from the gradient `d_attn` `[B, T, H·d]` at the merged
    /// heads; adapter (and trainable bias) gradients of the projections go to `grads`, those of
    /// `pos_key` / `pos_query` (the projections that made the relative tables) included.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        query: &LoraLinear,
        key: &LoraLinear,
        value: &LoraLinear,
        pos_key: Option<&LoraLinear>,
        pos_query: Option<&LoraLinear>,
        d_attn: &Tensor,
        grads: &mut Vec<(Var, Tensor)>,
    ) -> Result<Tensor> {
        let missing = |what: &str| crate::Error::Input(format!("self-attention backward: no saved {what}"));
        let arrow = self.arrow.as_ref().ok_or_else(|| missing("arrow attention"))?;
        let heads = arrow.heads();
        let g = arrow.backward(&split_heads(d_attn, heads)?)?;
        let mut dx = query.backward(self.query.as_ref().ok_or_else(|| missing("query"))?, &merge_heads(&g.dq)?, grads)?;
        dx = (dx + key.backward(self.key.as_ref().ok_or_else(|| missing("key"))?, &merge_heads(&g.dk)?, grads)?)?;
        dx = (dx + value.backward(self.value.as_ref().ok_or_else(|| missing("value"))?, &merge_heads(&g.dv)?, grads)?)?;
        // the tables: `[H, R, d]` gradients back to the `[R, H·d]` projections' outputs; only the
        // projections' own parameters need them (the table's input is frozen here)
        for (proj, saved, dt) in [(pos_key, &self.pos_key, g.dpos_key), (pos_query, &self.pos_query, g.dpos_query)] {
            if let (Some(proj), Some(saved), Some(dt)) = (proj, saved, dt) {
                if !proj.trainable().is_empty() {
                    let (h, r, d) = dt.dims3()?;
                    proj.backward(saved, &dt.transpose(0, 1)?.reshape((r, h * d))?, grads)?;
                }
            }
        }
        Ok(dx)
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
