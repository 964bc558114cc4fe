//! Hyperparameters: one table of names, meanings and parsers, from which `set`,
//! `get`, listings and error messages all come. They can change between any two
//! steps; the trainer records each change in the history.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::suggest::did_you_mean;

/// The learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// `lr` after warm-up.
    Constant,
    /// Linear decay from `lr` to `min_lr` at step `steps`.
    Linear,
    /// Cosine decay from `lr` to `min_lr` at step `steps`.
    Cosine,
    /// One cycle (Smith, 2018): up from `lr / 25` to `lr` over the warm-up (30% of
    /// `steps` when `warmup` is 0), then cosine down to `lr / 10⁴` at `steps`.
    OneCycle,
}

/// Arithmetic precision of the model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// bfloat16 weights and activations, float32 master weights and optimiser state.
    Bf16,
    /// float16 likewise, with dynamic loss scaling; CUDA only.
    F16,
}

impl Precision {
    /// The tensor kind of the model's weights.
    pub fn kind(self) -> tch::Kind {
        match self {
            Precision::F32 => tch::Kind::Float,
            Precision::Bf16 => tch::Kind::BFloat16,
            Precision::F16 => tch::Kind::Half,
        }
    }
}

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW with `beta1`, `beta2`, `eps`.
    AdamW,
    /// SGD with `momentum`.
    Sgd,
}

/// Every hyperparameter of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HParams {
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of a decaying schedule.
    pub min_lr: f64,
    /// Examples per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub accum: usize,
    /// Warm-up steps (linear from 0).
    pub warmup: i64,
    /// The schedule's shape.
    pub schedule: Schedule,
    /// The schedule's horizon: the step where decay ends.
    pub steps: i64,
    /// Decoupled weight decay (not applied to biases and norms).
    pub weight_decay: f64,
    /// Gradient-norm clipping threshold; 0 turns it off.
    pub clip: f64,
    /// The optimiser.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f64,
    /// AdamW's first-moment decay.
    pub beta1: f64,
    /// AdamW's second-moment decay.
    pub beta2: f64,
    /// AdamW's epsilon.
    pub eps: f64,
    /// Evaluate every this many steps; 0 turns it off.
    pub eval_every: i64,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Keep an automatic snapshot every this many steps; 0 turns it off.
    pub snapshot_every: i64,
    /// Memory for automatic snapshots, in MiB; the oldest are dropped beyond it.
    pub snapshot_budget_mb: usize,
    /// Language-model window length; 0 means the model's context.
    pub ctx: usize,
    /// Weights' precision.
    pub precision: Precision,
    /// Gradient checkpointing: keep each block's input, recompute its activations in the
    /// backward pass (less memory for about a third more compute).
    #[serde(default)]
    pub checkpointing: bool,
}

impl Default for HParams {
    fn default() -> Self {
        HParams {
            lr: 1e-3,
            min_lr: 0.0,
            batch: 32,
            accum: 1,
            warmup: 0,
            schedule: Schedule::Constant,
            steps: 1000,
            weight_decay: 0.01,
            clip: 1.0,
            optimizer: OptimizerKind::AdamW,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            eval_every: 0,
            eval_batches: 8,
            snapshot_every: 0,
            snapshot_budget_mb: 512,
            ctx: 0,
            precision: Precision::F32,
            checkpointing: false,
        }
    }
}

/// A hyperparameter's name and what it means, in the order listings show them.
pub const KEYS: &[(&str, &str)] = &[
    ("lr", "peak learning rate"),
    ("min_lr", "learning rate where a decaying schedule ends"),
    ("batch", "examples per micro-batch"),
    ("accum", "micro-batches per optimiser step (gradient accumulation)"),
    ("warmup", "warm-up steps, linear from 0"),
    ("schedule", "constant | linear | cosine | onecycle"),
    ("steps", "the schedule's horizon: where decay ends"),
    ("weight_decay", "decoupled weight decay (not on biases and norms)"),
    ("clip", "gradient-norm clipping threshold (0: off)"),
    ("optimizer", "adamw | sgd"),
    ("momentum", "SGD momentum"),
    ("beta1", "AdamW first-moment decay"),
    ("beta2", "AdamW second-moment decay"),
    ("eps", "AdamW epsilon"),
    ("eval_every", "evaluate every N steps (0: off)"),
    ("eval_batches", "validation batches per evaluation"),
    ("snapshot_every", "automatic snapshot every N steps (0: off)"),
    ("snapshot_budget_mb", "memory for automatic snapshots, MiB"),
    ("ctx", "language-model window length (0: the model's context)"),
    ("precision", "f32 | bf16 | f16 (f16 on CUDA only)"),
    ("checkpointing", "true | false: recompute each block's activations in the backward pass (less memory, more compute)"),
];

fn number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    value.trim().parse().or_else(|_| invalid!("{key}={value}: expected a number"))
}

fn finite(key: &str, value: &str, min: f64) -> Result<f64> {
    let v: f64 = number(key, value)?;
    if !v.is_finite() || v < min {
        return invalid!("{key}={value}: expected a finite number ≥ {min}");
    }
    Ok(v)
}

/// A whole number in `1..=max`: counts that size allocations or loops are bounded, so
/// that a typo (`batch=1000000000000`) is an error, not a hung or killed process.
fn positive(key: &str, value: &str, max: usize) -> Result<usize> {
    match number::<usize>(key, value)? {
        0 => invalid!("{key}={value}: expected a whole number ≥ 1"),
        n if n > max => invalid!("{key}={value}: at most {max}"),
        n => Ok(n),
    }
}

fn at_most<T: std::str::FromStr + PartialOrd + std::fmt::Display>(key: &str, value: &str, max: T) -> Result<T> {
    let n: T = number(key, value)?;
    if n > max {
        return invalid!("{key}={value}: at most {max}");
    }
    Ok(n)
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => invalid!("{key}={value}: expected true or false"),
    }
}

fn fraction(key: &str, value: &str) -> Result<f64> {
    let v = finite(key, value, 0.0)?;
    if v >= 1.0 {
        return invalid!("{key}={value}: expected a number in [0, 1)");
    }
    Ok(v)
}

impl HParams {
    /// Sets `key` from its text form; an unknown key or bad value changes nothing.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match key {
            "lr" => self.lr = finite(key, v, 0.0)?,
            "min_lr" => self.min_lr = finite(key, v, 0.0)?,
            "batch" => self.batch = positive(key, v, 1 << 20)?,
            "accum" => self.accum = positive(key, v, 1 << 16)?,
            "warmup" => self.warmup = number::<u32>(key, v)?.into(),
            "schedule" => {
                self.schedule = match v {
                    "constant" => Schedule::Constant,
                    "linear" => Schedule::Linear,
                    "cosine" => Schedule::Cosine,
                    "onecycle" | "one-cycle" | "one_cycle" => Schedule::OneCycle,
                    _ => return invalid!("schedule={v}: choose constant, linear, cosine or onecycle"),
                }
            }
            "steps" => self.steps = positive(key, v, 1 << 40)? as i64,
            "weight_decay" => self.weight_decay = finite(key, v, 0.0)?,
            "clip" => self.clip = finite(key, v, 0.0)?,
            "optimizer" => {
                self.optimizer = match v {
                    "adamw" | "adam" => OptimizerKind::AdamW,
                    "sgd" => OptimizerKind::Sgd,
                    _ => return invalid!("optimizer={v}: choose adamw or sgd"),
                }
            }
            "momentum" => self.momentum = fraction(key, v)?,
            "beta1" => self.beta1 = fraction(key, v)?,
            "beta2" => self.beta2 = fraction(key, v)?,
            "eps" => match finite(key, v, 0.0)? {
                0.0 => return invalid!("eps={v}: expected a number > 0 (it keeps AdamW from dividing by zero)"),
                eps => self.eps = eps,
            },
            "eval_every" => self.eval_every = number::<u32>(key, v)?.into(),
            "eval_batches" => self.eval_batches = positive(key, v, 1 << 16)?,
            "snapshot_every" => self.snapshot_every = number::<u32>(key, v)?.into(),
            "snapshot_budget_mb" => self.snapshot_budget_mb = at_most(key, v, 1 << 30)?,
            "ctx" => self.ctx = at_most(key, v, 1 << 20)?,
            "precision" => {
                self.precision = match v {
                    "f32" | "fp32" | "float32" => Precision::F32,
                    "bf16" | "bfloat16" => Precision::Bf16,
                    "f16" | "fp16" | "float16" | "half" => Precision::F16,
                    _ => return invalid!("precision={v}: choose f32, bf16 or f16"),
                }
            }
            "checkpointing" => self.checkpointing = boolean(key, v)?,
            _ => return invalid!("unknown hyperparameter `{key}`{}; `%hparams` lists them all", did_you_mean(key, KEYS.iter().map(|(k, _)| *k))),
        }
        Ok(())
    }

    /// The value of `key` in the form `set` reads.
    pub fn get(&self, key: &str) -> Option<String> {
        let json = serde_json::to_value(self).ok()?;
        Some(match json.get(key)? {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }

    /// The learning rate for step `step` (the first step is 1).
    pub fn lr_at(&self, step: i64) -> f64 {
        let (lr, min_lr, horizon) = (self.lr, self.min_lr, self.steps.max(1));
        if self.schedule == Schedule::OneCycle {
            // 1. warm up from lr/25 to lr; 2. cosine from lr down to lr/1e4.
            let up = if self.warmup > 0 { self.warmup } else { (horizon as f64 * 0.3).round() as i64 }.max(1);
            let (start, end) = (lr / 25.0, lr / 1e4);
            if step <= up {
                return start + (lr - start) * step as f64 / up as f64;
            }
            let t = ((step - up) as f64 / (horizon - up).max(1) as f64).min(1.0);
            return end + (lr - end) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        }
        // 1. linear warm-up from 0
        if step <= self.warmup {
            return lr * step as f64 / self.warmup as f64;
        }
        // 2. decay over the rest of the horizon, then hold min_lr
        let t = ((step - self.warmup) as f64 / (horizon - self.warmup).max(1) as f64).min(1.0);
        match self.schedule {
            Schedule::Constant => lr,
            Schedule::Linear => lr + (min_lr - lr) * t,
            Schedule::Cosine => min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()),
            Schedule::OneCycle => unreachable!("handled above"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_in_the_table_can_be_read_back() {
        let hp = HParams::default();
        for (key, _) in KEYS {
            let value = hp.get(key).unwrap_or_else(|| panic!("{key} has no value"));
            let mut copy = hp.clone();
            copy.set(key, &value).unwrap_or_else(|e| panic!("{key}={value}: {e}"));
            assert_eq!(copy, hp, "{key} round trip");
        }
    }

    #[test]
    fn bad_values_change_nothing_and_say_why() {
        let mut hp = HParams::default();
        let err = hp.set("lr", "fast").unwrap_err().to_string();
        assert!(err.contains("lr=fast"), "{err}");
        assert!(hp.set("batch", "0").is_err());
        assert!(hp.set("batch", "1000000000000").unwrap_err().to_string().contains("at most"));
        assert!(hp.set("eps", "0").unwrap_err().to_string().contains("> 0"));
        assert!(hp.set("schedule", "cosin").unwrap_err().to_string().contains("cosine"));
        assert!(hp.set("learning_rate", "1").unwrap_err().to_string().contains("unknown hyperparameter"));
        assert!(hp.set("weight_dacay", "1").unwrap_err().to_string().contains("did you mean weight_decay"));
        assert!(hp.set("checkpointing", "maybe").unwrap_err().to_string().contains("true or false"));
        assert_eq!(hp, HParams::default());
    }

    #[test]
    fn schedules_warm_up_and_decay() {
        let hp = HParams { lr: 1.0, min_lr: 0.1, warmup: 10, steps: 110, schedule: Schedule::Cosine, ..Default::default() };
        assert!((hp.lr_at(5) - 0.5).abs() < 1e-12);
        assert!((hp.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((hp.lr_at(60) - 0.55).abs() < 1e-12, "halfway down the cosine");
        assert!((hp.lr_at(110) - 0.1).abs() < 1e-12);
        assert!((hp.lr_at(500) - 0.1).abs() < 1e-12, "holds min_lr past the horizon");
        let linear = HParams { schedule: Schedule::Linear, ..hp.clone() };
        assert!((linear.lr_at(60) - 0.55).abs() < 1e-12);
        let one = HParams { schedule: Schedule::OneCycle, warmup: 0, steps: 100, ..hp };
        assert!((one.lr_at(30) - 1.0).abs() < 1e-12, "peak at 30% of the steps");
        assert!(one.lr_at(1) < 0.1 && one.lr_at(100) < 1e-3);
    }
}
