//! Flags and conversions several commands share: the arrow-attention flags, `--model` (a folder
//! or a Hub id), `--device` and `--dtype`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use sener::encoder::ArrowConfig;

/// Arrow-attention flags shared by every command that runs an encoder.
#[derive(Args, Debug, Clone)]
pub struct ArrowArgs {
    /// One-sided attention window in subword tokens (w). A window ≥ the input length with
    /// --no-logn is exactly the stock full attention.
    #[arg(long, default_value_t = 128)]
    pub window: usize,
    /// Switch off LogN scaling of the [CLS] query row.
    #[arg(long)]
    pub no_logn: bool,
    /// Plain sliding-window attention: [CLS] is not global (ablation).
    #[arg(long)]
    pub no_global_cls: bool,
}

impl ArrowArgs {
    pub fn to_config(&self) -> Result<ArrowConfig> {
        if self.window == 0 {
            bail!("--window must be at least 1");
        }
        Ok(ArrowConfig { window: self.window, logn: !self.no_logn, global_cls: !self.no_global_cls, ..ArrowConfig::default() })
    }
}

/// A `--model` value: a local model folder, or (with the `hub` feature) a Hugging Face Hub id
/// `org/name[@revision]` whose model folder (and base encoder) is fetched into the Hub cache.
pub fn model_dir(spec: &std::path::Path) -> Result<PathBuf> {
    #[cfg(feature = "hub")]
    {
        Ok(sener::hub::resolve_model(spec)?)
    }
    #[cfg(not(feature = "hub"))]
    {
        if !spec.exists() {
            bail!("{}: no such model folder (this build has no Hugging Face Hub support: feature `hub`)", spec.display());
        }
        Ok(spec.to_path_buf())
    }
}

pub fn parse_device(s: &str) -> Result<candle_core::Device> {
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s.starts_with("cuda") => {
            let n = s.strip_prefix("cuda").and_then(|r| r.strip_prefix(':')).unwrap_or("0");
            let n: usize = n.parse().with_context(|| format!("--device {s}: bad ordinal"))?;
            candle_core::Device::new_cuda(n).with_context(|| format!("--device {s}"))
        }
        other => bail!("--device {other}: expected cpu or cuda[:N]"),
    }
}

/// `--dtype`: the precision of the encoder's matrix products.
#[derive(Args, Debug, Clone)]
pub struct DtypeArgs {
    /// Precision of the matrix products (encoder linear layers; at inference also the BiSPA row
    /// attention and band convolutions): f32; bf16 (bf16 inputs, f32 accumulation, with the CPU's
    /// AMX or AVX512-BF16 instructions; an error on a CPU with neither); auto (bf16 with AMX,
    /// where it is fastest, f32 elsewhere). The path taken is logged.
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16", "auto"])]
    pub dtype: String,
}

impl DtypeArgs {
    /// The precision on this machine for a model on `device` (bf16 kernels are CPU kernels:
    /// `auto` elsewhere is f32, `bf16` an error). Logs the path taken.
    pub fn precision(&self, device: &candle_core::Device) -> Result<sener::gemm_bf16::Precision> {
        use sener::gemm_bf16::{DtypeChoice, Precision};
        let choice = DtypeChoice::parse(&self.dtype)?;
        let p = choice.resolve_on(device.is_cpu()).context("--dtype")?;
        if choice == DtypeChoice::Auto && p == Precision::F32 {
            tracing::warn!("--dtype auto: no AMX on this CPU, products run in f32 (--dtype bf16 uses AVX512-BF16 where present)");
        } else {
            tracing::info!(dtype = %p.describe(), "encoder matrix products");
        }
        Ok(p)
    }

    /// Resolves the precision and puts a model loaded for inference in it (in bf16 the encoder's
    /// f32 weights are then dropped: only the packed bf16 ones are used).
    pub fn apply(&self, model: &mut sener::model::Sener) -> Result<sener::gemm_bf16::Precision> {
        let p = self.precision(&model.encoder.device())?;
        model.set_precision(p).context("--dtype")?;
        if p != sener::gemm_bf16::Precision::F32 {
            model.encoder.release_f32_weights().context("--dtype")?;
        }
        Ok(p)
    }
}

/// Subwords below which a first forward is not worth warming for (its working set is small).
const WARM_MIN_TOKENS: usize = 1024;

/// Warms the allocator on a thread (see [`sener::mem::warm_heap`]) for a first forward over
/// `tokens` subwords with the model in `model_dir`, while the caller loads the model: join the
/// handle before the first forward. `None` off the CPU, for short inputs, or where the model's
/// `sener.json` cannot be read (loading will say why).
pub fn warm_for_first_forward(model_dir: &std::path::Path, tokens: usize, device: &candle_core::Device) -> Option<std::thread::JoinHandle<()>> {
    if !device.is_cpu() || tokens < WARM_MIN_TOKENS {
        return None;
    }
    let cfg = sener::model::SenerConfig::read(model_dir).ok()?;
    let bytes = cfg.working_set_bytes(tokens);
    Some(std::thread::spawn(move || {
        let took = sener::mem::warm_heap(bytes);
        tracing::debug!(mib = bytes >> 20, seconds = took.as_secs_f64(), "allocator warmed for the first forward");
    }))
}
