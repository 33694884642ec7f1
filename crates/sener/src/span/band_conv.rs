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

/// [`forward_amx`] as a forward-only candle op (inference): reads the tensors' storage in place.
pub struct BandConv3x3Amx;

impl CustomOp2 for BandConv3x3Amx {
    fn name(&self) -> &'static str {
        "band-conv3x3-amx"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, n, kk, ci) = l1.shape().dims4()?;
        let co = l2.shape().dims4()?.0;
        match forward_amx(cpu_f32(s1, l1, "band conv")?, cpu_f32(s2, l2, "band conv")?, b, n, kk, ci, co) {
            Some(y) => Ok((CpuStorage::F32(y), Shape::from((b, n, kk, co)))),
            None => candle_core::bail!("band conv: no AMX on this CPU, or weight {:?} for input {:?}", l2.shape(), l1.shape()),
        }
    }
}

/// The forward of [`BandConv3x3`] in bf16 on AMX tiles (inference under `--dtype bf16`; the
/// gradient passes keep the f32 op and its backward). The input is rounded to bf16 once into a
/// copy with one zero cell of padding on every side (every tap then reads in bounds) and channels
/// padded to 32; each band row's output, per 32 cells and 32 output channels, is one gathered
/// sum of 9 taps × ⌈c_in/32⌉ tile products accumulated in f32. `None` where AMX is not available.
pub fn forward_amx(x: &[f32], w: &[f32], b: usize, n: usize, kk: usize, ci: usize, co: usize) -> Option<Vec<f32>> {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        use crate::gemm_bf16::{amx_gather_32x32, amx_tiles, convert_row, to_bf16, Bf16Kernel};
        if !Bf16Kernel::Amx.available() || x.len() != b * n * kk * ci || w.len() != co * ci * 9 {
            return None;
        }
        let (cip, cop, kp) = (ci.div_ceil(32) * 32, co.div_ceil(32) * 32, kk.div_ceil(32) * 32);
        let (ncb, nop, kw, rows_p) = (cip / 32, cop / 32, kp + 2, n + 2);
        let steps = 9 * ncb;
        // xp[b][i + 1][k + 1][a] = bf16(x[b][i][k][a]); zero elsewhere.
        let mut xp = vec![0u16; b * rows_p * kw * cip];
        xp.par_chunks_mut(kw * cip).enumerate().for_each(|(pr, dst)| {
            let (bi, ri) = (pr / rows_p, pr % rows_p);
            if ri == 0 || ri == n + 1 {
                return;
            }
            for k in 0..kk {
                convert_row(&x[((bi * n + ri - 1) * kk + k) * ci..][..ci], &mut dst[(k + 1) * cip..][..ci]);
            }
        });
        // Taps packed per 32 output channels, in the order the row loop gathers them:
        // [o-pair][tap][ci-block][half][16 pairs of ci][16 outputs][2].
        let mut wp = vec![0u16; nop * steps * 1024];
        for (idx, v) in wp.iter_mut().enumerate() {
            let (p, j, r) = (idx % 2, idx / 2 % 16, idx / 32 % 16);
            let (half, cb, t, op) = (idx / 512 % 2, idx / 1024 % ncb, idx / (1024 * ncb) % 9, idx / (1024 * steps));
            let (o, a) = (op * 32 + half * 16 + j, cb * 32 + 2 * r + p);
            if o < co && a < ci {
                *v = to_bf16(w[(o * ci + a) * 9 + t]);
            }
        }
        // every cell: each (k0, op) block copies its rows and columns in
        let mut y = crate::nn::uninit_f32(b * n * kk * co);
        y.par_chunks_mut(kk * co).enumerate().for_each_init(
            || (amx_tiles(), vec![std::ptr::null::<u16>(); steps], [0f32; 1024]),
            |(tiles, list, tmp), (row, yr)| {
                debug_assert!(tiles.is_some(), "AMX available process-wide but not on this thread");
                let (bi, i) = (row / n, row % n);
                for k0 in (0..kk).step_by(32) {
                    for op in 0..nop {
                        let mut s = 0;
                        for dy in 0..3 {
                            for dx in 0..3 {
                                for cb in 0..ncb {
                                    // output cell k reads input (i + dy − 1, k + dx − 1) = padded (i + dy, k + dx)
                                    list[s] = xp[((bi * rows_p + i + dy) * kw + k0 + dx) * cip + cb * 32..].as_ptr();
                                    s += 1;
                                }
                            }
                        }
                        // SAFETY: this thread holds the tile configuration (`amx_tiles`, AMX is
                        // available); every pointer starts 32 padded cells (k0 + dx + 31 < kw) of
                        // 32 channels inside `xp`, rows `cip` apart; `wp` holds `steps` pairs of
                        // 16-column blocks for this output pair.
                        unsafe { amx_gather_32x32(list, cip, &wp[op * steps * 1024..][..steps * 1024], tmp) };
                        let cols = (co - op * 32).min(32);
                        for r in 0..(kk - k0).min(32) {
                            yr[(k0 + r) * co + op * 32..][..cols].copy_from_slice(&tmp[r * 32..][..cols]);
                        }
                    }
                }
            },
        );
        Some(y)
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        let _ = (x, w, b, n, kk, ci, co);
        None
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AMX forward equals the f32 op on inputs already rounded to bf16 (then the only
    /// difference is the order of f32 additions), on ragged shapes: K not a multiple of 32,
    /// channels not multiples of 32, two documents.
    #[test]
    fn amx_forward_equals_f32_op_on_bf16_exact_inputs() {
        use crate::gemm_bf16::{from_bf16, to_bf16, Bf16Kernel};
        if !Bf16Kernel::Amx.available() {
            eprintln!("no AMX here: nothing to check");
            return;
        }
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        for &(b, n, kk, ci, co) in &[(2, 5, 37, 32, 32), (1, 3, 70, 20, 40), (1, 1, 1, 32, 32)] {
            let mut r = |len: usize| -> Vec<f32> { (0..len).map(|_| from_bf16(to_bf16(rng.random_range(-1.0f32..1.0)))).collect() };
            let (x, w) = (r(b * n * kk * ci), r(co * ci * 9));
            let got = forward_amx(&x, &w, b, n, kk, ci, co).expect("AMX is available");
            let taps = reorder(&w, co, ci, false);
            let want = correlate(&x, &taps, b, n, kk, ci, co, false);
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-4, "({b}, {n}, {kk}, {ci}, {co}): {worst}");
        }
    }
}
