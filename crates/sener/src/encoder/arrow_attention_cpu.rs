//! Arrow attention at inference on the CPU, fused: the same numbers as
//! [`super::arrow_attention::arrow_attention`] (checked against it in the tests), without its
//! band-sized intermediates.
//!
//! The candle-op version builds `[B·H, nb, bs, 3·bs]` score tensors and runs about fifteen
//! elementwise passes over them per layer (relative-term skews, scale, mask, a concatenated global
//! column, a five-op softmax, the split product), several of them strided; at 5,120 tokens those
//! passes, not the matmuls, were most of an encoder forward. Here each (sequence, head) is one pass:
//!
//! 1. DeBERTa's relative terms are needed only for offsets δ = i − j in [−w, w] (the band) and for
//!    the [CLS] row and column. `Aq[i, δ] = q_i · Pk[row(δ)]` (c2p) and `Bk[j, δ] = k_j · Pq[row(δ)]`
//!    (p2c) are two `[T, 2w+1]` gemms against the gathered band rows of the tables;
//! 2. per block of 64 queries, scores against the block's key window are one gemm; each allowed
//!    cell adds `Aq`/`Bk`, is scaled and soft-maxed together with the global key 0 in one sweep over
//!    the row; the output is one more gemm (`P · V`) plus `p₀ · v₀`;
//! 3. the [CLS] row scores every key (LogN-scaled) with a gemv.
//!
//! Blocks run in parallel (rayon); every output row is written by exactly one task, so results do
//! not depend on the thread count. Used when no gradient is wanted (`!ctx.grad`), inputs are f32
//! and on the CPU.

use candle_core::{Device, Tensor};
use rayon::prelude::*;

use super::arrow_attention::{ArrowMask, RelativeTerms};
use crate::nn::{exp_sub_sum, fast_exp, sgemm};
use crate::Result;

/// Queries per block: a block's scores (`64 × (64 + 2w)`) stay in L2.
const QB: usize = 64;

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `[B, H, T, d]` output of arrow attention for `q`, `k`, `v` (`[B, H, T, d]`), zero on padding
/// rows — see the module docs.
pub fn arrow_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, mask: &ArrowMask, rel: Option<&RelativeTerms>, scale: f64) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    mask.check(b, t)?;
    let (qh, kh, vh) = (host(q)?, host(k)?, host(v)?);
    let w = mask.window().min(t.saturating_sub(1));
    let nd = 2 * w + 1;
    let global = mask.global_cls();
    let valid = mask.valid();
    let scale = scale as f32;
    let logn = mask.logn_factor() as f32;
    // Relative tables [H, R, d], and the rows of the band offsets δ = −w..w gathered per head.
    let (pk, pq, index) = match rel {
        Some(r) => (r.pos_key.as_ref().map(host).transpose()?, r.pos_query.as_ref().map(host).transpose()?, Some(r.index)),
        None => (None, None, None),
    };
    let rows_r = index.map_or(0, |ix| ix.table_rows());
    let band_rows = |table: &[f32], hi: usize| -> Vec<f32> {
        let ix = index.expect("relative table without index");
        let mut out = vec![0f32; nd * d];
        for (m, o) in out.chunks_mut(d).enumerate() {
            let row = ix.row(m as i64 - w as i64) as usize;
            o.copy_from_slice(&table[(hi * rows_r + row) * d..(hi * rows_r + row + 1) * d]);
        }
        out
    };
    let mut out = vec![0f32; b * h * t * d];
    for bi in 0..b {
        let vrow = &valid[bi * t..(bi + 1) * t];
        for hi in 0..h {
            let base = (bi * h + hi) * t * d;
            let (qs, ks, vs) = (&qh[base..base + t * d], &kh[base..base + t * d], &vh[base..base + t * d]);
            let pk_h = pk.as_ref().map(|p| &p[hi * rows_r * d..(hi + 1) * rows_r * d]);
            let pq_h = pq.as_ref().map(|p| &p[hi * rows_r * d..(hi + 1) * rows_r * d]);
            // 1. band relative terms: Aq = Q · Pk_bandᵀ, Bk = K · Pq_bandᵀ, each [T, 2w+1]
            let band_term = |x: &[f32], table: &[f32]| -> Vec<f32> {
                let tab = band_rows(table, hi);
                let mut o = vec![0f32; t * nd];
                o.par_chunks_mut(QB * nd).enumerate().for_each(|(blk, oc)| {
                    let r0 = blk * QB;
                    let m = oc.len() / nd;
                    sgemm((m, nd, d), oc, nd, false, (&x[r0 * d..], d, 1), (&tab, 1, d), 1.0);
                });
                o
            };
            let aq = pk.as_deref().map(|p| band_term(qs, p));
            let bk = pq.as_deref().map(|p| band_term(ks, p));
            // global column terms: k₀ · Pq[row] for every table row
            let k0pq: Option<Vec<f32>> = pq_h.map(|p| p.chunks(d).map(|r| dot(&ks[..d], r)).collect());
            let out_h = &mut out[base..base + t * d];
            // 2. query blocks
            out_h.par_chunks_mut(QB * d).enumerate().for_each(|(blk, oc)| {
                let i0 = blk * QB;
                let m = oc.len() / d;
                let j_lo = i0.saturating_sub(w);
                let j_hi = (i0 + m - 1 + w + 1).min(t);
                let nk = j_hi - j_lo;
                let mut s = vec![0f32; m * nk];
                sgemm((m, nk, d), &mut s, nk, false, (&qs[i0 * d..], d, 1), (&ks[j_lo * d..], 1, d), 1.0);
                let mut p0 = vec![0f32; m];
                for r in 0..m {
                    let i = i0 + r;
                    let srow = &mut s[r * nk..(r + 1) * nk];
                    if !vrow[i] || (global && i == 0) {
                        srow.fill(0.0);
                        continue;
                    }
                    let mut mx = f32::NEG_INFINITY;
                    let c_lo = (i.saturating_sub(w)).max(j_lo) - j_lo;
                    let c_hi = (i + w + 1).min(j_hi) - j_lo;
                    for (c, cell) in srow.iter_mut().enumerate() {
                        let j = j_lo + c;
                        if c < c_lo || c >= c_hi || !vrow[j] || (global && j == 0) {
                            *cell = f32::NEG_INFINITY;
                            continue;
                        }
                        let di = i + w - j; // δ + w
                        let mut x = *cell;
                        if let Some(a) = &aq {
                            x += a[i * nd + di];
                        }
                        if let Some(bm) = &bk {
                            x += bm[j * nd + di];
                        }
                        x *= scale;
                        *cell = x;
                        mx = mx.max(x);
                    }
                    let mut s0 = f32::NEG_INFINITY;
                    if global && vrow[0] {
                        let mut x = dot(&qs[i * d..(i + 1) * d], &ks[..d]);
                        if let (Some(p), Some(ix)) = (pk_h, index) {
                            let row = ix.row(i as i64) as usize;
                            x += dot(&qs[i * d..(i + 1) * d], &p[row * d..(row + 1) * d]);
                        }
                        if let (Some(kp), Some(ix)) = (&k0pq, index) {
                            x += kp[ix.row(i as i64) as usize];
                        }
                        s0 = x * scale;
                        mx = mx.max(s0);
                    }
                    if mx == f32::NEG_INFINITY {
                        srow.fill(0.0);
                        continue;
                    }
                    // masked cells are −∞: fast_exp gives exactly 0 for them
                    let mut sum = exp_sub_sum(srow, mx);
                    let e0 = fast_exp(s0 - mx);
                    sum += e0;
                    let inv = 1.0 / sum;
                    srow.iter_mut().for_each(|c| *c *= inv);
                    p0[r] = e0 * inv;
                }
                sgemm((m, d, nk), oc, d, false, (&s, nk, 1), (&vs[j_lo * d..], d, 1), 1.0);
                for r in 0..m {
                    let i = i0 + r;
                    if !vrow[i] || (global && i == 0) {
                        oc[r * d..(r + 1) * d].fill(0.0);
                    } else if p0[r] != 0.0 {
                        for (o, v0) in oc[r * d..(r + 1) * d].iter_mut().zip(&vs[..d]) {
                            *o += p0[r] * v0;
                        }
                    }
                }
            });
            // 3. the [CLS] row: every valid key, LogN-scaled
            if global && vrow[0] {
                let q0 = &qs[..d];
                let mut sc = vec![0f32; t];
                sgemm((1, t, d), &mut sc, t, false, (q0, d, 1), (ks, 1, d), 1.0);
                let q0pk: Option<Vec<f32>> = pk_h.map(|p| p.chunks(d).map(|r| dot(q0, r)).collect());
                let mut mx = f32::NEG_INFINITY;
                for (j, x) in sc.iter_mut().enumerate() {
                    if !vrow[j] {
                        *x = f32::NEG_INFINITY;
                        continue;
                    }
                    if let Some(ix) = index {
                        let row = ix.row(-(j as i64)) as usize;
                        if let Some(a) = &q0pk {
                            *x += a[row];
                        }
                        if let Some(p) = pq_h {
                            *x += dot(&ks[j * d..(j + 1) * d], &p[row * d..(row + 1) * d]);
                        }
                    }
                    *x *= scale * logn;
                    mx = mx.max(*x);
                }
                let sum = exp_sub_sum(&mut sc, mx);
                sc.iter_mut().for_each(|x| *x /= sum);
                sgemm((1, d, t), &mut out[base..base + d], d, false, (&sc, t, 1), (vs, d, 1), 1.0);
            }
        }
    }
    Ok(Tensor::from_vec(out, (b, h, t, d), &Device::Cpu)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::arrow_attention::{arrow_attention_composite, ArrowConfig};
    use crate::encoder::relative_position::RelativeIndex;
    use crate::nn::ForwardCtx;
    use candle_core::DType;

    struct Case {
        b: usize,
        h: usize,
        t: usize,
        d: usize,
        cfg: ArrowConfig,
        /// (c2p, p2c) tables, or None for BERT
        rel: Option<(bool, bool)>,
        /// valid length of each row
        lens: Vec<usize>,
    }

    fn check(c: Case) {
        let dev = Device::Cpu;
        let r = |shape: (usize, usize, usize, usize)| Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let (q, k, v) = (r((c.b, c.h, c.t, c.d)), r((c.b, c.h, c.t, c.d)), r((c.b, c.h, c.t, c.d)));
        let valid: Vec<bool> = c.lens.iter().flat_map(|&l| (0..c.t).map(move |i| i < l)).collect();
        let mask = ArrowMask::new(&valid, c.b, c.t, &c.cfg, DType::F32, &dev).unwrap();
        let index = RelativeIndex::new(32, 64);
        let table = || Tensor::randn(0f32, 1.0, (c.h, index.table_rows(), c.d), &dev).unwrap();
        let rel = c.rel.map(|(a, b)| RelativeTerms { index, pos_key: a.then(table), pos_query: b.then(table) });
        let scale = 1.0 / ((c.d * 3) as f64).sqrt();
        let want = arrow_attention_composite(&q, &k, &v, &mask, rel.as_ref(), scale, 0.0, &mut ForwardCtx::eval()).unwrap();
        let got = arrow_attention_cpu(&q, &k, &v, &mask, rel.as_ref(), scale).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max |fused − composite| = {diff} (t {}, w {}, rel {:?})", c.t, c.cfg.window, c.rel);
    }

    #[test]
    fn matches_composite_deberta_with_padding_and_logn() {
        let cfg = ArrowConfig { window: 16, ..ArrowConfig::default() };
        check(Case { b: 2, h: 3, t: 300, d: 8, cfg, rel: Some((true, true)), lens: vec![300, 251] });
    }

    #[test]
    fn matches_composite_bert_and_one_sided_terms() {
        let cfg = ArrowConfig { window: 8, ..ArrowConfig::default() };
        check(Case { b: 1, h: 2, t: 50, d: 4, cfg: cfg.clone(), rel: None, lens: vec![50] });
        check(Case { b: 1, h: 2, t: 70, d: 4, cfg: cfg.clone(), rel: Some((true, false)), lens: vec![61] });
        check(Case { b: 1, h: 2, t: 70, d: 4, cfg, rel: Some((false, true)), lens: vec![70] });
    }

    #[test]
    fn matches_composite_sliding_window_and_full_attention() {
        let swa = ArrowConfig { window: 8, global_cls: false, ..ArrowConfig::default() };
        check(Case { b: 2, h: 2, t: 45, d: 4, cfg: swa, rel: Some((true, true)), lens: vec![45, 30] });
        check(Case { b: 1, h: 2, t: 40, d: 4, cfg: ArrowConfig::full(), rel: Some((true, true)), lens: vec![40] });
        check(Case { b: 1, h: 1, t: 1, d: 4, cfg: ArrowConfig::default(), rel: Some((true, true)), lens: vec![1] });
        // a window wider than a short sequence, padding, arrow on
        check(Case { b: 2, h: 1, t: 20, d: 4, cfg: ArrowConfig::default(), rel: Some((true, true)), lens: vec![20, 7] });
    }
}
