//! Optimisers written over tensors, so that their state (moments, master weights,
//! step count) is ours to inspect, save and restore: AdamW and SGD with momentum.
//!
//! libtorch's C++ optimisers, which tch wraps, keep their state out of reach, and
//! exact resume needs it. The update rules follow PyTorch's single-tensor
//! implementations (`torch/optim/adamw.py` `_single_tensor_adamw`, `sgd.py`), so one
//! step matches PyTorch's to float rounding. Biases and norm weights (tensors of
//! fewer than two dimensions) get no weight decay, as in nanoGPT. When the model's
//! weights are bf16 or f16, the optimiser keeps float32 master copies and updates
//! those, so small updates are not rounded away.

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use crate::error::{invalid, Error, Result};

/// The update rule and its own coefficients.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// Adam with decoupled weight decay (Loshchilov & Hutter, 2019).
    AdamW {
        /// Decay of the first moment.
        beta1: f64,
        /// Decay of the second moment.
        beta2: f64,
        /// Added to the denominator.
        eps: f64,
    },
    /// Stochastic gradient descent with (PyTorch-style) momentum.
    Sgd {
        /// Momentum factor; 0 for plain SGD.
        momentum: f64,
    },
}

impl Method {
    /// AdamW with PyTorch's default betas and epsilon.
    pub fn adamw() -> Self {
        Method::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

/// One trainable tensor and the optimiser's state for it.
pub struct ParamState {
    /// The variable's name in the model.
    pub name: String,
    /// The variable itself (shares storage with the model).
    pub var: Tensor,
    /// Whether weight decay applies.
    pub decay: bool,
    /// AdamW's first moment, or SGD's momentum buffer (float32).
    pub exp_avg: Tensor,
    /// AdamW's second moment (float32).
    pub exp_avg_sq: Tensor,
    /// Float32 master copy of a low-precision variable.
    pub master: Option<Tensor>,
}

/// An optimiser over every trainable variable of a model.
pub struct Optimizer {
    /// The update rule.
    pub method: Method,
    /// Learning rate for the next step.
    pub lr: f64,
    /// Decoupled weight decay for tensors of two or more dimensions.
    pub weight_decay: f64,
    /// Steps taken so far.
    pub steps: i64,
    /// Per-tensor state, sorted by name.
    pub params: Vec<ParamState>,
}

impl Optimizer {
    /// An optimiser for the variables of `vars` that train (those that require
    /// gradients: with LoRA adapters, only theirs), with zeroed state.
    pub fn new(vars: &VarStore, method: Method, lr: f64, weight_decay: f64) -> Result<Self> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return invalid!("the learning rate must be a finite number ≥ 0, got {lr}");
        }
        let trainable: Vec<Tensor> = vars.trainable_variables();
        let mut params: Vec<ParamState> = vars
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad() && trainable.iter().any(|v| v.data_ptr() == t.data_ptr()))
            .map(|(name, var)| {
                let zeros = || Tensor::zeros(var.size(), (Kind::Float, var.device()));
                let master = (var.kind() != Kind::Float).then(|| var.detach().to_kind(Kind::Float));
                ParamState { decay: var.dim() >= 2, exp_avg: zeros(), exp_avg_sq: zeros(), master, name, var }
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Optimizer { method, lr, weight_decay, steps: 0, params })
    }

    /// Switches to another update rule with fresh moments and step count, keeping the
    /// master weights.
    pub fn reset(&mut self, method: Method) {
        for p in &mut self.params {
            p.exp_avg = p.exp_avg.zeros_like();
            p.exp_avg_sq = p.exp_avg_sq.zeros_like();
        }
        self.method = method;
        self.steps = 0;
    }

    /// Moves the moments and master weights to `device` (after the model has moved).
    pub fn to_device(&mut self, device: tch::Device) {
        for p in &mut self.params {
            p.exp_avg = p.exp_avg.to_device(device);
            p.exp_avg_sq = p.exp_avg_sq.to_device(device);
            p.master = p.master.as_ref().map(|m| m.to_device(device));
        }
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
    }

    /// Multiplies every gradient by `factor` in place (unscaling, clipping).
    pub fn scale_grads(&mut self, factor: f64) -> Result<()> {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.var.grad();
                if g.defined() {
                    let _ = g.f_mul_scalar_(factor)?;
                }
            }
            Ok(())
        })
    }

    /// The L2 norm of all gradients together (NaN or infinite when any is).
    pub fn grad_norm(&self) -> f64 {
        let squares: Vec<Tensor> =
            self.params.iter().map(|p| p.var.grad()).filter(Tensor::defined).map(|g| g.to_kind(Kind::Float).square().sum(Kind::Float)).collect();
        if squares.is_empty() {
            return 0.0;
        }
        // One device-to-host copy for the whole model.
        Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[])
    }

    /// Names of the variables whose gradients hold NaN or infinity.
    pub fn non_finite_grads(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|p| {
                let g = p.var.grad();
                g.defined() && !bool::try_from(g.isfinite().all()).unwrap_or(false)
            })
            .map(|p| p.name.clone())
            .collect()
    }

    /// Applies one update from the gradients now held by the variables.
    pub fn step(&mut self) -> Result<()> {
        self.steps += 1;
        let (lr, step) = (self.lr, self.steps as f64);
        tch::no_grad(|| -> Result<()> {
            for p in &mut self.params {
                let grad = p.var.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = grad.to_kind(Kind::Float);
                let decay = if p.decay { self.weight_decay } else { 0.0 };
                let mut weights = p.master.as_ref().unwrap_or(&p.var).shallow_clone();
                // In-place ops return an alias of their receiver; it is not needed.
                match self.method {
                    Method::AdamW { beta1, beta2, eps } => {
                        let _ = weights.f_mul_scalar_(1.0 - lr * decay)?;
                        let _ = p.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                        let _ = p.exp_avg_sq.f_mul_scalar_(beta2)?;
                        let _ = p.exp_avg_sq.f_add_(&(&grad * &grad * (1.0 - beta2)))?;
                        let step_size = lr / (1.0 - beta1.powf(step));
                        let denom = p.exp_avg_sq.f_sqrt()? / (1.0 - beta2.powf(step)).sqrt() + eps;
                        let _ = weights.f_sub_(&(&p.exp_avg * step_size / denom))?;
                    }
                    Method::Sgd { momentum } => {
                        // PyTorch's SGD adds weight decay to the gradient.
                        let grad = if decay > 0.0 { &grad + &weights * decay } else { grad };
                        let direction = if momentum > 0.0 {
                            if step == 1.0 {
                                p.exp_avg.f_copy_(&grad)?;
                            } else {
                                let _ = p.exp_avg.f_mul_scalar_(momentum)?;
                                let _ = p.exp_avg.f_add_(&grad)?;
                            }
                            p.exp_avg.shallow_clone()
                        } else {
                            grad
                        };
                        let _ = weights.f_sub_(&(direction * lr))?;
                    }
                }
                if let Some(master) = &p.master {
                    p.var.f_copy_(master)?;
                }
            }
            Ok(())
        })
    }

    /// Sets the float32 master copy of the variable `name`, where there is one, to
    /// `value` (after the variable itself was set from outside the optimiser).
    pub fn set_master(&mut self, name: &str, value: &Tensor) -> Result<()> {
        if let Some(master) = self.params.iter_mut().find(|p| p.name == name).and_then(|p| p.master.as_mut()) {
            tch::no_grad(|| master.f_copy_(&value.to_device(master.device())))?;
        }
        Ok(())
    }

    /// Multiplies the master copy of the variable `name`, where there is one, by `mask`
    /// (pruned weights stay zero in the copy the optimiser updates too).
    pub fn mask_master(&mut self, name: &str, mask: &Tensor) -> Result<()> {
        if let Some(master) = self.params.iter_mut().find(|p| p.name == name).and_then(|p| p.master.as_mut()) {
            let _ = tch::no_grad(|| master.f_mul_(&mask.to_kind(Kind::Float)))?;
        }
        Ok(())
    }

    /// Keeps float32 master copies of the variables from now on (call before the model
    /// is cast to low precision), or writes them back and drops them (call after the
    /// model is cast back to float32).
    pub fn use_masters(&mut self, on: bool) -> Result<()> {
        tch::no_grad(|| {
            for p in &mut self.params {
                match (on, p.master.take()) {
                    (true, None) => p.master = Some(p.var.detach().to_kind(Kind::Float)),
                    (true, kept) => p.master = kept,
                    (false, Some(master)) => p.var.f_copy_(&master)?,
                    (false, None) => {}
                }
            }
            Ok(())
        })
    }

    /// The state tensors by name (`exp_avg.NAME`, `exp_avg_sq.NAME`, `master.NAME`),
    /// copied, for checkpoints and snapshots.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![];
        for p in &self.params {
            out.push((format!("exp_avg.{}", p.name), p.exp_avg.copy()));
            out.push((format!("exp_avg_sq.{}", p.name), p.exp_avg_sq.copy()));
            if let Some(m) = &p.master {
                out.push((format!("master.{}", p.name), m.copy()));
            }
        }
        out
    }

    /// Restores state saved by [`Optimizer::state_tensors`]; every tensor is checked
    /// before any is taken, so a bad file changes nothing.
    pub fn load_state_tensors(&mut self, tensors: &[(String, Tensor)], steps: i64) -> Result<()> {
        let find = |name: &str| tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t);
        let mut plan = vec![];
        for p in &self.params {
            let get = |prefix: &str| -> Result<Option<Tensor>> {
                let Some(t) = find(&format!("{prefix}.{}", p.name)) else { return Ok(None) };
                if t.size() != p.var.size() {
                    return Err(Error::Invalid(format!("optimizer state `{prefix}.{}` has shape {:?}, the variable {:?}", p.name, t.size(), p.var.size())));
                }
                // A copy: the source (a snapshot) must stay as it is while training goes on.
                Ok(Some(t.to_device(p.var.device()).to_kind(Kind::Float).copy()))
            };
            let (m, v, master) = (get("exp_avg")?, get("exp_avg_sq")?, get("master")?);
            let (Some(m), Some(v)) = (m, v) else { return invalid!("the optimizer state has no moments for `{}`", p.name) };
            plan.push((m, v, master));
        }
        for (p, (m, v, master)) in self.params.iter_mut().zip(plan) {
            p.exp_avg = m;
            p.exp_avg_sq = v;
            p.master = master;
        }
        self.steps = steps;
        Ok(())
    }
}
