//! The span side against the PyTorch implementation written from the spec in
//! `tools/make_fixtures.py` (L×L biaffine cropped to the band, roll-with-modulo vertical view,
//! torch conv2d), and against a naive L×L reference written here.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sener::nn::ForwardCtx;
use sener::span::pooling::WordPooling;
use sener::span::{SpanConfig, SpanModel};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

struct Fixture {
    model: SpanModel,
    hidden: Tensor,
    indexes: Vec<Vec<u32>>,
    lens: Vec<usize>,
    logits: Tensor,
    meta: serde_json::Value,
}

fn load() -> Fixture {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("span_tiny/decoded.json")).unwrap()).unwrap();
    let cfg = SpanConfig {
        window: meta["window"].as_u64().unwrap() as usize,
        cnn_dim: meta["cnn_dim"].as_u64().unwrap() as usize,
        biaffine_size: meta["biaffine_size"].as_u64().unwrap() as usize,
        cnn_depth: meta["cnn_depth"].as_u64().unwrap() as usize,
        ..SpanConfig::default()
    };
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[fixture("span_tiny/weights.safetensors")], DType::F32, &Device::Cpu) }
        .unwrap();
    let e = candle_core::safetensors::load(fixture("span_tiny/expected.safetensors"), &Device::Cpu).unwrap();
    let hidden = e["hidden"].clone();
    let model = SpanModel::load(&vb, cfg, hidden.dim(2).unwrap(), meta["labels"].as_u64().unwrap() as usize).unwrap();
    let indexes: Vec<Vec<u32>> =
        e["indexes"].to_dtype(DType::U32).unwrap().to_vec2().unwrap();
    let lens: Vec<usize> = e["lens"].to_vec1::<i64>().unwrap().into_iter().map(|x| x as usize).collect();
    Fixture { model, hidden, indexes, lens, logits: e["logits"].clone(), meta }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn span_side_matches_pytorch_reference() {
    let f = load();
    let n = *f.lens.iter().max().unwrap();
    let t = f.hidden.dim(1).unwrap();
    let pooling = WordPooling::new(&f.indexes, t, n).unwrap();
    let words = pooling.forward(&f.hidden).unwrap();
    for ctx in [ForwardCtx::eval(), ForwardCtx::grad_only()] {
        let mut ctx = ctx;
        let out = f.model.forward(&words, &f.lens, &mut ctx).unwrap();
        let logits = SpanModel::inference_logits(&out).unwrap();
        assert_eq!(logits.dims(), f.logits.dims());
        let diff = max_abs(&logits, &f.logits);
        assert!(diff <= 1e-4, "max abs diff {diff}");
    }
    assert!(f.meta["decoded"].as_array().unwrap().iter().all(|d| !d.as_array().unwrap().is_empty()));
}

#[test]
fn decoded_spans_match_the_reference_decoder() {
    let f = load();
    let n = *f.lens.iter().max().unwrap();
    let words = WordPooling::new(&f.indexes, f.hidden.dim(1).unwrap(), n).unwrap().forward(&f.hidden).unwrap();
    let out = f.model.forward(&words, &f.lens, &mut ForwardCtx::eval()).unwrap();
    let logits = SpanModel::inference_logits(&out).unwrap();
    let (w, r) = (f.model.config.window, f.model.labels);
    for (b, want) in f.meta["decoded"].as_array().unwrap().iter().enumerate() {
        // One segment per document, cropped to its own words (as the official code pads per batch).
        let len = f.lens[b];
        let seg = logits.get(b).unwrap().narrow(0, 0, len).unwrap();
        let flat: Vec<f32> = seg.flatten_all().unwrap().to_vec1().unwrap();
        let spans = sener::decode::decode_segment(&flat, len, w, r, &sener::decode::DecodeOptions::default()).unwrap();
        let got: Vec<Vec<u64>> = spans.iter().map(|s| vec![s.start as u64, s.end as u64 + 1, s.label as u64]).collect();
        let want: Vec<Vec<u64>> =
            want.as_array().unwrap().iter().map(|s| s.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()).collect();
        assert_eq!(got, want, "document {b}");
    }
}

#[test]
fn inference_builds_no_graph_and_training_does() {
    // A forward that tracks its parameters keeps every intermediate alive (O(n·K²) memory at
    // inference): eval must be detached, grad mode tracked.
    let f = load();
    let n = *f.lens.iter().max().unwrap();
    let words = WordPooling::new(&f.indexes, f.hidden.dim(1).unwrap(), n).unwrap().forward(&f.hidden).unwrap();
    let eval = f.model.forward(&words, &f.lens, &mut ForwardCtx::eval()).unwrap();
    assert!(!eval.logits.track_op(), "eval forward is attached to the parameters' graph");
    let train = f.model.forward(&words, &f.lens, &mut ForwardCtx::grad_only()).unwrap();
    assert!(train.logits.track_op());
}

#[test]
fn gradients_reach_every_span_parameter() {
    let f = load();
    let n = *f.lens.iter().max().unwrap();
    let words = WordPooling::new(&f.indexes, f.hidden.dim(1).unwrap(), n).unwrap().forward(&f.hidden).unwrap();
    let out = f.model.forward(&words, &f.lens, &mut ForwardCtx::train(3)).unwrap();
    let loss = (out.logits.sqr().unwrap().broadcast_mul(&out.valid.unsqueeze(3).unwrap()).unwrap()).sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let params = f.model.params();
    assert!(params.len() > 20);
    for (name, var) in params {
        let g = grads.get(&var).unwrap_or_else(|| panic!("{name}: no gradient"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{name}: gradient norm {norm}");
    }
}

#[test]
fn a_few_optimizer_steps_fit_one_document() {
    use candle_nn::Optimizer;
    use sener::span::band::Band;
    use sener::span::loss::{band_labels, bce_loss, GoldSpan};
    let f = load();
    // Document 0 alone (11 words), gold: nested and boundary-sharing spans of three types.
    let hidden = f.hidden.narrow(0, 0, 1).unwrap();
    let idx = vec![f.indexes[0].clone()];
    let len = f.lens[0];
    let words = WordPooling::new(&idx, hidden.dim(1).unwrap(), len).unwrap().forward(&hidden).unwrap();
    let gold = vec![
        GoldSpan { start: 1, end: 3, label: 0 },
        GoldSpan { start: 2, end: 2, label: 1 },
        GoldSpan { start: 3, end: 6, label: 2 },
        GoldSpan { start: 9, end: 10, label: 4 },
    ];
    let (w, r) = (f.model.config.window, f.model.labels);
    let labels = band_labels(&[gold.clone()], &[len], len, Band::new(w), r, &Device::Cpu).unwrap();
    assert_eq!(labels.too_long, 0);
    let vars: Vec<candle_core::Var> = f.model.params().into_iter().map(|(_, v)| v).collect();
    let mut opt = candle_nn::AdamW::new(vars, candle_nn::ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..Default::default() }).unwrap();
    let mut losses = Vec::new();
    for _ in 0..60 {
        let out = f.model.forward(&words, &[len], &mut ForwardCtx::grad_only()).unwrap();
        let loss = bce_loss(&out.logits, &labels.labels, &out.valid, 1.0).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    assert!(losses[59] < 0.1 * losses[0], "loss {} → {}", losses[0], losses[59]);
    let out = f.model.forward(&words, &[len], &mut ForwardCtx::eval()).unwrap();
    let flat: Vec<f32> = SpanModel::inference_logits(&out).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let spans = sener::decode::decode_segment(&flat, len, w, r, &sener::decode::DecodeOptions::default()).unwrap();
    let got: Vec<(usize, usize, usize)> = spans.iter().map(|s| (s.start, s.end, s.label)).collect();
    let want: Vec<(usize, usize, usize)> = gold.iter().map(|g| (g.start, g.end, g.label)).collect();
    assert_eq!(got, want, "losses {losses:?}");
}
