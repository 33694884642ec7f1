//! A naive reference of the span side written here with plain loops in f64: the full L×L span
//! tensor, row attention along each row of it (horizontal) and column attention along each
//! column (vertical), both restricted to |i − j| ≤ w as the band is, then the band-coordinate
//! convolutions and the head. The banded implementation must match it on every valid cell.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use sener::nn::ForwardCtx;
use sener::span::pooling::WordPooling;
use sener::span::{SpanConfig, SpanModel};

type P = HashMap<String, (Vec<usize>, Vec<f64>)>;

fn get<'a>(p: &'a P, k: &str) -> &'a [f64] {
    &p[k].1
}

/// Exact (erf) GELU.
fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// erf with |error| < 1e-12 (Taylor series for |x| < 3, asymptotic continued fraction beyond).
fn erf(x: f64) -> f64 {
    let a = x.abs();
    let v = if a < 3.0 {
        let mut sum = a;
        let mut term = a;
        let mut n = 0.0;
        loop {
            n += 1.0;
            term *= -a * a / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * sum
    } else {
        // erfc continued fraction
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    v.copysign(x)
}

fn linear(w: &[f64], b: Option<&[f64]>, x: &[f64], out: usize) -> Vec<f64> {
    let inp = x.len();
    (0..out).map(|o| (0..inp).map(|i| w[o * inp + i] * x[i]).sum::<f64>() + b.map_or(0.0, |b| b[o])).collect()
}

fn layer_norm(x: &[f64], g: &[f64], b: &[f64]) -> Vec<f64> {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|a| (a - m) * (a - m)).sum::<f64>() / n;
    x.iter().enumerate().map(|(i, a)| (a - m) / (v + 1e-5).sqrt() * g[i] + b[i]).collect()
}

fn rope(x: &[f64], pos: usize) -> Vec<f64> {
    let c = x.len();
    let mut out = vec![0.0; c];
    for k in 0..c / 2 {
        let th = pos as f64 * 10000f64.powf(-2.0 * k as f64 / c as f64);
        let (s, co) = (th.sin(), th.cos());
        out[2 * k] = x[2 * k] * co - x[2 * k + 1] * s;
        out[2 * k + 1] = x[2 * k + 1] * co + x[2 * k] * s;
    }
    out
}

#[test]
fn banded_span_side_equals_naive_lxl_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/span_tiny");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("decoded.json")).unwrap()).unwrap();
    let (w, c, size, depth, r) = (4usize, 8usize, 10usize, 2usize, 5usize);
    assert_eq!(meta["window"], w);
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), &Device::Cpu).unwrap();
    let p: P = weights
        .iter()
        .map(|(k, t)| (k.clone(), (t.dims().to_vec(), t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap())))
        .collect();
    let e = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let hidden: Vec<Vec<Vec<f64>>> = e["hidden"].to_dtype(DType::F64).unwrap().to_vec3().unwrap();
    let indexes: Vec<Vec<u32>> = e["indexes"].to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    let lens: Vec<usize> = e["lens"].to_vec1::<i64>().unwrap().iter().map(|&x| x as usize).collect();
    let n = *lens.iter().max().unwrap();
    let kk = 2 * w + 1;
    let d = hidden[0][0].len();

    // The banded model on the same inputs.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("weights.safetensors")], DType::F64, &Device::Cpu) }.unwrap();
    let cfg = SpanConfig { window: w, cnn_dim: c, biaffine_size: size, cnn_depth: depth, ..SpanConfig::default() };
    let model = SpanModel::load(&vb, cfg, d, r).unwrap();
    let h = e["hidden"].to_dtype(DType::F64).unwrap();
    let words = WordPooling::new(&indexes, h.dim(1).unwrap(), n).unwrap().forward(&h).unwrap();
    let out = model.forward(&words, &lens, &mut ForwardCtx::eval()).unwrap();
    let banded: Vec<f64> = out.logits.flatten_all().unwrap().to_vec1().unwrap();

    for b in 0..lens.len() {
        let len = lens[b];
        // word pooling: max over subwords, 0 for empty words
        let mut hw = vec![vec![f64::NEG_INFINITY; d]; n];
        for (t, &m) in indexes[b].iter().enumerate() {
            if m > 0 {
                for k in 0..d {
                    hw[m as usize - 1][k] = hw[m as usize - 1][k].max(hidden[b][t][k]);
                }
            }
        }
        for v in hw.iter_mut() {
            if v[0] == f64::NEG_INFINITY {
                *v = vec![0.0; d];
            }
        }
        let mlp = |name: &str, x: &[f64]| -> Vec<f64> {
            let mut y: Vec<f64> = linear(get(&p, &format!("{name}.weight")), Some(get(&p, &format!("{name}.bias"))), x, size)
                .into_iter()
                .map(gelu)
                .collect();
            y.push(1.0);
            y
        };
        let hs: Vec<Vec<f64>> = hw.iter().map(|x| mlp("head_mlp.1", x)).collect();
        let he: Vec<Vec<f64>> = hw.iter().map(|x| mlp("tail_mlp.1", x)).collect();
        let x1 = size + 1;
        // full L×L span tensor
        let (u, wm) = (get(&p, "U"), get(&p, "W"));
        let mut full = vec![vec![vec![0.0; c]; len]; len];
        for i in 0..len {
            for j in 0..len {
                for o in 0..c {
                    let mut s = 0.0;
                    for a in 0..x1 {
                        for bb in 0..x1 {
                            s += hs[i][a] * u[(o * x1 + a) * x1 + bb] * he[j][bb];
                        }
                    }
                    for a in 0..x1 {
                        s += wm[o * 2 * x1 + a] * hs[i][a] + wm[o * 2 * x1 + x1 + a] * he[j][a];
                    }
                    full[i][j][o] = s;
                }
            }
        }
        let inband = |i: usize, j: usize| i.abs_diff(j) <= w;
        // x over the L×L matrix (only band pairs are used)
        let mut x = full.clone();
        let s_full = full;
        for l in 0..depth {
            let pre = format!("cross_layers.{l}.");
            let g = |k: &str| get(&p, &format!("{pre}{k}"));
            let pe = g("pos_embed.weight");
            for i in 0..len {
                for j in 0..len {
                    for o in 0..c {
                        x[i][j][o] = x[i][j][o].clamp(-1000.0, 1000.0) + pe[(j >= i) as usize * c + o];
                    }
                }
            }
            let qkv = |name: &str, v: &[f64]| -> Vec<f64> {
                linear(g(&format!("{name}.weight")), Some(g(&format!("{name}.bias"))), v, 3 * c).into_iter().map(|a| a.clamp(-1e4, 1e4)).collect()
            };
            // attention of query `q_cell` over `keys`, each with its band position
            let attend = |name: &str, q_cell: (&[f64], usize), keys: &[(Vec<f64>, usize)]| -> Vec<f64> {
                let q = rope(&qkv(name, q_cell.0)[..c], q_cell.1);
                let scores: Vec<f64> = keys
                    .iter()
                    .map(|(kv, pos)| {
                        let k = rope(&qkv(name, kv)[c..2 * c], *pos);
                        (q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (c as f64).sqrt()).clamp(-1e4, 1e4)
                    })
                    .collect();
                let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s - m).exp()).sum();
                let mut out = vec![0.0; c];
                for ((kv, _), s) in keys.iter().zip(&scores) {
                    let v = &qkv(name, kv)[2 * c..];
                    for o in 0..c {
                        out[o] += (s - m).exp() / z * v[o];
                    }
                }
                out
            };
            // Y on band cells (i, k), pair (i, j = i + k − w); the quirk: Zv of pair (j, i).
            let mut y = vec![vec![vec![0.0; c]; kk]; n];
            for i in 0..len {
                let row: Vec<(Vec<f64>, usize)> =
                    (0..len).filter(|&j| inband(i, j)).map(|j| (x[i][j].clone(), j + w - i)).collect();
                let col: Vec<(Vec<f64>, usize)> =
                    (0..len).filter(|&j| inband(i, j)).map(|j| (x[j][i].clone(), j + w - i)).collect();
                for k in 0..kk {
                    let j = i as i64 + k as i64 - w as i64;
                    if j < 0 || j >= len as i64 {
                        continue;
                    }
                    let j = j as usize;
                    let zh = attend("h_qkv", (&x[i][j], k), &row);
                    let zv = attend("v_qkv", (&x[j][i], k), &col);
                    let cat: Vec<f64> = zh.into_iter().chain(zv).collect();
                    let dd = linear(g("dense.weight"), Some(g("dense.bias")), &cat, c);
                    let sum: Vec<f64> = x[i][j].iter().zip(&dd).map(|(a, b)| a + b).collect();
                    y[i][k] = layer_norm(&sum, g("LayerNorm.weight"), g("LayerNorm.bias"));
                }
            }
            // two 3×3 convolutions in band coordinates, inputs masked to valid cells
            let valid = |i: i64, k: i64| -> bool {
                let j = i + k - w as i64;
                i >= 0 && (i as usize) < len && k >= 0 && (k as usize) < kk && j >= 0 && (j as usize) < len
            };
            let conv = |inp: &Vec<Vec<Vec<f64>>>, wt: &[f64]| -> Vec<Vec<Vec<f64>>> {
                let mut out = vec![vec![vec![0.0; c]; kk]; n];
                for i in 0..n {
                    for k in 0..kk {
                        for o in 0..c {
                            let mut s = 0.0;
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let (ii, kx) = (i as i64 + dy as i64 - 1, k as i64 + dx as i64 - 1);
                                    if !valid(ii, kx) {
                                        continue;
                                    }
                                    for a in 0..c {
                                        s += wt[((o * c + a) * 3 + dy) * 3 + dx] * inp[ii as usize][kx as usize][a];
                                    }
                                }
                            }
                            out[i][k][o] = s;
                        }
                    }
                }
                out
            };
            let mut hmid = conv(&y, g("conv1.conv2d.weight"));
            for row in hmid.iter_mut() {
                for cell in row.iter_mut() {
                    for v in cell.iter_mut() {
                        *v = gelu(*v);
                    }
                }
            }
            let h2 = conv(&hmid, g("conv2.conv2d.weight"));
            for i in 0..len {
                for k in 0..kk {
                    let j = i as i64 + k as i64 - w as i64;
                    if j < 0 || j >= len as i64 {
                        continue;
                    }
                    let sum: Vec<f64> = y[i][k].iter().zip(&h2[i][k]).map(|(a, b)| a + b).collect();
                    x[i][j as usize] = layer_norm(&sum, g("LayerNorm2.weight"), g("LayerNorm2.bias"));
                }
            }
        }
        // head on (S″ + S), compared on every valid cell
        let mut checked = 0;
        for i in 0..len {
            for k in 0..kk {
                let j = i as i64 + k as i64 - w as i64;
                if j < 0 || j >= len as i64 {
                    continue;
                }
                let j = j as usize;
                let sum: Vec<f64> = x[i][j].iter().zip(&s_full[i][j]).map(|(a, b)| a + b).collect();
                let logits = linear(get(&p, "down_fc.weight"), Some(get(&p, "down_fc.bias")), &sum, r);
                for t in 0..r {
                    let got = banded[((b * n + i) * kk + k) * r + t];
                    // f64 throughout; the RoPE table is f32-rounded as the official one is (~1e-8).
                    assert!((got - logits[t]).abs() <= 1e-6 * (1.0 + logits[t].abs()), "doc {b} cell ({i},{k}) type {t}: banded {got} vs naive {}", logits[t]);
                    checked += 1;
                }
            }
        }
        assert!(checked > 100);
    }
}
