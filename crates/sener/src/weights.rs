//! Reading Hugging Face model folders as they are: `config.json` plus `model.safetensors`,
//! sharded `model.safetensors.index.json`, or `pytorch_model.bin`; parameter names unchanged.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// The weight files found in a model folder.
#[derive(Clone, Debug)]
pub enum WeightFiles {
    Safetensors(Vec<PathBuf>),
    Pickle(PathBuf),
}

impl WeightFiles {
    /// Finds the weights in `dir`, preferring safetensors.
    pub fn find(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        if single.is_file() {
            return Ok(Self::Safetensors(vec![single]));
        }
        let index = dir.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Json { path: index.clone(), message: e.to_string() })?;
            let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Json {
                path: index.clone(),
                message: "field `weight_map` missing or not an object".into(),
            })?;
            let mut files: Vec<PathBuf> = map.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            return Ok(Self::Safetensors(files));
        }
        let bin = dir.join("pytorch_model.bin");
        if bin.is_file() {
            return Ok(Self::Pickle(bin));
        }
        Err(Error::model(dir, "no model.safetensors, model.safetensors.index.json or pytorch_model.bin in this folder"))
    }

    /// The file to name in messages.
    pub fn display_path(&self) -> PathBuf {
        match self {
            Self::Safetensors(f) => f.first().cloned().unwrap_or_default(),
            Self::Pickle(p) => p.clone(),
        }
    }

    /// A `VarBuilder` over the files, converting every tensor to `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
        match self {
            Self::Safetensors(files) => {
                // SAFETY: the files are memory-mapped read-only; like every mmap user we assume no
                // other process truncates them while the model is loading.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(files, dtype, device) };
                vb.map_err(|e| Error::model(self.display_path(), e.to_string()))
            }
            Self::Pickle(p) => VarBuilder::from_pth(p, dtype, device).map_err(|e| Error::model(p, e.to_string())),
        }
    }
}

/// Parses `dir/config.json` into `T`, naming the file in errors.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<(T, serde_json::Value)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
    let cfg = serde_json::from_value(raw.clone()).map_err(|e| Error::Json { path, message: e.to_string() })?;
    Ok((cfg, raw))
}

/// Strips a task-head prefix (`deberta.`, `bert.`) when the checkpoint was saved from a task model.
pub fn base_model_builder(vb: VarBuilder<'static>, prefix: &str, probe: &str) -> VarBuilder<'static> {
    if !vb.contains_tensor(probe) && vb.contains_tensor(&format!("{prefix}.{probe}")) {
        vb.pp(prefix)
    } else {
        vb
    }
}
