//! Optimisers written over tensors, so that their state (moments, step count) is
//! ours to inspect, save and restore: AdamW and SGD with momentum.
//!
//! libtorch's C++ optimisers, which tch wraps, keep their state out of reach, and
//! exact resume needs it. The update rules follow PyTorch's single-tensor
//! implementations (`torch/optim/adamw.py` `_single_tensor_adamw`, `sgd.py`), so one
//! step matches PyTorch's to float rounding. Biases and norm weights (tensors of
//! fewer than two dimensions) get no weight decay, as in nanoGPT.

use tch::nn::VarStore;
use tch::Tensor;

use crate::error::{invalid, Result};

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
    /// AdamW's first moment, or SGD's momentum buffer.
    pub exp_avg: Tensor,
    /// AdamW's second moment (empty for SGD).
    pub exp_avg_sq: Tensor,
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
    /// An optimiser for the trainable variables of `vars`, with zeroed state.
    pub fn new(vars: &VarStore, method: Method, lr: f64, weight_decay: f64) -> Result<Self> {
        if !(lr >= 0.0 && lr.is_finite()) {
            return invalid!("the learning rate must be a finite number ≥ 0, got {lr}");
        }
        let trainable: Vec<Tensor> = vars.trainable_variables();
        let mut params: Vec<ParamState> = vars
            .variables()
            .into_iter()
            .filter(|(_, t)| trainable.iter().any(|v| v.data_ptr() == t.data_ptr()))
            .map(|(name, var)| ParamState {
                decay: var.dim() >= 2,
                exp_avg: var.zeros_like(),
                exp_avg_sq: if matches!(method, Method::AdamW { .. }) { var.zeros_like() } else { Tensor::new() },
                name,
                var,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Optimizer { method, lr, weight_decay, steps: 0, params })
    }

    /// Clears every gradient.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.var.zero_grad();
        }
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
                let decay = if p.decay { self.weight_decay } else { 0.0 };
                // In-place ops return an alias of their receiver; it is not needed.
                match self.method {
                    Method::AdamW { beta1, beta2, eps } => {
                        let _ = p.var.f_mul_scalar_(1.0 - lr * decay)?;
                        let _ = p.exp_avg.f_lerp_(&grad, 1.0 - beta1)?;
                        let _ = p.exp_avg_sq.f_mul_scalar_(beta2)?;
                        let _ = p.exp_avg_sq.f_add_(&(&grad * &grad * (1.0 - beta2)))?;
                        let step_size = lr / (1.0 - beta1.powf(step));
                        let denom = p.exp_avg_sq.f_sqrt()? / (1.0 - beta2.powf(step)).sqrt() + eps;
                        let _ = p.var.f_sub_(&(&p.exp_avg * step_size / denom))?;
                    }
                    Method::Sgd { momentum } => {
                        // PyTorch's SGD adds weight decay to the gradient.
                        let grad = if decay > 0.0 { &grad + &p.var * decay } else { grad };
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
                        let _ = p.var.f_sub_(&(direction * lr))?;
                    }
                }
            }
            Ok(())
        })
    }
}
