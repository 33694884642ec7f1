//! One training micro-batch: forward, loss, backward, gradients by parameter name — either
//! plainly (candle keeps every intermediate of the whole model until the backward pass) or with
//! **recomputation** (gradient checkpointing by stages), which keeps only the stage boundaries.
//!
//! Why: candle records every intermediate of a training forward. With MiniLM that is about
//! 1.6 MB per subword in the encoder (the composite arrow-attention ops) and 1.9 MB per word on
//! the span side, and the backward pass roughly doubles it: 7.2 GB for a 1,024-token step,
//! ~30 GB (estimated) for 5,120. The arrow/band design promises memory linear in length *and*
//! small per token; the stages below deliver the second half (measured, `sener bench train-step`:
//! 1.9 GB at 1,024 tokens, 10.3 GB at 5,120, for ~20 % more time per step).
//!
//! Stages, in forward order: each encoder layer; word pooling; the biaffine band; each half of
//! each BiSPA block (attention, convolutions); the head with the loss. (Embeddings and the
//! relative-position table hold nothing trainable under LoRA and are computed once; under full
//! fine-tuning they are run once more with the graph on, before the layers are walked back.)
//!
//! 1. Forward through every stage with the graph off ([`ForwardCtx::track`] false: the same ops
//!    and dropout masks, parameters detached), keeping each stage's input (a `[B, T, hidden]` or
//!    a `[B, n, K, c]` tensor) and the dropout RNG state at its start.
//! 2. The last stage (head + loss) runs with the graph on at once; its backward gives the head's
//!    gradients and the gradients at its inputs.
//! 3. Walking back, each stage is run again from its saved input (as a fresh leaf) and RNG state,
//!    so it draws the same dropout masks and gives the same values, and
//!    `Σ(output · upstream gradient)` is differentiated: the stage's parameter gradients and the
//!    gradient at its input, which is the upstream gradient of the stage before it.
//!
//! Peak memory is then one stage's graph plus the boundaries, at the cost of one more forward
//! pass. The values are those of the plain pass (same ops, same masks); gradients agree up to
//! float summation order (tested below). The context's RNG ends where a plain pass leaves it, so
//! runs stay reproducible and resumable.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use crate::model::{Batch, Sener};
use crate::nn::ForwardCtx;
use crate::span::loss::bce_loss;
use crate::Result;

/// When to recompute instead of keeping the whole graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// For micro-batches of at least [`AUTO_TOKENS`] tokens (padding included).
    #[default]
    Auto,
    Always,
    Never,
}

/// [`Recompute::Auto`] switches on at this many tokens per micro-batch off the CPU's fused path:
/// below it the whole graph fits in a few GB, and the extra forward pass (~30 % of a step) is
/// not worth it. On the fused path it is always on: there the stages have backward passes of
/// their own (BiSPA halves, biaffine, head and loss), so a recomputed step is both faster and
/// several times leaner than the recorded graph at every length (MiniLM, 512 tokens: 1.94 s and
/// 425 MiB against 2.00 s and 2,699 MiB; 1,024 tokens: 3.71 s / 589 MiB against 4.35 s /
/// 5,226 MiB).
pub const AUTO_TOKENS: usize = 2048;

impl Recompute {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Always => "always",
            Self::Never => "never",
        }
    }

    /// Whether a micro-batch of `tokens` tokens (padding included) is recomputed; `fused`: the
    /// step runs on the CPU's fused path ([`ForwardCtx::fused_on`]).
    pub fn applies(self, tokens: usize, fused: bool) -> bool {
        match self {
            Self::Auto => fused || tokens >= AUTO_TOKENS,
            Self::Always => true,
            Self::Never => false,
        }
    }

    /// How a micro-batch of `tokens` tokens is differentiated: [`Self::applies`], and under
    /// [`Self::Auto`] on the fused path the encoder layers' states are kept from the first pass
    /// (no second forward pass through the encoder) while they take at most
    /// [`KEEP_ENCODER_BYTES`]; `saved_bytes_per_token`: [`crate::encoder::Encoder::saved_layer_bytes`].
    pub fn plan(self, tokens: usize, fused: bool, saved_bytes_per_token: usize) -> Plan {
        let recompute = self.applies(tokens, fused);
        let keep_encoder = self == Self::Auto && recompute && fused && tokens.saturating_mul(saved_bytes_per_token) <= KEEP_ENCODER_BYTES;
        Plan { recompute, keep_encoder }
    }
}

/// [`Recompute::Auto`] keeps the encoder layers' states from the first pass while they take at
/// most this much (DeBERTa-v3-base: 0.74 MB a token, so up to ~4,300 tokens a micro-batch;
/// MiniLM-L12: 0.37 MB). That spares the encoder's second forward pass (about 1.4 s of an
/// 11-second step at 2,048 tokens, DeBERTa-v3-base shape) for memory that stays within a few
/// GB; longer micro-batches, and [`Recompute::Always`], recompute every layer.
pub const KEEP_ENCODER_BYTES: usize = 3 << 30;

/// How one micro-batch is differentiated ([`Recompute::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// By stages (recomputation), not through one recorded graph.
    pub recompute: bool,
    /// With `recompute`: keep every encoder layer's state from the first pass instead of running
    /// the layer again in the backward pass (where the layer's backward by hand applies).
    pub keep_encoder: bool,
}

impl Plan {
    /// One recorded graph.
    pub const PLAIN: Plan = Plan { recompute: false, keep_encoder: false };
    /// Every stage recomputed.
    pub const RECOMPUTE: Plan = Plan { recompute: true, keep_encoder: false };
}

impl std::str::FromStr for Recompute {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            o => Err(format!("recompute must be auto, always or never, not `{o}`")),
        }
    }
}

/// Loss and gradients of one micro-batch.
pub struct StepGrads {
    /// The loss (already multiplied by the caller's `scale`).
    pub loss: f64,
    /// Gradient of every trainable tensor that the loss reaches, by [`Sener::trainable`] name.
    pub grads: HashMap<String, Tensor>,
}

/// Forward, `scale ×` BCE loss (spec §6), backward. `labels`: `[B, n, K, R]` band labels.
pub fn loss_and_grads(model: &Sener, batch: &Batch, labels: &Tensor, scale: f64, pos_weight: f64, ctx: &mut ForwardCtx, plan: Plan) -> Result<StepGrads> {
    let trainable = model.trainable();
    if !plan.recompute {
        let out = model.forward(batch, ctx)?;
        let loss = (bce_loss(&out.logits, labels, &out.valid, pos_weight)? * scale)?;
        let store = loss.backward()?;
        let mut grads = HashMap::new();
        collect(&store, &trainable, &mut grads)?;
        return Ok(StepGrads { loss: loss.to_scalar::<f32>()? as f64, grads });
    }
    // the first pass runs with the graph off (`staged` turns it on for the backward stages)
    ctx.untracked(|ctx| staged(model, batch, labels, scale, pos_weight, ctx, &trainable, plan.keep_encoder))
}

#[allow(clippy::too_many_arguments)]
fn staged(model: &Sener, batch: &Batch, labels: &Tensor, scale: f64, pos_weight: f64, ctx: &mut ForwardCtx, trainable: &[(String, Var)], keep_encoder: bool) -> Result<StepGrads> {
    let (enc, span) = (&model.encoder, &model.span);
    // Under full fine-tuning the embeddings and (DeBERTa) the relative-position table are
    // trainable too: `begin` is then run again with the graph on before the layers are walked
    // back (see below).
    let full = enc.is_fully_trainable();
    // ---- 1. forward, graph off: stage inputs and RNG states ----
    mem_mark("start");
    let begin_rng = ctx.rng().clone();
    let (x0, shared) = enc.begin(&batch.ids, &batch.mask, ctx)?;
    let layers = enc.num_layers();
    let mut hs = vec![x0];
    let mut layer_rng: Vec<ChaCha8Rng> = Vec::with_capacity(layers);
    // with `keep_encoder`, each layer's state for its backward pass by hand (where that applies)
    let mut kept: Vec<Option<crate::encoder::LayerSaved>> = Vec::with_capacity(layers);
    for i in 0..layers {
        layer_rng.push(ctx.rng().clone());
        let saved = if keep_encoder { enc.layer_forward_saved(i, &hs[i], &shared, ctx)? } else { None };
        let y = match saved {
            Some((y, s)) => {
                kept.push(Some(s));
                y
            }
            None => {
                kept.push(None);
                enc.layer(i, &hs[i], &shared, ctx)?
            }
        };
        hs.push(y);
    }
    mem_mark("forward: encoder");
    let pooling = batch.word_pooling()?;
    let words = pooling.forward(&hs[layers])?;
    let sshared = span.begin(&words, &batch.words)?;
    let biaffine_rng = ctx.rng().clone();
    let s = span.biaffine(&words, &sshared, ctx)?;
    // Each BiSPA block is two stages (attention half, convolution half).
    let depth = 2 * span.depth();
    let mut bands = vec![s];
    let mut block_rng: Vec<ChaCha8Rng> = Vec::with_capacity(depth);
    for i in 0..depth {
        block_rng.push(ctx.rng().clone());
        let y = span.block_half(i, &bands[i], &sshared, ctx)?;
        bands.push(y);
    }
    mem_mark("forward: span side");
    let end_rng = ctx.rng().clone();
    ctx.track = true;
    let mut grads = HashMap::new();

    // ---- 2. head + loss, graph on ----
    let by_hand = span.head_loss_backward(&bands[depth], &bands[0], labels, &sshared.valid, pos_weight, scale, ctx, &mut |store| collect(store, trainable, &mut grads))?;
    let (loss, mut g_x, mut g_s) = if let Some((loss, g)) = by_hand {
        // (with no blocks x and s are one tensor: g_s + g_x below gives both terms)
        (loss, g.clone(), g)
    } else {
        let s_leaf = Var::from_tensor(&bands[0])?;
        let x_leaf = if depth == 0 { s_leaf.clone() } else { Var::from_tensor(&bands[depth])? };
        let logits = span.head(x_leaf.as_tensor(), s_leaf.as_tensor(), ctx)?;
        let loss = (bce_loss(&logits, labels, &sshared.valid, pos_weight)? * scale)?;
        let store = loss.backward()?;
        collect(&store, trainable, &mut grads)?;
        let g_x = grad_of(&store, &x_leaf)?;
        // With no blocks x and s are one leaf: its gradient already holds both terms.
        let g_s = if depth == 0 { g_x.zeros_like()? } else { grad_of(&store, &s_leaf)? };
        (loss.to_scalar::<f32>()? as f64, g_x, g_s)
    };
    mem_mark("backward: head and loss");

    // ---- 3. walk back, recomputing each stage ----
    for i in (0..depth).rev() {
        ctx.set_rng(block_rng[i].clone());
        bands.truncate(i + 1); // half i's output is no longer needed; its input is bands[i]
        let chunked = span.block_half_backward(i, &bands[i], &g_x, &sshared, ctx, &mut |store| collect(store, trainable, &mut grads))?;
        g_x = match chunked {
            Some(g) => g,
            None => stage_backward(&bands[i], &g_x, ctx, trainable, &mut grads, |x, ctx| span.block_half(i, x, &sshared, ctx))?,
        };
        mem_mark(&format!("backward: BiSPA half {i}"));
    }
    g_s = (g_s + g_x)?;
    drop(bands);
    ctx.set_rng(biaffine_rng);
    let by_hand = span.biaffine_backward(&words, &g_s, &sshared, ctx, &mut |store| collect(store, trainable, &mut grads))?;
    let g_words = match by_hand {
        Some(g) => g,
        None => stage_backward(&words, &g_s, ctx, trainable, &mut grads, |w, ctx| span.biaffine(w, &sshared, ctx))?,
    };
    drop(g_s);
    mem_mark("backward: biaffine");
    let mut g_h = stage_backward(&hs[layers], &g_words, ctx, trainable, &mut grads, |h, _| pooling.forward(h))?;
    // Full fine-tuning: embeddings and the shared relative-position table with the graph on (the
    // same dropout masks as pass 1). Every layer's backward then also reaches the table's
    // weights through `shared`, and the embeddings get the gradient at the first layer's input.
    let tracked_begin = if full {
        ctx.set_rng(begin_rng);
        Some(enc.begin(&batch.ids, &batch.mask, ctx)?)
    } else {
        None
    };
    let shared = tracked_begin.as_ref().map(|(_, s)| s).unwrap_or(&shared);
    for i in (0..layers).rev() {
        ctx.set_rng(layer_rng[i].clone());
        hs.truncate(i + 1); // layer i's output is no longer needed; its input is hs[i]
        if let Some(saved) = kept.get_mut(i).and_then(Option::take) {
            g_h = enc.layer_backward_saved(i, &saved, &g_h, &mut |store| collect(store, trainable, &mut grads))?;
            mem_mark(&format!("backward: encoder layer {i} (kept)"));
            continue;
        }
        if let Some(g) = enc.layer_backward(i, &hs[i], &g_h, shared, ctx, &mut |store| collect(store, trainable, &mut grads))? {
            g_h = g;
            mem_mark(&format!("backward: encoder layer {i}"));
            continue;
        }
        if i == 0 && !full {
            // Nothing trainable before the first layer: no gradient at its input is needed.
            let out = enc.layer(0, &hs[0], shared, ctx)?;
            let store = (out * g_h.detach())?.sum_all()?.backward()?;
            collect(&store, trainable, &mut grads)?;
            mem_mark("backward: encoder layer 0");
            break;
        }
        g_h = stage_backward(&hs[i], &g_h, ctx, trainable, &mut grads, |x, ctx| enc.layer(i, x, shared, ctx))?;
        mem_mark(&format!("backward: encoder layer {i}"));
    }
    if let Some((x0, _)) = &tracked_begin {
        let store = (x0 * g_h.detach())?.sum_all()?.backward()?;
        collect(&store, trainable, &mut grads)?;
    }
    ctx.set_rng(end_rng);
    Ok(StepGrads { loss, grads })
}

/// Runs `f` on a fresh leaf copy of `input` with the graph on, differentiates
/// `Σ f(input) · upstream`, adds the parameter gradients to `grads` and returns the gradient at
/// `input`.
fn stage_backward(
    input: &Tensor,
    upstream: &Tensor,
    ctx: &mut ForwardCtx,
    trainable: &[(String, Var)],
    grads: &mut HashMap<String, Tensor>,
    f: impl FnOnce(&Tensor, &mut ForwardCtx) -> Result<Tensor>,
) -> Result<Tensor> {
    let leaf = Var::from_tensor(input)?;
    let out = f(leaf.as_tensor(), ctx)?;
    let store = (out * upstream.detach())?.sum_all()?.backward()?;
    collect(&store, trainable, grads)?;
    grad_of(&store, &leaf)
}

/// Time, peak and current RSS since the last mark, as a debug event: the per-stage profile of a
/// step (run with `MIMALLOC_PURGE_DELAY=0` so that freed pages leave the RSS).
fn mem_mark(stage: &str) {
    thread_local! {
        static LAST: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    if tracing::enabled!(tracing::Level::DEBUG) {
        let mib = |b: Option<u64>| b.map_or(0, |b| b >> 20);
        let now = std::time::Instant::now();
        // "start" opens a step: its time is that since the previous step's last stage.
        let ms = LAST.with(|l| l.replace(Some(now))).map_or(0, |t| now.duration_since(t).as_millis() as u64);
        tracing::debug!(stage, ms, peak_mib = mib(crate::mem::peak_rss()), rss_mib = mib(crate::mem::current_rss()), "recompute stage");
        crate::mem::reset_peak_rss();
    }
}

/// A leaf's gradient in `store`, zeros when the output did not reach it.
pub(crate) fn grad_of(store: &GradStore, leaf: &Var) -> Result<Tensor> {
    match store.get(leaf.as_tensor()) {
        Some(g) => Ok(g.detach()),
        None => Ok(leaf.as_tensor().zeros_like()?),
    }
}

fn collect(store: &GradStore, trainable: &[(String, Var)], grads: &mut HashMap<String, Tensor>) -> Result<()> {
    for (name, var) in trainable {
        if let Some(g) = store.get(var.as_tensor()) {
            let g = g.detach();
            let sum = match grads.remove(name) {
                Some(a) => (a + g)?,
                None => g,
            };
            grads.insert(name.clone(), sum);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::{ArrowConfig, Encoder, EncoderOptions, LoraConfig};
    use crate::model::{BaseEncoder, SenerConfig};
    use crate::nn::Kernels;
    use crate::span::band::Band;
    use crate::span::loss::{band_labels, GoldSpan};
    use crate::span::{SpanConfig, SpanModel};
    use candle_core::{DType, Device};

    /// Recomputation with the encoder layers' states kept from the first pass.
    const KEEP: Plan = Plan { recompute: true, keep_encoder: true };

    /// `full`: every encoder weight trainable, no LoRA (full fine-tuning).
    fn tiny_with(depth: usize, deberta: bool, full: bool) -> Sener {
        tiny_lora(depth, deberta, full, LoraConfig::default())
    }

    fn tiny_lora(depth: usize, deberta: bool, full: bool, lora: LoraConfig) -> Sener {
        let dev = Device::Cpu;
        let arrow = ArrowConfig { window: 3, ..ArrowConfig::default() };
        let opts = EncoderOptions { arrow: arrow.clone(), dtype: DType::F32, device: dev.clone() };
        let cfg = if deberta {
            serde_json::json!({"model_type": "deberta-v2", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
                "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 0,
                "relative_attention": true, "position_buckets": 8, "max_relative_positions": -1, "pos_att_type": ["p2c", "c2p"],
                "norm_rel_ebd": "layer_norm", "share_att_key": true, "position_biased_input": false,
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-7, "hidden_act": "gelu"})
        } else {
            serde_json::json!({"model_type": "bert", "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
                "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2,
                "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "layer_norm_eps": 1e-12, "hidden_act": "gelu"})
        };
        let encoder = if full {
            Encoder::random_trainable(cfg, &opts, 3).unwrap()
        } else {
            let mut e = Encoder::random(cfg, &opts, 3).unwrap();
            e.add_lora(&lora, 5).unwrap();
            e
        };
        let span_cfg = SpanConfig { window: 3, biaffine_size: 6, cnn_dim: 4, cnn_depth: depth, ..SpanConfig::default() };
        let span = SpanModel::init(span_cfg.clone(), 16, 3, 7, DType::F32, &dev).unwrap();
        // LoRA B starts at zero: move every adapter off it so the encoder gradients are generic.
        for (_, v) in encoder.trainable() {
            let t = v.as_tensor();
            v.set(&(t + Tensor::randn(0f32, 0.05, t.shape(), &dev).unwrap()).unwrap()).unwrap();
        }
        let config = SenerConfig {
            base: BaseEncoder { path: "random".into(), sha256: None, hub: None, finetuned_from: None },
            labels: vec!["a".into(), "b".into(), "c".into()],
            arrow,
            span: span_cfg,
            lora: (!full).then_some(lora),
            max_len: 64,
            splitter: Default::default(),
            thresholds: None,
        };
        Sener { config, encoder, span }
    }

    fn batch(dev: &Device) -> (Batch, Tensor) {
        // two rows: 12 words (some of two subwords) and 7 words (padded)
        let row = |words: usize| {
            let (mut ids, mut idx) = (vec![1u32], vec![0u32]);
            for w in 0..words {
                for p in 0..(1 + w % 2) {
                    ids.push(5 + ((w * 7 + p * 3) % 40) as u32);
                    idx.push(w as u32 + 1);
                }
            }
            ids.push(2);
            idx.push(0);
            (ids, idx, words)
        };
        let b = Batch::new(&[row(12), row(7)], 0, dev).unwrap();
        let gold = vec![
            vec![GoldSpan { start: 0, end: 1, label: 0 }, GoldSpan { start: 4, end: 4, label: 2 }, GoldSpan { start: 8, end: 10, label: 1 }],
            vec![GoldSpan { start: 2, end: 3, label: 1 }],
        ];
        let lab = band_labels(&gold, &b.words, 12, Band::new(3), 3, dev).unwrap();
        (b, lab.labels)
    }

    /// The recomputed step gives the plain step's loss and gradients (dropout on, so the masks must
    /// be replayed), reaches every trainable tensor, and leaves the RNG where the plain step does.
    #[test]
    fn recomputation_matches_the_plain_backward() {
        for (depth, deberta, full) in [(2, true, false), (0, false, false), (1, false, false), (1, true, true), (0, false, true)] {
            let m = tiny_with(depth, deberta, full);
            if full {
                let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
                for want in ["embeddings.word_embeddings.weight", "embeddings.LayerNorm.weight", "layer.2.output.dense.weight"] {
                    assert!(names.iter().any(|n| n.ends_with(want)), "{want} is not trainable: {names:?}");
                }
                if deberta {
                    assert!(names.iter().any(|n| n.ends_with("encoder.rel_embeddings.weight")));
                }
            }
            let (b, labels) = batch(&Device::Cpu);
            for plan in [Plan::RECOMPUTE, KEEP] {
            let mut c1 = ForwardCtx::train(11);
            let mut c2 = ForwardCtx::train(11);
            let plain = loss_and_grads(&m, &b, &labels, 0.5, 1.0, &mut c1, Plan::PLAIN).unwrap();
            let staged = loss_and_grads(&m, &b, &labels, 0.5, 1.0, &mut c2, plan).unwrap();
            assert!(c2.track, "the context must come back tracking");
            assert!((plain.loss - staged.loss).abs() <= 1e-5 * plain.loss.abs(), "{} vs {}", plain.loss, staged.loss);
            let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
            assert_eq!(plain.grads.len(), names.len(), "plain backward reaches every tensor");
            assert_eq!(staged.grads.len(), names.len(), "staged backward reaches every tensor");
            for n in &names {
                let (a, b) = (&plain.grads[n], &staged.grads[n]);
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let scale = a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                // A key bias shifts every score of a query row alike: softmax cancels it, so its
                // gradient is zero up to rounding.
                let key_bias = n.ends_with("key.bias") || n.ends_with("key_proj.bias");
                assert!(scale > 0.0 || key_bias, "{n}: zero gradient");
                assert!(diff <= 1e-4 * scale + 1e-7, "{plan:?} depth {depth} deberta {deberta} full {full} {n}: max diff {diff} (scale {scale})");
            }
            // same RNG afterwards: the next dropout masks agree
            let x = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
            let (d1, d2) = (c1.dropout(&x, 0.5).unwrap(), c2.dropout(&x, 0.5).unwrap());
            assert_eq!(d1.to_vec1::<f32>().unwrap(), d2.to_vec1::<f32>().unwrap());
            }
        }
    }

    /// Max |a − b| over every gradient, relative to the largest entry of each.
    fn assert_same_grads(a: &StepGrads, b: &StepGrads, names: &[String], what: &str) {
        assert!((a.loss - b.loss).abs() <= 1e-5 * a.loss.abs(), "{what}: loss {} vs {}", a.loss, b.loss);
        assert_eq!(a.grads.len(), names.len(), "{what}: every tensor reached");
        assert_eq!(b.grads.len(), names.len(), "{what}: every tensor reached");
        for n in names {
            let (x, y) = (&a.grads[n], &b.grads[n]);
            let diff = (x - y).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let scale = x.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= 1e-4 * scale + 1e-7, "{what} {n}: max diff {diff} (scale {scale})");
        }
    }

    /// The generic path (candle ops only, BiSPA in row chunks that recomputation differentiates
    /// one at a time) gives the fused path's loss and gradients. Without dropout, since the two
    /// paths draw their masks differently; chunks of 5 rows over 12 words, so that the halo of
    /// the convolutions and the vertical view cross chunk edges.
    #[test]
    fn generic_path_matches_the_fused_path() {
        for (depth, deberta) in [(2, true), (1, false)] {
            let mut m = tiny_with(depth, deberta, false);
            m.span.set_row_chunk(5);
            let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
            let (b, labels) = batch(&Device::Cpu);
            let run = |kernels: Kernels, plan: Plan| {
                let mut ctx = ForwardCtx::grad_only().with_kernels(kernels);
                loss_and_grads(&m, &b, &labels, 0.5, 2.0, &mut ctx, plan).unwrap()
            };
            let fused = run(Kernels::Fused, Plan::PLAIN);
            assert_same_grads(&fused, &run(Kernels::Generic, Plan::PLAIN), &names, "generic plain");
            assert_same_grads(&fused, &run(Kernels::Generic, Plan::RECOMPUTE), &names, "generic recomputed");
            assert_same_grads(&fused, &run(Kernels::Generic, KEEP), &names, "generic recomputed, encoder kept (no effect there)");
            assert_same_grads(&fused, &run(Kernels::Fused, Plan::RECOMPUTE), &names, "fused recomputed");
            assert_same_grads(&fused, &run(Kernels::Fused, KEEP), &names, "fused recomputed, encoder kept");
        }
    }

    /// With dropout on, recomputing chunk by chunk (4-row chunks of 12 words) replays the masks
    /// of the plain pass and leaves the RNG where it does, on both paths.
    #[test]
    fn chunked_recomputation_replays_dropout() {
        for kernels in [Kernels::Generic, Kernels::Fused] {
            let mut m = tiny_with(2, true, false);
            m.span.set_row_chunk(4);
            let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
            let (b, labels) = batch(&Device::Cpu);
            let mut c1 = ForwardCtx::train(5).with_kernels(kernels);
            let mut c2 = ForwardCtx::train(5).with_kernels(kernels);
            let plain = loss_and_grads(&m, &b, &labels, 1.0, 1.0, &mut c1, Plan::PLAIN).unwrap();
            let staged = loss_and_grads(&m, &b, &labels, 1.0, 1.0, &mut c2, Plan::RECOMPUTE).unwrap();
            assert_same_grads(&plain, &staged, &names, &format!("{kernels:?} with dropout"));
            let x = Tensor::ones(64, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(c1.dropout(&x, 0.5).unwrap().to_vec1::<f32>().unwrap(), c2.dropout(&x, 0.5).unwrap().to_vec1::<f32>().unwrap());
        }
    }

    /// LoRA on every linear layer with adapter dropout (the sener recipe): the hand-written
    /// backward of the layer tails (adapters of the attention output, intermediate and output
    /// layers, their dropout masks, trainable biases) gives the plain pass's gradients, with
    /// dropout on and off, on both encoders and both paths.
    #[test]
    fn adapters_everywhere_match_the_plain_backward() {
        let all: Vec<String> = ["query", "key", "value", "attention_output", "intermediate", "output"].iter().map(|s| s.to_string()).collect();
        for deberta in [true, false] {
            let lora = LoraConfig { targets: all.clone(), dropout: 0.1, ..LoraConfig::default() };
            let m = tiny_lora(1, deberta, false, lora);
            let names: Vec<String> = m.trainable().into_iter().map(|(n, _)| n).collect();
            assert!(names.iter().any(|n| n.contains("intermediate")), "the tails carry adapters");
            let (b, labels) = batch(&Device::Cpu);
            for (kernels, plan) in [(Kernels::Fused, Plan::RECOMPUTE), (Kernels::Fused, KEEP), (Kernels::Generic, Plan::RECOMPUTE)] {
                let mut c1 = ForwardCtx::train(9).with_kernels(kernels);
                let mut c2 = ForwardCtx::train(9).with_kernels(kernels);
                let plain = loss_and_grads(&m, &b, &labels, 1.0, 1.0, &mut c1, Plan::PLAIN).unwrap();
                let staged = loss_and_grads(&m, &b, &labels, 1.0, 1.0, &mut c2, plan).unwrap();
                assert_same_grads(&plain, &staged, &names, &format!("{kernels:?} {plan:?}, deberta {deberta}, dropout on"));
            }
            let run = |kernels: Kernels, plan: Plan| {
                let mut ctx = ForwardCtx::grad_only().with_kernels(kernels);
                loss_and_grads(&m, &b, &labels, 1.0, 2.0, &mut ctx, plan).unwrap()
            };
            let generic = run(Kernels::Generic, Plan::PLAIN);
            assert_same_grads(&generic, &run(Kernels::Fused, Plan::RECOMPUTE), &names, &format!("deberta {deberta}, fused recomputed vs generic plain"));
            assert_same_grads(&generic, &run(Kernels::Fused, KEEP), &names, &format!("deberta {deberta}, fused with the encoder kept vs generic plain"));
        }
    }

    #[test]
    fn untracked_pass_keeps_no_graph() {
        for full in [false, true] {
            untracked_pass_keeps_no_graph_with(full);
        }
    }

    fn untracked_pass_keeps_no_graph_with(full: bool) {
        let m = tiny_with(2, true, full);
        let (b, _) = batch(&Device::Cpu);
        let mut eval = ForwardCtx::eval();
        assert!(!m.forward(&b, &mut eval).unwrap().logits.track_op(), "inference must not record the graph");
        let mut ctx = ForwardCtx::train(1);
        ctx.track = false;
        let out = m.forward(&b, &mut ctx).unwrap();
        assert!(!out.logits.track_op(), "an untracked pass must not record the graph");
        ctx.track = true;
        let out = m.forward(&b, &mut ctx).unwrap();
        assert!(out.logits.track_op());
    }

    #[test]
    fn auto_switches_on_long_micro_batches() {
        // the encoder's states are kept under auto, on the fused path, while they fit
        let per_token = 1 << 20;
        let fits = KEEP_ENCODER_BYTES / per_token;
        assert_eq!(Recompute::Auto.plan(fits, true, per_token), KEEP);
        assert_eq!(Recompute::Auto.plan(fits + 1, true, per_token), Plan::RECOMPUTE);
        assert_eq!(Recompute::Auto.plan(AUTO_TOKENS, false, 1), Plan::RECOMPUTE);
        assert_eq!(Recompute::Auto.plan(AUTO_TOKENS - 1, false, 1), Plan::PLAIN);
        assert_eq!(Recompute::Always.plan(1, true, 1), Plan::RECOMPUTE);
        assert_eq!(Recompute::Never.plan(1 << 20, true, 1), Plan::PLAIN);
        assert!(!Recompute::Auto.applies(AUTO_TOKENS - 1, false));
        assert!(Recompute::Auto.applies(AUTO_TOKENS, false));
        assert!(Recompute::Auto.applies(1, true));
        assert!(Recompute::Always.applies(1, false) && !Recompute::Never.applies(1 << 20, true));
        for r in [Recompute::Auto, Recompute::Always, Recompute::Never] {
            assert_eq!(r.as_str().parse::<Recompute>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{}\"", r.as_str()));
        }
        assert!("sometimes".parse::<Recompute>().is_err());
    }
}
