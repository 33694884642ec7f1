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

/// Keep decision of dropout cell (row, i, j) for `seed`: splitmix64 of the cell index → [0, 1).
pub fn dropout_keep(seed: u64, row: usize, i: usize, j: usize, k: usize, keep: f32) -> bool {
    let mut z = seed ^ (((row * k + i) * k + j) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 40) as f32 / (1u64 << 24) as f32) < keep
}

/// The op: inputs q, k, v `[R, K, c]`; `valid` `[R·K]` (1 = valid key).
pub struct RowAttention {
    pub valid: std::sync::Arc<Vec<f32>>,
    pub scale: f32,
    /// Dropout probability on the attention weights (0: off).
    pub dropout: f32,
    pub seed: u64,
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("row attention needs contiguous inputs"),
    }
}

impl RowAttention {
    /// Scores → weights of one row into `a` (K×K); returns nothing, fills `s` with raw scaled
    /// dot products (before clamping) for the clamp gradient.
    #[allow(clippy::too_many_arguments)]
    fn weights(&self, row: usize, q: &[f32], k: &[f32], kk: usize, c: usize, raw: &mut [f32], a: &mut [f32], p: &mut [f32]) {
        let valid = &self.valid[row * kk..(row + 1) * kk];
        let keep = 1.0 - self.dropout;
        for i in 0..kk {
            let qi = &q[i * c..(i + 1) * c];
            let mut mx = f32::NEG_INFINITY;
            for j in 0..kk {
                let kj = &k[j * c..(j + 1) * c];
                let mut d = 0f32;
                for t in 0..c {
                    d += qi[t] * kj[t];
                }
                let x = d * self.scale;
                raw[i * kk + j] = x;
                let s = x.clamp(-1e4, 1e4) - 1e4 * (1.0 - valid[j]);
                p[i * kk + j] = s;
                mx = mx.max(s);
            }
            let mut z = 0f32;
            for j in 0..kk {
                let e = (p[i * kk + j] - mx).exp();
                p[i * kk + j] = e;
                z += e;
            }
            for j in 0..kk {
                let pij = p[i * kk + j] / z;
                p[i * kk + j] = pij;
                let mut w = pij * valid[j];
                if self.dropout > 0.0 {
                    w = if dropout_keep(self.seed, row, i, j, kk, keep) { w / keep } else { 0.0 };
                }
                a[i * kk + j] = w;
            }
        }
    }

    /// dq, dk, dv for `[R, K, c]` inputs and output gradient `g`.
    pub fn backward(&self, q: &[f32], k: &[f32], v: &[f32], g: &[f32], r: usize, kk: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let n = kk * c;
        let mut dq = vec![0f32; r * n];
        let mut dk = vec![0f32; r * n];
        let mut dv = vec![0f32; r * n];
        let keep = 1.0 - self.dropout;
        dq.par_chunks_mut(n)
            .zip(dk.par_chunks_mut(n))
            .zip(dv.par_chunks_mut(n))
            .enumerate()
            .for_each_init(
                || (vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk]),
                |(raw, a, p, tmp), (row, ((dq, dk), dv))| {
                    let (q, k, v, g) = (&q[row * n..][..n], &k[row * n..][..n], &v[row * n..][..n], &g[row * n..][..n]);
                    self.weights(row, q, k, kk, c, raw, a, p);
                    let valid = &self.valid[row * kk..(row + 1) * kk];
                    for i in 0..kk {
                        let gi = &g[i * c..(i + 1) * c];
                        // dV_j += a_ij g_i ; dA_ij = g_i·v_j → dP_ij
                        let mut dot = 0f32;
                        for j in 0..kk {
                            let aij = a[i * kk + j];
                            let vj = &v[j * c..(j + 1) * c];
                            let mut d = 0f32;
                            for t in 0..c {
                                dv[j * c + t] += aij * gi[t];
                                d += gi[t] * vj[t];
                            }
                            let mut dp = d * valid[j];
                            if self.dropout > 0.0 {
                                dp = if dropout_keep(self.seed, row, i, j, kk, keep) { dp / keep } else { 0.0 };
                            }
                            tmp[j] = dp;
                            dot += dp * p[i * kk + j];
                        }
                        // dS = p ⊙ (dP − Σ p dP); clamp passes gradient only inside ±1e4
                        for j in 0..kk {
                            let raw_ij = raw[i * kk + j];
                            if raw_ij.abs() >= 1e4 {
                                continue;
                            }
                            let ds = p[i * kk + j] * (tmp[j] - dot) * self.scale;
                            let (qi, kj) = (&q[i * c..(i + 1) * c], &k[j * c..(j + 1) * c]);
                            for t in 0..c {
                                dq[i * c + t] += ds * kj[t];
                                dk[j * c + t] += ds * qi[t];
                            }
                        }
                    }
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
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let n = kk * c;
        let mut out = vec![0f32; r * n];
        out.par_chunks_mut(n).enumerate().for_each_init(
            || (vec![0f32; kk * kk], vec![0f32; kk * kk], vec![0f32; kk * kk]),
            |(raw, a, p), (row, o)| {
                let (q, k, v) = (&q[row * n..][..n], &k[row * n..][..n], &v[row * n..][..n]);
                self.weights(row, q, k, kk, c, raw, a, p);
                for i in 0..kk {
                    for j in 0..kk {
                        let aij = a[i * kk + j];
                        if aij == 0.0 {
                            continue;
                        }
                        for t in 0..c {
                            o[i * c + t] += aij * v[j * c + t];
                        }
                    }
                }
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
