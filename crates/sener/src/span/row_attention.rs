//! Fused single-head row attention of the BiSPA block, for f32 on the CPU: the `[rows, K, K]`
//! scores are never stored. Forward and backward each recompute one row's K×K scores in a
//! per-thread buffer (FlashAttention-style recomputation), so memory is O(rows·K·c) instead of
//! O(rows·K²) and nothing of size K² outlives a row.
//!
//! For each row (a band row of the horizontal or the vertical view), with `valid` the key mask:
//! ```text
//! s_ij = clamp(scale · q_i·k_j, ±1e4) − 1e4·(1 − valid_j)
//! p_ij = softmax_j(s_ij);   a_ij = p_ij · valid_j · m_ij / keep     (m: dropout mask)
//! o_i  = Σ_j a_ij v_j
//! ```
//! exactly the composite computation in `bispa.rs` (which stays the path for other dtypes and
//! devices). The dropout mask is a pure function of (seed, row, i, j) ([`dropout_keep`]), so the
//! backward pass regenerates the mask the forward used.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::{cpu_f32, sgemm};

/// Keep decision of dropout cell (row, i, j) for `seed`: splitmix64 of the cell index → [0, 1).
pub fn dropout_keep(seed: u64, row: usize, i: usize, j: usize, k: usize, keep: f32) -> bool {
    let mut z = seed ^ (((row * k + i) * k + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) < keep
}

/// `out[j] = 1.0` where [`dropout_keep`]`(seed, row, i, j, k, keep)`, else `0.0`, for one row of
/// the K×K weights: the same decisions, computed for a whole row at once so that the 64-bit hash
/// vectorises (AVX-512 picked at run time).
pub fn dropout_row(seed: u64, row: usize, i: usize, k: usize, keep: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU has AVX-512F and DQ (checked just above).
        return unsafe { dropout_row_avx512(seed, row, i, k, keep, out) };
    }
    dropout_row_generic(seed, row, i, k, keep, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
unsafe fn dropout_row_avx512(seed: u64, row: usize, i: usize, k: usize, keep: f32, out: &mut [f32]) {
    dropout_row_generic(seed, row, i, k, keep, out)
}

#[inline(always)]
fn dropout_row_generic(seed: u64, row: usize, i: usize, k: usize, keep: f32, out: &mut [f32]) {
    let base = ((row * k + i) * k) as u64;
    let limit = keep * (1u64 << 24) as f32;
    for (j, o) in out.iter_mut().enumerate() {
        let mut z = seed ^ (base + j as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        *o = if ((z >> 40) as f32) < limit { 1.0 } else { 0.0 };
    }
}

/// The op: inputs q, k, v `[R, K, c]`; `valid` `[R·K]` (1 = valid key).
pub struct RowAttention {
    pub valid: std::sync::Arc<Vec<f32>>,
    pub scale: f32,
    /// Dropout probability on the attention weights (0: off).
    pub dropout: f32,
    pub seed: u64,
}

impl RowAttention {
    /// One row's weights: `raw` = scaled scores (kept for the clamp gradient), `p` = softmax,
    /// `a` = p · valid · dropout / keep, and with dropout `dm` the 0/1 keep mask (for the
    /// backward pass). All K×K, row-major; the score product is one gemm.
    #[allow(clippy::too_many_arguments)]
    fn weights(&self, row: usize, q: &[f32], k: &[f32], kk: usize, c: usize, raw: &mut [f32], a: &mut [f32], p: &mut [f32], dm: &mut [f32]) {
        // raw = scale · Q Kᵀ
        sgemm((kk, kk, c), raw, kk, false, (q, c, 1), (k, 1, c), self.scale);
        self.softmax_rows(row, kk, raw, a, p, dm);
    }

    /// The rest of [`Self::weights`] once `raw` holds the scaled scores.
    fn softmax_rows(&self, row: usize, kk: usize, raw: &[f32], a: &mut [f32], p: &mut [f32], dm: &mut [f32]) {
        let valid = &self.valid[row * kk..(row + 1) * kk];
        let keep = 1.0 - self.dropout;
        for i in 0..kk {
            let (ri, pi, ai) = (&raw[i * kk..][..kk], &mut p[i * kk..][..kk], &mut a[i * kk..][..kk]);
            for j in 0..kk {
                pi[j] = ri[j].clamp(-1e4, 1e4) - 1e4 * (1.0 - valid[j]);
            }
            let mx = crate::nn::max_lanes(pi);
            let z = crate::nn::exp_sub_sum(pi, mx);
            let inv = 1.0 / z;
            if self.dropout > 0.0 {
                let mi = &mut dm[i * kk..][..kk];
                dropout_row(self.seed, row, i, kk, keep, mi);
                for j in 0..kk {
                    let pij = pi[j] * inv;
                    pi[j] = pij;
                    ai[j] = (pij * valid[j] / keep) * mi[j];
                }
            } else {
                for j in 0..kk {
                    let pij = pi[j] * inv;
                    pi[j] = pij;
                    ai[j] = pij * valid[j];
                }
            }
        }
    }

    /// Backward of one row: `dq`, `dk`, `dv` (`[K, c]`, overwritten) from the output gradient
    /// `g`; `v` has row stride `v_rs`. Recomputes the row's weights into `raw`, `a`, `p`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn row_backward(
        &self,
        row: usize,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        v_rs: usize,
        g: &[f32],
        kk: usize,
        c: usize,
        raw: &mut [f32],
        a: &mut [f32],
        p: &mut [f32],
        dm: &mut [f32],
        da: &mut [f32],
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
    ) {
        let keep = 1.0 - self.dropout;
        self.weights(row, q, k, kk, c, raw, a, p, dm);
        let valid = &self.valid[row * kk..(row + 1) * kk];
        // dV = Aᵀ G ; dA = G Vᵀ
        sgemm((kk, c, kk), dv, c, false, (a, 1, kk), (g, c, 1), 1.0);
        sgemm((kk, kk, c), da, kk, false, (g, c, 1), (v, 1, v_rs), 1.0);
        // dP = dA ⊙ valid ⊙ mask / keep ; dS = p ⊙ (dP − Σ p dP) · scale, zero where clamped
        for i in 0..kk {
            let (pi, dai, ri) = (&p[i * kk..][..kk], &mut da[i * kk..][..kk], &raw[i * kk..][..kk]);
            let mut dot = 0f32;
            if self.dropout > 0.0 {
                let mi = &dm[i * kk..][..kk];
                for j in 0..kk {
                    let dp = (dai[j] * valid[j] / keep) * mi[j];
                    dai[j] = dp;
                    dot += dp * pi[j];
                }
            } else {
                for j in 0..kk {
                    let dp = dai[j] * valid[j];
                    dai[j] = dp;
                    dot += dp * pi[j];
                }
            }
            for j in 0..kk {
                dai[j] = if ri[j].abs() >= 1e4 { 0.0 } else { pi[j] * (dai[j] - dot) * self.scale };
            }
        }
        // dQ = dS K ; dK = dSᵀ Q
        sgemm((kk, c, kk), dq, c, false, (da, kk, 1), (k, c, 1), 1.0);
        sgemm((kk, c, kk), dk, c, false, (da, 1, kk), (q, c, 1), 1.0);
    }

    /// dq, dk, dv for `[R, K, c]` inputs and output gradient `g`.
    pub fn backward(&self, q: &[f32], k: &[f32], v: &[f32], g: &[f32], r: usize, kk: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = kk * c;
        let mut dq = vec![0f32; r * n];
        let mut dk = vec![0f32; r * n];
        let mut dv = vec![0f32; r * n];
        dq.par_chunks_mut(n)
            .zip(dk.par_chunks_mut(n))
            .zip(dv.par_chunks_mut(n))
            .enumerate()
            .for_each_init(
                || (vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk]),
                |(raw, a, p, dm, da), (row, ((dq, dk), dv))| {
                    let (q, k, v, g) = (&q[row * n..][..n], &k[row * n..][..n], &v[row * n..][..n], &g[row * n..][..n]);
                    self.row_backward(row, q, k, v, c, g, kk, c, raw, a, p, dm, da, dq, dk, dv);
                },
            );
        (dq, dk, dv)
    }
}

impl CustomOp3 for RowAttention {
    fn name(&self) -> &'static str {
        "bispa-row-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r, kk, c) = l1.shape().dims3()?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() || self.valid.len() != r * kk {
            candle_core::bail!("row attention: q {:?}, k {:?}, v {:?}, mask {}", l1.shape(), l2.shape(), l3.shape(), self.valid.len());
        }
        let (q, k, v) = (cpu_f32(s1, l1, "row attention")?, cpu_f32(s2, l2, "row attention")?, cpu_f32(s3, l3, "row attention")?);
        let n = kk * c;
        let mut out = crate::nn::uninit_f32(r * n); // each row: one gemm that stores (no accumulation)
        out.par_chunks_mut(n).enumerate().for_each_init(
            || (vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; if self.dropout > 0.0 { kk * kk } else { 0 }]),
            |(raw, a, p, dm), (row, o)| {
                let (q, k, v) = (&q[row * n..][..n], &k[row * n..][..n], &v[row * n..][..n]);
                self.weights(row, q, k, kk, c, raw, a, p, dm);
                sgemm((kk, c, kk), o, c, false, (a, kk, 1), (v, c, 1), 1.0);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, kk, c) = q.dims3()?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (dq, dk, dv) = self.backward(&host(q)?, &host(k)?, &host(v)?, &host(grad)?, r, kk, c);
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (r, kk, c), dev)?),
            Some(Tensor::from_vec(dk, (r, kk, c), dev)?),
            Some(Tensor::from_vec(dv, (r, kk, c), dev)?),
        ))
    }
}

/// The whole BiSPA attention of one direction as one op: projection, clamp, RoPE and the row
/// attention. Inputs: `x` `[R, K, c]`, the `h_qkv`/`v_qkv` weight `[3c, c]` and bias `[3c]`:
/// ```text
/// P = clamp(x Wᵀ + b, ±1e4);  q = rope(P[:, :c]);  k = rope(P[:, c:2c]);  v = P[:, 2c:]
/// z = RowAttention(q, k, v)
/// ```
/// Only `x` and the output are stored; forward and backward recompute P, q, k, v and the scores
/// of one row at a time. The composite path kept ~20 band-sized tensors per direction alive in a
/// gradient pass (projection, clamp, RoPE halves, rotations, their gradients).
pub struct ProjectedRowAttention {
    pub attn: RowAttention,
    /// Inference only (no dropout, no gradient): the two K×K products of each row (`Q Kᵀ` and
    /// `A V`) in bf16 with this kernel, f32 accumulation; projection, RoPE and soft-max stay f32.
    pub bf16: Option<crate::gemm_bf16::Bf16Kernel>,
    /// RoPE tables `[K, c]` (pairs share one angle: sin[j][2t] = sin[j][2t+1]).
    pub sin: std::sync::Arc<Vec<f32>>,
    pub cos: std::sync::Arc<Vec<f32>>,
}

/// Rows per partial weight gradient: partials are summed in block order, so the weight gradient
/// is the same whatever the thread scheduling (exact resume needs this).
const GRAD_ROWS: usize = 16;

/// Per-thread buffers of one row.
struct RowBufs {
    p: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    raw: Vec<f32>,
    a: Vec<f32>,
    pr: Vec<f32>,
    dm: Vec<f32>,
    da: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

impl RowBufs {
    fn new(kk: usize, c: usize) -> Self {
        let v = |n: usize| vec![0f32; n];
        Self { p: v(kk * 3 * c), q: v(kk * c), k: v(kk * c), raw: v(kk * kk), a: v(kk * kk), pr: v(kk * kk), dm: v(kk * kk), da: v(kk * kk), dq: v(kk * c), dk: v(kk * c), dv: v(kk * c) }
    }
}

impl ProjectedRowAttention {
    /// `out[2t] = x[2t]·cos − x[2t+1]·sin`, `out[2t+1] = x[2t+1]·cos + x[2t]·sin` (interleaved pairs).
    fn rope(&self, src: &[f32], stride: usize, dst: &mut [f32], kk: usize, c: usize) {
        for j in 0..kk {
            let (s, co) = (&self.sin[j * c..][..c], &self.cos[j * c..][..c]);
            let x = &src[j * stride..][..c];
            let o = &mut dst[j * c..][..c];
            for t in (0..c).step_by(2) {
                o[t] = x[t] * co[t] - x[t + 1] * s[t];
                o[t + 1] = x[t + 1] * co[t + 1] + x[t] * s[t + 1];
            }
        }
    }

    /// Transpose of [`Self::rope`]: gradient `d` `[K, c]` → into `dst` (row stride `stride`).
    fn rope_t(&self, d: &[f32], dst: &mut [f32], stride: usize, kk: usize, c: usize) {
        for j in 0..kk {
            let (s, co) = (&self.sin[j * c..][..c], &self.cos[j * c..][..c]);
            let g = &d[j * c..][..c];
            let o = &mut dst[j * stride..][..c];
            for t in (0..c).step_by(2) {
                o[t] = g[t] * co[t] + g[t + 1] * s[t + 1];
                o[t + 1] = g[t + 1] * co[t + 1] - g[t] * s[t];
            }
        }
    }

    /// P, q, k of one row (v is `P[:, 2c..]`, row stride 3c).
    fn project(&self, x: &[f32], w: &[f32], bias: &[f32], kk: usize, c: usize, buf: &mut RowBufs) {
        let c3 = 3 * c;
        sgemm((kk, c3, c), &mut buf.p, c3, false, (x, c, 1), (w, 1, c), 1.0);
        for row in buf.p.chunks_mut(c3) {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
        // The backward pass recomputes P and passes no gradient where it sits at ±1e4.
        for v in buf.p.iter_mut() {
            *v = v.clamp(-1e4, 1e4);
        }
        let p = std::mem::take(&mut buf.p);
        self.rope(&p, c3, &mut buf.q, kk, c);
        self.rope(&p[c..], c3, &mut buf.k, kk, c);
        buf.p = p;
    }
}

impl CustomOp3 for ProjectedRowAttention {
    fn name(&self) -> &'static str {
        "bispa-projected-row-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (r, kk, c) = l1.shape().dims3()?;
        if l2.shape().dims() != [3 * c, c] || l3.shape().dims() != [3 * c] || self.attn.valid.len() != r * kk || self.sin.len() != kk * c {
            candle_core::bail!("projected row attention: x {:?}, w {:?}, b {:?}, mask {}", l1.shape(), l2.shape(), l3.shape(), self.attn.valid.len());
        }
        let (x, w, bias) = (cpu_f32(s1, l1, "row attention")?, cpu_f32(s2, l2, "row attention")?, cpu_f32(s3, l3, "row attention")?);
        let n = kk * c;
        let mut out = crate::nn::uninit_f32(r * n); // each row: one product that stores (no accumulation)
        match self.bf16.filter(|_| self.attn.dropout == 0.0) {
            Some(kernel) => {
                use crate::gemm_bf16::{amx_tiles, matmul_t_serial, SerialScratch};
                out.par_chunks_mut(n).enumerate().for_each_init(
                    || (RowBufs::new(kk, c), amx_tiles(), SerialScratch::default()),
                    |(buf, tiles, scratch), (row, o)| {
                        self.project(&x[row * n..][..n], w, bias, kk, c, buf);
                        matmul_t_serial(kernel, tiles.as_ref(), (&buf.q, c), (&buf.k, c, 1), (kk, kk, c), &mut buf.raw, kk, scratch);
                        buf.raw.iter_mut().for_each(|v| *v *= self.attn.scale);
                        self.attn.softmax_rows(row, kk, &buf.raw, &mut buf.a, &mut buf.pr, &mut buf.dm);
                        // o = A V, with V = P[:, 2c:] read as the transposed operand
                        matmul_t_serial(kernel, tiles.as_ref(), (&buf.a, kk), (&buf.p[2 * c..], 1, 3 * c), (kk, c, kk), o, c, scratch);
                    },
                );
            }
            None => out.par_chunks_mut(n).enumerate().for_each_init(
                || RowBufs::new(kk, c),
                |buf, (row, o)| {
                    self.project(&x[row * n..][..n], w, bias, kk, c, buf);
                    self.attn.weights(row, &buf.q, &buf.k, kk, c, &mut buf.raw, &mut buf.a, &mut buf.pr, &mut buf.dm);
                    sgemm((kk, c, kk), o, c, false, (&buf.a, kk, 1), (&buf.p[2 * c..], 3 * c, 1), 1.0);
                },
            ),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, kk, c) = x.dims3()?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (xv, wv, bv, gv) = (host(x)?, host(w)?, host(bias)?, host(grad)?);
        let (n, c3) = (kk * c, 3 * c);
        let mut dx = vec![0f32; r * n];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(GRAD_ROWS * n)
            .enumerate()
            .map(|(blk, dxb)| {
                let mut buf = RowBufs::new(kk, c);
                let mut dp = vec![0f32; kk * c3];
                let (mut dw, mut db) = (vec![0f32; c3 * c], vec![0f32; c3]);
                for (local, dxr) in dxb.chunks_mut(n).enumerate() {
                    let row = blk * GRAD_ROWS + local;
                    let xr = &xv[row * n..][..n];
                    self.project(xr, &wv, &bv, kk, c, &mut buf);
                    let v = &buf.p[2 * c..];
                    self.attn.row_backward(row, &buf.q, &buf.k, v, c3, &gv[row * n..][..n], kk, c, &mut buf.raw, &mut buf.a, &mut buf.pr, &mut buf.dm, &mut buf.da, &mut buf.dq, &mut buf.dk, &mut buf.dv);
                    // dP = [ropeᵀ(dq), ropeᵀ(dk), dv], zero where the clamp saturated.
                    self.rope_t(&buf.dq, &mut dp, c3, kk, c);
                    self.rope_t(&buf.dk, &mut dp[c..], c3, kk, c);
                    for j in 0..kk {
                        dp[j * c3 + 2 * c..][..c].copy_from_slice(&buf.dv[j * c..][..c]);
                    }
                    for (d, p) in dp.iter_mut().zip(&buf.p) {
                        if p.abs() >= 1e4 {
                            *d = 0.0;
                        }
                    }
                    // dx = dP W ; dW += dPᵀ x ; db += Σ_j dP_j
                    sgemm((kk, c, c3), dxr, c, false, (&dp, c3, 1), (&wv, c, 1), 1.0);
                    sgemm((c3, c, kk), &mut dw, c, true, (&dp, 1, c3), (xr, c, 1), 1.0);
                    for drow in dp.chunks(c3) {
                        for (a, b) in db.iter_mut().zip(drow) {
                            *a += b;
                        }
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; c3 * c], vec![0f32; c3]);
        for (pw, pb) in partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (r, kk, c), dev)?),
            Some(Tensor::from_vec(dw, (c3, c), dev)?),
            Some(Tensor::from_vec(db, c3, dev)?),
        ))
    }
}
