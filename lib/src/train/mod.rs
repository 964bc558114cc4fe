//! Training: losses and optimisers. The step-by-step trainer (schedules,
//! accumulation, precision, NaN guard, history, snapshots) builds on these.

pub mod optim;

use tch::{Kind, Reduction, Tensor};

/// Next-token cross-entropy of `logits: (B, T, V)` against `targets: (B, T)`, averaged
/// over positions; targets of -100 are ignored, as in PyTorch.
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits.reshape([-1, v]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, Reduction::Mean, -100, 0.0)
}
