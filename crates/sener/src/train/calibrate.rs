//! Decision thresholds chosen on held-out data.
//!
//! The official decoding keeps a span when its symmetrised probability reaches 0.5. A model
//! trained briefly on a small corpus is under-confident on the rarer and longer types (their
//! probabilities rise slowly towards the positives), so 0.5 gives good precision and little
//! recall. [`calibrate`] picks one threshold per type on held-out documents by coordinate ascent
//! on the micro F1 (every type in turn, each over [`GRID`], the others fixed; two sweeps), from
//! band logits computed once. The model folder keeps the result (`sener.json` `thresholds`) and
//! extraction uses it unless a threshold is given.

use crate::decode::{decode_segment, merge_segments, DecodeOptions, Span, Threshold};
use crate::metric::{MetricResult, Scorer};
use crate::Result;

/// Thresholds tried for each type: log-spaced below 0.1 (an undertrained model's positives can sit
/// orders of magnitude below 0.5 and still above its negatives), then every 0.05.
pub const GRID: [f32; 20] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7];

/// Band logits of held-out segments with their documents' gold spans.
pub struct HeldOut {
    /// Per segment: document index, first word's index in the document, words, flat logits
    /// `[n, 2w+1, R]` (inference logits: invalid cells −1e-6).
    pub segments: Vec<(usize, usize, usize, Vec<f32>)>,
    /// Per document: gold `(start, end_inclusive, label)` word spans.
    pub gold: Vec<Vec<(usize, usize, String)>>,
    pub labels: Vec<String>,
    /// One-sided span window.
    pub window: usize,
}

impl HeldOut {
    /// Decoded, merged spans of every document under `opts`.
    pub fn predict(&self, opts: &DecodeOptions) -> Result<Vec<Vec<Span>>> {
        let mut per_doc: Vec<Vec<(usize, Vec<Span>)>> = vec![Vec::new(); self.gold.len()];
        for (doc, offset, n, logits) in &self.segments {
            per_doc[*doc].push((*offset, decode_segment(logits, *n, self.window, self.labels.len(), opts)?));
        }
        Ok(per_doc.iter().map(|segs| merge_segments(segs)).collect())
    }

    /// The official metric under `opts`.
    pub fn score(&self, opts: &DecodeOptions) -> Result<MetricResult> {
        let mut scorer = Scorer::new(self.window);
        for (gold, pred) in self.gold.iter().zip(self.predict(opts)?) {
            let pred: Vec<(usize, usize, String)> = pred.iter().map(|s| (s.start, s.end, self.labels[s.label].clone())).collect();
            scorer.add(gold, &pred).map_err(|e| crate::Error::Input(e.to_string()))?;
        }
        Ok(scorer.result())
    }
}

/// Per-type thresholds that maximise the held-out micro F1 (see the module docs), and the
/// metric they give. Never worse on `held` than the global 0.5 it starts from.
pub fn calibrate(held: &HeldOut) -> Result<(Vec<f32>, MetricResult)> {
    let r = held.labels.len();
    let mut thr = vec![crate::decode::DEFAULT_THRESHOLD; r];
    let opts = |thr: &[f32]| DecodeOptions { threshold: Threshold::PerType(thr.to_vec()), ..DecodeOptions::default() };
    let mut best = held.score(&opts(&thr))?;
    for _sweep in 0..2 {
        let mut changed = false;
        for t in 0..r {
            for &g in &GRID {
                if g == thr[t] {
                    continue;
                }
                let mut cand = thr.clone();
                cand[t] = g;
                let m = held.score(&opts(&cand))?;
                if m.micro.f1 > best.micro.f1 {
                    best = m;
                    thr = cand;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    Ok((thr, best))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One segment of 3 words, w = 1 (K = 3), 2 types; logits chosen so that the gold span
    /// (0, 1, "a") has p̄ = σ(−1) ≈ 0.27 and a wrong span (2, 2, "b") p̄ = σ(0.5) ≈ 0.62.
    fn held() -> HeldOut {
        let (n, kk, r) = (3, 3, 2);
        let mut logits = vec![-9f32; n * kk * r];
        let at = |i: usize, k: usize, t: usize| (i * kk + k) * r + t;
        logits[at(0, 2, 0)] = -1.0; // (0,1) upper
        logits[at(1, 0, 0)] = -1.0; // (1,0) lower
        logits[at(2, 1, 1)] = 0.5; // (2,2)
        HeldOut {
            segments: vec![(0, 0, n, logits)],
            gold: vec![vec![(0, 1, "a".to_string())]],
            labels: vec!["a".into(), "b".into()],
            window: 1,
        }
    }

    #[test]
    fn thresholds_recover_an_underconfident_type_and_drop_a_wrong_one() {
        let h = held();
        let base = h.score(&DecodeOptions::default()).unwrap();
        assert_eq!((base.micro.tp, base.micro.pred), (0, 1));
        let (thr, m) = calibrate(&h).unwrap();
        assert!(thr[0] <= 0.25 && thr[1] > 0.62, "{thr:?}");
        assert_eq!((m.micro.tp, m.micro.pred, m.micro.gold), (1, 1, 1));
        assert_eq!(h.score(&DecodeOptions { threshold: Threshold::PerType(thr), ..DecodeOptions::default() }).unwrap().micro, m.micro);
    }
}
