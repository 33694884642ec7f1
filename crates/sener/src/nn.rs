//! Small building blocks shared by the encoders and (later) the span side.
//!
//! Two candle 0.11 traps shape this module (see `shared/notes/rust-stack.md`):
//! - `candle_nn::ops::layer_norm` and `softmax_last_dim` record no backward. Every op here takes a
//!   [`ForwardCtx`] and uses the composite (differentiable) version whenever gradients are wanted,
//!   the fast fused kernel otherwise.
//! - candle's CPU RNG cannot be seeded, so dropout masks are drawn from the context's own seeded
//!   ChaCha RNG: a training run is reproducible from its seed.

use candle_core::{DType, Device, Module, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Result;

/// How a forward pass runs: training (dropout on) and/or recording gradients.
pub struct ForwardCtx {
    /// Dropout active.
    pub train: bool,
    /// Use differentiable composite ops (needed whenever a backward pass follows).
    pub grad: bool,
    /// Record the graph through trainable parameters ([`Self::param`]). Off with `grad` on is the
    /// first pass of recomputation (`crate::train::recompute`): the same ops and dropout masks as
    /// a training pass, but nothing kept for a backward.
    pub track: bool,
    /// The CPU's fused f32 kernels (on by default where they apply; [`Kernels::Generic`] turns
    /// them off so that the CPU runs the candle-op path every other device takes, to measure it).
    pub kernels: Kernels,
    rng: ChaCha8Rng,
}

/// Which implementation of the ops that have a fused CPU kernel a pass uses (`--kernels`).
///
/// The fused kernels (row attention, band convolution, vertical view, LayerNorm, GELU, inference
/// arrow attention) are f32 CPU ops with hand-written backward passes. The generic path is made
/// of candle ops only, so it runs on every device (CUDA included); on the CPU it is there to be
/// measured and checked against the fused one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kernels {
    /// Fused where they apply (f32 on the CPU), generic elsewhere.
    #[default]
    Auto,
    /// Fused; refused on a device without them.
    Fused,
    /// Candle ops only, on every device.
    Generic,
}

impl Kernels {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fused => "fused",
            Self::Generic => "generic",
        }
    }

    /// Checks the choice against the device a model runs on: the fused kernels are CPU kernels.
    pub fn check(self, dev: &Device) -> Result<()> {
        if self == Self::Fused && !dev.is_cpu() {
            return Err(crate::Error::Input(format!(
                "kernels `fused` are CPU f32 kernels; on {dev:?} use `auto` or `generic`"
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for Kernels {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "fused" => Ok(Self::Fused),
            "generic" => Ok(Self::Generic),
            o => Err(format!("kernels must be auto, fused or generic, not `{o}`")),
        }
    }
}

impl ForwardCtx {
    /// Inference: no dropout, fused kernels.
    pub fn eval() -> Self {
        Self { train: false, grad: false, track: false, kernels: Kernels::Auto, rng: ChaCha8Rng::seed_from_u64(0) }
    }
    /// Training: dropout on (seeded), differentiable ops.
    pub fn train(seed: u64) -> Self {
        Self { train: true, grad: true, track: true, kernels: Kernels::Auto, rng: ChaCha8Rng::seed_from_u64(seed) }
    }
    /// No dropout but differentiable ops (gradient checks, evaluation of a loss to differentiate).
    pub fn grad_only() -> Self {
        Self { train: false, grad: true, track: true, kernels: Kernels::Auto, rng: ChaCha8Rng::seed_from_u64(0) }
    }
    /// The same context with `kernels` chosen (see [`Kernels`]).
    pub fn with_kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Whether a fused CPU f32 kernel may run on `x`: f32 on the CPU, and not [`Kernels::Generic`].
    pub fn fused(&self, x: &Tensor) -> bool {
        self.fused_on(x.device()) && x.dtype() == DType::F32
    }

    /// Whether f32 work on `device` takes the fused CPU kernels.
    pub fn fused_on(&self, device: &Device) -> bool {
        self.kernels != Kernels::Generic && device.is_cpu()
    }

    /// The RNG state, to save with a checkpoint.
    pub fn rng(&self) -> &ChaCha8Rng {
        &self.rng
    }
    /// Replace the RNG (resuming a run).
    pub fn set_rng(&mut self, rng: ChaCha8Rng) {
        self.rng = rng;
    }

    /// Inverted dropout: zero each element with probability `p`, scale the rest by 1/(1-p).
    /// A no-op outside training or for `p == 0`.
    pub fn dropout(&mut self, xs: &Tensor, p: f32) -> Result<Tensor> {
        if !self.train || p <= 0.0 {
            return Ok(xs.clone());
        }
        if p >= 1.0 {
            return Ok(xs.zeros_like()?);
        }
        let keep = 1.0 - p;
        let scale = 1.0 / keep;
        if !xs.device().is_cpu() {
            // On a GPU the mask is drawn there (cuRAND): drawing band-sized masks on one host core
            // and copying them over would dominate a training step. The device generator is
            // re-seeded from this context's RNG for every mask, so the masks still follow the
            // run's seed: recomputation (`crate::train::recompute`) replays them, and a resumed
            // run draws the same ones. (Not yet checked on a GPU.)
            xs.device().set_seed(self.rng.random::<u64>())?;
            let u = Tensor::rand(0f32, 1f32, xs.shape(), xs.device())?;
            let mask = (u.lt(keep as f64)?.to_dtype(DType::F32)? * scale as f64)?.to_dtype(xs.dtype())?;
            return Ok(xs.mul(&mask)?);
        }
        // One seed from the context's RNG; element i is kept by a hash of (seed, i)
        // (`span::row_attention::dropout_keep`), so the mask is drawn in parallel and the same on
        // any thread count. (Drawing one f32 per element from the RNG on one core took ~3 % of a
        // training step.)
        let seed = self.rng.random::<u64>();
        let n = xs.elem_count();
        let mut mask = uninit_f32(n);
        const CHUNK: usize = 1 << 14;
        use rayon::prelude::*;
        mask.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, m)| {
            // every element is stored
            for (j, v) in m.iter_mut().enumerate() {
                *v = if crate::span::row_attention::dropout_keep(seed, 0, 0, ci * CHUNK + j, 1, keep) { scale } else { 0.0 };
            }
        });
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        Ok(xs.mul(&mask)?)
    }

    /// The mask [`Self::dropout`] would multiply a tensor shaped like `like` by (0 or 1/keep per
    /// element), drawn exactly as that call draws it; `None` where it would draw nothing and
    /// leave the tensor as it is. For hand-written backward passes, which need the mask itself.
    pub fn dropout_mask(&mut self, like: &Tensor, p: f32) -> Result<Option<Tensor>> {
        if !self.train || p <= 0.0 {
            return Ok(None);
        }
        Ok(Some(self.dropout(&like.ones_like()?, p)?))
    }

    /// `f` with the graph off ([`Self::track`] false), restoring the setting after it, also when
    /// `f` fails: the untracked passes of recomputation and the hand-written stage backwards.
    pub fn untracked<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let track = self.track;
        self.track = false;
        let r = f(self);
        self.track = track;
        r
    }

    /// A trainable parameter as used in this pass: tracked when gradients are wanted (and
    /// [`Self::track`] is on), detached otherwise. (A tracked parameter makes candle keep every
    /// intermediate that depends on it alive until the output is dropped: at inference that turns
    /// O(rows) memory into O(all).)
    pub fn param(&self, v: &candle_core::Var) -> Tensor {
        self.weight(v.as_tensor())
    }

    /// A weight that is trainable only in some runs (the encoder's weights under full
    /// fine-tuning are [`candle_core::Var`]s held as plain tensors): as it is when this pass
    /// records a graph, detached otherwise, so inference and the untracked first pass of
    /// recomputation keep nothing alive. Free for a frozen tensor (detaching it is a clone).
    pub fn weight(&self, w: &Tensor) -> Tensor {
        if self.grad && self.track {
            w.clone()
        } else {
            w.detach()
        }
    }

    /// A fresh seed from the context's RNG (for ops that generate their own dropout masks).
    pub fn next_seed(&mut self) -> u64 {
        self.rng.random()
    }

    /// Softmax over the last dimension.
    pub fn softmax_last(&self, xs: &Tensor) -> Result<Tensor> {
        if self.grad {
            Ok(candle_nn::ops::softmax(xs, D::Minus1)?)
        } else {
            Ok(candle_nn::ops::softmax_last_dim(xs)?)
        }
    }
}

/// `a.broadcast_matmul(b)`, valid on every device. candle's CUDA matmul (cuBLAS) needs batch
/// strides it can express and plain or plainly-transposed matrices, so there a broadcast operand
/// (stride 0) is materialised first; the CPU gemm takes the views as they are.
pub fn broadcast_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() {
        return Ok(a.broadcast_matmul(b)?);
    }
    materialised_matmul(a, b)
}

fn materialised_matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (ra, rb) = (a.rank(), b.rank());
    if ra < 2 || rb < 2 {
        return Ok(a.broadcast_matmul(b)?);
    }
    let batch = candle_core::Shape::from(&a.dims()[..ra - 2])
        .broadcast_shape_binary_op(&candle_core::Shape::from(&b.dims()[..rb - 2]), "matmul")?;
    let with = |m: &[usize]| -> Vec<usize> { batch.dims().iter().chain(m).copied().collect() };
    let plain = |x: Tensor| -> Result<Tensor> {
        Ok(if x.is_contiguous() || x.t()?.is_contiguous() { x } else { x.contiguous()? })
    };
    let a = plain(a.broadcast_as(with(&a.dims()[ra - 2..]))?)?;
    let b = plain(b.broadcast_as(with(&b.dims()[rb - 2..]))?)?;
    Ok(a.matmul(&b)?)
}

/// `e^x` for the CPU kernels' soft-maxes, written so that loops over it vectorise (libm's `expf`
/// is a call per element): `2^n · e^r` with `n = round(x·log₂e)`, `r = x − n·ln2` (two-part ln2), and e^r by its
/// degree-7 Taylor polynomial (relative error < 1e-6 against the exact value). Exactly 0 below −87.3
/// (where `expf` is subnormal or 0), so masked cells (−1e4 or −∞) still weigh nothing.
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    // n = round(x·log₂e); r = x − n·ln2 in two parts (Cody–Waite), |r| ≤ ln2/2; e^r by Taylor to r⁷.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let xc = x.clamp(-87.3, 88.7);
    // round to nearest by the 1.5·2²³ trick: plain adds, so it vectorises without SSE4.1's round
    const MAGIC: f32 = 12_582_912.0;
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2ⁿ from the bits of t (= MAGIC + n exactly, |n| ≤ 128): integer ops only, so the loop stays
    // vectorised (`n as i32` is a saturating cast that compiles to one scalar conversion a lane).
    let n_int = t.to_bits() as i32 - MAGIC.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// Maximum of a slice (−∞ when empty), in 16 independent lanes so that it vectorises; the same
/// value as a sequential max.
pub(crate) fn max_lanes(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { max_lanes_avx512(x) };
    }
    max_lanes_generic(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_lanes_avx512(x: &[f32]) -> f32 {
    max_lanes_generic(x)
}

#[inline(always)]
fn max_lanes_generic(x: &[f32]) -> f32 {
    let mut m = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (mi, &v) in m.iter_mut().zip(c) {
            *mi = mi.max(v);
        }
    }
    let mut r = chunks.remainder().iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    for v in m {
        r = r.max(v);
    }
    r
}

/// `x ← fast_exp(x − m)` in place; returns Σx summed in 16 lanes, combined in a fixed order (the
/// same result on every run and thread count). Compiled for AVX-512 too and picked at run time
/// (the release build targets plain x86-64); both paths do the same operations (Rust does not
/// contract `a·b + c` into FMAs), so the results are identical.
pub(crate) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { exp_sub_sum_avx512(x, m) };
    }
    exp_sub_sum_generic(x, m)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_sub_sum_avx512(x: &mut [f32], m: f32) -> f32 {
    exp_sub_sum_generic(x, m)
}

#[inline(always)]
fn exp_sub_sum_generic(x: &mut [f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact_mut(16);
    for c in &mut chunks {
        for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
            *v = fast_exp(*v - m);
            *a += *v;
        }
    }
    let mut tail = 0f32;
    for v in chunks.into_remainder() {
        *v = fast_exp(*v - m);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// LayerNorm over the last dimension, with the checkpoint's `weight` / `bias`.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(vb: candle_nn::VarBuilder, size: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps })
    }

    pub fn forward(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let (weight, bias) = (ctx.weight(&self.weight), ctx.weight(&self.bias));
        if ctx.grad && ctx.fused(xs) && weight.dtype() == DType::F32 {
            // One op with its own backward: keeps x only (the composite keeps six tensors of x's size).
            let c = xs.dim(D::Minus1)?;
            let x2 = xs.contiguous()?.reshape(((), c))?;
            let y = x2.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps: self.eps })?;
            return Ok(y.reshape(xs.shape())?);
        }
        if ctx.grad || !matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            // Composite version (also the only one for f64): mean/variance in the input dtype (f32 or f64), records a backward.
            let mean = xs.mean_keepdim(D::Minus1)?;
            let xc = xs.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            Ok(xn.broadcast_mul(&weight)?.broadcast_add(&bias)?)
        } else {
            Ok(candle_nn::ops::layer_norm(xs, &weight, &bias, self.eps as f32)?)
        }
    }
}

/// The error for a gradient that a fused op's own backward pass did not return (it always
/// does: this is a bug, reported rather than a panic). For `Option::ok_or_else`.
pub(crate) fn no_grad() -> crate::Error {
    crate::Error::Input("a fused backward returned no gradient".into())
}

/// `x ⊙ mask`, or `x` itself without a mask ([`ForwardCtx::dropout_mask`]).
pub(crate) fn mask_mul(x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    Ok(match mask {
        Some(m) => (x * m)?,
        None => x.clone(),
    })
}

/// `n` f32 values with unspecified contents, for an op output of which every element is written
/// before anything reads it (the fused kernels' outputs; candle's `alloc_uninit` does the same).
/// `vec![0.0; n]` zeroes them first: memset was 8 % of a bf16 forward at 5,120 tokens.
pub(crate) fn uninit_f32(n: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: the capacity is `n`; f32 has no invalid bit patterns, and every caller overwrites
    // all `n` elements before reading any (each call site says how).
    unsafe { v.set_len(n) };
    v
}

/// The f32 data of a contiguous CPU tensor, as a custom op receives it; `op` names the op in the
/// error for a non-contiguous input. Shared by every fused CPU op (`span::row_attention`,
/// `span::band_conv`, `span::band::VerticalView`, [`LayerNormOp`]).
pub fn cpu_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout, op: &str) -> candle_core::Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{op} needs contiguous inputs"),
    }
}

/// LayerNorm over the last axis of `[rows, c]` as one CPU f32 op with a hand-written backward
/// (`nn::LayerNorm` uses it in gradient passes). Same arithmetic as the composite version: mean,
/// centred values, biased variance, `x̂ = (x − μ)/√(σ² + ε)`, `y = x̂·w + b`.
pub struct LayerNormOp {
    pub eps: f64,
}

/// Rows per partial weight gradient (summed in block order: deterministic).
const LN_GRAD_ROWS: usize = 64;

impl LayerNormOp {
    /// x̂ of one row into `xh`; returns 1/σ.
    fn normalise(&self, x: &[f32], xh: &mut [f32]) -> f32 {
        let c = x.len() as f32;
        let mean = x.iter().sum::<f32>() / c;
        let mut var = 0f32;
        for (h, &v) in xh.iter_mut().zip(x) {
            *h = v - mean;
            var += *h * *h;
        }
        let inv = 1.0 / ((var / c) as f64 + self.eps).sqrt() as f32;
        xh.iter_mut().for_each(|h| *h *= inv);
        inv
    }
}

impl candle_core::CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (_, c) = l1.shape().dims2()?;
        let (x, w, b) = (cpu_f32(s1, l1, "layer norm")?, cpu_f32(s2, l2, "layer norm")?, cpu_f32(s3, l3, "layer norm")?);
        if w.len() != c || b.len() != c {
            candle_core::bail!("layer norm: input {:?}, weight {}, bias {}", l1.shape(), w.len(), b.len());
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c).zip(x.par_chunks(c)).for_each(|(yr, xr)| {
            self.normalise(xr, yr);
            for ((v, wi), bi) in yr.iter_mut().zip(w).zip(b) {
                *v = *v * wi + bi;
            }
        });
        Ok((candle_core::CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (rows, c) = x.dims2()?;
        let xv: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let gv: Vec<f32> = grad.flatten_all()?.to_vec1()?;
        let mut dx = vec![0f32; rows * c];
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(LN_GRAD_ROWS * c)
            .enumerate()
            .map(|(blk, dxb)| {
                let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                let mut xh = vec![0f32; c];
                for (local, dxr) in dxb.chunks_mut(c).enumerate() {
                    let row = blk * LN_GRAD_ROWS + local;
                    let (xr, gr) = (&xv[row * c..][..c], &gv[row * c..][..c]);
                    let inv = self.normalise(xr, &mut xh);
                    // dx = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂)) / σ with ĝ = g·w
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for t in 0..c {
                        let gh = gr[t] * wv[t];
                        m1 += gh;
                        m2 += gh * xh[t];
                        dw[t] += gr[t] * xh[t];
                        db[t] += gr[t];
                    }
                    let (m1, m2) = (m1 / c as f32, m2 / c as f32);
                    for t in 0..c {
                        dxr[t] = (gr[t] * wv[t] - m1 - xh[t] * m2) * inv;
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
        for (pw, pb) in partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (rows, c), dev)?), Some(Tensor::from_vec(dw, c, dev)?), Some(Tensor::from_vec(db, c, dev)?)))
    }
}

/// A linear layer `y = x Wᵀ + b` of the encoder: frozen plain tensors, or (full fine-tuning)
/// variables held as tensors, used through [`ForwardCtx::weight`].
#[derive(Clone, Debug)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    pub fn load(vb: candle_nn::VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias { Some(vb.get(out_dim, "bias")?) } else { None };
        Ok(Self { inner: candle_nn::Linear::new(weight, bias) })
    }
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { inner: candle_nn::Linear::new(weight, bias) }
    }
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
    pub fn forward(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let w = ctx.weight(self.inner.weight());
        let b = self.inner.bias().map(|b| ctx.weight(b));
        Ok(candle_nn::Linear::new(w, b).forward(xs)?)
    }
}

/// Activation named by a Hugging Face `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (erf), HF `"gelu"`.
    Gelu,
    /// tanh approximation, HF `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`.
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_hf(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
    /// The activation with the fused CPU GELU where it applies.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(xs, xs.device().is_cpu() && xs.dtype() == DType::F32)
    }

    /// The activation in a pass that chose its kernels ([`ForwardCtx::fused`]).
    pub fn forward_in(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        self.forward_with(xs, ctx.fused(xs))
    }

    fn forward_with(&self, xs: &Tensor, fused: bool) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu if fused => xs.contiguous()?.apply_op1(GeluErfOp)?,
            Self::Gelu => xs.gelu_erf()?,
            Self::GeluTanh => xs.gelu()?,
            Self::Relu => xs.relu()?,
        })
    }
}

/// `erf` for the CPU GELU: Abramowitz & Stegun 7.1.26 (`1 − (a₁t + … + a₅t⁵)·e^{−x²}`,
/// `t = 1/(1 + p|x|)`, |error| ≤ 1.5e-7) with [`fast_exp`], branch-free so that loops over it
/// vectorise. libm's `erff` (what candle's `gelu_erf` calls) is a scalar call per element: ~3 %
/// of a DeBERTa-base forward at 5,120 tokens.
#[inline(always)]
pub(crate) fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * fast_exp(-a * a)).copysign(x)
}

/// GELU, erf form (`0.5·x·(1 + erf(x/√2))`, HF `"gelu"`), over a slice; AVX-512 picked at run time.
fn gelu_slice(x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { gelu_slice_avx512(x, y) };
    }
    gelu_slice_generic(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_slice_avx512(x: &[f32], y: &mut [f32]) {
    gelu_slice_generic(x, y)
}

#[inline(always)]
fn gelu_slice_generic(x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = 0.5 * v * (1.0 + fast_erf(v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// d GELU/dx = Φ(x) + x·φ(x), times the incoming gradient.
fn gelu_grad_slice(x: &[f32], g: &[f32], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { gelu_grad_slice_avx512(x, g, d) };
    }
    gelu_grad_slice_generic(x, g, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_grad_slice_avx512(x: &[f32], g: &[f32], d: &mut [f32]) {
    gelu_grad_slice_generic(x, g, d)
}

#[inline(always)]
fn gelu_grad_slice_generic(x: &[f32], g: &[f32], d: &mut [f32]) {
    // 1/√(2π)
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((o, &v), &gv) in d.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + fast_erf(v * std::f32::consts::FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * fast_exp(-0.5 * v * v);
        *o = gv * (cdf + v * pdf);
    }
}

/// Elements per parallel chunk of the GELU op.
const GELU_CHUNK: usize = 1 << 14;

/// GELU (erf form) on contiguous CPU f32 tensors with [`fast_erf`], and its own backward.
pub struct GeluErfOp;

impl candle_core::CustomOp1 for GeluErfOp {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &candle_core::CpuStorage, l: &candle_core::Layout) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let x = cpu_f32(s, l, "gelu")?;
        let mut y = uninit_f32(x.len()); // every chunk written by gelu_slice
        y.par_chunks_mut(GELU_CHUNK).zip(x.par_chunks(GELU_CHUNK)).for_each(|(yc, xc)| gelu_slice(xc, yc));
        Ok((candle_core::CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        use rayon::prelude::*;
        let x: Vec<f32> = arg.flatten_all()?.to_vec1()?;
        let g: Vec<f32> = grad.contiguous()?.flatten_all()?.to_vec1()?;
        let mut d = uninit_f32(x.len()); // every chunk written by gelu_grad_slice
        d.par_chunks_mut(GELU_CHUNK).zip(x.par_chunks(GELU_CHUNK)).zip(g.par_chunks(GELU_CHUNK)).for_each(|((dc, xc), gc)| gelu_grad_slice(xc, gc, dc));
        Ok(Some(Tensor::from_vec(d, arg.shape(), arg.device())?))
    }
}

/// Embedding lookup for ids of any shape.
pub fn embed(table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    let mut dims = ids.dims().to_vec();
    let hidden = table.dim(1)?;
    let flat = ids.flatten_all()?;
    let out = table.index_select(&flat, 0)?;
    dims.push(hidden);
    Ok(out.reshape(dims)?)
}

/// `[B, T]` 0/1 mask (any integer or float dtype) into host booleans, row-major.
pub fn mask_to_host(mask: &Tensor) -> Result<(usize, usize, Vec<bool>)> {
    let (b, t) = mask.dims2()?;
    let v: Vec<f32> = mask.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    Ok((b, t, v.into_iter().map(|x| x != 0.0).collect()))
}

/// Host booleans `[B, T]` back to a `[B, T]` tensor of 0/1 in `dtype`.
pub fn mask_from_host(b: usize, t: usize, valid: &[bool], dtype: DType, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = valid.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(v, (b, t), device)?.to_dtype(dtype)?)
}

/// Single-threaded f32 matrix product for the fused CPU kernels (which parallelise over rows
/// themselves): `dst[i·ldd + j] = (acc ? dst : 0) + alpha · Σ_p A(i,p)·B(p,j)` with
/// `A(i,p) = a[i·a_rs + p·a_cs]`, `B(p,j) = b[p·b_rs + j·b_cs]` — any transposition is a stride.
/// Runs gemm's AVX-512 microkernels; panics if a slice is too short for the shape (a bug, not
/// user input).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    ldd: usize,
    acc: bool,
    (a, a_rs, a_cs): (&[f32], usize, usize),
    (b, b_rs, b_cs): (&[f32], usize, usize),
    alpha: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(dst.len() > last(m, n, ldd, 1), "sgemm: dst too short");
    if k == 0 {
        if !acc {
            for i in 0..m {
                dst[i * ldd..i * ldd + n].fill(0.0);
            }
        }
        return;
    }
    assert!(a.len() > last(m, k, a_rs, a_cs) && b.len() > last(k, n, b_rs, b_cs), "sgemm: operand too short");
    // SAFETY: every index the product touches was bounds-checked above; dst does not alias a or b
    // (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ldd as isize,
            acc,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_matches_erf() {
        let mut worst = 0f64;
        for i in -80_000..=80_000 {
            let x = i as f32 * 1e-4;
            let want = libm_erf(x as f64);
            worst = worst.max((fast_erf(x) as f64 - want).abs());
        }
        assert!(worst < 5e-7, "max |fast_erf − erf| = {worst}");
        assert_eq!(fast_erf(0.0), 0.0);
        assert_eq!(fast_erf(30.0), 1.0);
        assert_eq!(fast_erf(-30.0), -1.0);
    }

    /// erf by its Taylor series (|x| < 3) and continued fraction of erfc (|x| ≥ 3), in f64:
    /// an independent reference for the test.
    fn libm_erf(x: f64) -> f64 {
        let a = x.abs();
        let r = if a < 3.0 {
            let (mut term, mut sum, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                n += 1.0;
                term *= -a * a / n;
                sum += term / (2.0 * n + 1.0);
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // erfc(a) = e^{−a²}/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + 2/(a + …)))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }

    #[test]
    fn gelu_op_matches_candle_gelu_erf_and_its_gradient() {
        let dev = Device::Cpu;
        let vals: Vec<f32> = (0..3000).map(|i| (i as f32 - 1500.0) * 0.005).collect();
        let x = candle_core::Var::from_tensor(&Tensor::from_vec(vals, (30, 100), &dev).unwrap()).unwrap();
        let ours = Activation::Gelu.forward(x.as_tensor()).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        let d = (&ours - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "forward {d}");
        let w = Tensor::from_vec((0..3000).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect::<Vec<f32>>(), (30, 100), &dev).unwrap();
        let g1 = (ours * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (reference * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 2e-6, "gradient {d}");
    }

    #[test]
    fn fast_exp_matches_expf() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (fast_exp(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
            x += 0.0137;
        }
        assert!(worst < 1e-6, "relative error {worst}");
        assert_eq!(fast_exp(-1e4), 0.0);
        assert_eq!(fast_exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(fast_exp(0.0), 1.0);
        let mut v: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let m = max_lanes(&v);
        assert_eq!(m, v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)));
        let want: f64 = v.iter().map(|&x| ((x - m) as f64).exp()).sum();
        let got = exp_sub_sum(&mut v, m) as f64;
        assert!((got - want).abs() / want < 1e-6);
        assert_eq!(max_lanes(&[]), f32::NEG_INFINITY);
        // the dispatched (AVX-512 where present) and the generic paths agree bit for bit
        let mut a: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.013).cos() * 30.0).collect();
        let mut b = a.clone();
        assert_eq!(exp_sub_sum(&mut a, 3.0).to_bits(), exp_sub_sum_generic(&mut b, 3.0).to_bits());
        assert_eq!(a, b);
    }

    #[test]
    fn materialised_matmul_equals_broadcast_matmul() {
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (2, 3, 5, 4), &dev).unwrap();
        let t = Tensor::randn(0f32, 1.0, (3, 6, 4), &dev).unwrap();
        let b = t.t().unwrap().unsqueeze(0).unwrap(); // [1, 3, 4, 6], broadcast over the batch
        let want = a.broadcast_matmul(&b).unwrap();
        let got = materialised_matmul(&a, &b).unwrap();
        let d = (want - got).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn fused_layer_norm_equals_composite_forward_and_gradients() {
        let dev = candle_core::Device::Cpu;
        let x = candle_core::Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 70, 24), &dev).unwrap() + 0.5).unwrap()).unwrap();
        let w = candle_core::Var::from_tensor(&Tensor::randn(1f32, 0.3, 24, &dev).unwrap()).unwrap();
        let b = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.3, 24, &dev).unwrap()).unwrap();
        let r = Tensor::randn(0f32, 1.0, (3, 70, 24), &dev).unwrap();
        let ln = LayerNorm { weight: w.as_tensor().clone(), bias: b.as_tensor().clone(), eps: 1e-5 };
        let fused = ln.forward(x.as_tensor(), &ForwardCtx::grad_only()).unwrap();
        // composite reference
        let xs = x.as_tensor();
        let mean = xs.mean_keepdim(D::Minus1).unwrap();
        let xc = xs.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let xn = xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
        let comp = xn.broadcast_mul(w.as_tensor()).unwrap().broadcast_add(b.as_tensor()).unwrap();
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff(&fused, &comp) < 1e-5);
        let g1 = (&fused * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&comp * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            let (a, c) = (g1.get(v).unwrap(), g2.get(v).unwrap());
            assert!(diff(a, c) < 1e-4, "{}", diff(a, c));
        }
    }
}
