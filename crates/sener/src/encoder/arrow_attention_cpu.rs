//! Arrow attention on the CPU, fused, with its own backward: the same numbers as
//! [`super::arrow_attention::arrow_attention_composite`] (checked against it in the tests, values
//! and gradients), without its band-sized intermediates.
//!
//! The candle-op version builds `[B·H, nb, bs, 3·bs]` score tensors and runs about fifteen
//! elementwise passes over them per layer (relative-term skews, scale, mask, a concatenated global
//! column, a five-op softmax, the split product), several of them strided, and candle's backward
//! adds a `zeros_like` and an `add` for every input of every one of them. Here each (sequence,
//! head) is one pass:
//!
//! 1. DeBERTa's relative terms are needed only for offsets δ = i − j in [−w, w] (the band) and for
//!    the [CLS] row and column. `Aq[i, δ] = q_i · Pk[row(δ)]` (c2p) and `Bk[j, δ] = k_j · Pq[row(δ)]`
//!    (p2c) are two `[T, 2w+1]` gemms against the gathered band rows of the tables;
//! 2. per block of 64 queries, scores against the block's key window are one gemm; each allowed
//!    cell adds `Aq`/`Bk`, is scaled and soft-maxed together with the global key 0 in one sweep over
//!    the row; the output is one more gemm (`P · V`) plus `p₀ · v₀`;
//! 3. the [CLS] row scores every key (LogN-scaled) with a gemv.
//!
//! Every allowed cell (i, j) has the score `z_ij = c_i (q_i·k_j + q_i·Pk[r(i−j)] + k_j·Pq[r(i−j)])`,
//! `c_i` the scale (times LogN on the [CLS] row), `p = softmax_j(z)`, `p̃ = p · m / keep` with the
//! dropout mask m, `o_i = Σ_j p̃_ij v_j`. Training ([`arrow_attention_fused`], a candle custom op)
//! keeps only the output and each row's log-sum-exp; the backward pass recomputes one block's
//! scores at a time (FlashAttention-style) and applies
//! ```text
//! dv_j += Σ_i p̃_ij do_i        dz_ij = c_i p_ij (m_ij/keep · do_i·v_j − do_i·o_i)
//! dq_i += Σ_j dz_ij (k_j + Pk[r(i−j)])      dk_j += Σ_i dz_ij (q_i + Pq[r(i−j)])
//! dPk[r] += Σ_{r(i−j)=r} dz_ij q_i          dPq[r] += Σ_{r(i−j)=r} dz_ij k_j
//! ```
//! with the band's relative terms gathered into `[T, 2w+1]` gradients and turned into table rows by
//! two gemms. The dropout mask is a pure function of (seed, sequence·head, i, j)
//! ([`crate::span::row_attention::dropout_keep`]), so the backward pass and recomputation draw it
//! again. Query blocks run in parallel in the forward pass, heads in the backward pass; every
//! output element is written by one task, so results do not depend on the thread count. Used for
//! f32 on the CPU unless `--kernels generic`.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::arrow_attention::{ArrowMask, RelativeTerms};
use super::relative_position::RelativeIndex;
use crate::nn::{cpu_f32, exp_sub_sum, fast_exp, max_lanes, sgemm};
use crate::span::row_attention::dropout_keep;
use crate::Result;

/// Queries per block: a block's scores (`64 × (64 + 2w)`) stay in L2.
const QB: usize = 64;

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `y += a · x`
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += a * x);
}

/// Everything of one call but its tensors.
#[derive(Clone, Debug)]
struct Spec {
    b: usize,
    h: usize,
    t: usize,
    d: usize,
    /// One-sided window, at most `t − 1`.
    w: usize,
    global: bool,
    scale: f32,
    logn: f32,
    /// `B·T`, row-major.
    valid: Arc<Vec<bool>>,
    index: Option<RelativeIndex>,
    c2p: bool,
    p2c: bool,
    /// Keep probability of the attention dropout (1: none) and the seed of its masks.
    keep: f32,
    seed: u64,
}

impl Spec {
    fn new(dims: (usize, usize, usize, usize), mask: &ArrowMask, rel: Option<&RelativeTerms>, scale: f64, dropout: f32, seed: u64) -> Self {
        let (b, h, t, d) = dims;
        Self {
            b,
            h,
            t,
            d,
            w: mask.window().min(t.saturating_sub(1)),
            global: mask.global_cls(),
            scale: scale as f32,
            logn: mask.logn_factor() as f32,
            valid: Arc::new(mask.valid().to_vec()),
            index: rel.map(|r| r.index),
            c2p: rel.is_some_and(|r| r.pos_key.is_some()),
            p2c: rel.is_some_and(|r| r.pos_query.is_some()),
            keep: 1.0 - dropout.clamp(0.0, 1.0),
            seed,
        }
    }

    fn nd(&self) -> usize {
        2 * self.w + 1
    }

    fn rows_r(&self) -> usize {
        self.index.map_or(0, |ix| ix.table_rows())
    }

    /// Dropout factor of cell (i, j) of sequence·head `bh`: 0 or 1/keep.
    fn drop_factor(&self, bh: usize, i: usize, j: usize) -> f32 {
        if dropout_keep(self.seed, bh, i, j, self.t, self.keep) {
            1.0 / self.keep
        } else {
            0.0
        }
    }

    fn dropout(&self) -> bool {
        self.keep < 1.0
    }
}

/// One (sequence, head): its slices and the relative terms its scores need.
struct Head<'a> {
    sp: &'a Spec,
    bh: usize,
    valid: &'a [bool],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// This head's relative tables `[R, d]`.
    pk: Option<&'a [f32]>,
    pq: Option<&'a [f32]>,
    /// The tables' rows of the band offsets δ = −w..w, `[2w+1, d]`.
    pk_band: Option<Vec<f32>>,
    pq_band: Option<Vec<f32>>,
    /// `Aq = Q · Pk_bandᵀ`, `Bk = K · Pq_bandᵀ`, each `[T, 2w+1]`.
    aq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    /// `k₀ · Pq[row]` for every table row (the global column's p2c term).
    k0pq: Option<Vec<f32>>,
}

impl<'a> Head<'a> {
    /// `q`, `k`, `v`: `[B, H, T, d]`; `pk`, `pq`: `[H, R, d]`.
    fn new(sp: &'a Spec, bh: usize, (q, k, v): (&'a [f32], &'a [f32], &'a [f32]), pk: Option<&'a [f32]>, pq: Option<&'a [f32]>) -> Self {
        let (t, d, nd, rr) = (sp.t, sp.d, sp.nd(), sp.rows_r());
        let (bi, hi) = (bh / sp.h, bh % sp.h);
        let base = bh * t * d;
        let (q, k, v) = (&q[base..base + t * d], &k[base..base + t * d], &v[base..base + t * d]);
        let pk = pk.map(|p| &p[hi * rr * d..(hi + 1) * rr * d]);
        let pq = pq.map(|p| &p[hi * rr * d..(hi + 1) * rr * d]);
        let gather = |table: &[f32]| -> Vec<f32> {
            let ix = sp.index.expect("relative table without index");
            let mut out = vec![0f32; nd * d];
            for (m, o) in out.chunks_mut(d).enumerate() {
                let row = ix.row(m as i64 - sp.w as i64) as usize;
                o.copy_from_slice(&table[row * d..(row + 1) * d]);
            }
            out
        };
        let band_term = |x: &[f32], tab: &[f32]| -> Vec<f32> {
            let mut o = vec![0f32; t * nd];
            o.par_chunks_mut(QB * nd).enumerate().for_each(|(blk, oc)| {
                let r0 = blk * QB;
                let m = oc.len() / nd;
                sgemm((m, nd, d), oc, nd, false, (&x[r0 * d..], d, 1), (tab, 1, d), 1.0);
            });
            o
        };
        let pk_band = pk.map(gather);
        let pq_band = pq.map(gather);
        let aq = pk_band.as_deref().map(|tab| band_term(q, tab));
        let bk = pq_band.as_deref().map(|tab| band_term(k, tab));
        let k0pq = pq.map(|p| p.chunks(d).map(|r| dot(&k[..d], r)).collect());
        Self { sp, bh, valid: &sp.valid[bi * t..(bi + 1) * t], q, k, v, pk, pq, pk_band, pq_band, aq, bk, k0pq }
    }

    /// Row i is not a band row: padding, or [CLS] with its own global row.
    fn skipped(&self, i: usize) -> bool {
        !self.valid[i] || (self.sp.global && i == 0)
    }

    fn rel_row(&self, offset: i64) -> usize {
        self.sp.index.map_or(0, |ix| ix.row(offset) as usize)
    }

    /// Scaled scores of queries `i0..i0+m` against their key window `j_lo..j_lo+nk` into `s`
    /// (`m × nk`) and against the global key 0 into `s0`; −∞ on masked cells and skipped rows.
    fn block_scores(&self, i0: usize, m: usize, s: &mut Vec<f32>, s0: &mut [f32]) -> (usize, usize) {
        let sp = self.sp;
        let (t, d, w, nd) = (sp.t, sp.d, sp.w, sp.nd());
        let j_lo = i0.saturating_sub(w);
        let j_hi = (i0 + m - 1 + w + 1).min(t);
        let nk = j_hi - j_lo;
        s.resize(m * nk, 0.0);
        sgemm((m, nk, d), s, nk, false, (&self.q[i0 * d..], d, 1), (&self.k[j_lo * d..], 1, d), 1.0);
        for r in 0..m {
            let i = i0 + r;
            let srow = &mut s[r * nk..(r + 1) * nk];
            s0[r] = f32::NEG_INFINITY;
            if self.skipped(i) {
                srow.fill(f32::NEG_INFINITY);
                continue;
            }
            let c_lo = i.saturating_sub(w).max(j_lo) - j_lo;
            let c_hi = (i + w + 1).min(j_hi) - j_lo;
            for (c, cell) in srow.iter_mut().enumerate() {
                let j = j_lo + c;
                if c < c_lo || c >= c_hi || !self.valid[j] || (sp.global && j == 0) {
                    *cell = f32::NEG_INFINITY;
                    continue;
                }
                let di = i + w - j; // δ + w
                let mut x = *cell;
                if let Some(a) = &self.aq {
                    x += a[i * nd + di];
                }
                if let Some(bm) = &self.bk {
                    x += bm[j * nd + di];
                }
                *cell = x * sp.scale;
            }
            if sp.global && self.valid[0] {
                let qi = &self.q[i * d..(i + 1) * d];
                let mut x = dot(qi, &self.k[..d]);
                let row = self.rel_row(i as i64);
                if let Some(p) = self.pk {
                    x += dot(qi, &p[row * d..(row + 1) * d]);
                }
                if let Some(kp) = &self.k0pq {
                    x += kp[row];
                }
                s0[r] = x * sp.scale;
            }
        }
        (j_lo, nk)
    }

    /// Scaled (LogN) scores of the [CLS] row against every key; −∞ on padding.
    fn cls_scores(&self) -> Vec<f32> {
        let sp = self.sp;
        let (t, d) = (sp.t, sp.d);
        let q0 = &self.q[..d];
        let mut sc = vec![0f32; t];
        sgemm((1, t, d), &mut sc, t, false, (q0, d, 1), (self.k, 1, d), 1.0);
        let q0pk: Option<Vec<f32>> = self.pk.map(|p| p.chunks(d).map(|r| dot(q0, r)).collect());
        for (j, x) in sc.iter_mut().enumerate() {
            if !self.valid[j] {
                *x = f32::NEG_INFINITY;
                continue;
            }
            let row = self.rel_row(-(j as i64));
            if let Some(a) = &q0pk {
                *x += a[row];
            }
            if let Some(p) = self.pq {
                *x += dot(&self.k[j * d..(j + 1) * d], &p[row * d..(row + 1) * d]);
            }
            *x *= sp.scale * sp.logn;
        }
        sc
    }

    /// The output rows of this head into `out` (`[T, d]`) and each row's log-sum-exp into `lse`
    /// (−∞ on rows that attend nothing).
    fn forward(&self, out: &mut [f32], lse: &mut [f32]) {
        let sp = self.sp;
        let (t, d) = (sp.t, sp.d);
        out.par_chunks_mut(QB * d).zip(lse.par_chunks_mut(QB)).enumerate().for_each(|(blk, (oc, lc))| {
            let i0 = blk * QB;
            let m = lc.len();
            let (mut s, mut s0) = (Vec::new(), vec![0f32; m]);
            let (j_lo, nk) = self.block_scores(i0, m, &mut s, &mut s0);
            let mut p0 = vec![0f32; m];
            for r in 0..m {
                let i = i0 + r;
                let srow = &mut s[r * nk..(r + 1) * nk];
                let mx = max_lanes(srow).max(s0[r]);
                if mx == f32::NEG_INFINITY {
                    srow.fill(0.0);
                    lc[r] = f32::NEG_INFINITY;
                    continue;
                }
                // masked cells are −∞: fast_exp gives exactly 0 for them
                let e0 = fast_exp(s0[r] - mx);
                let sum = exp_sub_sum(srow, mx) + e0;
                let inv = 1.0 / sum;
                srow.iter_mut().for_each(|c| *c *= inv);
                p0[r] = e0 * inv;
                lc[r] = mx + sum.ln();
                if sp.dropout() {
                    for (c, x) in srow.iter_mut().enumerate() {
                        if *x != 0.0 {
                            *x *= sp.drop_factor(self.bh, i, j_lo + c);
                        }
                    }
                    if p0[r] != 0.0 {
                        p0[r] *= sp.drop_factor(self.bh, i, 0);
                    }
                }
            }
            // every row of the block is stored (skipped rows have all-zero weights)
            sgemm((m, d, nk), oc, d, false, (&s, nk, 1), (&self.v[j_lo * d..], d, 1), 1.0);
            for r in 0..m {
                if p0[r] != 0.0 {
                    axpy(&mut oc[r * d..(r + 1) * d], p0[r], &self.v[..d]);
                }
            }
        });
        // the [CLS] row: every valid key, LogN-scaled
        if sp.global && self.valid[0] {
            let mut sc = self.cls_scores();
            let mx = max_lanes(&sc);
            let sum = exp_sub_sum(&mut sc, mx);
            lse[0] = mx + sum.ln();
            for (j, x) in sc.iter_mut().enumerate() {
                *x /= sum;
                if sp.dropout() && *x != 0.0 {
                    *x *= sp.drop_factor(self.bh, 0, j);
                }
            }
            sgemm((1, d, t), &mut out[..d], d, false, (&sc, t, 1), (self.v, d, 1), 1.0);
        }
    }

    /// Gradients of this head from the output `o`, its gradient `go` (both `[T, d]`) and the
    /// forward pass's log-sum-exps.
    fn backward(&self, o: &[f32], go: &[f32], lse: &[f32]) -> HeadGrads {
        let sp = self.sp;
        let (t, d, w, nd, rr) = (sp.t, sp.d, sp.w, sp.nd(), sp.rows_r());
        let dvec: Vec<f32> = (0..t).map(|i| dot(&go[i * d..(i + 1) * d], &o[i * d..(i + 1) * d])).collect();
        let mut g = HeadGrads {
            dq: vec![0f32; t * d],
            dk: vec![0f32; t * d],
            dv: vec![0f32; t * d],
            dpk: self.pk.map(|_| vec![0f32; rr * d]),
            dpq: self.pq.map(|_| vec![0f32; rr * d]),
        };
        let mut daq = self.aq.as_ref().map(|_| vec![0f32; t * nd]);
        let mut dbk = self.bk.as_ref().map(|_| vec![0f32; t * nd]);
        let (mut s, mut s0, mut dp) = (Vec::new(), vec![0f32; QB], Vec::new());
        let (mut pt0, mut dz0) = (vec![0f32; QB], vec![0f32; QB]);
        let v0 = &self.v[..d];
        for blk in 0..t.div_ceil(QB) {
            let i0 = blk * QB;
            let m = QB.min(t - i0);
            let (j_lo, nk) = self.block_scores(i0, m, &mut s, &mut s0[..m]);
            dp.resize(m * nk, 0.0);
            // dP̃ = dO · V_windowᵀ
            sgemm((m, nk, d), &mut dp, nk, false, (&go[i0 * d..], d, 1), (&self.v[j_lo * d..], 1, d), 1.0);
            for r in 0..m {
                let i = i0 + r;
                let (srow, drow) = (&mut s[r * nk..(r + 1) * nk], &mut dp[r * nk..(r + 1) * nk]);
                (pt0[r], dz0[r]) = (0.0, 0.0);
                if self.skipped(i) || lse[i] == f32::NEG_INFINITY {
                    srow.fill(0.0);
                    drow.fill(0.0);
                    continue;
                }
                exp_sub_sum(srow, lse[i]); // P
                let di = dvec[i];
                for (c, (p, dz)) in srow.iter_mut().zip(drow.iter_mut()).enumerate() {
                    if *p == 0.0 {
                        *dz = 0.0;
                        continue;
                    }
                    let f = if sp.dropout() { sp.drop_factor(self.bh, i, j_lo + c) } else { 1.0 };
                    *dz = sp.scale * *p * (*dz * f - di);
                    *p *= f; // P̃, for dV
                }
                let p0 = fast_exp(s0[r] - lse[i]);
                if p0 != 0.0 {
                    let f = if sp.dropout() { sp.drop_factor(self.bh, i, 0) } else { 1.0 };
                    let dp0 = dot(&go[i * d..(i + 1) * d], v0);
                    dz0[r] = sp.scale * p0 * (dp0 * f - di);
                    pt0[r] = p0 * f;
                }
            }
            // dV_window += P̃ᵀ · dO;  dQ += dZ · K_window;  dK_window += dZᵀ · Q
            sgemm((nk, d, m), &mut g.dv[j_lo * d..], d, true, (&s, 1, nk), (&go[i0 * d..], d, 1), 1.0);
            sgemm((m, d, nk), &mut g.dq[i0 * d..], d, true, (&dp, nk, 1), (&self.k[j_lo * d..], d, 1), 1.0);
            sgemm((nk, d, m), &mut g.dk[j_lo * d..], d, true, (&dp, 1, nk), (&self.q[i0 * d..], d, 1), 1.0);
            // the band's relative terms, per offset
            if daq.is_some() || dbk.is_some() {
                for r in 0..m {
                    let i = i0 + r;
                    for (c, &dz) in dp[r * nk..(r + 1) * nk].iter().enumerate() {
                        if dz == 0.0 {
                            continue;
                        }
                        let j = j_lo + c;
                        let di = i + w - j; // in range: dz ≠ 0 only inside the band
                        if let Some(a) = &mut daq {
                            a[i * nd + di] += dz;
                        }
                        if let Some(bm) = &mut dbk {
                            bm[j * nd + di] += dz;
                        }
                    }
                }
            }
            // the global column (key 0)
            for r in 0..m {
                let i = i0 + r;
                let (qi, goi) = (&self.q[i * d..(i + 1) * d], &go[i * d..(i + 1) * d]);
                if pt0[r] != 0.0 {
                    axpy(&mut g.dv[..d], pt0[r], goi);
                }
                let dz = dz0[r];
                if dz == 0.0 {
                    continue;
                }
                let row = self.rel_row(i as i64);
                axpy(&mut g.dq[i * d..(i + 1) * d], dz, &self.k[..d]);
                axpy(&mut g.dk[..d], dz, qi);
                if let (Some(p), Some(dpk)) = (self.pk, &mut g.dpk) {
                    axpy(&mut g.dq[i * d..(i + 1) * d], dz, &p[row * d..(row + 1) * d]);
                    axpy(&mut dpk[row * d..(row + 1) * d], dz, qi);
                }
                if let (Some(p), Some(dpq)) = (self.pq, &mut g.dpq) {
                    axpy(&mut g.dk[..d], dz, &p[row * d..(row + 1) * d]);
                    axpy(&mut dpq[row * d..(row + 1) * d], dz, &self.k[..d]);
                }
            }
        }
        // the [CLS] row
        if sp.global && self.valid[0] && lse[0] != f32::NEG_INFINITY {
            let mut p = self.cls_scores();
            exp_sub_sum(&mut p, lse[0]);
            let (q0, go0) = (&self.q[..d], &go[..d]);
            let mut dz = vec![0f32; t];
            sgemm((1, t, d), &mut dz, t, false, (go0, d, 1), (self.v, 1, d), 1.0);
            let c0 = sp.scale * sp.logn;
            for (j, (p, dz)) in p.iter_mut().zip(dz.iter_mut()).enumerate() {
                if *p == 0.0 {
                    *dz = 0.0;
                    continue;
                }
                let f = if sp.dropout() { sp.drop_factor(self.bh, 0, j) } else { 1.0 };
                *dz = c0 * *p * (*dz * f - dvec[0]);
                *p *= f;
            }
            sgemm((t, d, 1), &mut g.dv, d, true, (&p, 1, 1), (go0, d, 1), 1.0); // p̃ ⊗ do₀
            let mut dq0 = vec![0f32; d];
            sgemm((1, d, t), &mut dq0, d, false, (&dz, t, 1), (self.k, d, 1), 1.0);
            sgemm((t, d, 1), &mut g.dk, d, true, (&dz, 1, 1), (q0, d, 1), 1.0); // dz ⊗ q₀
            for (j, &z) in dz.iter().enumerate() {
                if z == 0.0 || (self.pk.is_none() && self.pq.is_none()) {
                    continue;
                }
                let row = self.rel_row(-(j as i64));
                if let (Some(p), Some(dpk)) = (self.pk, &mut g.dpk) {
                    axpy(&mut dq0, z, &p[row * d..(row + 1) * d]);
                    axpy(&mut dpk[row * d..(row + 1) * d], z, q0);
                }
                if let (Some(p), Some(dpq)) = (self.pq, &mut g.dpq) {
                    axpy(&mut g.dk[j * d..(j + 1) * d], z, &p[row * d..(row + 1) * d]);
                    axpy(&mut dpq[row * d..(row + 1) * d], z, &self.k[j * d..(j + 1) * d]);
                }
            }
            axpy(&mut g.dq[..d], 1.0, &dq0);
        }
        // band relative terms → q, k and the table rows of the band offsets
        let to_table = |dband: &[f32], x: &[f32], tab_band: &[f32], dx: &mut [f32], dtab: &mut [f32]| {
            sgemm((t, d, nd), dx, d, true, (dband, nd, 1), (tab_band, d, 1), 1.0);
            let mut gb = vec![0f32; nd * d];
            sgemm((nd, d, t), &mut gb, d, false, (dband, 1, nd), (x, d, 1), 1.0);
            for (mi, row) in gb.chunks(d).enumerate() {
                let r = self.rel_row(mi as i64 - w as i64);
                axpy(&mut dtab[r * d..(r + 1) * d], 1.0, row);
            }
        };
        if let (Some(a), Some(tab), Some(dpk)) = (&daq, &self.pk_band, &mut g.dpk) {
            to_table(a, self.q, tab, &mut g.dq, dpk);
        }
        if let (Some(bm), Some(tab), Some(dpq)) = (&dbk, &self.pq_band, &mut g.dpq) {
            to_table(bm, self.k, tab, &mut g.dk, dpq);
        }
        g
    }
}

/// One head's gradients: `[T, d]` each, tables `[R, d]`.
struct HeadGrads {
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    dpk: Option<Vec<f32>>,
    dpq: Option<Vec<f32>>,
}

/// Output `[B·H·T·d]` and per-row log-sum-exps `[B·H·T]`.
fn forward(sp: &Spec, qkv: (&[f32], &[f32], &[f32]), pk: Option<&[f32]>, pq: Option<&[f32]>) -> (Vec<f32>, Vec<f32>) {
    let (t, d) = (sp.t, sp.d);
    let mut out = vec![0f32; sp.b * sp.h * t * d];
    let mut lse = vec![f32::NEG_INFINITY; sp.b * sp.h * t];
    for (bh, (oh, lh)) in out.chunks_mut(t * d).zip(lse.chunks_mut(t)).enumerate() {
        Head::new(sp, bh, qkv, pk, pq).forward(oh, lh);
    }
    (out, lse)
}

/// `[B, H, T, d]` output of arrow attention at inference (no dropout, no graph) for `q`, `k`, `v`
/// (`[B, H, T, d]`), zero on padding rows — see the module docs.
pub fn arrow_attention_cpu(q: &Tensor, k: &Tensor, v: &Tensor, mask: &ArrowMask, rel: Option<&RelativeTerms>, scale: f64) -> Result<Tensor> {
    let dims = q.dims4()?;
    mask.check(dims.0, dims.2)?;
    let sp = Spec::new(dims, mask, rel, scale, 0.0, 0);
    let (qh, kh, vh) = (host(q)?, host(k)?, host(v)?);
    let pk = rel.and_then(|r| r.pos_key.as_ref()).map(host).transpose()?;
    let pq = rel.and_then(|r| r.pos_query.as_ref()).map(host).transpose()?;
    let (out, _) = forward(&sp, (&qh, &kh, &vh), pk.as_deref(), pq.as_deref());
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// Arrow attention as one differentiable op (training, and gradient passes without dropout):
/// the same value as [`arrow_attention_cpu`], with attention dropout `dropout` drawn from `seed`,
/// and a backward pass of its own (module docs). `q`, `k`, `v`: `[B, H, T, d]` f32 on the CPU;
/// the relative tables `[H, R, d]` receive gradients too (they carry the query adapter under
/// DeBERTa-v3's shared attention key).
#[allow(clippy::too_many_arguments)]
pub fn arrow_attention_fused(q: &Tensor, k: &Tensor, v: &Tensor, mask: &ArrowMask, rel: Option<&RelativeTerms>, scale: f64, dropout: f32, seed: u64) -> Result<Tensor> {
    let dims = q.dims4()?;
    mask.check(dims.0, dims.2)?;
    let sp = Spec::new(dims, mask, rel, scale, dropout, seed);
    let qkv = Tensor::stack(&[q, k, v], 0)?;
    let tables: Vec<&Tensor> = rel.iter().flat_map(|r| r.pos_key.iter().chain(r.pos_query.iter())).collect();
    let tab = if tables.is_empty() { Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu)? } else { Tensor::stack(&tables, 0)? };
    Ok(qkv.apply_op2(&tab, ArrowAttentionOp { sp, lse: Mutex::new(Vec::new()) })?)
}

/// The custom op behind [`arrow_attention_fused`]: inputs `[q; k; v]` stacked `[3, B, H, T, d]`
/// and the relative tables stacked `[c2p + p2c, H, R, d]` (a placeholder without them).
struct ArrowAttentionOp {
    sp: Spec,
    /// Per-row log-sum-exps of the forward pass, for the backward pass.
    lse: Mutex<Vec<f32>>,
}

impl CustomOp2 for ArrowAttentionOp {
    fn name(&self) -> &'static str {
        "arrow-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let sp = &self.sp;
        let (b, h, t, d) = (sp.b, sp.h, sp.t, sp.d);
        let ntab = sp.c2p as usize + sp.p2c as usize;
        let tab_len = if ntab == 0 { 1 } else { ntab * h * sp.rows_r() * d };
        if l1.shape().dims() != [3, b, h, t, d] || l2.shape().elem_count() != tab_len {
            candle_core::bail!("arrow attention: qkv {:?}, tables {:?} for [3, {b}, {h}, {t}, {d}]", l1.shape(), l2.shape());
        }
        let (qkv, tab) = (cpu_f32(s1, l1, "arrow attention")?, cpu_f32(s2, l2, "arrow attention")?);
        let (qkv, pk, pq) = split_inputs(sp, qkv, tab);
        let (out, lse) = forward(sp, qkv, pk, pq);
        *self.lse.lock().map_err(|_| candle_core::Error::Msg("arrow attention: poisoned lock".into()))? = lse;
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }

    fn bwd(&self, qkv: &Tensor, tab: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let sp = &self.sp;
        let host = |x: &Tensor| -> candle_core::Result<Vec<f32>> { x.flatten_all()?.to_vec1::<f32>() };
        let (qkv_h, tab_h, o, go) = (host(qkv)?, host(tab)?, host(res)?, host(grad)?);
        let lse = self.lse.lock().map_err(|_| candle_core::Error::Msg("arrow attention: poisoned lock".into()))?;
        let (dqkv, dtab) = backward(sp, &qkv_h, &tab_h, &o, &go, &lse)?;
        let dqkv = Tensor::from_vec(dqkv, (3, sp.b, sp.h, sp.t, sp.d), qkv.device())?;
        Ok((Some(dqkv), dtab.map(|x| Tensor::from_vec(x, tab.shape(), tab.device())).transpose()?))
    }
}

/// The gradients at the stacked `[q; k; v]` and, with relative terms, at the stacked tables
/// (summed over the batch), from the forward pass's output `o`, its gradient `go` and per-row
/// log-sum-exps `lse`.
fn backward(sp: &Spec, qkv: &[f32], tab: &[f32], o: &[f32], go: &[f32], lse: &[f32]) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
    let (b, h, t, d, rr) = (sp.b, sp.h, sp.t, sp.d, sp.rows_r());
    let n = b * h * t * d;
    if lse.len() != b * h * t || qkv.len() != 3 * n || o.len() != n || go.len() != n {
        candle_core::bail!("arrow attention: backward without its forward pass");
    }
    let (parts, pk, pq) = split_inputs(sp, qkv, tab);
    let grads: Vec<HeadGrads> = (0..b * h)
        .into_par_iter()
        .map(|bh| {
            let hd = Head::new(sp, bh, parts, pk, pq);
            let r = bh * t * d..(bh + 1) * t * d;
            hd.backward(&o[r.clone()], &go[r], &lse[bh * t..(bh + 1) * t])
        })
        .collect();
    let mut dqkv = crate::nn::uninit_f32(3 * n);
    // every element is written: each (part, bh) block once
    for (bh, g) in grads.iter().enumerate() {
        for (part, x) in [&g.dq, &g.dk, &g.dv].into_iter().enumerate() {
            dqkv[part * n + bh * t * d..][..t * d].copy_from_slice(x);
        }
    }
    if !sp.c2p && !sp.p2c {
        return Ok((dqkv, None));
    }
    // tables: [c2p + p2c, H, R, d], summed over the batch
    let per = h * rr * d;
    let mut dtab = vec![0f32; tab.len()];
    for (bh, g) in grads.iter().enumerate() {
        let hi = bh % h;
        let mut slot = 0;
        for x in [&g.dpk, &g.dpq].into_iter().flatten() {
            axpy(&mut dtab[slot * per + hi * rr * d..][..rr * d], 1.0, x);
            slot += 1;
        }
    }
    Ok((dqkv, Some(dtab)))
}

/// `[q; k; v]` and the stacked tables, as the heads read them.
#[allow(clippy::type_complexity)]
fn split_inputs<'a>(sp: &Spec, qkv: &'a [f32], tab: &'a [f32]) -> ((&'a [f32], &'a [f32], &'a [f32]), Option<&'a [f32]>, Option<&'a [f32]>) {
    let n = qkv.len() / 3;
    let per = sp.h * sp.rows_r() * sp.d;
    let pk = sp.c2p.then(|| &tab[..per]);
    let pq = sp.p2c.then(|| if sp.c2p { &tab[per..2 * per] } else { &tab[..per] });
    ((&qkv[..n], &qkv[n..2 * n], &qkv[2 * n..]), pk, pq)
}

/// [`arrow_attention_fused`]'s forward pass without a graph, keeping what
/// [`ArrowSaved::backward`] needs: for hand-written backward passes of a whole self-attention
/// (`crate::encoder::block::SelfAttentionSaved`).
pub(crate) struct ArrowSaved {
    sp: Spec,
    qkv: Vec<f32>,
    tab: Vec<f32>,
    out: Vec<f32>,
    lse: Vec<f32>,
}

/// Gradients of [`ArrowSaved::backward`]: `dq`, `dk`, `dv` `[B, H, T, d]`, the tables' `[H, R, d]`.
pub(crate) struct ArrowGrads {
    pub dq: Tensor,
    pub dk: Tensor,
    pub dv: Tensor,
    pub dpos_key: Option<Tensor>,
    pub dpos_query: Option<Tensor>,
}

/// The value of [`arrow_attention_fused`] (same dropout draws for the same `seed`), and what its
/// backward pass needs.
#[allow(clippy::too_many_arguments)]
pub(crate) fn arrow_attention_saved(q: &Tensor, k: &Tensor, v: &Tensor, mask: &ArrowMask, rel: Option<&RelativeTerms>, scale: f64, dropout: f32, seed: u64) -> Result<(Tensor, ArrowSaved)> {
    let dims = q.dims4()?;
    mask.check(dims.0, dims.2)?;
    if k.dims4()? != dims || v.dims4()? != dims {
        return Err(crate::Error::Input(format!("arrow attention: q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims())));
    }
    let sp = Spec::new(dims, mask, rel, scale, dropout, seed);
    let mut qkv = host(q)?;
    qkv.extend(host(k)?);
    qkv.extend(host(v)?);
    let mut tab = Vec::new();
    for t in rel.iter().flat_map(|r| r.pos_key.iter().chain(r.pos_query.iter())) {
        let (th, tr, td) = t.dims3()?;
        if (th, tr, td) != (sp.h, sp.rows_r(), sp.d) {
            return Err(crate::Error::Input(format!("arrow attention: relative table {:?} for [{}, {}, {}]", t.dims(), sp.h, sp.rows_r(), sp.d)));
        }
        tab.extend(host(t)?);
    }
    let (parts, pk, pq) = split_inputs(&sp, &qkv, &tab);
    let (out, lse) = forward(&sp, parts, pk, pq);
    let y = Tensor::from_slice(&out, dims, &Device::Cpu)?;
    Ok((y, ArrowSaved { sp, qkv, tab, out, lse }))
}

impl ArrowSaved {
    /// Heads per sequence.
    pub(crate) fn heads(&self) -> usize {
        self.sp.h
    }

    /// The gradients from the output gradient `grad` `[B, H, T, d]`.
    pub(crate) fn backward(&self, grad: &Tensor) -> Result<ArrowGrads> {
        let sp = &self.sp;
        let dims = (sp.b, sp.h, sp.t, sp.d);
        let (dqkv, dtab) = backward(sp, &self.qkv, &self.tab, &self.out, &host(grad)?, &self.lse)?;
        let n = sp.b * sp.h * sp.t * sp.d;
        let part = |i: usize| Tensor::from_slice(&dqkv[i * n..(i + 1) * n], dims, &Device::Cpu);
        let (mut dpos_key, mut dpos_query) = (None, None);
        if let Some(dtab) = dtab {
            let per = sp.h * sp.rows_r() * sp.d;
            let table = |i: usize| Tensor::from_slice(&dtab[i * per..(i + 1) * per], (sp.h, sp.rows_r(), sp.d), &Device::Cpu);
            if sp.c2p {
                dpos_key = Some(table(0)?);
            }
            if sp.p2c {
                dpos_query = Some(table(sp.c2p as usize)?);
            }
        }
        Ok(ArrowGrads { dq: part(0)?, dk: part(1)?, dv: part(2)?, dpos_key, dpos_query })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::arrow_attention::{arrow_attention_composite, ArrowConfig};
    use crate::encoder::relative_position::RelativeIndex;
    use crate::nn::ForwardCtx;
    use candle_core::DType;
    use rand::SeedableRng;

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

    /// Loss `Σ out · g` and its gradients at q, k, v and the tables, by the composite ops or
    /// the fused op (dropout `p` with seed 7).
    fn grads(c: &Case, fused: bool, p: f32, seed: u64) -> (f32, Vec<Vec<f32>>) {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut r = |shape: &[usize]| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rand::Rng::random::<f32>(&mut rng) * 2.0 - 1.0).collect();
            candle_core::Var::from_tensor(&Tensor::from_vec(v, shape, &dev).unwrap()).unwrap()
        };
        let dims = [c.b, c.h, c.t, c.d];
        let (q, k, v) = (r(&dims), r(&dims), r(&dims));
        let index = RelativeIndex::new(32, 64);
        let (pk, pq) = (r(&[c.h, index.table_rows(), c.d]), r(&[c.h, index.table_rows(), c.d]));
        let g = r(&dims).as_tensor().detach();
        let valid: Vec<bool> = c.lens.iter().flat_map(|&l| (0..c.t).map(move |i| i < l)).collect();
        let mask = ArrowMask::new(&valid, c.b, c.t, &c.cfg, DType::F32, &dev).unwrap();
        let rel = c.rel.map(|(a, b)| RelativeTerms { index, pos_key: a.then(|| pk.as_tensor().clone()), pos_query: b.then(|| pq.as_tensor().clone()) });
        let scale = 1.0 / ((c.d * 3) as f64).sqrt();
        let out = if fused {
            arrow_attention_fused(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, rel.as_ref(), scale, p, 7).unwrap()
        } else {
            arrow_attention_composite(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, rel.as_ref(), scale, 0.0, &mut ForwardCtx::grad_only()).unwrap()
        };
        let loss = (out * g).unwrap().sum_all().unwrap();
        let store = loss.backward().unwrap();
        let grad = |x: &candle_core::Var| match store.get(x.as_tensor()) {
            Some(t) => t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            None => vec![0.0; x.as_tensor().elem_count()],
        };
        (loss.to_scalar::<f32>().unwrap(), vec![grad(&q), grad(&k), grad(&v), grad(&pk), grad(&pq)])
    }

    fn check_grads(c: Case) {
        let (lw, want) = grads(&c, false, 0.0, 3);
        let (lg, got) = grads(&c, true, 0.0, 3);
        assert!((lw - lg).abs() < 1e-3 * (1.0 + lw.abs()), "loss {lg} vs {lw}");
        for (name, (w, g)) in ["q", "k", "v", "pos_key", "pos_query"].iter().zip(want.iter().zip(&got)) {
            let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            let diff = w.iter().zip(g).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-4 * scale.max(1.0), "d{name}: max |fused − composite| = {diff} (largest {scale}; t {}, w {}, rel {:?})", c.t, c.cfg.window, c.rel);
        }
    }

    #[test]
    fn gradients_match_composite() {
        let cfg = ArrowConfig { window: 16, ..ArrowConfig::default() };
        check_grads(Case { b: 2, h: 3, t: 150, d: 8, cfg, rel: Some((true, true)), lens: vec![150, 101] });
        let cfg = ArrowConfig { window: 8, ..ArrowConfig::default() };
        check_grads(Case { b: 1, h: 2, t: 50, d: 4, cfg: cfg.clone(), rel: None, lens: vec![50] });
        check_grads(Case { b: 1, h: 2, t: 70, d: 4, cfg: cfg.clone(), rel: Some((true, false)), lens: vec![61] });
        check_grads(Case { b: 2, h: 2, t: 70, d: 4, cfg, rel: Some((false, true)), lens: vec![70, 66] });
        let swa = ArrowConfig { window: 8, global_cls: false, ..ArrowConfig::default() };
        check_grads(Case { b: 2, h: 2, t: 45, d: 4, cfg: swa, rel: Some((true, true)), lens: vec![45, 30] });
        check_grads(Case { b: 1, h: 2, t: 40, d: 4, cfg: ArrowConfig::full(), rel: Some((true, true)), lens: vec![40] });
        check_grads(Case { b: 1, h: 1, t: 1, d: 4, cfg: ArrowConfig::default(), rel: Some((true, true)), lens: vec![1] });
        check_grads(Case { b: 2, h: 1, t: 20, d: 4, cfg: ArrowConfig::default(), rel: Some((true, true)), lens: vec![20, 7] });
    }

    /// With dropout the masks are the op's own, so the reference is the loss itself: the
    /// gradient along a random direction equals the central difference of the loss (f64 sums
    /// of f32 runs, step 1e-2), and the same seed gives the same output twice.
    #[test]
    fn dropout_gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let cfg = ArrowConfig { window: 8, ..ArrowConfig::default() };
        let (b, h, t, d) = (2, 2, 40, 4);
        let valid: Vec<bool> = (0..b * t).map(|x| x % t < [40, 33][x / t]).collect();
        let mask = ArrowMask::new(&valid, b, t, &cfg, DType::F32, &dev).unwrap();
        let index = RelativeIndex::new(32, 64);
        let rn = |shape: &[usize], s: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
            let n: usize = shape.iter().product();
            Tensor::from_vec((0..n).map(|_| rand::Rng::random::<f32>(&mut rng) * 2.0 - 1.0).collect::<Vec<f32>>(), shape, &dev).unwrap()
        };
        let xs: Vec<Tensor> = vec![rn(&[b, h, t, d], 1), rn(&[b, h, t, d], 2), rn(&[b, h, t, d], 3), rn(&[h, 64, d], 4), rn(&[h, 64, d], 5)];
        let dirs: Vec<Tensor> = (0..5).map(|i| rn(xs[i].dims(), 10 + i as u64)).collect();
        let g = rn(&[b, h, t, d], 20);
        let scale = 1.0 / ((d * 3) as f64).sqrt();
        let loss = |xs: &[Tensor]| -> Tensor {
            let rel = RelativeTerms { index, pos_key: Some(xs[3].clone()), pos_query: Some(xs[4].clone()) };
            let out = arrow_attention_fused(&xs[0], &xs[1], &xs[2], &mask, Some(&rel), scale, 0.3, 99).unwrap();
            (out * &g).unwrap().sum_all().unwrap()
        };
        let vars: Vec<candle_core::Var> = xs.iter().map(|x| candle_core::Var::from_tensor(x).unwrap()).collect();
        let l = loss(&vars.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>());
        let store = l.backward().unwrap();
        let along: f64 = vars
            .iter()
            .zip(&dirs)
            .map(|(v, u)| (store.get(v.as_tensor()).unwrap() * u).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64)
            .sum();
        let eps = 1e-2;
        let shifted = |sign: f64| -> f64 {
            let x: Vec<Tensor> = xs.iter().zip(&dirs).map(|(x, u)| (x + (u * (sign * eps)).unwrap()).unwrap()).collect();
            loss(&x).to_scalar::<f32>().unwrap() as f64
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
        assert!((numeric - along).abs() < 2e-3 * (1.0 + along.abs()), "directional derivative {along} vs central difference {numeric}");
        // deterministic in the seed, and the seed matters
        assert_eq!(loss(&xs).to_scalar::<f32>().unwrap(), loss(&xs).to_scalar::<f32>().unwrap());
        let rel = RelativeTerms { index, pos_key: Some(xs[3].clone()), pos_query: Some(xs[4].clone()) };
        let other = arrow_attention_fused(&xs[0], &xs[1], &xs[2], &mask, Some(&rel), scale, 0.3, 100).unwrap();
        let diff = (other * &g).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() - loss(&xs).to_scalar::<f32>().unwrap();
        assert!(diff.abs() > 1e-4, "another seed must draw other masks");
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
