//! Biaffine span scores on the band only (spec §4), as the official `CNNNer`:
//!
//! ```text
//! hˢ_i = GELU(Linear(Dropout_0.4(H_i)))   (head_mlp)     hᵉ_j = GELU(Linear(Dropout_0.4(H_j)))   (tail_mlp)
//! h̃ = [h ; 1]
//! S_ij[o] = h̃ˢ_iᵀ U[o] h̃ᵉ_j + W[o] · [Dropout_0.4(h̃ˢ_i) ; Dropout_0.4(h̃ᵉ_j)]
//! ```
//! evaluated at band cells (i, j = i + k − w) only, invalid cells zeroed.
//!
//! The bilinear term runs by row blocks of w words: block b needs the end vectors of words
//! [b·w − w, b·w + 2w), one matmul `[w·c, h+1] × [h+1, 3w]` per block, and a shear (pad,
//! reshape, narrow) turns each row's 3w-wide window into its 2w+1 band cells. Memory O(n·c·w).

use candle_core::{Tensor, Var};
use candle_nn::VarBuilder;

use super::band::Band;
use crate::nn::ForwardCtx;
use crate::Result;

/// `Linear` whose weight and bias are trainable.
#[derive(Debug)]
pub struct TrainLinear {
    pub name: String,
    pub weight: Var,
    pub bias: Option<Var>,
}

impl TrainLinear {
    pub fn load(vb: &VarBuilder, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = Var::from_tensor(&vb.get((out_dim, in_dim), &format!("{name}.weight"))?)?;
        let bias = if bias { Some(Var::from_tensor(&vb.get(out_dim, &format!("{name}.bias"))?)?) } else { None };
        Ok(Self { name: name.to_string(), weight, bias })
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let y = crate::encoder::lora::linear(x, &ctx.param(&self.weight))?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&ctx.param(b))?,
            None => y,
        })
    }

    pub fn params(&self) -> Vec<(String, Var)> {
        let mut v = vec![(format!("{}.weight", self.name), self.weight.clone())];
        if let Some(b) = &self.bias {
            v.push((format!("{}.bias", self.name), b.clone()));
        }
        v
    }
}

/// The biaffine scorer.
#[derive(Debug)]
pub struct Biaffine {
    head: TrainLinear,
    tail: TrainLinear,
    /// `[c, h+1, h+1]`
    u: Var,
    /// `[c, 2(h+1)]`
    w: Var,
    dropout: f32,
    c: usize,
}

impl Biaffine {
    /// Names as in the official checkpoint: `head_mlp.1`, `tail_mlp.1`, `U`, `W`.
    pub fn load(vb: &VarBuilder, hidden: usize, size: usize, c: usize, dropout: f32) -> Result<Self> {
        Ok(Self {
            head: TrainLinear::load(vb, "head_mlp.1", hidden, size, true)?,
            tail: TrainLinear::load(vb, "tail_mlp.1", hidden, size, true)?,
            u: Var::from_tensor(&vb.get((c, size + 1, size + 1), "U")?)?,
            w: Var::from_tensor(&vb.get((c, 2 * (size + 1)), "W")?)?,
            dropout,
            c,
        })
    }

    pub fn params(&self) -> Vec<(String, Var)> {
        let mut v = self.head.params();
        v.extend(self.tail.params());
        v.push(("U".into(), self.u.clone()));
        v.push(("W".into(), self.w.clone()));
        v
    }

    /// `h`: word vectors `[B, n, hidden]`; `mask`: band validity `[B, n, K]` (1 = real pair).
    /// Returns the masked band `[B, n, K, c]`.
    pub fn forward(&self, h: &Tensor, band: Band, mask: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let (b, n, _) = h.dims3()?;
        let hs = crate::nn::Activation::Gelu.forward_in(&self.head.forward(&ctx.dropout(h, self.dropout)?, ctx)?, ctx)?;
        let he = crate::nn::Activation::Gelu.forward_in(&self.tail.forward(&ctx.dropout(h, self.dropout)?, ctx)?, ctx)?;
        let ones = Tensor::ones((b, n, 1), h.dtype(), h.device())?;
        let hs = Tensor::cat(&[&hs, &ones], 2)?; // [B, n, h+1]
        let he = Tensor::cat(&[&he, &ones], 2)?;
        let x = hs.dim(2)?;
        let c = self.c;
        let w = band.w;
        let kk = band.k();

        // ---- bilinear term by row blocks ----
        // A[i, o, :] = h̃ˢ_iᵀ U[o]  → [B, n, c, x]
        let u = ctx.param(&self.u).transpose(0, 1)?.reshape((x, c * x))?; // [x, (o, y)]
        let a = crate::encoder::lora::linear(&hs, &u.t()?)?.reshape((b, n, c, x))?;
        let bs = w.max(1);
        let nb = n.div_ceil(bs);
        let np = nb * bs;
        let a = a.pad_with_zeros(1, 0, np - n)?.reshape((b, nb, bs * c, x))?;
        // End vectors of blocks b−1, b, b+1: [B, nb, 3w, x]
        let e4 = he.pad_with_zeros(1, 0, np - n)?.reshape((b, nb, bs, x))?;
        let prev = e4.pad_with_zeros(1, 1, 0)?.narrow(1, 0, nb)?;
        let next = e4.pad_with_zeros(1, 0, 1)?.narrow(1, 1, nb)?;
        let e = Tensor::cat(&[&prev, &e4, &next], 2)?.contiguous()?;
        let m = a.matmul(&e.t()?)?; // [B, nb, (rr, o), 3w]
        // Row rr needs window columns rr .. rr+K (j = block start − w + column).
        let m = m.reshape((b, nb, bs, c, 3 * bs))?.permute((0, 1, 3, 2, 4))?.contiguous()?; // [B, nb, c, rr, 3w]
        let m = m
            .reshape((b, nb, c, bs * 3 * bs))?
            .pad_with_zeros(3, 0, bs)?
            .reshape((b, nb, c, bs, 3 * bs + 1))?
            .narrow(4, 0, kk)?; // [B, nb, c, rr, K]
        let s_u = m.permute((0, 1, 3, 4, 2))?.reshape((b, np, kk, c))?.narrow(1, 0, n)?;

        // ---- linear term: W[o]·[drop(h̃ˢ_i); drop(h̃ᵉ_j)] ----
        let wm = ctx.param(&self.w);
        let ws = wm.narrow(1, 0, x)?;
        let we = wm.narrow(1, x, x)?;
        let ps = crate::encoder::lora::linear(&ctx.dropout(&hs, self.dropout)?, &ws)?; // [B, n, c]
        let pe = crate::encoder::lora::linear(&ctx.dropout(&he, self.dropout)?, &we)?;
        let s = (s_u.broadcast_add(&ps.unsqueeze(2)?)? + band.gather(&pe)?)?;
        Ok(s.broadcast_mul(&mask.unsqueeze(3)?)?)
    }
}
