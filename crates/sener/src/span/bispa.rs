//! The BiSPA block (`CrossTransformer` of the official code, from UTC-IE), spec §5, on the band:
//!
//! ```text
//! x  ← clamp(x, ±1000) + E_tri[k ≥ w]
//! Zh = Attn(x, h_qkv)        horizontal: row i, its K cells       (pairs (i, j))
//! Zv = Attn(vᵀ(x), v_qkv)    vertical: column i of the L×L matrix (pairs (j, i))
//! Y  = LN₁(x + D),  D = Dropout(dense([Zh ; Zv])), D = 0 on rows with no valid cell
//! out = LN₂(Y + Dropout(Conv₂(GELU(Conv₁(Y ⊙ ¬M)) ⊙ ¬M)))
//! ```
//! Attn: single head, `[q,k,v] = clamp(X W + b, ±1e4)`, RoPE over the band column, scores
//! `clamp(q kᵀ/√c, ±1e4) − 1e4·M_key`, softmax, invalid keys zeroed, dropout.
//!
//! Quirk kept on purpose (spec §5, §12.2): **Zv is not transformed back** before the
//! concatenation, so cell (i, k) concatenates Zh of pair (i, i+k−w) with Zv of pair (i+k−w, i).
//! The official weights only work with it.
//!
//! Deliberate deviations (same numbers on every valid cell): the 3×3 convolutions are nine
//! shifted `[n·K, c] × [c, c]` matmuls instead of an im2col conv (O(n·K·c) memory); on the
//! generic path (candle ops, any device) both halves run in row chunks so that the `[rows, K, K]`
//! score tensor stays bounded, and recomputation differentiates them chunk by chunk
//! ([`BiSpaBlock::attend_backward`], [`BiSpaBlock::convolve_backward`]). On the CPU in f32 the
//! fused ops (`row_attention`, `band_conv`) take the whole band at once instead.

use candle_core::{backprop::GradStore, Tensor, Var};
use candle_nn::VarBuilder;

use super::band::Band;
use super::biaffine::TrainLinear;
use crate::nn::{ForwardCtx, LayerNorm};
use crate::Result;

/// Cells per row chunk (in gradient passes, and always on the generic path): the generic row
/// attention's chunk of `[rows, K, K]` scores, otherwise a chunk of `[rows, K, c]` features (8 MB per f32 tensor; 31 attention rows
/// at K = 257). One chunk's recorded graph and its backward hold about a hundred such tensors:
/// measured with MiniLM at 1,024 tokens, 256 attention rows per chunk (67 MB per tensor) made
/// an attention half's backward peak at 7.3 GB, 63 rows 2.2 GB.
pub const CHUNK_CELLS: usize = 1 << 21;

/// Rows on either side of an output row that the convolution half reads (two 3×3 convolutions).
const CONV_REACH: usize = 2;

/// `[0, n)` in runs of `chunk` rows: (start, length).
fn row_chunks(n: usize, chunk: usize) -> Vec<(usize, usize)> {
    let chunk = chunk.max(1);
    (0..n).step_by(chunk).map(|s| (s, chunk.min(n - s))).collect()
}

/// The rows `[lo, hi)` the convolution half reads to give rows `[s, s + len)` of `n`.
fn conv_reach(s: usize, len: usize, n: usize) -> (usize, usize) {
    (s.saturating_sub(CONV_REACH), (s + len + CONV_REACH).min(n))
}

/// Adds `g` to the gradient of `var` in `grads`.
fn add_grad(grads: &mut Vec<(Var, Tensor)>, var: &Var, g: Tensor) -> Result<()> {
    match grads.iter_mut().find(|(v, _)| v.as_tensor().id() == var.as_tensor().id()) {
        Some((_, acc)) => *acc = (&*acc + g)?,
        None => grads.push((var.clone(), g)),
    }
    Ok(())
}

/// Parameter gradients computed by hand, handed to `sink` as a gradient store: the backward
/// pass of `Σ_p Σ p·dp` (with the parameters as tracked variables) gives exactly each `dp`.
pub(crate) fn sink_grads(grads: &[(Var, Tensor)], sink: &mut dyn FnMut(&GradStore) -> Result<()>) -> Result<()> {
    let mut surrogate: Option<Tensor> = None;
    for (var, gp) in grads {
        let term = (var.as_tensor() * gp)?.sum_all()?;
        surrogate = Some(match surrogate {
            None => term,
            Some(s) => (s + term)?,
        });
    }
    if let Some(s) = surrogate {
        sink(&s.backward()?)?;
    }
    Ok(())
}

/// Row chunks (axis 1) back into one tensor.
fn cat_rows(mut parts: Vec<Tensor>) -> Result<Tensor> {
    Ok(if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? })
}


/// RoFormer sinusoidal rotary table for positions 0..len, dim c: (sin, cos) each `[len, c]`
/// with every frequency repeated for its interleaved pair.
pub fn rope_tables(len: usize, c: usize, dtype: candle_core::DType, dev: &candle_core::Device) -> Result<(Tensor, Tensor)> {
    let mut sin = Vec::with_capacity(len * c);
    let mut cos = Vec::with_capacity(len * c);
    for p in 0..len {
        for k in 0..c / 2 {
            let theta = 10000f64.powf(-2.0 * k as f64 / c as f64);
            let a = p as f64 * theta;
            // RoFormerSinusoidalPositionalEmbedding computes the table in f64 (numpy), then f32.
            let (s, co) = (a.sin() as f32, a.cos() as f32);
            sin.extend([s, s]);
            cos.extend([co, co]);
        }
    }
    Ok((
        Tensor::from_vec(sin, (len, c), dev)?.to_dtype(dtype)?,
        Tensor::from_vec(cos, (len, c), dev)?.to_dtype(dtype)?,
    ))
}

/// `x·cos + rotate_half(x)·sin` with interleaved pairs: out[2k] = x[2k]cos − x[2k+1]sin,
/// out[2k+1] = x[2k+1]cos + x[2k]sin. `x`: `[..., K, c]`, tables `[K, c]`.
fn apply_rope(x: &Tensor, sin: &Tensor, cos: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let c = dims[dims.len() - 1];
    let pairs = x.reshape(((), c / 2, 2))?;
    let even = pairs.narrow(2, 0, 1)?;
    let odd = pairs.narrow(2, 1, 1)?;
    let rot = Tensor::cat(&[&odd.neg()?, &even], 2)?.reshape(dims.as_slice())?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// One BiSPA block.
#[derive(Debug)]
pub struct BiSpaBlock {
    prefix: String,
    pos_embed: Var,
    h_qkv: TrainLinear,
    v_qkv: TrainLinear,
    dense: TrainLinear,
    ln1: (Var, Var),
    ln2: (Var, Var),
    conv1: Var,
    conv2: Var,
    dropout: f32,
    c: usize,
    /// Run the generic (candle-op, row-chunked) path even where the fused ops apply (tests, A/B).
    pub force_composite: bool,
    /// Rows per chunk on the generic path; 0 (the default): from [`CHUNK_CELLS`]. (A few in
    /// tests, to exercise the chunk edges.)
    pub row_chunk: usize,
    /// Inference under `--dtype bf16` ([`super::SpanModel::set_precision`]): the row attention's
    /// K×K products with this kernel; with AMX the band convolutions of every pass without a
    /// graph too. Gradient passes keep the row attention in f32.
    pub bf16: Option<crate::gemm_bf16::Bf16Kernel>,
}

impl BiSpaBlock {
    /// `vb` at `cross_layers.{i}`; names as in the official checkpoint.
    pub fn load(vb: &VarBuilder, prefix: &str, c: usize, dropout: f32) -> Result<Self> {
        let v = |shape: &[usize], name: &str| -> Result<Var> { Ok(Var::from_tensor(&vb.get(shape, name)?)?) };
        Ok(Self {
            prefix: prefix.to_string(),
            pos_embed: v(&[2, c], "pos_embed.weight")?,
            h_qkv: TrainLinear::load(vb, "h_qkv", c, 3 * c, true)?,
            v_qkv: TrainLinear::load(vb, "v_qkv", c, 3 * c, true)?,
            dense: TrainLinear::load(vb, "dense", 2 * c, c, true)?,
            ln1: (v(&[c], "LayerNorm.weight")?, v(&[c], "LayerNorm.bias")?),
            ln2: (v(&[c], "LayerNorm2.weight")?, v(&[c], "LayerNorm2.bias")?),
            conv1: v(&[c, c, 3, 3], "conv1.conv2d.weight")?,
            conv2: v(&[c, c, 3, 3], "conv2.conv2d.weight")?,
            dropout,
            c,
            force_composite: false,
            row_chunk: 0,
            bf16: None,
        })
    }

    pub fn params(&self) -> Vec<(String, Var)> {
        let p = &self.prefix;
        let mut v = vec![(format!("{p}.pos_embed.weight"), self.pos_embed.clone())];
        for l in [&self.h_qkv, &self.v_qkv, &self.dense] {
            v.extend(l.params().into_iter().map(|(n, t)| (format!("{p}.{n}"), t)));
        }
        v.push((format!("{p}.LayerNorm.weight"), self.ln1.0.clone()));
        v.push((format!("{p}.LayerNorm.bias"), self.ln1.1.clone()));
        v.push((format!("{p}.LayerNorm2.weight"), self.ln2.0.clone()));
        v.push((format!("{p}.LayerNorm2.bias"), self.ln2.1.clone()));
        v.push((format!("{p}.conv1.conv2d.weight"), self.conv1.clone()));
        v.push((format!("{p}.conv2.conv2d.weight"), self.conv2.clone()));
        v
    }

    /// `x`: band `[B, n, K, c]`; `valid`: `[B, n, K]` (1 = real pair); `rope`: (sin, cos) `[K, c]`.
    pub fn forward(&self, x: &Tensor, band: Band, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = self.attend(x, band, valid, rope, ctx)?;
        self.convolve(&y, valid, ctx)
    }

    /// The block's first half: horizontal and vertical attention, `dense`, `LN₁` → `Y`.
    /// (Separate so that recomputation can keep one half's graph at a time.)
    ///
    /// Row chunk by row chunk on the generic path and in every gradient pass
    /// ([`Self::attend_backward`] recomputes them one at a time); a fused inference pass takes
    /// the whole band at once.
    pub fn attend(&self, x: &Tensor, band: Band, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (pre, pre_v) = self.attend_inputs(x, band, ctx)?;
        if !self.chunked(x, ctx) {
            return self.attend_rows(&pre, &pre_v, valid, rope, ctx);
        }
        let mut outs = Vec::new();
        for (s, len) in row_chunks(x.dim(1)?, self.attention_rows(x, ctx)?) {
            outs.push(self.attend_rows(&pre.narrow(1, s, len)?, &pre_v.narrow(1, s, len)?, &valid.narrow(1, s, len)?, rope, ctx)?);
        }
        cat_rows(outs)
    }

    /// What the attention half reads: `x' = clamp(x, ±1000) + E_tri[k ≥ w]` and its vertical
    /// view (no dropout is drawn here).
    fn attend_inputs(&self, x: &Tensor, band: Band, ctx: &ForwardCtx) -> Result<(Tensor, Tensor)> {
        let kk = x.dim(2)?;
        let tri: Vec<u32> = (0..kk).map(|k| (k >= band.w) as u32).collect();
        let tri = ctx.param(&self.pos_embed).index_select(&Tensor::from_vec(tri, kk, x.device())?, 0)?; // [K, c]
        let pre = x.clamp(-1000f32, 1000f32)?.broadcast_add(&tri)?;
        let pre_v = if self.fused(x, ctx) { band.vertical(&pre)? } else { band.vertical_composite(&pre)? };
        Ok((pre, pre_v))
    }

    /// The attention half on a run of rows, given those rows of `x'` and of its vertical view:
    /// `LN₁(x' + D)`, every op row-local.
    fn attend_rows(&self, pre: &Tensor, pre_v: &Tensor, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let zh = self.attention(pre, &self.h_qkv, valid, rope, ctx)?;
        let zv = self.attention(pre_v, &self.v_qkv, valid, rope, ctx)?;
        let d = self.dense.forward(&Tensor::cat(&[&zh, &zv], 3)?, ctx)?;
        let d = ctx.dropout(&d, self.dropout)?;
        let row_has_valid = valid.max_keepdim(2)?.unsqueeze(3)?; // [B, rows, 1, 1]
        let d = d.broadcast_mul(&row_has_valid)?;
        let ln1 = LayerNorm { weight: ctx.param(&self.ln1.0), bias: ctx.param(&self.ln1.1), eps: 1e-5 };
        ln1.forward(&(pre + d)?, ctx)
    }

    /// The block's second half: the masked conv pair, dropout, `LN₂(Y + ·)`. Chunked as
    /// [`Self::attend`] (each chunk read with the two rows on either side that the two 3×3
    /// convolutions reach); a fused inference pass takes the whole band at once.
    pub fn convolve(&self, y: &Tensor, valid: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let n = y.dim(1)?;
        if !self.chunked(y, ctx) {
            return self.convolve_rows(y, valid, 0, n, ctx);
        }
        let mut outs = Vec::new();
        for (s, len) in row_chunks(n, self.conv_rows(y)?) {
            let (lo, hi) = conv_reach(s, len, n);
            outs.push(self.convolve_rows(&y.narrow(1, lo, hi - lo)?, &valid.narrow(1, lo, hi - lo)?, s - lo, len, ctx)?);
        }
        cat_rows(outs)
    }

    /// The convolution half for rows `[at, at + len)` of a run of rows `y` (the output rows and
    /// up to [`CONV_REACH`] rows on either side; rows beyond a run's edge read as zero, which is
    /// right only at the band's own edges, so the rows kept are those the edges do not reach).
    fn convolve_rows(&self, y: &Tensor, valid: &Tensor, at: usize, len: usize, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let valid4 = valid.unsqueeze(3)?;
        let h = self.conv(&y.broadcast_mul(&valid4)?, &ctx.param(&self.conv1), ctx)?;
        let h = crate::nn::Activation::Gelu.forward_in(&h, ctx)?;
        let h = self.conv(&h.broadcast_mul(&valid4)?, &ctx.param(&self.conv2), ctx)?;
        let (h, y) = if at == 0 && len == y.dim(1)? { (h, y.clone()) } else { (h.narrow(1, at, len)?, y.narrow(1, at, len)?) };
        let h = ctx.dropout(&h, self.dropout)?;
        let ln2 = LayerNorm { weight: ctx.param(&self.ln2.0), bias: ctx.param(&self.ln2.1), eps: 1e-5 };
        ln2.forward(&(y + h)?, ctx)
    }

    /// Gradient of `Σ attend(x) · g` at `x`, recomputing one row chunk at a time
    /// (recomputation's stage backward, `crate::train::recompute`): only one chunk's graph is
    /// alive at once (generic: its `[rows, K, K]` attention tensors), beside a few band-sized
    /// tensors (`x'`, its vertical view and their gradients). The chunks draw their dropout masks in the order
    /// [`Self::attend`] drew them, so the context's RNG must be where it was then. Parameter
    /// gradients go to `sink`, one store per chunk and one for the inputs' small graph.
    #[allow(clippy::too_many_arguments)]
    pub fn attend_backward(
        &self,
        x: &Tensor,
        g: &Tensor,
        band: Band,
        valid: &Tensor,
        rope: &(Tensor, Tensor),
        ctx: &mut ForwardCtx,
        sink: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
        if self.fused(x, ctx) {
            let (dx, grads) = ctx.untracked(|ctx| self.attend_backward_fused(x, g, band, valid, rope, ctx))?;
            sink_grads(&grads, sink)?;
            return Ok(dx);
        }
        let leaf = Var::from_tensor(x)?;
        let (pre, pre_v) = self.attend_inputs(leaf.as_tensor(), band, ctx)?;
        let (pre_d, pre_vd) = (pre.detach(), pre_v.detach());
        let (mut g_pre, mut g_pre_v) = (Vec::new(), Vec::new());
        for (s, len) in row_chunks(x.dim(1)?, self.attention_rows(x, ctx)?) {
            let pc = Var::from_tensor(&pre_d.narrow(1, s, len)?)?;
            let vc = Var::from_tensor(&pre_vd.narrow(1, s, len)?)?;
            let out = self.attend_rows(pc.as_tensor(), vc.as_tensor(), &valid.narrow(1, s, len)?, rope, ctx)?;
            let store = (out * g.narrow(1, s, len)?.detach())?.sum_all()?.backward()?;
            sink(&store)?;
            g_pre.push(crate::train::recompute::grad_of(&store, &pc)?);
            g_pre_v.push(crate::train::recompute::grad_of(&store, &vc)?);
        }
        let (g_pre, g_pre_v) = (cat_rows(g_pre)?, cat_rows(g_pre_v)?);
        let store = ((pre * g_pre)?.sum_all()? + (pre_v * g_pre_v)?.sum_all()?)?.backward()?;
        sink(&store)?;
        crate::train::recompute::grad_of(&store, &leaf)
    }

    /// [`Self::attend_backward`] on the fused path, by hand: every chunk is recomputed without
    /// a graph, keeping its intermediates, and differentiated with the fused ops' own backward
    /// passes (row attention, LayerNorm) and a few matrix products. candle's recorded backward
    /// of the same chunk spent about as long in its gradient bookkeeping (`zeros_like` + `add`
    /// for every op input, band-sized) as in the row attention itself. Called with the graph
    /// off; returns the gradient at `x` and every parameter gradient.
    #[allow(clippy::too_many_arguments)]
    fn attend_backward_fused(&self, x: &Tensor, g: &Tensor, band: Band, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<(Tensor, Vec<(Var, Tensor)>)> {
        let (pre, pre_v) = self.attend_inputs(x, band, ctx)?;
        let mut grads: Vec<(Var, Tensor)> = Vec::new();
        let (mut g_pre, mut g_pre_v) = (Vec::new(), Vec::new());
        for (s, len) in row_chunks(x.dim(1)?, self.attention_rows(x, ctx)?) {
            let (gp, gpv) = self.attend_rows_backward(&pre.narrow(1, s, len)?, &pre_v.narrow(1, s, len)?, &valid.narrow(1, s, len)?, rope, &g.narrow(1, s, len)?, ctx, &mut grads)?;
            g_pre.push(gp);
            g_pre_v.push(gpv);
        }
        let (g_pre, g_pre_v) = (cat_rows(g_pre)?, cat_rows(g_pre_v)?);
        let (dx, d_pos) = self.attend_inputs_backward(x, &g_pre, &g_pre_v, band)?;
        add_grad(&mut grads, &self.pos_embed, d_pos)?;
        Ok((dx, grads))
    }

    /// One chunk of [`Self::attend_backward_fused`]: [`Self::attend_rows`] on `pre`, `pre_v`
    /// (drawing the same seeds and dropout mask, in the same order), then the gradients at
    /// `pre` and `pre_v` from the output gradient `g`; parameter gradients are added to `grads`.
    #[allow(clippy::too_many_arguments)]
    fn attend_rows_backward(
        &self,
        pre: &Tensor,
        pre_v: &Tensor,
        valid: &Tensor,
        rope: &(Tensor, Tensor),
        g: &Tensor,
        ctx: &mut ForwardCtx,
        grads: &mut Vec<(Var, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        use candle_core::CustomOp3;
        let (b, rows, kk, c) = pre.dims4()?;
        let cells = b * rows * kk;
        // ---- forward, keeping the intermediates ----
        // (each direction keeps its rows' attention weights for its backward pass below)
        let (op_h, xh, wh, bh) = self.projected(pre, &self.h_qkv, valid, rope, ctx)?;
        let (zh, saved_h) = op_h.forward_saved(&xh, &wh, &bh)?; // [B·rows, K, c]
        let (op_v, xv, wv, bv) = self.projected(pre_v, &self.v_qkv, valid, rope, ctx)?;
        let (zv, saved_v) = op_v.forward_saved(&xv, &wv, &bv)?;
        let cat = Tensor::cat(&[&zh, &zv], 2)?.reshape((b, rows, kk, 2 * c))?;
        let d = self.dense.forward(&cat, ctx)?;
        // the factor on `d`: dropout mask (the same draws as `ctx.dropout(&d)`) times the rows
        // that have a valid cell
        let row_has_valid = valid.max_keepdim(2)?.unsqueeze(3)?; // [B, rows, 1, 1]
        let f = match ctx.dropout_mask(&d, self.dropout)? {
            Some(m) => m.broadcast_mul(&row_has_valid)?,
            None => row_has_valid.broadcast_as(d.shape())?.contiguous()?,
        };
        let u = (pre + (&d * &f)?)?.reshape((cells, c))?;
        // ---- backward ----
        let ln = crate::nn::LayerNormOp { eps: 1e-5 };
        let (lw, lb) = (self.ln1.0.as_tensor().detach(), self.ln1.1.as_tensor().detach());
        let g2 = g.contiguous()?.reshape((cells, c))?;
        let (du, dlw, dlb) = ln.bwd(&u, &lw, &lb, &u, &g2)?;
        let du = du.ok_or_else(crate::nn::no_grad)?;
        add_grad(grads, &self.ln1.0, dlw.ok_or_else(crate::nn::no_grad)?)?;
        add_grad(grads, &self.ln1.1, dlb.ok_or_else(crate::nn::no_grad)?)?;
        // d = cat · Wdᵀ + bd
        let dd = (&du * f.reshape((cells, c))?)?;
        let cat2 = cat.reshape((cells, 2 * c))?;
        add_grad(grads, &self.dense.weight, dd.t()?.matmul(&cat2)?)?;
        if let Some(bias) = &self.dense.bias {
            add_grad(grads, bias, dd.sum(0)?)?;
        }
        let dcat = dd.matmul(&self.dense.weight.as_tensor().detach())?; // [cells, 2c]
        let dz = |at: usize| -> Result<Tensor> { Ok(dcat.narrow(1, at, c)?.contiguous()?.reshape((b * rows, kk, c))?) };
        let mut g_x = Vec::with_capacity(2);
        drop((zh, zv));
        for ((op, saved, x3, w), (lin, at)) in [(op_h, saved_h, xh, wh), (op_v, saved_v, xv, wv)].into_iter().zip([(&self.h_qkv, 0), (&self.v_qkv, c)]) {
            let (dx, dw, db) = op.backward_saved(&saved, &x3, &w, &dz(at)?)?;
            drop(saved);
            add_grad(grads, &lin.weight, dw)?;
            if let Some(bv) = &lin.bias {
                add_grad(grads, bv, db)?;
            }
            g_x.push(dx.reshape((b, rows, kk, c))?);
        }
        let g_pre_v = g_x.pop().ok_or_else(crate::nn::no_grad)?;
        let g_pre = (du.reshape((b, rows, kk, c))? + g_x.pop().ok_or_else(crate::nn::no_grad)?)?;
        Ok((g_pre, g_pre_v))
    }

    /// One chunk of [`Self::convolve_backward`] on the fused path, by hand: [`Self::convolve_rows`]
    /// on the run `y` (drawing the same dropout mask), then the gradient at `y` from the output
    /// rows' gradient `g` (rows `[at, at + len)` of the run); parameter gradients are added to
    /// `grads`. Called with the graph off.
    #[allow(clippy::too_many_arguments)]
    fn convolve_rows_backward(&self, y: &Tensor, valid: &Tensor, at: usize, len: usize, g: &Tensor, ctx: &mut ForwardCtx, grads: &mut Vec<(Var, Tensor)>) -> Result<Tensor> {
        use candle_core::{CustomOp1, CustomOp2, CustomOp3};
        let (b, rows, kk, c) = y.dims4()?;
        let conv = super::band_conv::BandConv3x3;
        let (w1, w2) = (self.conv1.as_tensor().detach(), self.conv2.as_tensor().detach());
        // ---- forward, keeping the intermediates ----
        let valid4 = valid.unsqueeze(3)?;
        let a = y.broadcast_mul(&valid4)?.contiguous()?;
        let h1 = a.apply_op2_no_bwd(&w1, &conv)?;
        let h1g = h1.apply_op1_no_bwd(&crate::nn::GeluErfOp)?;
        let bb = h1g.broadcast_mul(&valid4)?.contiguous()?;
        let h2 = bb.apply_op2_no_bwd(&w2, &conv)?.narrow(1, at, len)?;
        let mask = ctx.dropout_mask(&h2, self.dropout)?;
        let h2d = crate::nn::mask_mul(&h2, mask.as_ref())?;
        let cells = b * len * kk;
        let u = (y.narrow(1, at, len)? + h2d)?.contiguous()?.reshape((cells, c))?;
        // ---- backward ----
        let ln = crate::nn::LayerNormOp { eps: 1e-5 };
        let (lw, lb) = (self.ln2.0.as_tensor().detach(), self.ln2.1.as_tensor().detach());
        let (du, dlw, dlb) = ln.bwd(&u, &lw, &lb, &u, &g.contiguous()?.reshape((cells, c))?)?;
        add_grad(grads, &self.ln2.0, dlw.ok_or_else(crate::nn::no_grad)?)?;
        add_grad(grads, &self.ln2.1, dlb.ok_or_else(crate::nn::no_grad)?)?;
        let du = du.ok_or_else(crate::nn::no_grad)?.reshape((b, len, kk, c))?;
        let dh2 = crate::nn::mask_mul(&du, mask.as_ref())?;
        let pad = |t: Tensor| -> Result<Tensor> { Ok(t.pad_with_zeros(1, at, rows - at - len)?.contiguous()?) };
        let (dbb, dw2) = conv.bwd(&bb, &w2, &bb, &pad(dh2)?)?;
        add_grad(grads, &self.conv2, dw2.ok_or_else(crate::nn::no_grad)?)?;
        let dh1g = dbb.ok_or_else(crate::nn::no_grad)?.broadcast_mul(&valid4)?.contiguous()?;
        let dh1 = crate::nn::GeluErfOp.bwd(&h1, &h1g, &dh1g)?.ok_or_else(crate::nn::no_grad)?;
        let (da, dw1) = conv.bwd(&a, &w1, &a, &dh1.contiguous()?)?;
        add_grad(grads, &self.conv1, dw1.ok_or_else(crate::nn::no_grad)?)?;
        Ok((da.ok_or_else(crate::nn::no_grad)?.broadcast_mul(&valid4)? + pad(du)?)?)
    }

    /// Fused path: the gradients of `Σ x'·g_pre + Σ vᵀ(x')·g_pre_v` at `x` and at `pos_embed`
    /// (`[2, c]`), with `x' = clamp(x, ±1000) + E_tri[k ≥ w]` ([`Self::attend_inputs`]). The
    /// vertical view is its own transpose; the clamp passes the gradient strictly inside its
    /// bounds, half of it at a bound (as candle's `maximum`/`minimum` do), none outside.
    fn attend_inputs_backward(&self, x: &Tensor, g_pre: &Tensor, g_pre_v: &Tensor, band: Band) -> Result<(Tensor, Tensor)> {
        use rayon::prelude::*;
        let (b, n, kk, c) = x.dims4()?;
        let g = (g_pre + band.vertical(g_pre_v)?)?.flatten_all()?.to_vec1::<f32>()?;
        let xs = x.flatten_all()?.to_vec1::<f32>()?;
        let row = kk * c;
        let mut dx = crate::nn::uninit_f32(b * n * row);
        // per band row: its gradient at x (every element stored) and its [2, c] share of d_pos
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(row)
            .zip(xs.par_chunks(row).zip(g.par_chunks(row)))
            .map(|(d, (xr, gr))| {
                let mut dp = vec![0f32; 2 * c];
                for k in 0..kk {
                    let side = &mut dp[(k >= band.w) as usize * c..][..c];
                    for ch in 0..c {
                        let (xv, gv) = (xr[k * c + ch], gr[k * c + ch]);
                        side[ch] += gv;
                        d[k * c + ch] = if xv.abs() < 1000.0 { gv } else if xv.abs() == 1000.0 { 0.5 * gv } else { 0.0 };
                    }
                }
                dp
            })
            .collect();
        let mut d_pos = vec![0f32; 2 * c];
        for p in &partials {
            d_pos.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((Tensor::from_vec(dx, (b, n, kk, c), x.device())?, Tensor::from_vec(d_pos, (2, c), x.device())?))
    }

    /// Gradient of `Σ convolve(y) · g` at `y`, one row chunk at a time (see
    /// [`Self::attend_backward`]): each chunk's run of rows is its own leaf, and the gradients of
    /// overlapping runs are summed row by row.
    pub fn convolve_backward(
        &self,
        y: &Tensor,
        g: &Tensor,
        valid: &Tensor,
        ctx: &mut ForwardCtx,
        sink: &mut dyn FnMut(&GradStore) -> Result<()>,
    ) -> Result<Tensor> {
        let n = y.dim(1)?;
        let chunks = row_chunks(n, self.conv_rows(y)?);
        let mut pieces = Vec::with_capacity(chunks.len());
        let fused = self.fused(y, ctx);
        let mut grads: Vec<(Var, Tensor)> = Vec::new();
        for &(s, len) in &chunks {
            let (lo, hi) = conv_reach(s, len, n);
            if fused {
                // by hand, with the graph off (as the attention half: see `attend_backward_fused`)
                let (run, run_valid, run_g) = (y.narrow(1, lo, hi - lo)?, valid.narrow(1, lo, hi - lo)?, g.narrow(1, s, len)?);
                pieces.push((lo, ctx.untracked(|ctx| self.convolve_rows_backward(&run, &run_valid, s - lo, len, &run_g, ctx, &mut grads))?));
                continue;
            }
            let leaf = Var::from_tensor(&y.narrow(1, lo, hi - lo)?)?;
            let out = self.convolve_rows(leaf.as_tensor(), &valid.narrow(1, lo, hi - lo)?, s - lo, len, ctx)?;
            let store = (out * g.narrow(1, s, len)?.detach())?.sum_all()?.backward()?;
            sink(&store)?;
            pieces.push((lo, crate::train::recompute::grad_of(&store, &leaf)?));
        }
        sink_grads(&grads, sink)?;
        // Row chunk [s, s + len) of the gradient: the sum of every run's gradient over it.
        let mut rows = Vec::with_capacity(chunks.len());
        for &(s, len) in &chunks {
            let mut acc: Option<Tensor> = None;
            for (lo, gp) in &pieces {
                let (a, b) = (s.max(*lo), (s + len).min(lo + gp.dim(1)?));
                if a >= b {
                    continue;
                }
                let part = gp.narrow(1, a - lo, b - a)?.pad_with_zeros(1, a - s, s + len - b)?;
                acc = Some(match acc {
                    None => part,
                    Some(t) => (t + part)?,
                });
            }
            rows.push(acc.ok_or_else(|| crate::Error::Input("a row chunk without a gradient".into()))?);
        }
        cat_rows(rows)
    }

    /// Whether the fused ops apply: f32 on the CPU, in gradient passes (where they save the kept
    /// intermediates) and at inference (no `[rows, K, K]` score tensor, fewer band passes).
    fn fused(&self, x: &Tensor, ctx: &ForwardCtx) -> bool {
        ctx.fused(x) && !self.force_composite
    }

    /// Rows per attention chunk of the band `x` `[B, n, K, c]`: generic, bounded by its
    /// `[rows, K, K]` scores; fused (no such tensor), by the band cells.
    fn attention_rows(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<usize> {
        let (b, _, kk, c) = x.dims4()?;
        let per_row = if self.fused(x, ctx) { b * kk * c } else { b * kk * kk };
        Ok(if self.row_chunk > 0 { self.row_chunk } else { (CHUNK_CELLS / per_row.max(1)).max(1) })
    }

    /// Rows per convolution chunk of the band `y`.
    fn conv_rows(&self, y: &Tensor) -> Result<usize> {
        let (b, _, kk, c) = y.dims4()?;
        Ok(if self.row_chunk > 0 { self.row_chunk } else { (CHUNK_CELLS / (b * kk * c).max(1)).max(CONV_REACH) })
    }

    /// Whether this pass runs the block in row chunks: always on the generic path (the
    /// `[rows, K, K]` scores), in gradient passes with the fused ops too (so that recomputation
    /// can differentiate one chunk at a time: [`Self::attend_backward`]). A fused inference pass
    /// takes the whole band at once.
    pub fn chunked(&self, x: &Tensor, ctx: &ForwardCtx) -> bool {
        !self.fused(x, ctx) || ctx.grad
    }

    /// The 3×3 band convolution: fused op in gradient passes, nine shifted matmuls otherwise.
    fn conv(&self, x: &Tensor, w: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        if self.fused(x, ctx) {
            if self.bf16 == Some(crate::gemm_bf16::Bf16Kernel::Amx) && !x.track_op() && !w.track_op() {
                return Ok(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &super::band_conv::BandConv3x3Amx)?);
            }
            return Ok(x.contiguous()?.apply_op2(&w.contiguous()?, super::band_conv::BandConv3x3)?);
        }
        conv3x3(x, w)
    }

    /// Single-head attention of every given band row over its K cells: the fused row attention,
    /// or the composite one (whose `[rows, K, K]` scores the caller bounds by chunking rows).
    fn attention(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        if self.fused(x, ctx) {
            return self.attention_fused(x, qkv, valid, rope, ctx);
        }
        self.attention_composite(x, qkv, valid, rope, ctx)
    }

    fn attention_fused(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, n, kk, c) = x.dims4()?;
        let (op, x3, w, bias) = self.projected(x, qkv, valid, rope, ctx)?;
        Ok(x3.apply_op3(&w, &bias, op)?.reshape((b, n, kk, c))?)
    }

    /// The fused row attention of one direction for the band rows `x` `[B, n, K, c]`: the op
    /// (its dropout seed drawn here), `x` as `[B·n, K, c]`, the projection's weight and bias
    /// (zeros without one), as the op takes them.
    fn projected(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<(super::row_attention::ProjectedRowAttention, Tensor, Tensor, Tensor)> {
        let (b, n, kk, c) = x.dims4()?;
        let mask: Vec<f32> = valid.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        let dropout = if ctx.train { self.dropout } else { 0.0 };
        let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
        let host = |t: &Tensor| -> Result<std::sync::Arc<Vec<f32>>> { Ok(std::sync::Arc::new(t.flatten_all()?.to_vec1::<f32>()?)) };
        // bf16 products at inference only: in training they made the step no faster (the
        // products of a row are small, and rounding their operands costs about what it saves)
        let inference = dropout == 0.0 && !ctx.grad;
        let op = super::row_attention::ProjectedRowAttention {
            attn: super::row_attention::RowAttention { valid: std::sync::Arc::new(mask), scale: 1.0 / (c as f32).sqrt(), dropout, seed },
            bf16: self.bf16.filter(|_| inference),
            sin: host(&rope.0)?,
            cos: host(&rope.1)?,
        };
        let bias = match &qkv.bias {
            Some(bv) => ctx.param(bv),
            None => Tensor::zeros(3 * c, x.dtype(), x.device())?,
        };
        let w = ctx.param(&qkv.weight).contiguous()?;
        let x = x.contiguous()?.reshape((b * n, kk, c))?;
        Ok((op, x, w, bias.contiguous()?))
    }

    fn attention_composite(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let c = x.dim(3)?;
        let scale = 1.0 / (c as f64).sqrt();
        let vc = valid.unsqueeze(2)?; // [B, rows, 1, K]
        let p = qkv.forward(x, ctx)?.clamp(-1e4f32, 1e4f32)?;
        let q = apply_rope(&p.narrow(3, 0, c)?, &rope.0, &rope.1)?;
        let k = apply_rope(&p.narrow(3, c, c)?, &rope.0, &rope.1)?;
        let v = p.narrow(3, 2 * c, c)?.contiguous()?;
        let s = (q.matmul(&k.t()?)? * scale)?.clamp(-1e4f32, 1e4f32)?;
        let s = s.broadcast_add(&((&vc - 1.0)? * 1e4)?)?; // −1e4 on invalid keys
        let a = ctx.softmax_last(&s)?.broadcast_mul(&vc)?;
        let a = ctx.dropout(&a, self.dropout)?;
        Ok(a.matmul(&v)?)
    }

    pub fn c(&self) -> usize {
        self.c
    }
}

/// 3×3 convolution, padding 1, no bias, over the (n, K) grid of a `[B, n, K, c]` tensor, with a
/// torch-layout weight `[out, in, 3, 3]` (cross-correlation): nine shifted matmuls.
pub fn conv3x3(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (_, n, kk, _) = x.dims4()?;
    let xp = x.pad_with_zeros(1, 1, 1)?.pad_with_zeros(2, 1, 1)?;
    let mut acc: Option<Tensor> = None;
    for dy in 0..3 {
        for dx in 0..3 {
            let w = weight.narrow(2, dy, 1)?.narrow(3, dx, 1)?.squeeze(3)?.squeeze(2)?; // [out, in]
            let shifted = xp.narrow(1, dy, n)?.narrow(2, dx, kk)?;
            let y = crate::encoder::lora::linear(&shifted.contiguous()?, &w)?;
            acc = Some(match acc {
                None => y,
                Some(a) => (a + y)?,
            });
        }
    }
    acc.ok_or_else(|| crate::Error::Input("empty convolution".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn conv3x3_matches_candle_conv2d() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 7, 5, 4), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 4, 3, 3), &dev).unwrap();
        let ours = conv3x3(&x, &w).unwrap();
        let reference = x.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap().conv2d(&w, 1, 1, 1, 1).unwrap().permute((0, 2, 3, 1)).unwrap();
        let d = (ours - reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{d}");
    }

    #[test]
    fn fused_band_conv_matches_shifted_matmuls_forward_and_backward() {
        use candle_core::Var;
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, 7, 5), &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 5, 3, 3), &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 6, 7, 4), &dev).unwrap();
        let fused = x.as_tensor().apply_op2(w.as_tensor(), crate::span::band_conv::BandConv3x3).unwrap();
        let plain = conv3x3(x.as_tensor(), w.as_tensor()).unwrap();
        let d = (&fused - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "forward {d}");
        let gf = (&fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w] {
            let d = (gf.get(v).unwrap() - gp.get(v).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(d < 1e-3, "gradient {d}");
        }
    }

    #[test]
    fn rope_rotates_interleaved_pairs() {
        let dev = Device::Cpu;
        let (sin, cos) = rope_tables(3, 4, DType::F32, &dev).unwrap();
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [1., 2., 3., 4.], [1., 2., 3., 4.]], &dev).unwrap();
        let y: Vec<Vec<f32>> = apply_rope(&x, &sin, &cos).unwrap().to_vec2().unwrap();
        for p in 0..3 {
            for k in 0..2 {
                let th = p as f64 * 10000f64.powf(-2.0 * k as f64 / 4.0);
                let (a, b) = ((2 * k + 1) as f64, (2 * k + 2) as f64);
                let want0 = a * th.cos() - b * th.sin();
                let want1 = b * th.cos() + a * th.sin();
                assert!((y[p][2 * k] as f64 - want0).abs() < 1e-5 && (y[p][2 * k + 1] as f64 - want1).abs() < 1e-5);
            }
        }
    }
}
