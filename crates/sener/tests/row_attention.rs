//! The fused BiSPA row attention against the composite candle-op version: forward, gradients of
//! every span parameter, and the dropout path with the same mask.

use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use sener::nn::ForwardCtx;
use sener::span::pooling::WordPooling;
use sener::span::row_attention::{dropout_keep, dropout_row, RowAttention};
use sener::span::{SpanConfig, SpanModel};

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let m = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    d / m.max(1e-6)
}

#[test]
fn fused_equals_composite_forward_and_gradients() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/span_tiny");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join("weights.safetensors")], DType::F32, &Device::Cpu) }.unwrap();
    let cfg = SpanConfig { window: 4, cnn_dim: 8, biaffine_size: 10, cnn_depth: 2, ..SpanConfig::default() };
    let mut model = SpanModel::load(&vb, cfg, 16, 5).unwrap();
    let e = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let idx: Vec<Vec<u32>> = e["indexes"].to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    let lens = vec![11usize, 7];
    let words = WordPooling::new(&idx, e["hidden"].dim(1).unwrap(), 11).unwrap().forward(&e["hidden"]).unwrap();
    let mut run = |fused: bool| {
        model.set_fused_attention(fused);
        let out = model.forward(&words, &lens, &mut ForwardCtx::grad_only()).unwrap();
        let loss = (out.logits.sqr().unwrap().broadcast_mul(&out.valid.unsqueeze(3).unwrap()).unwrap()).sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let g: Vec<(String, Tensor)> = model.params().into_iter().map(|(n, v)| (n, grads.get(&v).unwrap().clone())).collect();
        (out.logits, g)
    };
    let (lf, gf) = run(true);
    let (lc, gc) = run(false);
    assert!(max_rel(&lf, &lc) < 1e-5, "forward {}", max_rel(&lf, &lc));
    for ((n, a), (_, b)) in gf.iter().zip(&gc) {
        assert!(max_rel(a, b) < 1e-3, "{n}: {}", max_rel(a, b));
    }
}

#[test]
fn dropout_path_matches_an_explicit_mask_reference() {
    let (r, kk, c) = (5usize, 9usize, 4usize);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let mut rnd = |n: usize| Tensor::from_vec((0..n).map(|_| rng.random_range(-2f32..2.0)).collect::<Vec<_>>(), (r, kk, c), &Device::Cpu).unwrap();
    let (q, k, v) = (Var::from_tensor(&rnd(r * kk * c)).unwrap(), Var::from_tensor(&rnd(r * kk * c)).unwrap(), Var::from_tensor(&rnd(r * kk * c)).unwrap());
    let valid: Vec<f32> = (0..r * kk).map(|x| if x % 7 == 3 { 0.0 } else { 1.0 }).collect();
    let (p, seed, scale) = (0.3f32, 77u64, 0.5f32);
    let op = RowAttention { valid: std::sync::Arc::new(valid.clone()), scale, dropout: p, seed };
    let fused = q.as_tensor().apply_op3(k.as_tensor(), v.as_tensor(), op).unwrap();
    // Reference with candle ops and the same mask.
    let keep = 1.0 - p;
    let mask: Vec<f32> = (0..r)
        .flat_map(|row| (0..kk).flat_map(move |i| (0..kk).map(move |j| if dropout_keep(seed, row, i, j, kk, keep) { 1.0 / keep } else { 0.0 })))
        .collect();
    let mask = Tensor::from_vec(mask, (r, kk, kk), &Device::Cpu).unwrap();
    let vk = Tensor::from_vec(valid, (r, 1, kk), &Device::Cpu).unwrap();
    let s = (q.as_tensor().matmul(&k.as_tensor().t().unwrap()).unwrap() * scale as f64).unwrap().clamp(-1e4f32, 1e4f32).unwrap();
    let s = s.broadcast_add(&((&vk - 1.0).unwrap() * 1e4).unwrap()).unwrap();
    let a = candle_nn::ops::softmax(&s, candle_core::D::Minus1).unwrap().broadcast_mul(&vk).unwrap().mul(&mask).unwrap();
    let reference = a.matmul(v.as_tensor()).unwrap();
    assert!(max_rel(&fused, &reference) < 1e-5);
    let w = rnd(r * kk * c);
    let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let gr = (&reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
    for var in [&q, &k, &v] {
        assert!(max_rel(gf.get(var).unwrap(), gr.get(var).unwrap()) < 1e-4);
    }
}

/// The row-at-a-time (vectorised) dropout mask makes exactly the per-cell decisions.
#[test]
fn dropout_row_equals_dropout_keep() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..200 {
        let (seed, k) = (rng.random::<u64>(), rng.random_range(1..300usize));
        let (row, i) = (rng.random_range(0..5000usize), rng.random_range(0..k));
        let keep = rng.random_range(0.05f32..1.0);
        let mut out = vec![7f32; k];
        dropout_row(seed, row, i, k, keep, &mut out);
        for (j, &o) in out.iter().enumerate() {
            assert_eq!(o == 1.0, dropout_keep(seed, row, i, j, k, keep), "seed {seed} row {row} i {i} j {j}");
            assert!(o == 0.0 || o == 1.0);
        }
    }
}

/// `--dtype bf16` at inference: the span side's row-attention products (and, with AMX, the band
/// convolutions) in bf16 give the f32 logits to bf16 accuracy, the f32 logits exactly again
/// when switched back, and gradient passes are untouched (they stay f32).
#[test]
fn bf16_inference_stays_close_to_f32_and_gradient_passes_stay_f32() {
    use sener::gemm_bf16::{Bf16Kernel, Precision};
    let Some(k) = Bf16Kernel::detect() else {
        eprintln!("no bf16 kernel on this CPU: nothing to check");
        return;
    };
    // cnn_dim 32 and a window of 20 (K = 41 > 32): every tile path with ragged edges runs.
    let cfg = SpanConfig { window: 20, cnn_dim: 32, biaffine_size: 10, cnn_depth: 2, ..SpanConfig::default() };
    let mut model = SpanModel::init(cfg, 16, 5, 7, DType::F32, &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(4);
    let (n, lens) = (50usize, vec![50usize, 33]);
    let vals: Vec<f32> = (0..2 * n * 16).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let words = Tensor::from_vec(vals, (2, n, 16), &Device::Cpu).unwrap();
    let f32_eval = model.forward(&words, &lens, &mut ForwardCtx::eval()).unwrap().logits;
    let f32_grad = model.forward(&words, &lens, &mut ForwardCtx::grad_only()).unwrap().logits;
    model.set_precision(Precision::Bf16(k));
    let bf16_eval = model.forward(&words, &lens, &mut ForwardCtx::eval()).unwrap().logits;
    let d = max_rel(&bf16_eval, &f32_eval);
    eprintln!("bf16 vs f32 logits: relative {d:.2e}");
    assert!(d > 0.0 && d < 2e-2, "bf16 inference differs from f32 by {d}");
    let bf16_grad = model.forward(&words, &lens, &mut ForwardCtx::grad_only()).unwrap().logits;
    assert_eq!(max_rel(&bf16_grad, &f32_grad), 0.0, "gradient passes stay f32");
    model.set_precision(Precision::F32);
    let back = model.forward(&words, &lens, &mut ForwardCtx::eval()).unwrap().logits;
    assert_eq!(max_rel(&back, &f32_eval), 0.0);
}
