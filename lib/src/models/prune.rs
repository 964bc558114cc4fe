//! Pruning the linear layers' weights to zero, by magnitude or by Wanda (Sun et al. 2023,
//! "A Simple and Effective Pruning Approach for Large Language Models",
//! <https://github.com/locuslab/wanda/blob/main/lib/prune.py>): a weight's score is |W_ij|
//! times the norm of its input feature j over calibration data, and the lowest-scoring
//! weights of each output row go. Unstructured (a share of each row, or of each layer by
//! magnitude) or N:M structured (2:4: two zeros in every four inputs of a row, the
//! pattern sparse tensor cores run).
//!
//! The input norms are gathered in the linear layers themselves while calibration data
//! runs (`calibrate`), so every family is covered without knowing which hook point feeds
//! which layer. A pruned layer keeps its mask in its slot; the trainer multiplies each
//! masked weight by it after every step, so pruned weights stay zero while the rest
//! trains, and snapshots and checkpoints keep the masks.

use serde::Serialize;
use tch::{Kind, Tensor};

use super::linear::Role;
use super::Model;
use crate::error::{invalid, Result};

/// How weights are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// |W|, compared across the whole layer (unstructured) or within each group.
    Magnitude,
    /// |W| · ‖X_j‖, compared within each output row (Wanda's comparison group).
    Wanda,
}

/// Which weights may be zeroed together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pattern {
    /// This share of the weights, anywhere.
    Unstructured(f64),
    /// `n` zeros in every `m` consecutive inputs of a row (2:4).
    NofM(i64, i64),
}

/// One layer after `%prune`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PrunedLayer {
    /// Its module path.
    pub layer: String,
    /// `(out, in)`.
    pub shape: [i64; 2],
    /// The share of its weights that are zero now.
    pub sparsity: f64,
}

impl Model {
    /// Starts (or restarts) gathering each inner linear layer's squared input norms from
    /// the forward passes that follow.
    pub fn start_calibration(&self) -> Result<()> {
        for l in self.linears.iter().filter(|l| l.role == Role::Inner) {
            l.slot().calibration = Some(Tensor::f_zeros([l.in_features], (Kind::Double, l.weight.device()))?);
        }
        Ok(())
    }

    /// Stops gathering and forgets what was gathered (calibration that failed part way).
    pub fn finish_calibration_quietly(&self) {
        drop(self.finish_calibration());
    }

    /// Stops gathering; the norms gathered, by module path (`None` for a layer no data
    /// reached).
    fn finish_calibration(&self) -> Vec<(String, Option<Tensor>)> {
        self.linears.iter().filter(|l| l.role == Role::Inner).map(|l| (l.path.clone(), l.slot().calibration.take())).collect()
    }

    /// Prunes every inner linear layer (the LM head and classifiers are left whole, as
    /// Wanda leaves them) as `method` and `pattern` say, setting each layer's mask.
    /// Wanda needs [`Model::start_calibration`] and forward passes first. Every mask is
    /// made before any weight changes; an error or an interrupt changes nothing.
    pub fn prune(&mut self, method: Method, pattern: Pattern) -> Result<Vec<PrunedLayer>> {
        match pattern {
            Pattern::Unstructured(s) if !(s > 0.0 && s < 1.0) => return invalid!("--sparsity must be above 0 and below 1, got {s}"),
            Pattern::NofM(n, m) if !(0 < n && n < m && m <= 64) => return invalid!("an N:M pattern needs 0 < N < M ≤ 64, got {n}:{m}"),
            _ => {}
        }
        if self.quantized().is_some() {
            return invalid!("the model computes with quantised weights: `%quantize none` first, prune, then quantise again");
        }
        let norms = self.finish_calibration();
        let mut plans = Vec::new();
        for (layer, (path, norm)) in self.linears.iter().filter(|l| l.role == Role::Inner).zip(norms) {
            crate::interrupt::check("pruning")?;
            let w = layer.weight.f_detach()?.f_to_kind(Kind::Float)?;
            let score = match method {
                Method::Magnitude => w.f_abs()?,
                Method::Wanda => {
                    let Some(norm) = norm else {
                        return invalid!("no calibration data reached `{path}`: Wanda needs the model run on data first");
                    };
                    w.f_abs()?.f_mul(&norm.f_sqrt()?.f_to_kind(Kind::Float)?.f_unsqueeze(0)?)?
                }
            };
            let keep = keep_mask(&score, method, pattern, &path)?;
            plans.push((layer.weight.shallow_clone(), keep, path));
        }
        crate::interrupt::trip("prune");
        // Every mask is made: from here on nothing fails.
        let mut out = Vec::with_capacity(plans.len());
        tch::no_grad(|| -> Result<()> {
            for (weight, keep, path) in plans {
                let layer = self.linears.iter().find(|l| l.path == path).expect("planned from these");
                let mut slot = layer.slot();
                let keep = match slot.mask.take() {
                    Some(old) => old.f_logical_and(&keep)?,
                    None => keep,
                };
                let _ = weight.shallow_clone().f_mul_(&keep.f_to_kind(weight.kind())?)?;
                let zeros = weight.f_eq(0.0)?.f_sum(Kind::Int64)?.int64_value(&[]) as f64;
                out.push(PrunedLayer { layer: path, shape: [layer.out_features, layer.in_features], sparsity: zeros / weight.numel().max(1) as f64 });
                slot.mask = Some(keep);
            }
            Ok(())
        })?;
        self.base_changed();
        Ok(out)
    }

    /// Zeroes what the masks prune again (after an optimiser step moved it).
    pub fn apply_masks(&self) -> Result<()> {
        tch::no_grad(|| {
            for l in &self.linears {
                if let Some(mask) = &l.slot().mask {
                    let _ = l.weight.shallow_clone().f_mul_(&mask.f_to_kind(l.weight.kind())?)?;
                }
            }
            Ok(())
        })
    }

    /// Every layer's mask (true where a weight stays), by the weight's variable name.
    pub fn masks(&self) -> Vec<(String, Tensor)> {
        self.linears.iter().filter_map(|l| Some((format!("{}.weight", l.path), l.slot().mask.as_ref()?.shallow_clone()))).collect()
    }

    /// Puts masks back (a snapshot's, a checkpoint's): every layer without one in
    /// `masks` has none. The names and shapes are checked before anything changes.
    pub fn set_masks(&self, masks: &[(String, Tensor)]) -> Result<()> {
        for (name, mask) in masks {
            let Some(layer) = self.linears.iter().find(|l| format!("{}.weight", l.path) == *name) else {
                return invalid!("a pruning mask for `{name}`, which is not a linear layer of this model");
            };
            if mask.size() != [layer.out_features, layer.in_features] {
                return invalid!("the pruning mask for `{name}` has shape {:?}, the layer {:?}", mask.size(), [layer.out_features, layer.in_features]);
            }
        }
        for l in &self.linears {
            let name = format!("{}.weight", l.path);
            l.slot().mask = masks.iter().find(|(n, _)| *n == name).map(|(_, m)| m.to_kind(Kind::Bool));
        }
        Ok(())
    }
}

/// True where a weight stays. Unstructured magnitude compares the whole layer; Wanda
/// compares each output row; N:M compares each group of M inputs in a row.
fn keep_mask(score: &Tensor, method: Method, pattern: Pattern, path: &str) -> Result<Tensor> {
    let (rows, cols) = score.size2()?;
    match pattern {
        Pattern::Unstructured(sparsity) => {
            let (flat, per) = match method {
                Method::Magnitude => (score.f_reshape([1, rows * cols])?, rows * cols),
                Method::Wanda => (score.shallow_clone(), cols),
            };
            let pruned = ((per as f64) * sparsity).floor() as i64;
            let mut keep = Tensor::f_ones(flat.size(), (Kind::Bool, flat.device()))?;
            if pruned > 0 {
                let (_, lowest) = flat.f_topk(pruned, 1, false, true)?;
                keep = keep.f_scatter_value(1, &lowest, 0)?;
            }
            Ok(keep.f_reshape([rows, cols])?)
        }
        Pattern::NofM(n, m) => {
            if cols % m != 0 {
                return invalid!("`{path}` has {cols} inputs, which do not split into groups of {m}");
            }
            let groups = score.f_reshape([rows * cols / m, m])?;
            let (_, lowest) = groups.f_topk(n, 1, false, true)?;
            let keep = Tensor::f_ones(groups.size(), (Kind::Bool, groups.device()))?.f_scatter_value(1, &lowest, 0)?;
            Ok(keep.f_reshape([rows, cols])?)
        }
    }
}
