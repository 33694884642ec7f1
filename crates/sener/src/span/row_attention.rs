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

use crate::gemm_bf16::{amx_tiles, matmul_t_serial, Bf16Kernel, SerialScratch, TileGuard};
use crate::nn::{cpu_f32, sgemm};
use crate::Result;

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

/// One thread's matrix products of the row attention: f32 (`sgemm`), or bf16 with f32
/// accumulation (`--dtype bf16`), holding the thread's AMX tiles and packing buffers.
pub(crate) struct Products {
    kernel: Option<Bf16Kernel>,
    tiles: Option<TileGuard>,
    scratch: SerialScratch,
}

impl Products {
    pub(crate) fn new(kernel: Option<Bf16Kernel>) -> Self {
        let tiles = if kernel == Some(Bf16Kernel::Amx) { amx_tiles() } else { None };
        // without its tiles (not expected where the kernel was detected) AMX falls back to f32
        let kernel = kernel.filter(|k| *k != Bf16Kernel::Amx || tiles.is_some());
        Self { kernel, tiles, scratch: SerialScratch::default() }
    }

    /// `out = alpha · A B` (`m × n`, row stride `ldo`, overwritten) for `A` `m × k` and `B`
    /// `k × n`, each given as (slice, row stride, column stride), `A`'s rows contiguous in bf16.
    #[allow(clippy::type_complexity)]
    fn mul(&mut self, (m, n, k): (usize, usize, usize), out: &mut [f32], ldo: usize, a: (&[f32], usize, usize), b: (&[f32], usize, usize), alpha: f32) {
        match self.kernel {
            None => sgemm((m, n, k), out, ldo, false, a, b, alpha),
            Some(kernel) => {
                // matmul_t_serial multiplies by the transposed second operand: Bᵀ is n × k
                matmul_t_serial(kernel, self.tiles.as_ref(), a, (b.0, b.2, b.1), (m, n, k), out, ldo, &mut self.scratch);
                if alpha != 1.0 {
                    for row in out.chunks_mut(ldo).take(m) {
                        row[..n].iter_mut().for_each(|v| *v *= alpha);
                    }
                }
            }
        }
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
    fn weights(&self, mm: &mut Products, row: usize, q: &[f32], k: &[f32], kk: usize, c: usize, raw: &mut [f32], a: &mut [f32], p: &mut [f32], dm: &mut [f32]) {
        // raw = scale · Q Kᵀ
        mm.mul((kk, kk, c), raw, kk, (q, c, 1), (k, 1, c), self.scale);
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
        mm: &mut Products,
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
        self.weights(mm, row, q, k, kk, c, raw, a, p, dm);
        self.row_backward_weights((q, k, v, v_rs), g, kk, c, Some(raw), a, p, da, (dq, dk, dv));
    }

    /// [`Self::row_backward`] once the row's weights are known: `a` (the dropped weights that
    /// multiply V) and `p` (the soft-max); `raw` the scaled scores, for the clamp (`None`: no
    /// score of the row reached ±1e4). With `a = p ⊙ valid ⊙ m / keep`,
    /// `dS = scale · p ⊙ (dP − Σ p dP)` and `dP = dA ⊙ valid ⊙ m / keep` give
    /// `dS = scale · (a ⊙ dA − p · Σ a ⊙ dA)`: neither the mask nor the valid keys are needed.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    pub(crate) fn row_backward_weights(
        &self,
        (q, k, v, v_rs): (&[f32], &[f32], &[f32], usize),
        g: &[f32],
        kk: usize,
        c: usize,
        raw: Option<&[f32]>,
        a: &[f32],
        p: &[f32],
        da: &mut [f32],
        (dq, dk, dv): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        // dV = Aᵀ G ; dA = G Vᵀ
        sgemm((kk, c, kk), dv, c, false, (a, 1, kk), (g, c, 1), 1.0);
        sgemm((kk, kk, c), da, kk, false, (g, c, 1), (v, 1, v_rs), 1.0);
        for i in 0..kk {
            let (pi, ai, dai) = (&p[i * kk..][..kk], &a[i * kk..][..kk], &mut da[i * kk..][..kk]);
            let mut dot = 0f32;
            for j in 0..kk {
                let t = ai[j] * dai[j];
                dai[j] = t;
                dot += t;
            }
            for j in 0..kk {
                dai[j] = (dai[j] - pi[j] * dot) * self.scale;
            }
            if let Some(ri) = raw.map(|r| &r[i * kk..][..kk]) {
                for j in 0..kk {
                    if ri[j].abs() >= 1e4 {
                        dai[j] = 0.0;
                    }
                }
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
                || (Products::new(None), vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk]),
                |(mm, raw, a, p, dm, da), (row, ((dq, dk), dv))| {
                    let (q, k, v, g) = (&q[row * n..][..n], &k[row * n..][..n], &v[row * n..][..n], &g[row * n..][..n]);
                    self.row_backward(mm, row, q, k, v, c, g, kk, c, raw, a, p, dm, da, dq, dk, dv);
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
                self.weights(&mut Products::new(None), row, q, k, kk, c, raw, a, p, dm);
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
    /// The K×K products of each row (`Q Kᵀ` and `A V`) in bf16 with this kernel, f32
    /// accumulation; projection, RoPE, soft-max and the backward pass stay f32. Set for
    /// inference under `--dtype bf16` (measured in training, DeBERTa-v3-base shape at 2,048
    /// tokens: no faster in the forward pass, and with the backward pass's products in bf16 too
    /// a BiSPA attention half took 1.9 s against 1.45 s, rounding a transposed K×K operand
    /// element by element costing more than it saved).
    pub bf16: Option<Bf16Kernel>,
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
    mm: Products,
}

impl RowBufs {
    fn new(kk: usize, c: usize, kernel: Option<Bf16Kernel>) -> Self {
        let v = |n: usize| vec![0f32; n];
        Self {
            p: v(kk * 3 * c),
            q: v(kk * c),
            k: v(kk * c),
            raw: v(kk * kk),
            a: v(kk * kk),
            pr: v(kk * kk),
            dm: v(kk * kk),
            da: v(kk * kk),
            dq: v(kk * c),
            dk: v(kk * c),
            dv: v(kk * c),
            mm: Products::new(kernel),
        }
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
        out.par_chunks_mut(n).enumerate().for_each_init(
            || RowBufs::new(kk, c, self.bf16),
            |buf, (row, o)| {
                self.project(&x[row * n..][..n], w, bias, kk, c, buf);
                self.attn.weights(&mut buf.mm, row, &buf.q, &buf.k, kk, c, &mut buf.raw, &mut buf.a, &mut buf.pr, &mut buf.dm);
                // o = A V, with V = P[:, 2c:]
                buf.mm.mul((kk, c, kk), o, c, (&buf.a, kk, 1), (&buf.p[2 * c..], 3 * c, 1), 1.0);
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, bias: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (r, kk, c) = x.dims3()?;
        let host = |t: &Tensor| -> candle_core::Result<Vec<f32>> { t.flatten_all()?.to_vec1::<f32>() };
        let (xv, wv, bv, gv) = (host(x)?, host(w)?, host(bias)?, host(grad)?);
        let n = kk * c;
        let (dx, dw, db) = self.backward_rows(&xv, &wv, (r, kk, c), |row, buf| {
            self.project(&xv[row * n..][..n], &wv, &bv, kk, c, buf);
            self.attn.row_backward(&mut buf.mm, row, &buf.q, &buf.k, &buf.p[2 * c..], 3 * c, &gv[row * n..][..n], kk, c, &mut buf.raw, &mut buf.a, &mut buf.pr, &mut buf.dm, &mut buf.da, &mut buf.dq, &mut buf.dk, &mut buf.dv);
        });
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (r, kk, c), dev)?),
            Some(Tensor::from_vec(dw, (3 * c, c), dev)?),
            Some(Tensor::from_vec(db, 3 * c, dev)?),
        ))
    }
}

/// What [`ProjectedRowAttention::forward_saved`] keeps for
/// [`ProjectedRowAttention::backward_saved`], per row: the clamped projection `P` `[K, 3c]`, the
/// soft-max `p` and the weights `a` (dropout and valid keys applied) `[K, K]`, and whether a
/// score reached the clamp (rare; that row's scores are then recomputed). About
/// `K·(3c + 2K)` floats a row: the callers hold one row chunk of it at a time.
pub(crate) struct ProjectedSaved {
    dims: (usize, usize, usize),
    p: Vec<f32>,
    soft: Vec<f32>,
    a: Vec<f32>,
    clamped: Vec<bool>,
}

impl ProjectedRowAttention {
    /// The backward pass shared by [`CustomOp3::bwd`] and [`Self::backward_saved`]: `row_grads`
    /// fills a row's `P` (`buf.p`) and its `dq`, `dk`, `dv`; the rest (RoPE transposed, the
    /// projection's clamp and product) is done here. Returns dx `[R·K·c]`, dW `[3c·c]`, db `[3c]`.
    fn backward_rows(&self, xv: &[f32], wv: &[f32], (r, kk, c): (usize, usize, usize), row_grads: impl Fn(usize, &mut RowBufs) + Sync) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (n, c3) = (kk * c, 3 * c);
        let mut dx = vec![0f32; r * n];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(GRAD_ROWS * n)
            .enumerate()
            .map(|(blk, dxb)| {
                let mut buf = RowBufs::new(kk, c, self.bf16);
                let mut dp = vec![0f32; kk * c3];
                let (mut dw, mut db) = (vec![0f32; c3 * c], vec![0f32; c3]);
                for (local, dxr) in dxb.chunks_mut(n).enumerate() {
                    let row = blk * GRAD_ROWS + local;
                    let xr = &xv[row * n..][..n];
                    row_grads(row, &mut buf);
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
                    sgemm((kk, c, c3), dxr, c, false, (&dp, c3, 1), (wv, c, 1), 1.0);
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
        (dx, dw, db)
    }

    /// The op's forward pass (f32 products) on `x` `[R, K, c]`, weight `[3c, c]` and bias
    /// `[3c]`, keeping every row's weights: its backward pass ([`Self::backward_saved`]) then
    /// needs no second projection, score product, soft-max or dropout draw. For hand-written
    /// backward passes that run the forward pass right before the backward one.
    pub(crate) fn forward_saved(&self, x: &Tensor, w: &Tensor, bias: &Tensor) -> Result<(Tensor, ProjectedSaved)> {
        let (r, kk, c) = x.dims3()?;
        if w.dims() != [3 * c, c] || bias.dims() != [3 * c] || self.attn.valid.len() != r * kk || self.sin.len() != kk * c {
            return Err(crate::Error::Input(format!("projected row attention: x {:?}, w {:?}, b {:?}, mask {}", x.dims(), w.dims(), bias.dims(), self.attn.valid.len())));
        }
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (xv, wv, bv) = (host(x)?, host(w)?, host(bias)?);
        let (n, c3, k2) = (kk * c, 3 * c, kk * kk);
        let uninit = crate::nn::uninit_f32;
        // every element is written: each row's output by a product that stores, its P, p and a
        // by the projection and the soft-max
        let (mut out, mut p, mut soft, mut a) = (uninit(r * n), uninit(r * kk * c3), uninit(r * k2), uninit(r * k2));
        let mut clamped = vec![false; r];
        out.par_chunks_mut(n)
            .zip(p.par_chunks_mut(kk * c3))
            .zip(soft.par_chunks_mut(k2).zip(a.par_chunks_mut(k2)))
            .zip(clamped.par_iter_mut())
            .enumerate()
            .for_each_init(
                || RowBufs::new(kk, c, self.bf16),
                |buf, (row, (((o, pr), (sr, ar)), cl))| {
                    self.project(&xv[row * n..][..n], &wv, &bv, kk, c, buf);
                    self.attn.weights(&mut buf.mm, row, &buf.q, &buf.k, kk, c, &mut buf.raw, ar, sr, &mut buf.dm);
                    *cl = buf.raw.iter().any(|v| v.abs() >= 1e4);
                    buf.mm.mul((kk, c, kk), o, c, (ar, kk, 1), (&buf.p[2 * c..], c3, 1), 1.0);
                    pr.copy_from_slice(&buf.p);
                },
            );
        let y = Tensor::from_vec(out, (r, kk, c), x.device())?;
        Ok((y, ProjectedSaved { dims: (r, kk, c), p, soft, a, clamped }))
    }

    /// The gradients at `x`, the weight and the bias (as [`CustomOp3::bwd`] gives them) from
    /// the output gradient `grad`, with what [`Self::forward_saved`] kept on the same `x`, `w`.
    pub(crate) fn backward_saved(&self, saved: &ProjectedSaved, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (r, kk, c) = saved.dims;
        if x.dims() != [r, kk, c] || grad.dims() != [r, kk, c] {
            return Err(crate::Error::Input(format!("projected row attention: backward of {:?} on x {:?}, gradient {:?}", [r, kk, c], x.dims(), grad.dims())));
        }
        let host = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (xv, wv, gv) = (host(x)?, host(w)?, host(grad)?);
        let (n, c3, k2) = (kk * c, 3 * c, kk * kk);
        let (dx, dw, db) = self.backward_rows(&xv, &wv, (r, kk, c), |row, buf| {
            buf.p.copy_from_slice(&saved.p[row * kk * c3..][..kk * c3]);
            let pr = std::mem::take(&mut buf.p);
            self.rope(&pr, c3, &mut buf.q, kk, c);
            self.rope(&pr[c..], c3, &mut buf.k, kk, c);
            let raw = if saved.clamped[row] {
                buf.mm.mul((kk, kk, c), &mut buf.raw, kk, (&buf.q, c, 1), (&buf.k, 1, c), self.attn.scale);
                Some(&buf.raw[..])
            } else {
                None
            };
            let (a, soft) = (&saved.a[row * k2..][..k2], &saved.soft[row * k2..][..k2]);
            self.attn.row_backward_weights((&buf.q, &buf.k, &pr[2 * c..], c3), &gv[row * n..][..n], kk, c, raw, a, soft, &mut buf.da, (&mut buf.dq, &mut buf.dk, &mut buf.dv));
            buf.p = pr;
        });
        let dev = x.device();
        Ok((Tensor::from_vec(dx, (r, kk, c), dev)?, Tensor::from_vec(dw, (c3, c), dev)?, Tensor::from_vec(db, c3, dev)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CustomOp3, Device};
    use rand::{Rng, SeedableRng};

    /// The saved forward and backward of the projected row attention give exactly what the op's
    /// own forward and backward (which recompute every row's weights) give: with dropout, keys
    /// masked out, rows whose scores reach the ±1e4 clamp, and projections that reach it.
    #[test]
    fn saved_weights_give_the_recomputed_gradients_exactly() {
        let (r, kk, c) = (7usize, 9usize, 4usize);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let mut rnd = |n: usize, s: f32| (0..n).map(|_| rng.random_range(-s..s)).collect::<Vec<f32>>();
        let mut x = rnd(r * kk * c, 2.0);
        // row 2: scores far past the clamp; row 5: one projection past it
        x[2 * kk * c..3 * kk * c].iter_mut().for_each(|v| *v *= 400.0);
        x[5 * kk * c] = 3e5;
        let dev = Device::Cpu;
        let x = Tensor::from_vec(x, (r, kk, c), &dev).unwrap();
        let w = Tensor::from_vec(rnd(3 * c * c, 1.0), (3 * c, c), &dev).unwrap();
        let b = Tensor::from_vec(rnd(3 * c, 0.5), 3 * c, &dev).unwrap();
        let g = Tensor::from_vec(rnd(r * kk * c, 1.0), (r, kk, c), &dev).unwrap();
        let angles: Vec<f32> = (0..kk).flat_map(|j| (0..c).map(move |t| (j as f32) / 10f32.powf((t / 2) as f32 / c as f32))).collect();
        let valid: Vec<f32> = (0..r * kk).map(|i| if i % 5 == 2 { 0.0 } else { 1.0 }).collect();
        for dropout in [0.0f32, 0.3] {
            let op = ProjectedRowAttention {
                attn: RowAttention { valid: std::sync::Arc::new(valid.clone()), scale: 0.5, dropout, seed: 99 },
                bf16: None,
                sin: std::sync::Arc::new(angles.iter().map(|a| a.sin()).collect()),
                cos: std::sync::Arc::new(angles.iter().map(|a| a.cos()).collect()),
            };
            let y = x.apply_op3_no_bwd(&w, &b, &op).unwrap();
            let (ys, saved) = op.forward_saved(&x, &w, &b).unwrap();
            // rows 2 and 5 reach the score clamp (row 5 through its clamped projection)
            assert_eq!(saved.clamped, [false, false, true, false, false, true, false]);
            let same = |a: &Tensor, b: &Tensor, what: &str| {
                let (a, b) = (a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                assert_eq!(a, b, "{what}, dropout {dropout}");
                assert!(a.iter().any(|v| *v != 0.0), "{what} is all zero");
            };
            same(&ys, &y, "output");
            let (dx, dw, db) = op.bwd(&x, &w, &b, &y, &g).unwrap();
            let (sx, sw, sb) = op.backward_saved(&saved, &x, &w, &g).unwrap();
            same(&sx, &dx.unwrap(), "dx");
            same(&sw, &dw.unwrap(), "dw");
            same(&sb, &db.unwrap(), "db");
        }
    }
}
