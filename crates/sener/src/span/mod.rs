//! The span side of SeNER (spec §4–§6): word vectors → banded biaffine → BiSPA blocks → head.
//!
//! A document's path: [`pooling`] turns subword states into word vectors, [`biaffine`] scores
//! every band cell (pair (i, i+k−w), see [`band`]), [`bispa`] refines the band N times, and the
//! head `Linear(c → R)` on `S″ + S` gives one sigmoid logit per cell and type. [`loss`] builds
//! labels and the BCE loss; `crate::decode` turns logits into spans.

pub mod band;
pub mod band_conv;
pub mod biaffine;
pub mod bispa;
pub mod loss;
pub mod pooling;
pub mod row_attention;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;

use band::Band;
use biaffine::{Biaffine, TrainLinear};
use bispa::{rope_tables, BiSpaBlock};

use crate::nn::ForwardCtx;
use crate::{Error, Result};

/// Hyper-parameters of the span side (paper defaults).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpanConfig {
    /// One-sided span window w′ in words (spans of up to w′ + 1 words).
    pub window: usize,
    /// Biaffine MLP size.
    pub biaffine_size: usize,
    /// Band feature width c (`cnn_dim`).
    pub cnn_dim: usize,
    /// Number of BiSPA blocks (`cnn_depth`).
    pub cnn_depth: usize,
    /// Dropout on the biaffine inputs.
    pub biaffine_dropout: f32,
    /// Dropout inside the BiSPA blocks.
    pub bispa_dropout: f32,
}

impl SpanConfig {
    /// Bytes a forward pass over `words` words touches beyond the weights, by estimate: the
    /// band-sized buffers dominate (about eight `[words, 2w′+1, c]` f32 tensors alive at once at
    /// the peak of a BiSPA block). For warming the allocator before a first forward
    /// ([`crate::mem::warm_heap`]); DeBERTa-v3-base shape at 5,120 tokens (3,839 words): 1.0 GB,
    /// of a measured peak of 1.9 GB with the weights.
    pub fn working_set_bytes(&self, words: usize) -> usize {
        let band = 2 * self.window + 1;
        words.saturating_mul(band).saturating_mul(self.cnn_dim.max(1)).saturating_mul(4 * 8)
    }
}

impl Default for SpanConfig {
    fn default() -> Self {
        Self { window: 128, biaffine_size: 100, cnn_dim: 32, cnn_depth: 2, biaffine_dropout: 0.4, bispa_dropout: 0.2 }
    }
}

impl SpanConfig {
    pub fn validate(&self) -> Result<()> {
        if self.window == 0 || self.cnn_dim == 0 || self.cnn_dim % 2 != 0 || self.biaffine_size == 0 {
            return Err(Error::Input(format!(
                "span config: window ({}) and biaffine_size ({}) must be ≥ 1, cnn_dim ({}) even and ≥ 2",
                self.window, self.biaffine_size, self.cnn_dim
            )));
        }
        Ok(())
    }
}

/// Biaffine + BiSPA blocks + head.
#[derive(Debug)]
pub struct SpanModel {
    pub config: SpanConfig,
    pub labels: usize,
    biaffine: Biaffine,
    blocks: Vec<BiSpaBlock>,
    down_fc: TrainLinear,
}

/// What the span side returns for a batch.
pub struct SpanOutput {
    /// `[B, n, K, R]` logits (invalid cells: 0 here; see [`SpanModel::inference_logits`]).
    pub logits: Tensor,
    /// `[B, n, K]` band validity (1 = real pair).
    pub valid: Tensor,
}

/// What the span-side pieces of one batch share, built by [`SpanModel::begin`].
pub struct SpanShared {
    pub band: Band,
    /// `[B, n, K]` band validity (1 = real pair).
    pub valid: Tensor,
    rope: (Tensor, Tensor),
}

impl SpanModel {
    /// Loads (or, with an initialising `vb`, creates) the span side; names as in the official
    /// checkpoint without its `base_model.model.` prefix.
    pub fn load(vb: &VarBuilder, config: SpanConfig, hidden: usize, labels: usize) -> Result<Self> {
        config.validate()?;
        let c = config.cnn_dim;
        let blocks = (0..config.cnn_depth)
            .map(|i| {
                let prefix = format!("cross_layers.{i}");
                BiSpaBlock::load(&vb.pp(&prefix), &prefix, c, config.bispa_dropout)
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            biaffine: Biaffine::load(vb, hidden, config.biaffine_size, c, config.biaffine_dropout)?,
            blocks,
            down_fc: TrainLinear::load(vb, "down_fc", c, labels, true)?,
            labels,
            config,
        })
    }

    /// A freshly initialised span side (the official initialisers, see [`SpanInit`]).
    pub fn init(config: SpanConfig, hidden: usize, labels: usize, seed: u64, dtype: DType, dev: &Device) -> Result<Self> {
        let vb = VarBuilder::from_backend(Box::new(SpanInit { seed, hidden, c: config.cnn_dim }), dtype, dev.clone());
        Self::load(&vb, config, hidden, labels)
    }

    /// Fused row attention in the BiSPA blocks (default on; applies to f32 on the CPU).
    /// With `p` bf16: the BiSPA row attention's K×K products at inference in bf16 and,
    /// with the AMX kernel, the band convolutions of passes without a graph; the biaffine,
    /// projections, soft-max, LayerNorms, head and every other gradient stay f32.
    pub fn set_precision(&mut self, p: crate::gemm_bf16::Precision) {
        let kernel = match p {
            crate::gemm_bf16::Precision::F32 => None,
            crate::gemm_bf16::Precision::Bf16(k) => Some(k),
        };
        for b in &mut self.blocks {
            b.bf16 = kernel;
        }
    }

    pub fn set_fused_attention(&mut self, on: bool) {
        for b in &mut self.blocks {
            b.force_composite = !on;
        }
    }

    pub fn band(&self) -> Band {
        Band::new(self.config.window)
    }

    /// Every trainable tensor with its checkpoint name.
    pub fn params(&self) -> Vec<(String, Var)> {
        let mut v = self.biaffine.params();
        for b in &self.blocks {
            v.extend(b.params());
        }
        v.extend(self.down_fc.params());
        v
    }

    /// `words`: `[B, n, hidden]` word vectors; `lens`: real word count of each row.
    pub fn forward(&self, words: &Tensor, lens: &[usize], ctx: &mut ForwardCtx) -> Result<SpanOutput> {
        let shared = self.begin(words, lens)?;
        let s = self.biaffine(words, &shared, ctx)?;
        let mut x = s.clone();
        for i in 0..self.blocks.len() {
            x = self.block(i, &x, &shared, ctx)?;
        }
        let logits = self.head(&x, &s, ctx)?;
        Ok(SpanOutput { logits, valid: shared.valid })
    }

    /// The forward pass in pieces, for recomputation (`crate::train::recompute`): `forward` is
    /// `begin`, [`Self::biaffine`], every [`Self::block`] in turn, then [`Self::head`] on the last
    /// block's output and the biaffine band. This builds what they share (band validity, RoPE).
    pub fn begin(&self, words: &Tensor, lens: &[usize]) -> Result<SpanShared> {
        let (b, n, _) = words.dims3()?;
        if lens.len() != b || lens.iter().any(|&l| l > n) {
            return Err(Error::Input(format!("word lengths {lens:?} do not fit a batch of {b} rows of {n} words")));
        }
        let band = self.band();
        let valid = band.mask(lens, n, words.dtype(), words.device())?;
        let rope = rope_tables(band.k(), self.config.cnn_dim, words.dtype(), words.device())?;
        Ok(SpanShared { band, valid, rope })
    }

    /// The biaffine band `S` `[B, n, K, c]` of word vectors `[B, n, hidden]`.
    pub fn biaffine(&self, words: &Tensor, shared: &SpanShared, ctx: &mut ForwardCtx) -> Result<Tensor> {
        self.biaffine.forward(words, shared.band, &shared.valid, ctx)
    }

    /// Recomputation's biaffine stage on the fused path (f32, CPU), by hand
    /// ([`biaffine::Biaffine::backward_fused`]): the gradient at the word vectors from the band
    /// gradient `g`, parameter gradients to `sink`; `None` elsewhere (the caller records a graph).
    pub fn biaffine_backward(
        &self,
        words: &Tensor,
        g: &Tensor,
        shared: &SpanShared,
        ctx: &mut ForwardCtx,
        sink: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<Option<Tensor>> {
        if !ctx.fused(words) {
            return Ok(None);
        }
        let (dh, grads) = ctx.untracked(|ctx| self.biaffine.backward_fused(words, shared.band, &shared.valid, g, ctx))?;
        bispa::sink_grads(&grads, sink)?;
        Ok(Some(dh))
    }

    /// Number of BiSPA blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// BiSPA block `i` on a band `[B, n, K, c]`.
    pub fn block(&self, i: usize, x: &Tensor, shared: &SpanShared, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let y = self.block_half(2 * i, x, shared, ctx)?;
        self.block_half(2 * i + 1, &y, shared, ctx)
    }

    /// Half `h` of the BiSPA stack (`2·depth` halves): block `h / 2`'s attention half
    /// ([`BiSpaBlock::attend`]) for even `h`, its convolution half for odd `h`.
    pub fn block_half(&self, h: usize, x: &Tensor, shared: &SpanShared, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let blk = self.blocks.get(h / 2).ok_or_else(|| Error::Input(format!("no BiSPA block {}", h / 2)))?;
        if h % 2 == 0 {
            blk.attend(x, shared.band, &shared.valid, &shared.rope, ctx)
        } else {
            blk.convolve(x, &shared.valid, ctx)
        }
    }

    /// Recomputation's stage backward for half `h`, row chunk by row chunk (see
    /// [`BiSpaBlock::attend_backward`]): the gradient at its input `x` for the upstream gradient
    /// `g`, parameter gradients to `sink`. `None` where the pass does not chunk the block (then
    /// the plain stage backward applies).
    pub fn block_half_backward(
        &self,
        h: usize,
        x: &Tensor,
        g: &Tensor,
        shared: &SpanShared,
        ctx: &mut ForwardCtx,
        sink: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<Option<Tensor>> {
        let blk = self.blocks.get(h / 2).ok_or_else(|| Error::Input(format!("no BiSPA block {}", h / 2)))?;
        if !blk.chunked(x, ctx) {
            return Ok(None);
        }
        Ok(Some(if h % 2 == 0 {
            blk.attend_backward(x, g, shared.band, &shared.valid, &shared.rope, ctx, sink)?
        } else {
            blk.convolve_backward(x, g, &shared.valid, ctx, sink)?
        }))
    }

    /// Rows per chunk of the generic BiSPA path (default: from [`bispa::CHUNK_CELLS`]; tests
    /// use a few).
    pub fn set_row_chunk(&mut self, rows: usize) {
        for b in &mut self.blocks {
            b.row_chunk = rows.max(1);
        }
    }

    /// The head on `x + s` (last block's output plus the biaffine band): logits `[B, n, K, R]`.
    pub fn head(&self, x: &Tensor, s: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let logits = self.down_fc.forward(&(x + s)?, ctx)?;
        // Non-finite logits → 0 (official: logits[~isfinite] = 0); NaN < ∞ is false too.
        let finite = logits.abs()?.lt(f64::INFINITY)?;
        Ok(finite.where_cond(&logits, &logits.zeros_like()?)?)
    }

    /// Recomputation's head stage on the fused path (f32, CPU), by hand: `scale ×` the loss of
    /// [`Self::head`]`(x, s)` and the gradient at `x + s` (the same for `x` and for `s`); the
    /// `down_fc` gradients go to `sink`. `None` elsewhere (the caller records a graph instead).
    /// candle's recorded backward of the BCE's dozen band-sized ops cost more than the rest of
    /// the stage together.
    #[allow(clippy::too_many_arguments)]
    pub fn head_loss_backward(
        &self,
        x: &Tensor,
        s: &Tensor,
        labels: &Tensor,
        valid: &Tensor,
        pos_weight: f64,
        scale: f64,
        ctx: &ForwardCtx,
        sink: &mut dyn FnMut(&candle_core::backprop::GradStore) -> Result<()>,
    ) -> Result<Option<(f64, Tensor)>> {
        if !ctx.fused(x) {
            return Ok(None);
        }
        let (b, n, kk, c) = x.dims4()?;
        let z = (x + s)?.reshape((b * n * kk, c))?;
        let w = self.down_fc.weight.as_tensor().detach(); // [R, c]
        let r = w.dim(0)?;
        let mut logits = z.matmul(&w.t()?)?;
        if let Some(bias) = &self.down_fc.bias {
            logits = logits.broadcast_add(&bias.as_tensor().detach())?;
        }
        let (loss, g) = loss::bce_loss_grad(&logits.reshape((b, n, kk, r))?, labels, valid, pos_weight, scale)?;
        let g = g.reshape((b * n * kk, r))?;
        let mut surrogate = (self.down_fc.weight.as_tensor() * g.t()?.matmul(&z)?)?.sum_all()?;
        if let Some(bias) = &self.down_fc.bias {
            surrogate = (surrogate + (bias.as_tensor() * g.sum(0)?)?.sum_all()?)?;
        }
        sink(&surrogate.backward()?)?;
        Ok(Some((loss, g.matmul(&w)?.reshape((b, n, kk, c))?)))
    }

    /// The official inference logits: invalid cells set to −1e-6.
    pub fn inference_logits(out: &SpanOutput) -> Result<Tensor> {
        let v = out.valid.unsqueeze(3)?;
        let fill = ((&v - 1.0)? * 1e-6)?; // −1e-6 where invalid, 0 where valid
        Ok(out.logits.broadcast_mul(&v)?.broadcast_add(&fill)?)
    }
}

/// Initialisers of the official model for a fresh span side: `U`, `W` xavier-normal; linear and
/// conv weights and biases kaiming-uniform as torch's defaults (bound 1/√fan_in); `pos_embed`
/// N(0, 1); LayerNorms 1/0. Seeded, one stream per tensor name.
pub struct SpanInit {
    pub seed: u64,
    /// Encoder hidden size (fan-in of the biaffine MLPs).
    pub hidden: usize,
    /// Band width c.
    pub c: usize,
}

impl candle_nn::var_builder::SimpleBackend for SpanInit {
    fn get(&self, s: candle_core::Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use rand::{Rng, SeedableRng};
        use rand_distr::Distribution;
        let h = name.bytes().fold(self.seed ^ 0x9e37_79b9_7f4a_7c15, |a, b| (a ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(h);
        let dims = s.dims().to_vec();
        let n = s.elem_count();
        let last = name.rsplit('.').next().unwrap_or(name);
        let is_ln = name.contains("LayerNorm");
        let fan_in = |d: &[usize]| d.iter().skip(1).product::<usize>().max(1) as f64;
        let v: Vec<f32> = if is_ln && last == "weight" {
            vec![1.0; n]
        } else if is_ln {
            vec![0.0; n]
        } else if name == "U" || name == "W" {
            let receptive: usize = dims.iter().skip(2).product::<usize>().max(1);
            let (fi, fo) = ((dims[1] * receptive) as f64, (dims[0] * receptive) as f64);
            let std = (2.0 / (fi + fo)).sqrt() as f32;
            let normal = rand_distr::Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        } else if name.ends_with("pos_embed.weight") {
            let normal = rand_distr::Normal::new(0.0f32, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            (0..n).map(|_| normal.sample(&mut rng)).collect()
        } else {
            // weight [out, in, ...]: fan_in = in·∏kernel; a bias uses its layer's fan_in.
            let fi = if last == "bias" { self.bias_fan_in(name) } else { fan_in(&dims) };
            let bound = (1.0 / fi.sqrt()) as f32;
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!("span init needs a shape for `{name}`")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

impl SpanInit {
    /// Input width of the linear layer a bias belongs to (torch draws biases from ±1/√fan_in).
    fn bias_fan_in(&self, name: &str) -> f64 {
        let f = if name.starts_with("head_mlp") || name.starts_with("tail_mlp") {
            self.hidden
        } else if name.contains(".dense.") {
            2 * self.c
        } else {
            self.c // h_qkv, v_qkv, down_fc
        };
        f as f64
    }
}
