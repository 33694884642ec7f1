//! Training labels on the band and the loss (spec §6).
//!
//! Each gold entity (s, e, t) with inclusive end e and e − s ≤ w marks two cells: the upper
//! (s, e) at `[s, w + (e−s), t]` and the lower (e, s) at `[e, w − (e−s), t]` (one cell for a
//! one-word entity). Longer entities get no cell: they are counted and reported, never silently
//! lost. The loss is BCE-with-logits over every valid cell and type, summed per segment and
//! averaged over the batch; no class weighting.

use candle_core::{Device, Tensor};

use super::band::Band;
use crate::{Error, Result};

/// A gold span of one segment: word indices, inclusive end, label index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoldSpan {
    pub start: usize,
    pub end: usize,
    pub label: usize,
}

/// Labels `[B, n, K, R]` (0/1) for a batch, and how many entities could not be labelled.
pub struct BandLabels {
    pub labels: Tensor,
    /// Entities longer than w + 1 words (no cell; they count as misses at evaluation).
    pub too_long: usize,
}

/// Builds the label tensor. `gold[b]`: spans of row b; `lens[b]`: its word count.
pub fn band_labels(gold: &[Vec<GoldSpan>], lens: &[usize], n: usize, band: Band, r: usize, dev: &Device) -> Result<BandLabels> {
    let kk = band.k();
    let w = band.w;
    let mut y = vec![0f32; gold.len() * n * kk * r];
    let mut too_long = 0;
    for (b, spans) in gold.iter().enumerate() {
        let len = *lens.get(b).ok_or_else(|| Error::Input("fewer lengths than label rows".into()))?;
        for g in spans {
            if g.start > g.end || g.end >= len || g.label >= r {
                return Err(Error::Input(format!(
                    "gold span ({}, {}, label {}) does not fit row {b} ({len} words, {r} labels)",
                    g.start, g.end, g.label
                )));
            }
            let d = g.end - g.start;
            if d > w {
                too_long += 1;
                continue;
            }
            y[((b * n + g.start) * kk + w + d) * r + g.label] = 1.0;
            y[((b * n + g.end) * kk + w - d) * r + g.label] = 1.0;
        }
    }
    Ok(BandLabels { labels: Tensor::from_vec(y, (gold.len(), n, kk, r), dev)?, too_long })
}

/// Σ over valid cells and types of BCE-with-logits, per segment, averaged over the batch:
/// `max(x, 0) − x·y + log(1 + e^{−|x|})`; with `pos_weight` ≠ 1 the positive cells' term
/// `softplus(−x)` is multiplied by it (torch's `BCEWithLogitsLoss(pos_weight=…)`).
pub fn bce_loss(logits: &Tensor, labels: &Tensor, valid: &Tensor, pos_weight: f64) -> Result<Tensor> {
    let b = logits.dim(0)? as f64;
    let labels = labels.to_dtype(logits.dtype())?;
    // softplus(−|x|) = log(1 + e^{−|x|}); softplus(x) = relu(x) + that; softplus(−x) = softplus(x) − x.
    let sp_abs = logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
    let l = if pos_weight == 1.0 {
        ((logits.relu()? - (logits * &labels)?)? + sp_abs)?
    } else {
        let sp_pos = (logits.relu()? + sp_abs)?; // −log(1 − σ(x))
        let sp_neg = (&sp_pos - logits)?; // −log σ(x)
        ((sp_neg * labels.affine(pos_weight, 0.0)?)? + (sp_pos * labels.affine(-1.0, 1.0)?)?)?
    };
    let l = l.broadcast_mul(&valid.unsqueeze(3)?)?;
    Ok((l.sum_all()? / b)?)
}

/// [`bce_loss`] `× scale` and its gradient at the logits, by hand (the fused CPU path of a
/// recomputed step, `crate::span::SpanModel::head_loss_backward`), for f32 on the CPU. Non-finite
/// logits count as 0 with no gradient, as [`crate::span::SpanModel::head`] zeroes them; the loss
/// is summed in f64.
pub fn bce_loss_grad(logits: &Tensor, labels: &Tensor, valid: &Tensor, pos_weight: f64, scale: f64) -> Result<(f64, Tensor)> {
    use rayon::prelude::*;
    let (b, n, kk, r) = logits.dims4()?;
    let x = logits.flatten_all()?.to_vec1::<f32>()?;
    let y = labels.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let v = valid.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if y.len() != x.len() || v.len() != b * n * kk {
        return Err(Error::Input(format!("loss: logits {:?}, labels {:?}, valid {:?}", logits.dims(), labels.dims(), valid.dims())));
    }
    let f = scale / b as f64;
    let pw = pos_weight as f32;
    let mut g = crate::nn::uninit_f32(x.len());
    // per band row: its loss; every element of g is stored
    let row = kk * r;
    let losses: Vec<f64> = g
        .par_chunks_mut(row)
        .zip(x.par_chunks(row).zip(y.par_chunks(row)))
        .zip(v.par_chunks(kk))
        .map(|((gr, (xr, yr)), vr)| {
            let mut sum = 0f64;
            for k in 0..kk {
                for t in 0..r {
                    let i = k * r + t;
                    if vr[k] == 0.0 || !xr[i].is_finite() {
                        gr[i] = 0.0;
                        continue;
                    }
                    let (xv, yv) = (xr[i], yr[i]);
                    // softplus(x) = relu(x) + log(1 + e^{−|x|}); σ(x) its derivative
                    let sp_pos = xv.max(0.0) + (-xv.abs()).exp().ln_1p();
                    let sp_neg = sp_pos - xv;
                    let sig = 1.0 / (1.0 + (-xv).exp());
                    let (l, d) = if pw == 1.0 { (sp_pos - xv * yv, sig - yv) } else { (pw * yv * sp_neg + (1.0 - yv) * sp_pos, pw * yv * (sig - 1.0) + (1.0 - yv) * sig) };
                    sum += (l * vr[k]) as f64;
                    gr[i] = (d * vr[k]) as f32 * f as f32;
                }
            }
            sum
        })
        .collect();
    let loss = losses.iter().sum::<f64>() * f;
    Ok((loss, Tensor::from_vec(g, (b, n, kk, r), logits.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_mark_both_triangles_and_count_long_entities() {
        let band = Band::new(2);
        let gold = vec![vec![
            GoldSpan { start: 1, end: 3, label: 1 },
            GoldSpan { start: 4, end: 4, label: 0 },
            GoldSpan { start: 0, end: 4, label: 0 }, // 5 words > w + 1 = 3
        ]];
        let bl = band_labels(&gold, &[5], 6, band, 2, &Device::Cpu).unwrap();
        assert_eq!(bl.too_long, 1);
        let y: Vec<f32> = bl.labels.flatten_all().unwrap().to_vec1().unwrap();
        let at = |i: usize, k: usize, t: usize| y[(i * 5 + k) * 2 + t];
        assert_eq!(at(1, 4, 1), 1.0); // (1,3): row 1, k = w + 2
        assert_eq!(at(3, 0, 1), 1.0); // (3,1): row 3, k = w − 2
        assert_eq!(at(4, 2, 0), 1.0); // (4,4): diagonal
        assert_eq!(y.iter().sum::<f32>(), 3.0);
        assert!(band_labels(&[vec![GoldSpan { start: 2, end: 5, label: 0 }]], &[5], 6, band, 2, &Device::Cpu).is_err());
    }

    /// The hand-written gradient equals candle's backward of [`bce_loss`], with and without
    /// a positive weight, on random logits with invalid rows.
    #[test]
    fn hand_gradient_matches_autograd() {
        let dev = Device::Cpu;
        let logits = (Tensor::randn(0f32, 3.0, (2, 5, 3, 4), &dev).unwrap()).contiguous().unwrap();
        let labels = Tensor::rand(0f32, 1.0, (2, 5, 3, 4), &dev).unwrap().ge(0.7).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        let valid = Tensor::rand(0f32, 1.0, (2, 5, 3), &dev).unwrap().ge(0.3).unwrap().to_dtype(candle_core::DType::F32).unwrap();
        for pw in [1.0, 3.0] {
            let var = candle_core::Var::from_tensor(&logits).unwrap();
            let want = (bce_loss(var.as_tensor(), &labels, &valid, pw).unwrap() * 0.5).unwrap();
            let store = want.backward().unwrap();
            let wg: Vec<f32> = store.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let (loss, g) = bce_loss_grad(&logits, &labels, &valid, pw, 0.5).unwrap();
            let gg: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            let wl = want.to_scalar::<f32>().unwrap() as f64;
            assert!((loss - wl).abs() < 1e-4 * wl.abs().max(1.0), "loss {loss} vs {wl}");
            let diff = wg.iter().zip(&gg).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(diff < 1e-6, "pos_weight {pw}: max gradient difference {diff}");
        }
    }

    #[test]
    fn bce_matches_hand_computed_values() {
        let logits = Tensor::new(&[[[[0.0f32, 2.0]], [[-1.0, 3.0]]]], &Device::Cpu).unwrap(); // [1,2,1,2]
        let labels = Tensor::new(&[[[[1.0f32, 0.0]], [[1.0, 1.0]]]], &Device::Cpu).unwrap();
        let valid = Tensor::new(&[[[1.0f32], [0.0]]], &Device::Cpu).unwrap(); // second row invalid
        let l = bce_loss(&logits, &labels, &valid, 1.0).unwrap().to_scalar::<f32>().unwrap();
        let want = (2f64).ln() + (1.0 + 2f64.exp()).ln(); // −log σ(0) − log(1 − σ(2))
        assert!((l as f64 - want).abs() < 1e-5, "{l} vs {want}");
        // positives weighted by 3: only the first cell is positive
        let l3 = bce_loss(&logits, &labels, &valid, 3.0).unwrap().to_scalar::<f32>().unwrap();
        let want3 = 3.0 * (2f64).ln() + (1.0 + 2f64.exp()).ln();
        assert!((l3 as f64 - want3).abs() < 1e-5, "{l3} vs {want3}");
    }
}
