//! Reading Hugging Face model folders as they are: `config.json` plus `model.safetensors`,
//! sharded `model.safetensors.index.json`, or `pytorch_model.bin`; parameter names unchanged.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::{Error, Result};

/// The text of a small JSON config of a model folder (`what` names it in the error), refused
/// past 1 MiB before it is read: a folder from anywhere cannot make the loader read without bound.
pub(crate) fn read_config_text(path: &Path, what: &str) -> Result<String> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > 1 << 20 {
        return Err(Error::model(path, format!("{} bytes; {what} is a few KB (at most 1 MiB is read)", meta.len())));
    }
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

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

/// A `VarBuilder` backend that invents every tensor it is asked for: LayerNorm weights 1, biases
/// 0, everything else N(0, 0.02²) from a seeded RNG. Gives random models of any published shape
/// (benchmarks, memory tests) without weight files.
pub struct RandomInit {
    pub seed: u64,
}

impl candle_nn::var_builder::SimpleBackend for RandomInit {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        if name.ends_with("LayerNorm.weight") {
            return candle_core::Tensor::ones(s, dtype, dev);
        }
        if name.ends_with("bias") {
            return candle_core::Tensor::zeros(s, dtype, dev);
        }
        // One stream per tensor name, so shapes elsewhere do not change a tensor's values.
        let h = name.bytes().fold(self.seed ^ 0xcbf2_9ce4_8422_2325, |a, b| (a ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(h);
        let normal = rand_distr::Normal::new(0.0f32, 0.02).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let v: Vec<f32> = (0..s.elem_count()).map(|_| normal.sample(&mut rng)).collect();
        candle_core::Tensor::from_vec(v, s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        Err(candle_core::Error::Msg(format!("random backend needs a shape for `{name}`")))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// A `VarBuilder` backend that makes every tensor it serves trainable (full fine-tuning): each
/// tensor read from `inner` becomes a [`candle_core::Var`], recorded under its full checkpoint
/// name (the one in the weight file), and the modules hold it as a plain tensor. A name asked for
/// twice gets the same variable, so a shared weight stays one parameter.
pub struct Trainable {
    pub inner: VarBuilder<'static>,
    pub vars: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, candle_core::Var>>>,
}

impl Trainable {
    fn record(&self, name: &str, t: candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let mut vars = self.vars.lock().map_err(|_| candle_core::Error::Msg("weight recorder poisoned".into()))?;
        if let Some(v) = vars.get(name) {
            return Ok(v.as_tensor().clone());
        }
        let v = candle_core::Var::from_tensor(&t)?;
        let out = v.as_tensor().clone();
        vars.insert(name.to_string(), v);
        Ok(out)
    }
}

impl candle_nn::var_builder::SimpleBackend for Trainable {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        h: candle_nn::Init,
        dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        let t = self.inner.get_with_hints_dtype(s, name, h, dtype)?;
        self.record(name, t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        let t = self.inner.get_unchecked_dtype(name, dtype)?;
        self.record(name, t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
