//! The banded arrow attention against a dense reference written here from the spec (§3.2–§3.4):
//! plain loops over every (i, j) pair with the arrow mask, in f64. Also finite-difference
//! gradients through the banded path.

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sener::encoder::arrow_attention::{arrow_attention, ArrowConfig, ArrowMask, RelativeTerms};
use sener::encoder::relative_position::RelativeIndex;
use sener::nn::ForwardCtx;

struct Case {
    b: usize,
    h: usize,
    d: usize,
    lengths: Vec<usize>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    pk: Vec<f64>,
    pq: Vec<f64>,
    index: RelativeIndex,
}

impl Case {
    fn new(lengths: &[usize], h: usize, d: usize, buckets: i64, max_rel: i64, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let b = lengths.len();
        let t = *lengths.iter().max().unwrap();
        let index = RelativeIndex::new(buckets, max_rel);
        let rows = index.table_rows();
        let mut r = |n: usize| (0..n).map(|_| rng.random_range(-1.0..1.0)).collect::<Vec<f64>>();
        Self {
            b,
            h,
            d,
            lengths: lengths.to_vec(),
            q: r(b * h * t * d),
            k: r(b * h * t * d),
            v: r(b * h * t * d),
            pk: r(h * rows * d),
            pq: r(h * rows * d),
            index,
        }
    }
    fn t(&self) -> usize {
        *self.lengths.iter().max().unwrap()
    }
    fn valid(&self) -> Vec<bool> {
        let t = self.t();
        self.lengths.iter().flat_map(|&n| (0..t).map(move |i| i < n)).collect()
    }
    fn at(&self, x: &[f64], b: usize, h: usize, i: usize) -> Vec<f64> {
        let (t, d) = (self.t(), self.d);
        let o = ((b * self.h + h) * t + i) * d;
        x[o..o + d].to_vec()
    }
    fn row(&self, x: &[f64], h: usize, r: u32) -> Vec<f64> {
        let rows = self.index.table_rows();
        let o = (h * rows + r as usize) * self.d;
        x[o..o + self.d].to_vec()
    }

    /// Dense reference: every pair, arrow mask, softmax over the allowed keys.
    fn dense(&self, rel: (bool, bool), scale: f64, cfg: &ArrowConfig) -> Vec<f64> {
        let (t, d) = (self.t(), self.d);
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let mut out = vec![0.0; self.b * self.h * t * d];
        for b in 0..self.b {
            let n = self.lengths[b];
            for h in 0..self.h {
                for i in 0..n {
                    let qi = self.at(&self.q, b, h, i);
                    let mut s: Vec<(usize, f64)> = Vec::new();
                    for j in 0..n {
                        if !cfg.allows(i, j) {
                            continue;
                        }
                        let kj = self.at(&self.k, b, h, j);
                        let r = self.index.row(i as i64 - j as i64);
                        let mut x = dot(&qi, &kj);
                        if rel.0 {
                            x += dot(&qi, &self.row(&self.pk, h, r));
                        }
                        if rel.1 {
                            x += dot(&kj, &self.row(&self.pq, h, r));
                        }
                        x *= scale;
                        if i == 0 && cfg.global_cls {
                            x *= cfg.logn_factor(t);
                        }
                        s.push((j, x));
                    }
                    let m = s.iter().map(|x| x.1).fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x.1 - m).exp()).sum();
                    let o = ((b * self.h + h) * t + i) * d;
                    for (j, x) in &s {
                        let p = (x - m).exp() / z;
                        let vj = self.at(&self.v, b, h, *j);
                        for c in 0..d {
                            out[o + c] += p * vj[c];
                        }
                    }
                }
            }
        }
        out
    }

    fn tensors(&self, dtype: DType) -> [Tensor; 5] {
        let dev = Device::Cpu;
        let (b, h, t, d) = (self.b, self.h, self.t(), self.d);
        let rows = self.index.table_rows();
        let mk = |x: &Vec<f64>, s: (usize, usize, usize, usize)| Tensor::from_vec(x.clone(), s, &dev).unwrap().to_dtype(dtype).unwrap();
        let mk3 = |x: &Vec<f64>| Tensor::from_vec(x.clone(), (h, rows, d), &dev).unwrap().to_dtype(dtype).unwrap();
        [mk(&self.q, (b, h, t, d)), mk(&self.k, (b, h, t, d)), mk(&self.v, (b, h, t, d)), mk3(&self.pk), mk3(&self.pq)]
    }

    fn banded(&self, rel: (bool, bool), scale: f64, cfg: &ArrowConfig, dtype: DType) -> Vec<f64> {
        let [q, k, v, pk, pq] = self.tensors(dtype);
        let terms = RelativeTerms {
            index: self.index,
            pos_key: rel.0.then_some(pk),
            pos_query: rel.1.then_some(pq),
        };
        let use_rel = rel.0 || rel.1;
        let mask = ArrowMask::new(&self.valid(), self.b, self.t(), cfg, dtype, &Device::Cpu).unwrap();
        let out =
            arrow_attention(&q, &k, &v, &mask, use_rel.then_some(&terms), scale, 0.0, &mut ForwardCtx::eval()).unwrap();
        out.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

#[test]
fn banded_equals_dense_reference() {
    // Lengths not a multiple of the window, batch padding, windows 1/4/16/128, with and without
    // LogN, global [CLS] on and off, relative terms on and off, log buckets exercised (buckets 8).
    let mut checked = 0;
    for (lengths, buckets, max_rel) in [(vec![37usize, 23], 8i64, 64i64), (vec![70, 70], 16, 40), (vec![9], -1, 6), (vec![1, 2], 8, 16)] {
        for w in [1usize, 4, 16, 128] {
            for logn in [false, true] {
                for global in [true, false] {
                    for rel in [(true, true), (true, false), (false, true), (false, false)] {
                        let case = Case::new(&lengths, 2, 4, buckets, max_rel, 7 + w as u64);
                        let cfg = ArrowConfig { window: w, logn, logn_base: 512, global_cls: global };
                        let scale = 1.0 / (12.0f64).sqrt();
                        let want = case.dense(rel, scale, &cfg);
                        for dtype in [DType::F64, DType::F32] {
                            let got = case.banded(rel, scale, &cfg, dtype);
                            let tol = if dtype == DType::F64 { 1e-10 } else { 2e-5 };
                            let diff = max_abs_diff(&got, &want);
                            assert!(
                                diff <= tol,
                                "lengths {lengths:?} w {w} logn {logn} global {global} rel {rel:?} {dtype:?}: max diff {diff}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 4 * 2 * 2 * 4 * 2);
}

#[test]
fn logn_acts_on_cls_row_only_with_padded_length() {
    let case = Case::new(&[300, 200], 2, 4, 256, 512, 3);
    let scale = 0.5;
    let on = ArrowConfig { window: 16, ..ArrowConfig::default() };
    let off = ArrowConfig { logn: false, ..on.clone() };
    // N = 300 padded to a multiple of 2w = 32 → 320.
    assert_eq!(on.logn_length(300), 320);
    assert!((on.logn_factor(300) - (320f64).ln() / (512f64).ln()).abs() < 1e-15);
    assert_eq!(ArrowConfig::default().logn_length(5000), 5120);
    let a = case.banded((true, true), scale, &on, DType::F64);
    let b = case.banded((true, true), scale, &off, DType::F64);
    let (t, d) = (300, 4);
    for bi in 0..2 {
        for h in 0..2 {
            for i in 0..t {
                let o = ((bi * 2 + h) * t + i) * d;
                let diff = max_abs_diff(&a[o..o + d], &b[o..o + d]);
                if i == 0 {
                    assert!(diff > 1e-6, "LogN must change the [CLS] row");
                } else {
                    assert!(diff < 1e-12, "LogN must not change row {i}");
                }
            }
        }
    }
}

#[test]
fn padding_rows_are_zero_and_padding_keys_are_ignored() {
    let case = Case::new(&[10, 25], 2, 4, 8, 32, 5);
    let cfg = ArrowConfig { window: 4, ..ArrowConfig::default() };
    let out = case.banded((true, true), 0.3, &cfg, DType::F64);
    let (t, d) = (25, 4);
    for h in 0..2 {
        for i in 10..25 {
            let o = (h * t + i) * d;
            assert!(out[o..o + d].iter().all(|&x| x == 0.0), "padding row {i} not zero");
        }
    }
    // The first sequence alone gives the same numbers as inside the padded batch.
    let mut alone = Case::new(&[10], 2, 4, 8, 32, 5);
    for (dst, src) in [(&mut alone.q, &case.q), (&mut alone.k, &case.k), (&mut alone.v, &case.v)] {
        *dst = (0..2).flat_map(|h| src[h * t * d..h * t * d + 10 * d].to_vec()).collect();
    }
    alone.pk = case.pk.clone();
    alone.pq = case.pq.clone();
    // LogN depends on the batch-padded length (spec §3.4): compare with LogN off.
    let cfg = ArrowConfig { logn: false, ..cfg };
    let batched = case.banded((true, true), 0.3, &cfg, DType::F64);
    let single = alone.banded((true, true), 0.3, &cfg, DType::F64);
    for h in 0..2 {
        let diff = max_abs_diff(&batched[h * t * d..h * t * d + 10 * d], &single[h * 10 * d..(h + 1) * 10 * d]);
        assert!(diff < 1e-12, "batch padding changed the result by {diff}");
    }
}

#[test]
fn finite_difference_gradients_through_the_band() {
    // Loss = Σ out ⊙ R; autograd gradients of q, k, v and both position tables against central
    // differences, in f64, with the differentiable op set (ForwardCtx::grad_only).
    let case = Case::new(&[13, 9], 2, 3, 8, 16, 11);
    let cfg = ArrowConfig { window: 3, ..ArrowConfig::default() };
    let [q, k, v, pk, pq] = case.tensors(DType::F64);
    let vars: Vec<Var> = [q, k, v, pk, pq].iter().map(|t| Var::from_tensor(t).unwrap()).collect();
    let mask = ArrowMask::new(&case.valid(), 2, 13, &cfg, DType::F64, &Device::Cpu).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let r: Vec<f64> = (0..2 * 2 * 13 * 3).map(|_| rng.random_range(-1.0..1.0)).collect();
    let r = Tensor::from_vec(r, (2, 2, 13, 3), &Device::Cpu).unwrap();
    let loss = |ts: &[Tensor]| -> Tensor {
        let terms = RelativeTerms { index: case.index, pos_key: Some(ts[3].clone()), pos_query: Some(ts[4].clone()) };
        let out =
            arrow_attention(&ts[0], &ts[1], &ts[2], &mask, Some(&terms), 0.4, 0.0, &mut ForwardCtx::grad_only()).unwrap();
        (out * &r).unwrap().sum_all().unwrap()
    };
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = loss(&ts).backward().unwrap();
    let eps = 1e-6;
    for (vi, var) in vars.iter().enumerate() {
        let g: Vec<f64> = grads.get(var).expect("gradient missing").flatten_all().unwrap().to_vec1().unwrap();
        assert!(g.iter().any(|&x| x != 0.0), "tensor {vi}: all-zero gradient");
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = var.as_tensor().shape().clone();
        for pos in (0..base.len()).step_by((base.len() / 12).max(1)) {
            let eval = |delta: f64| -> f64 {
                let mut x = base.clone();
                x[pos] += delta;
                let mut ts = ts.clone();
                ts[vi] = Tensor::from_vec(x, shape.clone(), &Device::Cpu).unwrap();
                loss(&ts).to_scalar::<f64>().unwrap()
            };
            let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!((fd - g[pos]).abs() <= 1e-6 * (1.0 + fd.abs()), "tensor {vi} elem {pos}: autograd {} vs fd {fd}", g[pos]);
        }
    }
}
