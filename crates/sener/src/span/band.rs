//! The span band: the only layout in which sener ever holds span features (spec §4, §5).
//!
//! For a segment of n words and one-sided span window w, band cell (i, k), k ∈ [0, 2w], holds the
//! word pair **(i, j = i + k − w)**: k = w is the one-word span (i, i), k > w the upper triangle
//! (start i, end j), k < w the lower triangle (j < i). Both triangles are kept, as in the official
//! code; K = 2w + 1 columns. Tensors are `[B, n, K, c]`. No L×L tensor exists anywhere.
//!
//! The **vertical view** is column i of the virtual L×L matrix laid out as a row:
//! `vᵀ[i, k] = x[i + k − w, 2w − k]`, the pair (i + k − w, i). The official code gets it by
//! rolling each column (modulo n) and flipping the column axis; the wrapped cells are invalid in
//! both views, so here they are zero instead (deliberate deviation: same values on every valid
//! cell, no modulo). The transform is its own inverse.

use candle_core::{DType, Device, Tensor};

use crate::Result;

/// Geometry of a band: window w and K = 2w + 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Band {
    pub w: usize,
}

impl Band {
    pub fn new(w: usize) -> Self {
        Self { w }
    }

    /// Columns per row, 2w + 1.
    pub fn k(&self) -> usize {
        2 * self.w + 1
    }

    /// The end word j of cell (i, k) (may be out of range: negative or ≥ n).
    pub fn pair(&self, i: usize, k: usize) -> (usize, i64) {
        (i, i as i64 + k as i64 - self.w as i64)
    }

    /// The cell of pair (i, j), if |j − i| ≤ w.
    pub fn cell(&self, i: usize, j: usize) -> Option<(usize, usize)> {
        let k = j as i64 - i as i64 + self.w as i64;
        (0..self.k() as i64).contains(&k).then_some((i, k as usize))
    }

    /// Is cell (i, k) a real pair of a segment of `len` words?
    pub fn valid(&self, i: usize, k: usize, len: usize) -> bool {
        let (_, j) = self.pair(i, k);
        i < len && j >= 0 && (j as usize) < len
    }

    /// Validity mask `[B, n, K]` (1 = real pair) for segments of the given word counts, padded to n.
    pub fn mask(&self, lens: &[usize], n: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let kk = self.k();
        let v: Vec<f32> = lens
            .iter()
            .flat_map(|&len| (0..n).flat_map(move |i| (0..kk).map(move |k| if self.valid(i, k, len) { 1.0 } else { 0.0 })))
            .collect();
        Ok(Tensor::from_vec(v, (lens.len(), n, kk), dev)?.to_dtype(dtype)?)
    }

    /// `[B, n, c]` → `[B, n, K, c]` with `out[i, k] = x[i + k − w]` (0 outside the sequence).
    pub fn gather(&self, x: &Tensor) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        let xp = x.pad_with_zeros(1, self.w, self.w)?;
        let cols: Vec<Tensor> = (0..self.k()).map(|k| xp.narrow(1, k, n)).collect::<candle_core::Result<_>>()?;
        Ok(Tensor::stack(&cols, 2)?)
    }

    /// The vertical view `vᵀ[i, k] = x[i + k − w, 2w − k]` (0 where i + k − w is outside), for
    /// `[B, n, K, c]`. Flip the columns, then shear: column k moves by k − w rows, done as one
    /// reshape of the row-padded, column-major tensor (row stride R + 1 reads the diagonal).
    /// On the CPU in f32 this is one gather op ([`VerticalView`]) whose backward is the same
    /// gather (the map is an involution); elsewhere the composite shear below.
    pub fn vertical(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return Ok(x.contiguous()?.apply_op1(VerticalView { w: self.w })?);
        }
        self.vertical_composite(x)
    }

    /// The vertical view with candle ops only (any device): flip, pad, transpose, shear.
    pub fn vertical_composite(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n, kk, c) = x.dims4()?;
        let dev = x.device();
        let rev: Vec<u32> = (0..kk as u32).rev().collect();
        let y = x.index_select(&Tensor::from_vec(rev, kk, dev)?, 2)?; // y[r, k] = x[r, 2w − k]
        let r = n + 2 * self.w;
        // z[k, r'] = y[r' − w, k], rows padded by w on both sides.
        let z = y.pad_with_zeros(1, self.w, self.w)?.transpose(1, 2)?.contiguous()?; // [B, K, R, c]
        let z = z.reshape((b, kk * r, c))?.pad_with_zeros(1, 0, kk)?.reshape((b, kk, r + 1, c))?;
        // Row k of the stride-(R+1) view starts at z[k, k]: out[k, i] = z[k, i + k].
        Ok(z.narrow(2, 0, n)?.transpose(1, 2)?.contiguous()?)
    }
}

/// The vertical view as one CPU op: `out[b, i, k, :] = x[b, i + k − w, 2w − k, :]`, zero where
/// i + k − w falls outside the rows. The map (i, k) → (i + k − w, 2w − k) is its own inverse, so
/// the gradient is the same gather applied to the output gradient.
pub struct VerticalView {
    pub w: usize,
}

impl candle_core::CustomOp1 for VerticalView {
    fn name(&self) -> &'static str {
        "band-vertical-view"
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (b, n, kk, c) = l.shape().dims4()?;
        if kk != 2 * self.w + 1 {
            candle_core::bail!("vertical view: {kk} band columns, window {}", self.w);
        }
        let x = crate::nn::cpu_f32(s, l, "vertical view")?;
        let mut out = vec![0f32; b * n * kk * c];
        use rayon::prelude::*;
        out.par_chunks_mut(kk * c).enumerate().for_each(|(row, o)| {
            let (bi, i) = (row / n, row % n);
            for k in 0..kk {
                let src = i as i64 + k as i64 - self.w as i64;
                if src < 0 || src >= n as i64 {
                    continue;
                }
                let from = ((bi * n + src as usize) * kk + (kk - 1 - k)) * c;
                o[k * c..(k + 1) * c].copy_from_slice(&x[from..from + c]);
            }
        });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1(VerticalView { w: self.w })?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(b: usize, n: usize, kk: usize, c: usize) -> Tensor {
        let v: Vec<f32> = (0..b * n * kk * c).map(|x| x as f32 + 1.0).collect();
        Tensor::from_vec(v, (b, n, kk, c), &Device::Cpu).unwrap()
    }

    #[test]
    fn cells_and_pairs_by_enumeration() {
        let band = Band::new(3);
        assert_eq!(band.k(), 7);
        for i in 0..10usize {
            for j in 0..10usize {
                match band.cell(i, j) {
                    Some((ci, k)) => {
                        assert!(i.abs_diff(j) <= 3);
                        assert_eq!(ci, i);
                        assert_eq!(band.pair(i, k), (i, j as i64));
                        // diagonal at k = w, upper triangle right of it
                        assert_eq!(k == 3, i == j);
                        assert_eq!(k > 3, j > i);
                    }
                    None => assert!(i.abs_diff(j) > 3),
                }
            }
        }
        // validity: row 1 of a 4-word segment: pairs (1,-2),(1,-1) invalid, (1,0..3) valid, (1,4) invalid
        let row: Vec<bool> = (0..7).map(|k| band.valid(1, k, 4)).collect();
        assert_eq!(row, vec![false, false, true, true, true, true, false]);
        assert!(!band.valid(4, 3, 4));
    }

    #[test]
    fn gather_matches_enumeration() {
        let band = Band::new(2);
        let x: Vec<f32> = (0..2 * 5 * 3).map(|v| v as f32 + 1.0).collect();
        let x = Tensor::from_vec(x, (2, 5, 3), &Device::Cpu).unwrap();
        let g: Vec<Vec<Vec<Vec<f32>>>> = (0..2).map(|b| band.gather(&x).unwrap().get(b).unwrap().to_vec3().unwrap()).collect();
        let xv: Vec<Vec<Vec<f32>>> = x.to_vec3().unwrap();
        for b in 0..2 {
            for i in 0..5 {
                for k in 0..5 {
                    let j = i as i64 + k as i64 - 2;
                    let want = if (0..5).contains(&j) { xv[b][j as usize].clone() } else { vec![0.0; 3] };
                    assert_eq!(g[b][i][k], want, "b {b} i {i} k {k}");
                }
            }
        }
    }

    #[test]
    fn vertical_matches_enumeration_and_is_an_involution() {
        for (n, w) in [(6usize, 2usize), (3, 4), (9, 1), (1, 3)] {
            let band = Band::new(w);
            let kk = band.k();
            let x = values(2, n, kk, 2);
            let v = band.vertical(&x).unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let vv: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
            let at = |buf: &[f32], b: usize, i: usize, k: usize, c: usize| buf[((b * n + i) * kk + k) * 2 + c];
            for b in 0..2 {
                for i in 0..n {
                    for k in 0..kk {
                        let r = i as i64 + k as i64 - w as i64;
                        for c in 0..2 {
                            let want = if (0..n as i64).contains(&r) { at(&xv, b, r as usize, 2 * w - k, c) } else { 0.0 };
                            assert_eq!(at(&vv, b, i, k, c), want, "n {n} w {w} b {b} i {i} k {k}");
                        }
                    }
                }
            }
            // Cell (i, k) of the vertical view holds the pair (i + k − w, i): its transpose.
            // Applying the view twice restores every cell whose pair is inside the sequence.
            let back: Vec<f32> = band.vertical(&v).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            for b in 0..2 {
                for i in 0..n {
                    for k in 0..kk {
                        if band.valid(i, k, n) {
                            for c in 0..2 {
                                assert_eq!(at(&back, b, i, k, c), at(&xv, b, i, k, c));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn vertical_op_equals_the_composite_shear_forward_and_backward() {
        for (w, n) in [(1usize, 1usize), (2, 5), (3, 4), (4, 13)] {
            let band = Band::new(w);
            let x = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, n, band.k(), 3), &Device::Cpu).unwrap()).unwrap();
            let r = Tensor::randn(0f32, 1.0, (2, n, band.k(), 3), &Device::Cpu).unwrap();
            let op = band.vertical(x.as_tensor()).unwrap();
            let comp = band.vertical_composite(x.as_tensor()).unwrap();
            assert_eq!(op.flatten_all().unwrap().to_vec1::<f32>().unwrap(), comp.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            let g1 = (&op * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&comp * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(g1.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), g2.get(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn mask_is_symmetric_under_the_vertical_view() {
        let band = Band::new(3);
        let m = band.mask(&[5, 8], 8, DType::F32, &Device::Cpu).unwrap().unsqueeze(3).unwrap();
        let v = band.vertical(&m).unwrap();
        let d = (m - v).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0);
    }
}
