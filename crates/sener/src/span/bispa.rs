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
//! shifted `[n·K, c] × [c, c]` matmuls instead of an im2col conv (O(n·K·c) memory); the row
//! attention runs in row chunks so that the `[rows, K, K]` score tensor stays bounded.

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;

use super::band::Band;
use super::biaffine::TrainLinear;
use crate::nn::{ForwardCtx, LayerNorm};
use crate::Result;

/// Rows of the band whose K×K attention scores are materialised at once.
const ROW_CHUNK: usize = 256;

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
    /// Use the composite (candle-op) attention even where the fused one applies (tests, A/B).
    pub force_composite: bool,
    /// Inference under `--dtype bf16` ([`super::SpanModel::set_precision`]): the row attention's
    /// K×K products with this kernel, and with AMX the band convolutions too. Gradient passes
    /// stay f32.
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
    pub fn attend(&self, x: &Tensor, band: Band, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let kk = x.dim(2)?;
        let dev = x.device();
        let tri: Vec<u32> = (0..kk).map(|k| (k >= band.w) as u32).collect();
        let tri = ctx.param(&self.pos_embed).index_select(&Tensor::from_vec(tri, kk, dev)?, 0)?; // [K, c]
        let x = x.clamp(-1000f32, 1000f32)?.broadcast_add(&tri)?;
        let zh = self.attention(&x, &self.h_qkv, valid, rope, ctx)?;
        let zv = self.attention(&band.vertical(&x)?, &self.v_qkv, valid, rope, ctx)?;
        let d = self.dense.forward(&Tensor::cat(&[&zh, &zv], 3)?, ctx)?;
        let d = ctx.dropout(&d, self.dropout)?;
        let row_has_valid = valid.max_keepdim(2)?.unsqueeze(3)?; // [B, n, 1, 1]
        let d = d.broadcast_mul(&row_has_valid)?;
        let ln1 = LayerNorm { weight: ctx.param(&self.ln1.0), bias: ctx.param(&self.ln1.1), eps: 1e-5 };
        ln1.forward(&(x + d)?, ctx)
    }

    /// The block's second half: the masked conv pair, dropout, `LN₂(Y + ·)`.
    pub fn convolve(&self, y: &Tensor, valid: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let valid4 = valid.unsqueeze(3)?;
        let h = self.conv(&y.broadcast_mul(&valid4)?, &ctx.param(&self.conv1), ctx)?;
        let h = crate::nn::Activation::Gelu.forward(&h)?;
        let h = self.conv(&h.broadcast_mul(&valid4)?, &ctx.param(&self.conv2), ctx)?;
        let h = ctx.dropout(&h, self.dropout)?;
        let ln2 = LayerNorm { weight: ctx.param(&self.ln2.0), bias: ctx.param(&self.ln2.1), eps: 1e-5 };
        ln2.forward(&(y + h)?, ctx)
    }

    /// Whether the fused ops apply: f32 on the CPU, in gradient passes (where they save the kept
    /// intermediates) and at inference (no `[rows, K, K]` score tensor, fewer band passes).
    fn fused(&self, x: &Tensor, _ctx: &ForwardCtx) -> bool {
        x.dtype() == candle_core::DType::F32 && x.device().is_cpu() && !self.force_composite
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

    /// Single-head attention of every band row over its K cells: the fused row attention in
    /// gradient passes, the composite version (row-chunked) otherwise.
    fn attention(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        if self.fused(x, ctx) {
            return self.attention_fused(x, qkv, valid, rope, ctx);
        }
        self.attention_composite(x, qkv, valid, rope, ctx)
    }

    fn attention_fused(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, n, kk, c) = x.dims4()?;
        let mask: Vec<f32> = valid.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?;
        let dropout = if ctx.train { self.dropout } else { 0.0 };
        let seed = if dropout > 0.0 { ctx.next_seed() } else { 0 };
        let host = |t: &Tensor| -> Result<std::sync::Arc<Vec<f32>>> { Ok(std::sync::Arc::new(t.flatten_all()?.to_vec1::<f32>()?)) };
        let inference = dropout == 0.0 && !x.track_op() && !ctx.param(&qkv.weight).track_op();
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
        Ok(x.apply_op3(&w, &bias.contiguous()?, op)?.reshape((b, n, kk, c))?)
    }

    fn attention_composite(&self, x: &Tensor, qkv: &TrainLinear, valid: &Tensor, rope: &(Tensor, Tensor), ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (_, n, _, c) = x.dims4()?;
        let scale = 1.0 / (c as f64).sqrt();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < n {
            let rows = ROW_CHUNK.min(n - start);
            let xc = x.narrow(1, start, rows)?;
            let vc = valid.narrow(1, start, rows)?.unsqueeze(2)?; // [B, rows, 1, K]
            let p = qkv.forward(&xc, ctx)?.clamp(-1e4f32, 1e4f32)?;
            let q = apply_rope(&p.narrow(3, 0, c)?, &rope.0, &rope.1)?;
            let k = apply_rope(&p.narrow(3, c, c)?, &rope.0, &rope.1)?;
            let v = p.narrow(3, 2 * c, c)?.contiguous()?;
            let s = (q.matmul(&k.t()?)? * scale)?.clamp(-1e4f32, 1e4f32)?;
            let s = s.broadcast_add(&((&vc - 1.0)? * 1e4)?)?; // −1e4 on invalid keys
            let a = ctx.softmax_last(&s)?.broadcast_mul(&vc)?;
            let a = ctx.dropout(&a, self.dropout)?;
            outs.push(a.matmul(&v)?);
            start += rows;
        }
        Ok(if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 1)? })
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
