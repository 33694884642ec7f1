//! The paper's optimiser (spec §8): AdamW (torch semantics, decoupled weight decay) with two
//! learning rates (encoder LoRA side / new layers), weight decay 0.01 except for parameters whose
//! name contains "norm" or "bias", global-norm gradient clipping, and the linear warm-up then
//! linear decay schedule of `get_linear_schedule_with_warmup`.
//!
//! Written here rather than using `candle_nn::AdamW` because resuming a run exactly needs the
//! moments and the step count, which candle keeps private.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{backprop::GradStore, DType, Tensor, Var};

use crate::{Error, Result};

/// Hyper-parameters of one parameter group.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GroupConfig {
    pub lr: f64,
    pub weight_decay: f64,
}

/// AdamW settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Max global gradient norm (≤ 0: no clipping).
    pub clip_norm: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, clip_norm: 1.0 }
    }
}

/// `get_linear_schedule_with_warmup`: factor on the base learning rate at optimiser step `step`
/// (0-based): `step/warmup` during warm-up, then linear decay to 0 at `total`.
pub fn linear_schedule(step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        step as f64 / warmup.max(1) as f64
    } else {
        ((total.saturating_sub(step)) as f64 / (total.saturating_sub(warmup)).max(1) as f64).max(0.0)
    }
}

/// Is `name` exempt from weight decay (the official rule: "norm" or "bias" in the name)?
pub fn no_decay(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("norm") || n.contains("bias")
}

struct Param {
    name: String,
    var: Var,
    group: usize,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named parameters in groups.
pub struct AdamW {
    params: Vec<Param>,
    groups: Vec<GroupConfig>,
    cfg: AdamWConfig,
    /// Optimiser steps taken.
    pub step: usize,
}

/// What one [`AdamW::step`] did.
#[derive(Clone, Copy, Debug)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning-rate factor applied (schedule).
    pub lr_factor: f64,
}

impl AdamW {
    /// `params`: (name, var, group index).
    pub fn new(params: Vec<(String, Var, usize)>, groups: Vec<GroupConfig>, cfg: AdamWConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, group)| {
                if group >= groups.len() {
                    return Err(Error::Input(format!("{name}: parameter group {group} does not exist")));
                }
                let m = var.as_tensor().zeros_like()?;
                let v = var.as_tensor().zeros_like()?;
                Ok(Param { name, var, group, m, v })
            })
            .collect::<Result<_>>()?;
        Ok(Self { params, groups, cfg, step: 0 })
    }

    /// Clips the gradients in `grads` to the global norm, applies one AdamW update with the
    /// groups' learning rates times `lr_factor`, and counts the step. Parameters without a
    /// gradient are left unchanged (their moments too).
    pub fn step(&mut self, grads: &GradStore, lr_factor: f64) -> Result<StepInfo> {
        self.step_with(|_, v| grads.get(v).cloned(), lr_factor)
    }

    /// [`Self::step`] with gradients from any source (e.g. accumulated over micro-batches),
    /// looked up by parameter name and var.
    pub fn step_with(&mut self, grad: impl Fn(&str, &Var) -> Option<Tensor>, lr_factor: f64) -> Result<StepInfo> {
        let grads: Vec<Option<Tensor>> = self.params.iter().map(|p| grad(&p.name, &p.var)).collect();
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            {
                sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        let clip = if self.cfg.clip_norm > 0.0 { (self.cfg.clip_norm / (norm + 1e-6)).min(1.0) } else { 1.0 };
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (p, g) in self.params.iter_mut().zip(grads) {
            let Some(g) = g else { continue };
            let g = (g * clip)?;
            let grp = &self.groups[p.group];
            let lr = grp.lr * lr_factor;
            let theta = p.var.as_tensor().detach();
            let theta = if grp.weight_decay > 0.0 { (theta * (1.0 - lr * grp.weight_decay))? } else { theta };
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let denom = ((p.v.sqrt()? / bc2.sqrt())? + self.cfg.eps)?;
            let update = ((&p.m / denom)? * (lr / bc1))?;
            p.var.set(&(theta - update)?)?;
        }
        Ok(StepInfo { grad_norm: norm, lr_factor })
    }

    /// Moments and step, for an exact resume: tensors `m.<name>`, `v.<name>`.
    pub fn state_tensors(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for p in &self.params {
            out.insert(format!("m.{}", p.name), p.m.clone());
            out.insert(format!("v.{}", p.name), p.v.clone());
        }
        out
    }

    /// Restores what [`Self::state_tensors`] saved (every parameter must be present).
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: usize, path: &Path) -> Result<()> {
        for p in &mut self.params {
            for (kind, slot) in [("m", &mut p.m), ("v", &mut p.v)] {
                let key = format!("{kind}.{}", p.name);
                let t = tensors.get(&key).ok_or_else(|| Error::Weight {
                    path: path.to_path_buf(),
                    name: key.clone(),
                    message: "missing from the optimizer state".into(),
                })?;
                if t.dims() != slot.dims() {
                    return Err(Error::Weight { path: path.to_path_buf(), name: key, message: format!("shape {:?}, expected {:?}", t.dims(), slot.dims()) });
                }
                *slot = t.to_dtype(slot.dtype())?.to_device(slot.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers_definition() {
        // warm-up 2 of 6: 0, .5, 1, .75, .5, .25, 0
        let f: Vec<f64> = (0..7).map(|s| linear_schedule(s, 2, 6)).collect();
        assert_eq!(f, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
        assert!(no_decay("cross_layers.0.LayerNorm.weight") && no_decay("down_fc.bias") && !no_decay("U"));
    }
}
