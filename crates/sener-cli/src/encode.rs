//! `sener encode`: last hidden states of one document.

use clap::Args;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use sener::encoder::{ArrowConfig, Encoder, EncoderOptions};
use sener::nn::ForwardCtx;

use crate::common::{parse_device, ArrowArgs};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "file", "ids"])))]
pub struct EncodeArgs {
    /// Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin).
    #[arg(long)]
    pub model: PathBuf,
    /// Text to encode (tokenized with the folder's tokenizer.json, [CLS]/[SEP] added).
    #[arg(long)]
    pub text: Option<String>,
    /// UTF-8 file to encode as one document ('-' reads standard input).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Exact token ids, comma-separated, special tokens included; needs no tokenizer.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    #[command(flatten)]
    pub arrow: ArrowArgs,
    /// LoRA adapter: a PEFT folder or a .safetensors file with PEFT key names.
    #[arg(long)]
    pub lora: Option<PathBuf>,
    /// Output .safetensors: `hidden` [tokens, hidden] (f32) and `ids` [tokens] (i64).
    #[arg(long)]
    pub output: PathBuf,
    /// Device: cpu or cuda[:N] (cuda needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub enum Input {
    Text(String),
    File(PathBuf),
    Ids(Vec<u32>),
}

pub struct EncodeConfig {
    pub model: PathBuf,
    pub input: Input,
    pub arrow: ArrowConfig,
    pub lora: Option<PathBuf>,
    pub output: PathBuf,
    pub device: Device,
}

impl EncodeConfig {
    pub fn from_args(a: EncodeArgs) -> Result<Self> {
        let input = match (a.text, a.file, a.ids) {
            (Some(t), None, None) => Input::Text(t),
            (None, Some(f), None) => Input::File(f),
            (None, None, Some(ids)) if !ids.is_empty() => Input::Ids(ids),
            (None, None, Some(_)) => bail!("--ids: no ids given"),
            _ => bail!("give exactly one of --text, --file, --ids"),
        };
        Ok(Self { model: a.model, input, arrow: a.arrow.to_config()?, lora: a.lora, output: a.output, device: parse_device(&a.device)? })
    }
}

pub fn run(cfg: EncodeConfig) -> Result<()> {
    let ids = match &cfg.input {
        Input::Ids(ids) => ids.clone(),
        Input::Text(t) => tokenize(&cfg, t)?,
        Input::File(f) => {
            let mut bytes = Vec::new();
            if f.as_os_str() == "-" {
                std::io::stdin().read_to_end(&mut bytes).context("reading standard input")?;
            } else {
                bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            }
            let text = String::from_utf8(bytes)
                .map_err(|e| anyhow::anyhow!("{}: not valid UTF-8 (first bad byte at offset {})", f.display(), e.utf8_error().valid_up_to()))?;
            tokenize(&cfg, &text)?
        }
    };
    if ids.is_empty() {
        bail!("nothing to encode: the input gave no tokens");
    }
    let t0 = Instant::now();
    let opts = EncoderOptions { arrow: cfg.arrow.clone(), dtype: DType::F32, device: cfg.device.clone() };
    let mut enc = Encoder::load(&cfg.model, &opts).with_context(|| format!("loading encoder {}", cfg.model.display()))?;
    if let Some(l) = &cfg.lora {
        let r = enc.load_adapter(l, None).with_context(|| format!("loading LoRA adapter {}", l.display()))?;
        enc.merge_lora()?;
        eprintln!("LoRA: {} projections adapted from {}", r.layers, r.path.display());
    }
    let load_s = t0.elapsed().as_secs_f64();
    let n = ids.len();
    let ids_t = Tensor::from_vec(ids.clone(), (1, n), &cfg.device)?;
    let mask = ids_t.ones_like()?;
    let t1 = Instant::now();
    let hidden = enc.forward(&ids_t, &mask, &mut ForwardCtx::eval())?.squeeze(0)?;
    let fwd_s = t1.elapsed().as_secs_f64();
    let ids_i64: Vec<i64> = ids.iter().map(|&x| x as i64).collect();
    let mut out = HashMap::new();
    out.insert("hidden".to_string(), hidden.to_device(&Device::Cpu)?.to_dtype(DType::F32)?);
    out.insert("ids".to_string(), Tensor::from_vec(ids_i64, n, &Device::Cpu)?);
    candle_core::safetensors::save(&out, &cfg.output).with_context(|| format!("writing {}", cfg.output.display()))?;
    let peak = sener::mem::peak_rss().map(|b| format!("{:.1} MiB", b as f64 / 1048576.0)).unwrap_or_else(|| "n/a".into());
    eprintln!(
        "encoded {n} tokens with {:?} (window {}, LogN {}, global [CLS] {}): hidden [{n}, {}] in {fwd_s:.2} s ({:.0} tokens/s), load {load_s:.2} s, peak RSS {peak} -> {}",
        enc.kind(),
        cfg.arrow.window,
        cfg.arrow.logn,
        cfg.arrow.global_cls,
        enc.hidden_size(),
        n as f64 / fwd_s,
        cfg.output.display()
    );
    Ok(())
}

fn tokenize(cfg: &EncodeConfig, text: &str) -> Result<Vec<u32>> {
    let tok = sener::tokenizer::load_tokenizer(&cfg.model)?;
    Ok(sener::tokenizer::encode_with_special(&tok, text)?)
}
