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

    /// Recomputation's biaffine stage on the fused path (f32, CPU), by hand: [`Self::forward`]
    /// on `h` again without a graph (the same dropout masks, drawn in the same order), then the
    /// gradient at `h` from the band gradient `g` `[B, n, K, c]` and every parameter gradient.
    /// Call with the graph off (`ctx.track` false). With `G = g ⊙ mask`, `j = i + k − w`:
    /// ```text
    /// dps_i = Σ_k G_ik       dpe_j = Σ_{i+k−w=j} G_ik        (the linear term)
    /// B_i[o, y] = Σ_k G_ik[o] h̃ᵉ_j[y]    dU[o] = Σ_i h̃ˢ_i ⊗ B_i[o]    dh̃ˢ_i[x] = Σ_{o,y} U[o, x, y] B_i[o, y]
    /// dh̃ᵉ_j += Σ_{i+k−w=j} Σ_o G_ik[o] a_i[o]   with a_i[o, y] = Σ_x h̃ˢ_i[x] U[o, x, y]
    /// ```
    /// then through the GELU MLPs and the dropouts. The band-shaped sums run per row on the
    /// host (one `c × x` and one `K × x` product per row), the rest as matrix products.
    pub fn backward_fused(&self, h: &Tensor, band: Band, mask: &Tensor, g: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, Vec<(Var, Tensor)>)> {
        use candle_core::CustomOp1;
        use rayon::prelude::*;
        let (b, n, _hidden) = h.dims3()?;
        let (c, w, kk) = (self.c, band.w, band.k());
        let det = |v: &Var| v.as_tensor().detach();
        let drop_factor = |ctx: &mut ForwardCtx, x: &Tensor| ctx.dropout_mask(x, self.dropout);
        let apply = |x: &Tensor, f: &Option<Tensor>| crate::nn::mask_mul(x, f.as_ref());
        let lin = |x: &Tensor, l: &TrainLinear| -> Result<Tensor> {
            let y = crate::encoder::lora::linear(x, &det(&l.weight))?;
            Ok(match &l.bias {
                Some(bias) => y.broadcast_add(&det(bias))?,
                None => y,
            })
        };
        let gelu = crate::nn::GeluErfOp;
        // ---- forward, keeping the intermediates ----
        let m1 = drop_factor(ctx, h)?;
        let hd = apply(h, &m1)?;
        let pre_h = lin(&hd, &self.head)?.contiguous()?;
        let m2 = drop_factor(ctx, h)?;
        let td = apply(h, &m2)?;
        let pre_t = lin(&td, &self.tail)?.contiguous()?;
        let (hs, he) = (pre_h.apply_op1_no_bwd(&gelu)?, pre_t.apply_op1_no_bwd(&gelu)?);
        let ones = Tensor::ones((b, n, 1), h.dtype(), h.device())?;
        let hs1 = Tensor::cat(&[&hs, &ones], 2)?; // [B, n, x]
        let he1 = Tensor::cat(&[&he, &ones], 2)?;
        let x = hs1.dim(2)?;
        let u = det(&self.u).transpose(0, 1)?.reshape((x, c * x))?; // u[x', (o, y)] = U[o, x', y]
        let a = crate::encoder::lora::linear(&hs1, &u.t()?)?; // [B, n, c·x]
        let m3 = drop_factor(ctx, &hs1)?;
        let m4 = drop_factor(ctx, &he1)?;
        let (hs3, he4) = (apply(&hs1, &m3)?, apply(&he1, &m4)?);
        // ---- the band sums, per row on the host ----
        let gm = g.broadcast_mul(&mask.unsqueeze(3)?)?.flatten_all()?.to_vec1::<f32>()?; // [B, n, K, c]
        let he_h = he1.flatten_all()?.to_vec1::<f32>()?;
        let a_h = a.flatten_all()?.to_vec1::<f32>()?;
        let (row, cx) = (kk * c, c * x);
        // per row i: dps_i (c), B_i (c·x)
        let mut dps = vec![0f32; b * n * c];
        let mut bmat = vec![0f32; b * n * cx];
        dps.par_chunks_mut(c).zip(bmat.par_chunks_mut(cx)).enumerate().for_each(|(bi_i, (dp, bm))| {
            let (bi, i) = (bi_i / n, bi_i % n);
            let gi = &gm[bi_i * row..(bi_i + 1) * row];
            for k in 0..kk {
                dp.iter_mut().zip(&gi[k * c..(k + 1) * c]).for_each(|(d, v)| *d += v);
            }
            // valid window: j = i + k − w in [0, n)
            let k_lo = w.saturating_sub(i);
            let k_hi = (n + w - i).min(kk);
            if k_lo < k_hi {
                let j_lo = i + k_lo - w;
                crate::nn::sgemm((c, x, k_hi - k_lo), bm, x, false, (&gi[k_lo * c..], 1, c), (&he_h[(bi * n + j_lo) * x..], x, 1), 1.0);
            }
        });
        // dpe_j and dh̃ᵉ_j (bilinear part): sums over the rows i = j − k + w, in blocks of rows
        // whose partial sums are added in block order (the same result on any thread count)
        const ROWS: usize = 64;
        let blocks: Vec<(usize, usize)> = (0..b).flat_map(|bi| (0..n).step_by(ROWS).map(move |i0| (bi, i0))).collect();
        let partials: Vec<(usize, usize, Vec<f32>, Vec<f32>)> = blocks
            .par_iter()
            .map(|&(bi, i0)| {
                let i1 = (i0 + ROWS).min(n);
                let j0 = i0.saturating_sub(w);
                let j1 = (i1 + w).min(n);
                let (mut dpe, mut dhe) = (vec![0f32; (j1 - j0) * c], vec![0f32; (j1 - j0) * x]);
                let mut ci = vec![0f32; kk * x];
                for i in i0..i1 {
                    let gi = &gm[(bi * n + i) * row..(bi * n + i + 1) * row];
                    let k_lo = w.saturating_sub(i);
                    let k_hi = (n + w - i).min(kk);
                    if k_lo >= k_hi {
                        continue;
                    }
                    let nk = k_hi - k_lo;
                    // C_i[k, y] = Σ_o G_ik[o] a_i[o, y]
                    crate::nn::sgemm((nk, x, c), &mut ci, x, false, (&gi[k_lo * c..], c, 1), (&a_h[(bi * n + i) * cx..], x, 1), 1.0);
                    for kx in 0..nk {
                        let j = i + k_lo + kx - w;
                        let gk = &gi[(k_lo + kx) * c..(k_lo + kx + 1) * c];
                        dpe[(j - j0) * c..(j - j0 + 1) * c].iter_mut().zip(gk).for_each(|(d, v)| *d += v);
                        dhe[(j - j0) * x..(j - j0 + 1) * x].iter_mut().zip(&ci[kx * x..(kx + 1) * x]).for_each(|(d, v)| *d += v);
                    }
                }
                (bi, j0, dpe, dhe)
            })
            .collect();
        let (mut dpe, mut dhe_bil) = (vec![0f32; b * n * c], vec![0f32; b * n * x]);
        for (bi, j0, pe, ph) in &partials {
            let (at_c, at_x) = ((bi * n + j0) * c, (bi * n + j0) * x);
            dpe[at_c..at_c + pe.len()].iter_mut().zip(pe).for_each(|(d, v)| *d += v);
            dhe_bil[at_x..at_x + ph.len()].iter_mut().zip(ph).for_each(|(d, v)| *d += v);
        }
        let dev = h.device();
        let dps = Tensor::from_vec(dps, (b * n, c), dev)?;
        let dpe = Tensor::from_vec(dpe, (b * n, c), dev)?;
        let bmat = Tensor::from_vec(bmat, (b * n, cx), dev)?;
        let dhe_bil = Tensor::from_vec(dhe_bil, (b, n, x), dev)?;
        // ---- parameter gradients and the gradients at h̃ˢ, h̃ᵉ ----
        let mut grads = Vec::new();
        let flat = |t: &Tensor| -> Result<Tensor> { Ok(t.reshape((b * n, x))?) };
        // W = [Ws | We]: ps = drop(h̃ˢ) Wsᵀ, pe = drop(h̃ᵉ) Weᵀ
        let dw = Tensor::cat(&[&dps.t()?.matmul(&flat(&hs3)?)?, &dpe.t()?.matmul(&flat(&he4)?)?], 1)?;
        grads.push((self.w.clone(), dw));
        let wm = det(&self.w);
        let dhs1 = apply(&dps.matmul(&wm.narrow(1, 0, x)?)?.reshape((b, n, x))?, &m3)?;
        let dhe1 = (apply(&dpe.matmul(&wm.narrow(1, x, x)?)?.reshape((b, n, x))?, &m4)? + dhe_bil)?;
        // U: dU[o, x', y] = Σ_i h̃ˢ_i[x'] B_i[o, y]; dh̃ˢ_i = B_i · uᵀ
        let du = flat(&hs1)?.t()?.matmul(&bmat)?.reshape((x, c, x))?.transpose(0, 1)?.contiguous()?;
        grads.push((self.u.clone(), du));
        let dhs1 = (dhs1 + bmat.matmul(&u.t()?)?.reshape((b, n, x))?)?;
        // through the GELU MLPs (the ones column has no input) and the input dropouts
        let size = x - 1;
        let mut dh: Option<Tensor> = None;
        for (d1, pre, act, inp, m, l) in [(dhs1, pre_h, hs, hd, m1, &self.head), (dhe1, pre_t, he, td, m2, &self.tail)] {
            let dact = d1.narrow(2, 0, size)?.contiguous()?;
            let dpre = gelu.bwd(&pre, &act, &dact)?.ok_or_else(crate::nn::no_grad)?.reshape((b * n, size))?;
            let inp2 = inp.reshape((b * n, ()))?;
            grads.push((l.weight.clone(), dpre.t()?.matmul(&inp2)?));
            if let Some(bias) = &l.bias {
                grads.push((bias.clone(), dpre.sum(0)?));
            }
            let dx = apply(&dpre.matmul(&det(&l.weight))?.reshape(h.shape())?, &m)?;
            dh = Some(match dh {
                None => dx,
                Some(t) => (t + dx)?,
            });
        }
        Ok((dh.ok_or_else(|| crate::Error::Input("no gradient".into()))?, grads))
    }
}
