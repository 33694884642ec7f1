//! Importing a released SeNER checkpoint (THUDM/scholar-profiling `sener/`, spec §8) into a
//! sener model folder ([`crate::model`]).
//!
//! The official training script saves `model.state_dict()` of a peft-wrapped `CNNNer`, usually
//! with DeepSpeed's `module.` prefix:
//! - `base_model.model.pretrain_model.<DebertaV2Model names>`, with the adapted projections as
//!   `…{query,value}_proj.base_layer.{weight,bias}`, `…lora_A.default.weight` and
//!   `…lora_B.default.weight` (r 8, α 16);
//! - `base_model.model.{U, W, head_mlp.1.*, tail_mlp.1.*, cross_layers.N.*, down_fc.*}`.
//!
//! The import writes `encoder/` (the checkpoint's own frozen encoder weights, with `config.json`
//! and tokenizer files copied from the base folder), `adapter/` (PEFT layout), `span.safetensors`
//! and `sener.json`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::encoder::{ArrowConfig, LoraConfig};
use crate::model::{BaseEncoder, SenerConfig};
use crate::span::SpanConfig;
use crate::{Error, Result};

/// Label orders of the official tasks (`ent2id` of the official `predict.py`).
/// The word splitter that reproduces a task's released data (`sener stats --splitters`):
/// Scholar-XL treebank, SciREX infix, Profiling-07 punct.
pub fn task_splitter(task: &str) -> Option<sener_data::split::Splitter> {
    use sener_data::split::Splitter;
    match task {
        "scholar-xl" => Some(Splitter::Treebank),
        "scirex" | "SciREX" => Some(Splitter::Infix),
        "profiling-07" => Some(Splitter::Punct),
        _ => None,
    }
}

pub fn task_labels(task: &str) -> Option<Vec<String>> {
    let v: &[&str] = match task {
        "scholar-xl" => &[
            "gender", "education", "research_interests", "work_record", "take_office", "honorary_title",
            "highest_education", "work_for", "awards", "birth_place", "birthday", "title",
        ],
        "scirex" | "SciREX" => &["Method", "Task", "Material", "Metric"],
        "profiling-07" => &[
            "interests", "degree", "address", "affiliation", "date", "major", "univ", "email", "fax", "phone",
            "position", "contactinfo", "education",
        ],
        _ => return None,
    };
    Some(v.iter().map(|s| s.to_string()).collect())
}

/// What an import found and wrote.
#[derive(Debug)]
pub struct ImportReport {
    pub encoder_tensors: usize,
    pub lora_layers: usize,
    pub span_tensors: usize,
    /// Keys of the checkpoint that were not used (e.g. the RoPE tables, which sener recomputes).
    pub ignored: Vec<String>,
    /// Largest difference between a checkpoint RoPE table and sener's own.
    pub rope_max_diff: f32,
    pub config: SenerConfig,
}

/// Options of [`import`].
pub struct ImportOptions {
    pub labels: Vec<String>,
    /// Expected span config; its dimensions are checked against the checkpoint's tensors.
    pub span: SpanConfig,
    pub lora_alpha: f64,
    pub arrow: ArrowConfig,
    pub max_len: usize,
    /// How the checkpoint's training data cut raw text into words ([`task_splitter`]).
    pub splitter: sener_data::split::Splitter,
}

fn strip(k: &str) -> &str {
    let k = k.strip_prefix("module.").unwrap_or(k);
    k.strip_prefix("base_model.model.").unwrap_or(k)
}

/// Reads the checkpoint (a PyTorch pickle, flat or under a `module`/`state_dict` key).
fn read_state(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let err = |e: candle_core::Error| Error::Weight { path: path.to_path_buf(), name: String::new(), message: e.to_string() };
    let flat = candle_core::pickle::read_all(path).map_err(err)?;
    if flat.iter().any(|(k, _)| strip(k) == "U") {
        return Ok(flat);
    }
    for key in ["module", "state_dict", "model"] {
        if let Ok(v) = candle_core::pickle::read_all_with_key(path, Some(key)) {
            if v.iter().any(|(k, _)| strip(k) == "U") {
                return Ok(v);
            }
        }
    }
    Err(Error::model(path, "not a SeNER checkpoint: no `U` tensor (biaffine) under any known prefix"))
}

/// Converts `checkpoint` into a model folder `out`; `base` is the Hugging Face folder of the
/// encoder it was trained from (for `config.json` and the tokenizer).
pub fn import(checkpoint: &Path, base: &Path, out: &Path, opts: &ImportOptions) -> Result<ImportReport> {
    let state = read_state(checkpoint)?;
    let mut encoder: HashMap<String, Tensor> = HashMap::new();
    let mut adapter: HashMap<String, Tensor> = HashMap::new();
    let mut span: HashMap<String, Tensor> = HashMap::new();
    let mut ignored = Vec::new();
    let mut rope_max_diff = 0f32;
    let mut lora_r = None;
    for (k, t) in state {
        let k = strip(&k).to_string();
        if let Some(e) = k.strip_prefix("pretrain_model.") {
            if e.contains(".lora_A.") || e.contains(".lora_B.") {
                if e.contains(".lora_A.") {
                    lora_r = Some(t.dim(0)?);
                }
                adapter.insert(format!("base_model.model.{}", e.replace(".default.", ".")), t);
            } else {
                encoder.insert(e.replace(".base_layer.", "."), t);
            }
        } else if k.ends_with("embed_positions.weight") {
            let (n, c) = t.dims2()?;
            let (sin, cos) = crate::span::bispa::rope_tables(n, c, t.dtype(), &Device::Cpu)?;
            // checkpoint layout: sin of each frequency in the first half, cos in the second
            let half = c / 2;
            let ours = Tensor::cat(
                &[&sin.reshape((n, half, 2))?.narrow(2, 0, 1)?.squeeze(2)?, &cos.reshape((n, half, 2))?.narrow(2, 0, 1)?.squeeze(2)?],
                1,
            )?;
            let d = (ours - &t)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            rope_max_diff = rope_max_diff.max(d);
            ignored.push(k);
        } else if k.starts_with("U") || k.starts_with("W") || k.starts_with("head_mlp.") || k.starts_with("tail_mlp.")
            || k.starts_with("cross_layers.") || k.starts_with("down_fc.")
        {
            span.insert(k, t);
        } else {
            ignored.push(k);
        }
    }
    let u = span.get("U").ok_or_else(|| Error::model(checkpoint, "no `U` tensor"))?;
    let (c, x, _) = u.dims3()?;
    let depth = (0..).take_while(|i| span.contains_key(&format!("cross_layers.{i}.h_qkv.weight"))).count();
    let r = span.get("down_fc.weight").ok_or_else(|| Error::model(checkpoint, "no `down_fc.weight`"))?.dim(0)?;
    let s = &opts.span;
    if (c, x - 1, depth) != (s.cnn_dim, s.biaffine_size, s.cnn_depth) {
        return Err(Error::model(
            checkpoint,
            format!(
                "checkpoint has cnn_dim {c}, biaffine_size {}, cnn_depth {depth}; expected {}, {}, {} (set the flags to match)",
                x - 1,
                s.cnn_dim,
                s.biaffine_size,
                s.cnn_depth
            ),
        ));
    }
    if r != opts.labels.len() {
        return Err(Error::model(
            checkpoint,
            format!("checkpoint predicts {r} types but {} labels were given", opts.labels.len()),
        ));
    }
    if encoder.is_empty() {
        return Err(Error::model(checkpoint, "no encoder (`pretrain_model.`) tensors"));
    }

    // encoder/: the frozen weights of the checkpoint + config and tokenizer of the base folder
    let enc_dir = out.join("encoder");
    std::fs::create_dir_all(&enc_dir).map_err(|e| Error::io(&enc_dir, e))?;
    let cfg_src = base.join("config.json");
    if !cfg_src.is_file() {
        return Err(Error::model(base, "no config.json in the base folder"));
    }
    for f in ["config.json", "tokenizer.json", "spm.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"] {
        let src = base.join(f);
        if src.is_file() {
            std::fs::copy(&src, enc_dir.join(f)).map_err(|e| Error::io(&src, e))?;
        }
    }
    let wfile = enc_dir.join("model.safetensors");
    candle_core::safetensors::save(&encoder, &wfile).map_err(|e| Error::model(&wfile, e.to_string()))?;

    let lora = lora_r.map(|r| LoraConfig { r, alpha: opts.lora_alpha, dropout: 0.0, train_bias: true, ..LoraConfig::default() });
    if let Some(l) = &lora {
        let adir = out.join("adapter");
        std::fs::create_dir_all(&adir).map_err(|e| Error::io(&adir, e))?;
        let afile = adir.join("adapter_model.safetensors");
        candle_core::safetensors::save(&adapter, &afile).map_err(|e| Error::model(&afile, e.to_string()))?;
        let acfg = serde_json::json!({"peft_type": "LORA", "r": l.r, "lora_alpha": l.alpha, "lora_dropout": 0.0,
            "target_modules": ["query_proj", "value_proj"], "bias": "lora_only"});
        let p = adir.join("adapter_config.json");
        std::fs::write(&p, serde_json::to_string_pretty(&acfg).unwrap_or_default()).map_err(|e| Error::io(&p, e))?;
    }
    let sfile = out.join("span.safetensors");
    candle_core::safetensors::save(&span, &sfile).map_err(|e| Error::model(&sfile, e.to_string()))?;
    let config = SenerConfig {
        base: BaseEncoder { path: PathBuf::from("encoder"), sha256: Some(crate::model::sha256_file(&wfile)?), hub: None, finetuned_from: None },
        labels: opts.labels.clone(),
        arrow: opts.arrow.clone(),
        span: opts.span.clone(),
        lora,
        max_len: opts.max_len,
        splitter: opts.splitter,
        thresholds: None,
    };
    let cpath = out.join("sener.json");
    let json = serde_json::to_string_pretty(&config).map_err(|e| Error::Json { path: cpath.clone(), message: e.to_string() })?;
    std::fs::write(&cpath, json).map_err(|e| Error::io(&cpath, e))?;
    ignored.sort();
    Ok(ImportReport {
        encoder_tensors: encoder.len(),
        lora_layers: adapter.len() / 2,
        span_tensors: span.len(),
        ignored,
        rope_max_diff,
        config,
    })
}
