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
    rng: ChaCha8Rng,
}

impl ForwardCtx {
    /// Inference: no dropout, fused kernels.
    pub fn eval() -> Self {
        Self { train: false, grad: false, rng: ChaCha8Rng::seed_from_u64(0) }
    }
    /// Training: dropout on (seeded), differentiable ops.
    pub fn train(seed: u64) -> Self {
        Self { train: true, grad: true, rng: ChaCha8Rng::seed_from_u64(seed) }
    }
    /// No dropout but differentiable ops (gradient checks, evaluation of a loss to differentiate).
    pub fn grad_only() -> Self {
        Self { train: false, grad: true, rng: ChaCha8Rng::seed_from_u64(0) }
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
        let n = xs.elem_count();
        let mask: Vec<f32> =
            (0..n).map(|_| if self.rng.random::<f32>() < keep { scale } else { 0.0 }).collect();
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        Ok(xs.mul(&mask)?)
    }

    /// A trainable parameter as used in this pass: tracked when gradients are wanted, detached
    /// otherwise. (A tracked parameter makes candle keep every intermediate that depends on it
    /// alive until the output is dropped: at inference that turns O(rows) memory into O(all).)
    pub fn param(&self, v: &candle_core::Var) -> Tensor {
        if self.grad {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
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
        if ctx.grad || !matches!(xs.dtype(), DType::F32 | DType::F16 | DType::BF16) {
            // Composite version (also the only one for f64): mean/variance in the input dtype (f32 or f64), records a backward.
            let mean = xs.mean_keepdim(D::Minus1)?;
            let xc = xs.broadcast_sub(&mean)?;
            let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
            let xn = xc.broadcast_div(&(var + self.eps)?.sqrt()?)?;
            Ok(xn.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)?)
        } else {
            Ok(candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps as f32)?)
        }
    }
}

/// A frozen linear layer `y = x Wᵀ + b` (weights as plain tensors: no gradient is ever allocated).
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
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(self.inner.forward(xs)?)
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
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => xs.gelu_erf()?,
            Self::GeluTanh => xs.gelu()?,
            Self::Relu => xs.relu()?,
        })
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
