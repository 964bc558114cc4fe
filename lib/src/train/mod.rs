//! Training: the step-by-step [`Trainer`], its hyperparameters, optimisers, history,
//! timeline (snapshots, rewind, fork) and checkpoints that resume exactly.

pub mod history;
pub mod hparams;
pub mod optim;
mod resume;
pub mod timeline;
mod trainer;

pub use history::{Change, EvalMetrics, History, StepRecord};
pub use hparams::{HParams, OptimizerKind, Precision, Schedule};
pub use trainer::{check_setting, Halt, Sizing, Stop, TrainReport, Trainer, DEFAULT_TEXT_WINDOW, MAIN_BRANCH};

use tch::{Kind, Reduction, Tensor};

/// Next-token cross-entropy of `logits: (B, T, V)` against `targets: (B, T)`, averaged
/// over positions; targets of -100 are ignored, as in PyTorch.
pub fn lm_loss(logits: &Tensor, targets: &Tensor) -> Tensor {
    let v = logits.size()[2];
    logits.reshape([-1, v]).to_kind(Kind::Float).cross_entropy_loss::<Tensor>(&targets.reshape([-1]), None, Reduction::Mean, -100, 0.0)
}
