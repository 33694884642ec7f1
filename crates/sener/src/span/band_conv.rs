//! Fused 3×3 convolution over the band grid (padding 1, no bias) for f32 on the CPU, with its own
//! backward. The composite version (`bispa::conv3x3`: nine shifted matmuls) keeps ~27 band-sized
//! tensors alive per convolution in a gradient pass; this op keeps only its input.
//!
//! `x`: `[B, n, K, c_in]`, `w`: `[c_out, c_in, 3, 3]` (torch layout, cross-correlation):
//! `y[b,i,k,o] = Σ_{dy,dx,a} w[o,a,dy,dx] · x[b, i+dy−1, k+dx−1, a]`.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::nn::{cpu_f32, sgemm};

pub struct BandConv3x3;

/// `w[o,a,dy,dx]` → `[dy][dx][a][o]` (forward) or `[dy][dx][o][a]` (input gradient).
fn reorder(w: &[f32], co: usize, ci: usize, transpose: bool) -> Vec<f32> {
    let mut out = vec![0f32; 9 * co * ci];
    for o in 0..co {
        for a in 0..ci {
            for t in 0..9 {
                let v = w[(o * ci + a) * 9 + t];
                let idx = if transpose { (t * co + o) * ci + a } else { (t * ci + a) * co + o };
                out[idx] = v;
            }
        }
    }
    out
}

/// Range of band columns `k` whose shifted column `k + off` lies inside `0..kk`.
fn valid_cols(kk: usize, off: i64) -> (usize, usize) {
    let lo = (-off).max(0) as usize;
    let hi = (kk as i64 - off).clamp(0, kk as i64) as usize;
    (lo.min(hi), hi)
}

/// Correlation of rows `[B·n, K, cin]` with taps `taps[(dy,dx)][cin][cout]`; `flip` mirrors the
/// offsets (the input gradient is a correlation with the flipped kernel). Each (row, tap) is one
/// `[K, cin] × [cin, cout]` gemm.
#[allow(clippy::too_many_arguments)]
fn correlate(x: &[f32], taps: &[f32], b: usize, n: usize, kk: usize, cin: usize, cout: usize, flip: bool) -> Vec<f32> {
    let mut y = vec![0f32; b * n * kk * cout];
    y.par_chunks_mut(kk * cout).enumerate().for_each(|(row, yr)| {
        let (bi, i) = (row / n, row % n);
        for dy in 0..3 {
            let ii = if flip { i as i64 - dy as i64 + 1 } else { i as i64 + dy as i64 - 1 };
            if ii < 0 || ii >= n as i64 {
                continue;
            }
            let xr = &x[(bi * n + ii as usize) * kk * cin..][..kk * cin];
            for dx in 0..3 {
                let t = &taps[(dy * 3 + dx) * cin * cout..][..cin * cout];
                let off = if flip { 1 - dx as i64 } else { dx as i64 - 1 };
                let (lo, hi) = valid_cols(kk, off);
                if lo == hi {
                    continue;
                }
                let xs = &xr[(lo as i64 + off) as usize * cin..];
                sgemm((hi - lo, cout, cin), &mut yr[lo * cout..], cout, true, (xs, cin, 1), (t, cout, 1), 1.0);
            }
        }
    });
    y
}

impl CustomOp2 for BandConv3x3 {
    fn name(&self) -> &'static str {
        "band-conv3x3"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n, kk, ci) = l1.shape().dims4()?;
        let (co, ci2, kh, kw) = l2.shape().dims4()?;
        if (ci2, kh, kw) != (ci, 3, 3) {
            candle_core::bail!("band conv: input {:?}, weight {:?}", l1.shape(), l2.shape());
        }
        let taps = reorder(cpu_f32(s2, l2, "band conv")?, co, ci, false);
        let y = correlate(cpu_f32(s1, l1, "band conv")?, &taps, b, n, kk, ci, co, false);
        Ok((CpuStorage::F32(y), Shape::from((b, n, kk, co))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, n, kk, ci) = x.dims4()?;
        let co = w.dim(0)?;
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = g.flatten_all()?.to_vec1()?;
        // dx: correlation of g with the flipped kernel, channels transposed.
        let dx = correlate(&gv, &reorder(&wv, co, ci, true), b, n, kk, co, ci, true);
        // dw[o,a,dy,dx] = Σ g[b,i,k,o] · x[b, i+dy−1, k+dx−1, a], accumulated per row then summed.
        // Partial sums over fixed blocks of rows, added in block order: deterministic whatever
        // the thread scheduling (a resumed run must reproduce an uninterrupted one bit for bit).
        const ROWS: usize = 16;
        let rows = b * n;
        let partials: Vec<Vec<f32>> = (0..rows.div_ceil(ROWS))
            .into_par_iter()
            .map(|blk| {
                let mut acc = vec![0f32; co * ci * 9];
                for row in blk * ROWS..((blk + 1) * ROWS).min(rows) {
                    let (bi, i) = (row / n, row % n);
                    let gr = &gv[row * kk * co..][..kk * co];
                    for dy in 0..3 {
                        let ii = i as i64 + dy as i64 - 1;
                        if ii < 0 || ii >= n as i64 {
                            continue;
                        }
                        let xr = &xv[(bi * n + ii as usize) * kk * ci..][..kk * ci];
                        for dxx in 0..3 {
                            let off = dxx as i64 - 1;
                            let (lo, hi) = valid_cols(kk, off);
                            if lo == hi {
                                continue;
                            }
                            // acc[tap][a][o] += Σ_k x[k+off, a] · g[k, o]
                            let xs = &xr[(lo as i64 + off) as usize * ci..];
                            let t = &mut acc[(dy * 3 + dxx) * ci * co..][..ci * co];
                            sgemm((ci, co, hi - lo), t, co, true, (xs, 1, ci), (&gr[lo * co..], co, 1), 1.0);
                        }
                    }
                }
                acc
            })
            .collect();
        let mut sum = vec![0f32; co * ci * 9];
        for p in partials {
            for (x, y) in sum.iter_mut().zip(p) {
                *x += y;
            }
        }
        let mut dw = vec![0f32; co * ci * 9];
        for t in 0..9 {
            for a in 0..ci {
                for o in 0..co {
                    dw[(o * ci + a) * 9 + t] = sum[(t * ci + a) * co + o];
                }
            }
        }
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (b, n, kk, ci), dev)?), Some(Tensor::from_vec(dw, (co, ci, 3, 3), dev)?)))
    }
}
