//! LoRA adapters (Hu et al. 2021) on the query and value projections, as peft 0.11 does it for
//! SeNER (spec §8): `y = x Wᵀ + b + (α/r) · dropout(x) Aᵀ Bᵀ`, A ∈ R^{r×in} (kaiming-uniform,
//! bound 1/√in), B ∈ R^{out×r} (zeros). With `bias = "lora_only"` the bias of an adapted layer is
//! trainable too; every other encoder weight is a frozen plain tensor.

use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::nn::ForwardCtx;
use crate::Result;

/// The linear layers of an encoder layer that can carry an adapter, by their names in
/// [`LoraConfig::targets`].
pub const TARGETS: [&str; 6] = ["query", "key", "value", "attention_output", "intermediate", "output"];

/// LoRA hyper-parameters (paper defaults: r 8, α 16, dropout 0, query and value).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Make the biases of the adapted projections trainable (peft `bias="lora_only"`).
    pub train_bias: bool,
    /// Which linear layers of every encoder layer get an adapter ([`TARGETS`]; the paper: query
    /// and value). Every one of them keeps a small model folder where full fine-tuning carries
    /// the whole encoder.
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, dropout: 0.0, train_bias: true, targets: vec!["query".into(), "value".into()] }
    }
}

impl LoraConfig {
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }

    /// Every value within bounds; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(crate::Error::Input(format!("lora: {m}")));
        if self.r == 0 || self.r > 4096 {
            return bad(format!("r = {} must be in 1..=4096", self.r));
        }
        if !(self.alpha > 0.0 && self.alpha.is_finite()) {
            return bad(format!("alpha = {} must be positive", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("targets is empty".into());
        }
        if let Some(t) = self.targets.iter().find(|t| !TARGETS.contains(&t.as_str())) {
            return bad(format!("unknown target `{t}` (expected {})", TARGETS.join(", ")));
        }
        Ok(())
    }

    /// Whether the module with checkpoint name `name` (`encoder.layer.3.attention.self.query_proj`)
    /// is one of the targets.
    pub fn targets_module(&self, name: &str) -> bool {
        self.targets.iter().any(|t| target_of(name) == Some(t.as_str()))
    }

    /// peft's `target_modules` (module-name suffixes) for these targets.
    pub fn peft_target_modules(&self, deberta: bool) -> Vec<String> {
        self.targets
            .iter()
            .map(|t| {
                match (t.as_str(), deberta) {
                    ("query", true) => "query_proj",
                    ("key", true) => "key_proj",
                    ("value", true) => "value_proj",
                    ("attention_output", _) => "attention.output.dense",
                    ("intermediate", _) => "intermediate.dense",
                    // peft matches suffixes: this one also names attention.output.dense
                    ("output", _) => "output.dense",
                    (other, _) => other,
                }
                .to_string()
            })
            .collect()
    }
}

/// The [`TARGETS`] name of a module, from its checkpoint name.
pub fn target_of(name: &str) -> Option<&'static str> {
    let last = name.rsplit('.').next()?;
    match last {
        "query" | "query_proj" => Some("query"),
        "key" | "key_proj" => Some("key"),
        "value" | "value_proj" => Some("value"),
        "dense" if name.ends_with("attention.output.dense") => Some("attention_output"),
        "dense" if name.ends_with("intermediate.dense") => Some("intermediate"),
        "dense" if name.ends_with(".output.dense") => Some("output"),
        _ => None,
    }
}

/// A linear layer that can carry a LoRA adapter.
#[derive(Debug)]
pub struct LoraLinear {
    /// Checkpoint name of the module (e.g. `encoder.layer.3.attention.self.query_proj`).
    name: String,
    weight: Tensor,
    bias: Option<Bias>,
    adapter: Option<Adapter>,
    /// The base product in bf16 (`--dtype bf16`): the current `weight` packed, repacked
    /// whenever merging changes it. None: f32.
    bf16: Option<crate::gemm_bf16::Bf16Linear>,
    /// The f32 `weight` was dropped after packing ([`Self::release_f32_weight`]): bf16
    /// inference only from then on.
    released: bool,
}

/// What [`LoraLinear::backward`] needs from [`LoraLinear::forward_saved`]: the input, the
/// adapter's dropout mask (scaled by 1/keep) and the adapter's low-rank activations.
pub struct LinearSaved {
    x: Tensor,
    mask: Option<Tensor>,
    xa: Option<Tensor>,
}

#[derive(Debug)]
enum Bias {
    Frozen(Tensor),
    Trainable(Var),
}

#[derive(Debug)]
struct Adapter {
    a: Var,
    b: Var,
    scale: f64,
    dropout: f32,
    /// `weight` currently includes `scale · B A` (inference fast path); forward then skips A, B.
    merged: bool,
}

impl LoraLinear {
    pub fn load(vb: candle_nn::VarBuilder, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = Some(Bias::Frozen(vb.get(out_dim, "bias")?));
        Ok(Self { name: name.to_string(), weight, bias, adapter: None, bf16: None, released: false })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Multiply the (frozen) base weight in `p`: bf16 packs the current weight for the kernel.
    pub fn set_precision(&mut self, p: crate::gemm_bf16::Precision) -> Result<()> {
        if self.released {
            return if p == self.precision() { Ok(()) } else { Err(self.released_error("change precision")) };
        }
        self.bf16 = match p {
            crate::gemm_bf16::Precision::F32 => None,
            crate::gemm_bf16::Precision::Bf16(k) => Some(crate::gemm_bf16::Bf16Linear::new(&self.weight, k)?),
        };
        Ok(())
    }

    /// The precision of the base product.
    pub fn precision(&self) -> crate::gemm_bf16::Precision {
        self.bf16.as_ref().map_or(crate::gemm_bf16::Precision::F32, |b| crate::gemm_bf16::Precision::Bf16(b.kernel()))
    }

    /// bf16 inference: drop the f32 copy of the weight and keep only the packed bf16 one
    /// (DeBERTa-v3-base: 340 MB over its linear layers). The layer can then no longer merge or
    /// unmerge an adapter, train, or return to f32; each of those says so. Needs bf16 and no
    /// unmerged adapter.
    pub fn release_f32_weight(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        if self.adapter.as_ref().is_some_and(|a| !a.merged) {
            return Err(crate::Error::Input(format!("{}: merge the adapter before releasing the f32 weight", self.name)));
        }
        let Some(b) = &mut self.bf16 else {
            return Err(crate::Error::Input(format!("{}: only a bf16 layer can release its f32 weight", self.name)));
        };
        b.release_f32_weight();
        self.weight = Tensor::zeros(0, self.weight.dtype(), self.weight.device())?;
        self.released = true;
        Ok(())
    }

    fn released_error(&self, what: &str) -> crate::Error {
        crate::Error::Input(format!("{}: cannot {what}: the f32 weight was released for bf16 inference (load the model again)", self.name))
    }

    /// After `weight` changed: pack it again if the layer runs in bf16.
    fn repack(&mut self) -> Result<()> {
        let p = self.precision();
        self.set_precision(p)
    }

    /// Attach a fresh adapter (A random from `rng`, B = 0: the output is unchanged until trained).
    pub fn add_adapter(&mut self, cfg: &LoraConfig, rng: &mut ChaCha8Rng) -> Result<()> {
        if self.released {
            return Err(self.released_error("add an adapter"));
        }
        let (out_dim, in_dim) = self.weight.dims2()?;
        let dev = self.weight.device();
        let dtype = self.weight.dtype();
        let bound = 1.0 / (in_dim as f64).sqrt();
        let a: Vec<f64> = (0..cfg.r * in_dim).map(|_| rng.random_range(-bound..bound)).collect();
        let a = Tensor::from_vec(a, (cfg.r, in_dim), dev)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out_dim, cfg.r), dtype, dev)?;
        self.unmerge()?;
        self.adapter =
            Some(Adapter { a: Var::from_tensor(&a)?, b: Var::from_tensor(&b)?, scale: cfg.scale(), dropout: cfg.dropout, merged: false });
        if cfg.train_bias {
            if let Some(Bias::Frozen(t)) = &self.bias {
                self.bias = Some(Bias::Trainable(Var::from_tensor(t)?));
            }
        }
        Ok(())
    }

    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    /// Trainable tensors with their checkpoint names (`<name>.lora_A.weight`, `.lora_B.weight`,
    /// `.bias`).
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        if let Some(ad) = &self.adapter {
            out.push((format!("{}.lora_A.weight", self.name), ad.a.clone()));
            out.push((format!("{}.lora_B.weight", self.name), ad.b.clone()));
        }
        if let Some(Bias::Trainable(v)) = &self.bias {
            out.push((format!("{}.bias", self.name), v.clone()));
        }
        out
    }

    /// Fold `scale · B A` into the base weight (faster inference). Exact up to f32 rounding;
    /// [`Self::unmerge`] subtracts the same product.
    pub fn merge(&mut self) -> Result<()> {
        if self.released && self.adapter.as_ref().is_some_and(|a| !a.merged) {
            return Err(self.released_error("merge"));
        }
        if let Some(ad) = &mut self.adapter {
            if !ad.merged {
                // Detached: a merged weight must not drag the adapter's graph into inference.
                let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?.detach();
                self.weight = (&self.weight + delta)?.detach();
                ad.merged = true;
                return self.repack();
            }
        }
        Ok(())
    }

    pub fn unmerge(&mut self) -> Result<()> {
        if self.released && self.adapter.as_ref().is_some_and(|a| a.merged) {
            return Err(self.released_error("unmerge"));
        }
        if let Some(ad) = &mut self.adapter {
            if ad.merged {
                let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?.detach();
                self.weight = (&self.weight - delta)?.detach();
                ad.merged = false;
                return self.repack();
            }
        }
        Ok(())
    }

    /// Current effective weight `W + scale·B A` (whether merged or not).
    pub fn effective_weight(&self) -> Result<Tensor> {
        if self.released {
            return Err(self.released_error("give its f32 weight"));
        }
        match &self.adapter {
            Some(ad) if !ad.merged => Ok((&self.weight + (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?)?),
            _ => Ok(self.weight.clone()),
        }
    }

    pub fn forward(&self, xs: &Tensor, ctx: &mut ForwardCtx) -> Result<Tensor> {
        let mut y = self.base_forward(xs, ctx)?;
        if let Some(ad) = &self.adapter {
            if !ad.merged {
                let x = ctx.dropout(xs, ad.dropout)?;
                let low = linear(&linear(&x, &ctx.param(&ad.a))?, &ctx.param(&ad.b))?;
                y = (y + (low * ad.scale)?)?;
            }
        }
        Ok(y)
    }

    /// [`Self::forward`] without a graph (`ctx.track` off), the same ops and dropout draws,
    /// keeping what [`Self::backward`] needs.
    pub fn forward_saved(&self, xs: &Tensor, ctx: &mut ForwardCtx) -> Result<(Tensor, LinearSaved)> {
        let mut y = self.base_forward(xs, ctx)?;
        let mut saved = LinearSaved { x: xs.clone(), mask: None, xa: None };
        if let Some(ad) = &self.adapter {
            if !ad.merged {
                // the mask `ctx.dropout(xs)` would apply: the same draws
                saved.mask = ctx.dropout_mask(xs, ad.dropout)?;
                let x = crate::nn::mask_mul(xs, saved.mask.as_ref())?;
                let xa = linear(&x, &ctx.param(&ad.a))?;
                y = (y + (linear(&xa, &ctx.param(&ad.b))? * ad.scale)?)?;
                saved.xa = Some(xa);
            }
        }
        Ok((y, saved))
    }

    /// The gradient at the input of [`Self::forward_saved`] from the output gradient `dy`; the
    /// adapter's and a trainable bias's gradients are added to `grads`. The base weight must be
    /// frozen (LoRA): a trainable one is an error (its gradient is not computed here).
    pub fn backward(&self, saved: &LinearSaved, dy: &Tensor, grads: &mut Vec<(Var, Tensor)>) -> Result<Tensor> {
        if self.weight.track_op() || self.weight.is_variable() {
            return Err(crate::Error::Input(format!("{}: the hand-written backward needs a frozen weight", self.name)));
        }
        let (out, inp) = self.weight.dims2()?;
        let rows = dy.elem_count() / out.max(1);
        let dy2 = dy.contiguous()?.reshape((rows, out))?;
        let mut dx = match &self.bf16 {
            Some(b) if dy.device().is_cpu() => {
                use candle_core::CustomOp1;
                b.bwd(&dy2, &dy2, &dy2)?.ok_or_else(|| crate::Error::Input(format!("{}: no bf16 gradient", self.name)))?
            }
            _ => dy2.matmul(&self.weight)?,
        };
        if let Some(Bias::Trainable(b)) = &self.bias {
            grads.push((b.clone(), dy2.sum(0)?));
        }
        if let (Some(ad), Some(xa)) = (&self.adapter, &saved.xa) {
            let r = ad.a.as_tensor().dim(0)?;
            let xa2 = xa.reshape((rows, r))?;
            let xd = crate::nn::mask_mul(&saved.x, saved.mask.as_ref())?.reshape((rows, inp))?;
            let t = dy2.matmul(&ad.b.as_tensor().detach())?; // [rows, r]
            grads.push((ad.b.clone(), (dy2.t()?.matmul(&xa2)? * ad.scale)?));
            grads.push((ad.a.clone(), (t.t()?.matmul(&xd)? * ad.scale)?));
            let dxa = (t.matmul(&ad.a.as_tensor().detach())? * ad.scale)?;
            let dxa = crate::nn::mask_mul(&dxa, saved.mask.as_ref().map(|m| m.reshape((rows, inp))).transpose()?.as_ref())?;
            dx = (dx + dxa)?;
        }
        Ok(dx.reshape(saved.x.shape())?)
    }

    /// The frozen (or fully trainable) product and the bias, without the adapter.
    fn base_forward(&self, xs: &Tensor, ctx: &ForwardCtx) -> Result<Tensor> {
        let y = match &self.bf16 {
            Some(b) if xs.device().is_cpu() => b.forward(xs)?,
            _ => linear(xs, &ctx.weight(&self.weight))?,
        };
        Ok(match &self.bias {
            Some(Bias::Frozen(b)) => y.broadcast_add(&ctx.weight(b))?,
            Some(Bias::Trainable(b)) => y.broadcast_add(&ctx.param(b))?,
            None => y,
        })
    }

    /// Set the adapter tensors from a checkpoint (shapes are checked).
    pub fn set_adapter(&mut self, a: &Tensor, b: &Tensor, bias: Option<&Tensor>) -> Result<()> {
        let ad = self.adapter.as_mut().ok_or_else(|| crate::Error::Input(format!("{}: no adapter attached", self.name)))?;
        let was_merged = ad.merged;
        if was_merged {
            self.unmerge()?;
        }
        let ad = self.adapter.as_mut().ok_or_else(|| crate::Error::Input(format!("{}: no adapter", self.name)))?;
        check_shape(&self.name, "lora_A", ad.a.as_tensor(), a)?;
        check_shape(&self.name, "lora_B", ad.b.as_tensor(), b)?;
        ad.a.set(&a.to_dtype(ad.a.dtype())?.to_device(ad.a.device())?)?;
        ad.b.set(&b.to_dtype(ad.b.dtype())?.to_device(ad.b.device())?)?;
        if let Some(src) = bias {
            match &mut self.bias {
                Some(Bias::Trainable(v)) => {
                    check_shape(&self.name, "bias", v.as_tensor(), src)?;
                    v.set(&src.to_dtype(v.dtype())?.to_device(v.device())?)?
                }
                Some(Bias::Frozen(t)) => {
                    check_shape(&self.name, "bias", t, src)?;
                    *t = src.to_dtype(t.dtype())?.to_device(t.device())?
                }
                None => {}
            }
        }
        if was_merged {
            self.merge()?;
        }
        Ok(())
    }
}

fn check_shape(name: &str, what: &str, have: &Tensor, got: &Tensor) -> Result<()> {
    if have.dims() != got.dims() {
        return Err(crate::Error::Input(format!(
            "{name}.{what}: adapter has shape {:?}, the model expects {:?}",
            got.dims(),
            have.dims()
        )));
    }
    Ok(())
}

/// `x Wᵀ` for x of any rank ≥ 1 (W: `[out, in]`), as one 2-D matmul over the flattened rows.
pub(crate) fn linear(xs: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = xs.dims();
    let in_dim = *dims.last().ok_or_else(|| crate::Error::Input("linear on a scalar".into()))?;
    let rows = xs.elem_count() / in_dim.max(1);
    // cuBLAS takes only plain or plainly-transposed operands: a view of W (a narrowed column block,
    // a transposed slice) is copied there; the CPU gemm reads any strides.
    let w = if xs.device().is_cpu() { w.clone() } else { w.contiguous()? };
    let y = xs.reshape((rows, in_dim))?.matmul(&w.t()?)?;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 1") = w.dim(0)?;
    Ok(y.reshape(out_dims)?)
}

/// Deterministic RNG for adapter initialisation.
pub fn init_rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_name_the_modules_of_both_families() {
        for (name, want) in [
            ("encoder.layer.3.attention.self.query_proj", Some("query")),
            ("encoder.layer.3.attention.self.query", Some("query")),
            ("encoder.layer.0.attention.self.key_proj", Some("key")),
            ("encoder.layer.0.attention.self.value", Some("value")),
            ("encoder.layer.11.attention.output.dense", Some("attention_output")),
            ("encoder.layer.2.intermediate.dense", Some("intermediate")),
            ("encoder.layer.2.output.dense", Some("output")),
            ("encoder.layer.2.attention.self.pos_key_proj", None),
            ("embeddings.word_embeddings", None),
        ] {
            assert_eq!(target_of(name), want, "{name}");
        }
        let cfg = LoraConfig::default();
        assert!(cfg.targets_module("encoder.layer.1.attention.self.value_proj"));
        assert!(!cfg.targets_module("encoder.layer.1.attention.self.key_proj"));
        assert!(cfg.validate().is_ok());
        let bad = LoraConfig { targets: vec!["ffn".into()], ..LoraConfig::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("unknown target `ffn`"));
        assert!(LoraConfig { r: 0, ..LoraConfig::default() }.validate().is_err());
        // Folders written before targets existed read as the paper's query and value.
        let old: LoraConfig = serde_json::from_str(r#"{"r": 8, "alpha": 16.0, "dropout": 0.0, "train_bias": true}"#).unwrap();
        assert_eq!(old.targets, ["query", "value"]);
        assert!(serde_json::from_str::<LoraConfig>(r#"{"r": 8, "rank": 3}"#).is_err());
    }
}
