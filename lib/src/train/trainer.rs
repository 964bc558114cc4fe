//! The step-by-step trainer: one optimiser step at a time, inspectable and
//! changeable between steps, with a NaN guard, evaluation, a history, snapshots,
//! branches and cancellation.
//!
//! Determinism: the data cursor is an [`Rng`] owned here, and libtorch's generator
//! (dropout) is re-seeded from `(seed, step)` before every step, so the RNG state that
//! matters is `(seed, rng, step)`: three numbers a checkpoint stores. Resuming from a
//! checkpoint therefore gives bit-identical losses on the same machine. libtorch has
//! one generator per process, so this holds while one trainer steps at a time, as
//! front ends run one command at a time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};

use super::history::{Change, EvalMetrics, History, StepRecord};
use super::hparams::{HParams, OptimizerKind, Precision};
use super::optim::{Method, Optimizer};
use super::timeline::{Snapshot, Timeline};
use crate::data::{Batch, DataSpec, Dataset, Rng};
use crate::error::{invalid, Error, Result};
use crate::models::checkpointing::Backward;
use crate::models::{ForwardOptions, Model, Output, Task};
use crate::tokenize::Tokenizer;

/// The branch a trainer starts on.
pub const MAIN_BRANCH: &str = "main";

/// When a call to [`Trainer::train`] stops, at the latest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After this many steps.
    Steps(u64),
    /// After the step that ends past this much time.
    Time(Duration),
}

/// Why training stopped before its goal.
#[derive(Debug, Clone, PartialEq)]
pub enum Halt {
    /// A cancel request, honoured at a step boundary.
    Interrupted,
    /// A NaN or infinite loss or gradient; the message says which.
    NonFinite(String),
}

/// What a call to [`Trainer::train`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainReport {
    /// Steps completed by this call.
    pub steps: u64,
    /// Set when training stopped early.
    pub halted: Option<Halt>,
}

/// A model, its data and everything needed to train it one step at a time.
pub struct Trainer {
    pub(super) model: Model,
    pub(super) tokenizer: Tokenizer,
    pub(super) data: Dataset,
    pub(super) data_spec: DataSpec,
    pub(super) hp: HParams,
    pub(super) opt: Optimizer,
    pub(super) step: i64,
    pub(super) seed: u64,
    pub(super) rng: Rng,
    pub(super) history: History,
    pub(super) branch: String,
    pub(super) timeline: Timeline,
    pub(super) loss_scale: f64,
    pub(super) good_scaled_steps: i64,
    pub(super) trained_seconds: f64,
    /// How steps are sized now (from the hyperparameters, model, data and memory).
    pub(super) sizing: Sizing,
    cancel: Arc<AtomicBool>,
}

/// How a step is sized: the window each example is cut to, and how many examples one
/// forward pass takes (the batch, or less where memory needs it: the batch is then run
/// in parts and their gradients summed, so it is still the batch that one step learns
/// from). Decided when the model, data or hyperparameters change, never between steps.
#[derive(Debug, Clone, PartialEq, serde::Serialize, schemars::JsonSchema)]
pub struct Sizing {
    /// Tokens per example: the language-model window, or the longest example.
    pub window: usize,
    /// Why that window.
    pub window_why: String,
    /// Examples per forward pass.
    pub micro_batch: usize,
    /// Why fewer than `batch`, when they are.
    pub micro_why: Option<String>,
}

/// The window of a text corpus when `ctx` is 0: a model's whole context is rarely what
/// a corpus or a laptop needs.
pub const DEFAULT_TEXT_WINDOW: usize = 512;

/// f16 loss scaling starts here and doubles after this many steps without overflow.
const INITIAL_LOSS_SCALE: f64 = 65536.0;
const LOSS_SCALE_GROWTH_INTERVAL: i64 = 2000;

impl Trainer {
    /// A trainer for `model` on the data `spec` describes, tokenised with `tokenizer`.
    /// The model and the data must fit: a GPT trains on text or synthetic tasks, a BERT
    /// classifier on classification data with as many classes as its head.
    pub fn new(model: Model, tokenizer: Tokenizer, spec: DataSpec, hp: HParams, seed: u64) -> Result<Self> {
        let data = Self::prepare(&model, &tokenizer, &spec, &hp)?;
        Self::assemble(model, tokenizer, data, spec, hp, seed)
    }

    /// Makes the data set and checks that everything fits, without taking the model:
    /// a caller that must not lose the model on error calls this, then [`Trainer::assemble`].
    pub fn prepare(model: &Model, tokenizer: &Tokenizer, spec: &DataSpec, hp: &HParams) -> Result<Dataset> {
        let pad_id = model.config().pad_token_id();
        let config = model.config();
        let data = Dataset::from_spec(spec, tokenizer, pad_id, config.max_positions().max(1) as usize, config.decoder_start_token_id())?;
        check_fit(model, tokenizer, &data, hp)?;
        Ok(data)
    }

    /// A trainer from parts [`Trainer::prepare`] accepted.
    pub fn assemble(model: Model, tokenizer: Tokenizer, data: Dataset, spec: DataSpec, hp: HParams, seed: u64) -> Result<Self> {
        let parameters = model.num_trainable() as f64;
        crate::limits::ensure_fits(
            &format!("training {parameters:.3e} parameters (gradients, and the optimiser's two moments and float32 masters)"),
            parameters * 16.0,
            model.device(),
            "train a smaller model",
        )?;
        let opt = Optimizer::new(&model.vars, method(&hp), hp.lr, hp.weight_decay)?;
        let sizing = size_step(&model, &data, &hp)?;
        let mut trainer = Trainer {
            sizing,
            timeline: Timeline::default(),
            branch: MAIN_BRANCH.into(),
            history: History::default(),
            rng: Rng::new(seed),
            step: 0,
            loss_scale: INITIAL_LOSS_SCALE,
            good_scaled_steps: 0,
            trained_seconds: 0.0,
            cancel: Arc::new(AtomicBool::new(false)),
            model,
            tokenizer,
            data,
            data_spec: spec,
            hp: HParams { precision: Precision::F32, ..hp.clone() },
            opt,
            seed,
        };
        if hp.precision != Precision::F32 {
            trainer.apply_precision(hp.precision)?;
            trainer.hp.precision = hp.precision;
        }
        Ok(trainer)
    }

    /// The model being trained.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model, for changes made outside training (they are not recorded).
    pub fn model_mut(&mut self) -> &mut Model {
        &mut self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The data set.
    pub fn data(&self) -> &Dataset {
        &self.data
    }

    /// How the data set was made.
    pub fn data_spec(&self) -> &DataSpec {
        &self.data_spec
    }

    /// The hyperparameters in force.
    pub fn hparams(&self) -> &HParams {
        &self.hp
    }

    /// Steps taken on this branch.
    pub fn step_count(&self) -> i64 {
        self.step
    }

    /// This branch's history.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Optimiser steps taken (what AdamW's bias correction counts).
    pub fn optimizer_steps(&self) -> i64 {
        self.opt.steps
    }

    /// The current branch's name.
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// The seed everything random derives from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Snapshots and branches.
    pub fn timeline(&self) -> &Timeline {
        &self.timeline
    }

    /// A flag that, once set (from any thread), stops training at the next step
    /// boundary. Whoever sets it clears it (the session does when a cell ends), so
    /// that every loop a command runs stops, not only the first.
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Uses `flag` as the cancel flag (a front end's interrupt flag, shared by all it runs).
    pub fn set_cancel_handle(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = flag;
    }

    /// Moves the model and the optimiser's state to `device`.
    pub fn to_device(&mut self, device: tch::Device) -> Result<()> {
        if self.hp.precision == Precision::F16 && device == tch::Device::Cpu {
            return invalid!("precision=f16 needs CUDA; `%set precision=bf16` before moving to the CPU");
        }
        crate::cuda::prepare(device);
        self.model.vars.set_device(device);
        self.opt.to_device(device);
        Ok(())
    }

    /// Checks that `hp` would fit this model and data (what [`Trainer::set`] checks).
    pub fn check_hparams(&self, hp: &HParams) -> Result<()> {
        check_fit(&self.model, &self.tokenizer, &self.data, hp).map(drop)
    }

    /// Swaps in another data set (and the tokenizer it is read with); the model,
    /// optimiser and history stay. Nothing changes if they do not fit.
    pub fn replace_data(&mut self, tokenizer: Tokenizer, spec: DataSpec) -> Result<()> {
        let data = Self::prepare(&self.model, &tokenizer, &spec, &self.hp)?;
        self.sizing = size_step(&self.model, &data, &self.hp)?;
        self.tokenizer = tokenizer;
        self.data = data;
        self.data_spec = spec;
        Ok(())
    }

    /// The model and tokenizer, training state dropped.
    pub fn into_parts(self) -> (Model, Tokenizer) {
        (self.model, self.tokenizer)
    }

    /// Overwrites weights from outside training (a Rust cell's edit): checked first,
    /// then copied into the model and the optimiser's master copies, and recorded in
    /// the history as a change of `weights` at the current step.
    pub fn set_weights(&mut self, tensors: &[(String, Tensor)], origin: &str) -> Result<Vec<String>> {
        let names = self.model.set_tensors(tensors)?;
        for (name, tensor) in tensors {
            self.opt.set_master(name, tensor)?;
        }
        let to = format!("{} tensor{} set by {origin}", names.len(), if names.len() == 1 { "" } else { "s" });
        self.history.changes.push(Change { step: self.step, key: "weights".into(), from: String::new(), to });
        Ok(names)
    }

    /// Changes the model outside training in a way that changes what trains (LoRA
    /// adapters added, merged or dropped): `change` runs on the model; when it succeeds,
    /// the optimiser starts afresh over what now trains, and the history records `what`
    /// at the current step. When it fails, nothing changed.
    pub fn change_model<T>(&mut self, what: &str, change: impl FnOnce(&mut Model) -> Result<T>) -> Result<T> {
        let out = change(&mut self.model)?;
        self.what_trains_changed()?;
        self.history.changes.push(Change { step: self.step, key: "model".into(), from: String::new(), to: what.to_string() });
        Ok(out)
    }

    /// After adapters came or went: new ones in the weights' precision, and an optimiser
    /// over what trains now.
    fn what_trains_changed(&mut self) -> Result<()> {
        if self.hp.precision != Precision::F32 {
            self.model.set_kind(self.hp.precision.kind());
        }
        let mut opt = Optimizer::new(&self.model.vars, method(&self.hp), self.hp.lr, self.hp.weight_decay)?;
        if self.hp.precision != Precision::F32 {
            opt.use_masters(true)?;
        }
        self.opt = opt;
        Ok(())
    }

    /// Sets a hyperparameter from its text form, records the change, and applies what
    /// it implies (a new optimiser, a cast to another precision). A bad value changes
    /// nothing.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if crate::models::lora::is_setting(key) {
            return self.set_lora(key, value);
        }
        let mut hp = self.hp.clone();
        hp.set(key, value)?;
        if hp == self.hp {
            return Ok(());
        }
        let sizing = check_fit(&self.model, &self.tokenizer, &self.data, &hp)?;
        if hp.precision != self.hp.precision {
            self.apply_precision(hp.precision)?;
        }
        self.sizing = sizing;
        if hp.optimizer != self.hp.optimizer {
            // Moments of one optimiser mean nothing to another: start it fresh.
            self.opt.reset(method(&hp));
        }
        let from = self.hp.get(key).unwrap_or_default();
        self.hp = hp;
        self.opt.method = method(&self.hp);
        self.opt.weight_decay = self.hp.weight_decay;
        let to = self.hp.get(key).unwrap_or_default();
        self.history.changes.push(Change { step: self.step, key: key.to_string(), from, to });
        Ok(())
    }

    /// `lora_r`, `lora_alpha`, `lora_dropout`: a new rank makes new adapters (drawn from
    /// the seed and step, so that a sweep's trial starts alike in any process; `lora_r=0`
    /// drops them); alpha and dropout change the adapters in place.
    fn set_lora(&mut self, key: &str, value: &str) -> Result<()> {
        let current = self.model.adapters().map(|a| a.config.clone());
        let family_default = || crate::models::lora::LoraConfig {
            targets: crate::models::lora::Targets::Names(self.model.config().family().lora_targets.iter().map(|t| t.to_string()).collect()),
            ..Default::default()
        };
        let from = current.as_ref().map_or("none".to_string(), |c| setting_text(c, key));
        let wanted = current.clone().unwrap_or_else(family_default).with_setting(key, value)?;
        let to = wanted.as_ref().map_or("none".to_string(), |c| setting_text(c, key));
        match (&current, &wanted) {
            (Some(now), Some(new)) if now.r == new.r => self.model.tune_lora(new.alpha, new.dropout)?,
            (None, None) => {}
            _ => {
                tch::manual_seed(step_seed(self.seed ^ LORA_SEED, self.step));
                self.model.reshape_lora(wanted.as_ref())?;
                self.what_trains_changed()?;
            }
        }
        self.history.changes.push(Change { step: self.step, key: key.to_string(), from, to });
        Ok(())
    }

    fn apply_precision(&mut self, precision: Precision) -> Result<()> {
        if precision == Precision::F16 && self.model.device() == tch::Device::Cpu {
            return invalid!("precision=f16 needs CUDA (loss scaling on the GPU); on the CPU use precision=bf16");
        }
        if precision == Precision::F32 {
            self.model.set_kind(Kind::Float);
            self.opt.use_masters(false)?;
        } else {
            self.opt.use_masters(true)?;
            self.model.set_kind(precision.kind());
        }
        self.loss_scale = INITIAL_LOSS_SCALE;
        self.good_scaled_steps = 0;
        Ok(())
    }

    /// Runs one optimiser step over `accum` micro-batches. On a NaN or infinite loss or
    /// gradient, or a cancel request, nothing changes (weights, optimiser, data cursor,
    /// history) and the error says what happened.
    pub fn step(&mut self) -> Result<StepRecord> {
        let started = Instant::now();
        let rng_before = self.rng.clone();
        // A panic part way (a bug, or libtorch through a tch convenience function) is an
        // error like any other: the cursor and gradients are put back below.
        let result = crate::interrupt::contain("a training step", || self.try_step(started));
        if result.is_err() {
            self.opt.zero_grad();
            self.rng = rng_before;
        }
        // Work inside the step (the data's tokenizer, a checkpointed forward) may see the
        // interrupt before the step's own check does; the step is undone either way, so
        // it is the same interrupt at a step boundary.
        result.map_err(|e| match e {
            Error::Cancelled(_) => Error::Interrupted { step: self.step },
            e => e,
        })
    }

    fn try_step(&mut self, started: Instant) -> Result<StepRecord> {
        if self.model.adapters().is_some_and(|a| !a.enabled) {
            return invalid!("the LoRA adapters are off, so nothing would train: `%lora on` first");
        }
        if let (Some(format), None) = (self.model.quantized(), self.model.adapters()) {
            return invalid!(
                "the model computes with {format} weights, which do not train: `%quantize none` gives back the float weights, or `%lora r=8` adds adapters that train over the quantised base (QLoRA)"
            );
        }
        let next = self.step + 1;
        let lr = self.hp.lr_at(next);
        tch::manual_seed(step_seed(self.seed, next));
        let scale = if self.hp.precision == Precision::F16 { self.loss_scale } else { 1.0 };
        self.opt.zero_grad();
        let (mut loss_sum, mut tokens) = (0.0, 0i64);
        // Each batch in parts of `micro_batch` when memory needs it, each part's mean loss
        // weighted by its share of the batch.
        let (batch, micro) = (self.hp.batch, self.sizing.micro_batch.max(1));
        for _ in 0..self.hp.accum {
            for start in (0..batch).step_by(micro) {
                if self.cancel.load(Ordering::SeqCst) {
                    return Err(Error::Interrupted { step: self.step });
                }
                let part = micro.min(batch - start);
                let data = self.data.train_batch(part, self.ctx(), &self.tokenizer, &mut self.rng)?;
                tokens += data.tokens();
                let share = part as f64 / batch as f64 / self.hp.accum as f64;
                loss_sum += self.loss_backward(&data, scale * share)? * share;
                crate::interrupt::trip("step");
            }
        }
        let loss = loss_sum;
        if !loss.is_finite() {
            return Err(Error::NonFinite(format!(
                "the training loss is {loss} at step {next}; the step was not taken and the weights are unchanged. Lower the learning rate (`%set lr=...`) or rewind to a snapshot"
            )));
        }
        if scale != 1.0 {
            self.opt.scale_grads(1.0 / scale)?;
        }
        let grad_norm = self.opt.grad_norm();
        if !grad_norm.is_finite() {
            if self.hp.precision == Precision::F16 {
                // An f16 overflow: halve the scale and try again, as torch.amp.GradScaler does.
                self.loss_scale /= 2.0;
                self.good_scaled_steps = 0;
                return Err(Error::NonFinite(format!(
                    "f16 gradients overflowed at step {next}; the loss scale is now {}, and the step was skipped",
                    self.loss_scale
                )));
            }
            let names = self.opt.non_finite_grads();
            return Err(Error::NonFinite(format!(
                "the gradient of {} is not finite at step {next}; the step was not taken and the weights are unchanged. Lower the learning rate or set clip",
                names.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            )));
        }
        if self.hp.clip > 0.0 && grad_norm > self.hp.clip {
            self.opt.scale_grads(self.hp.clip / (grad_norm + 1e-6))?;
        }
        self.opt.lr = lr;
        self.opt.step()?;
        for (name, mask) in self.model.masks() {
            self.opt.mask_master(&name, &mask)?;
        }
        self.model.apply_masks()?;
        if self.model.adapters().is_none() {
            self.model.base_changed();
        }
        self.step = next;
        if self.hp.precision == Precision::F16 {
            self.good_scaled_steps += 1;
            if self.good_scaled_steps % LOSS_SCALE_GROWTH_INTERVAL == 0 {
                self.loss_scale *= 2.0;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        self.trained_seconds += seconds;
        // The weights have moved: from here on the step completes. An interrupt during
        // its evaluation only skips the evaluation; training stops at the next boundary.
        let val = match self.hp.eval_every > 0 && next % self.hp.eval_every == 0 {
            true => match self.evaluate() {
                Ok(metrics) => Some(metrics),
                Err(Error::Cancelled(_)) => None,
                Err(e) => return Err(e),
            },
            false => None,
        };
        let record = StepRecord { step: next, loss, lr, grad_norm, tokens_per_s: tokens as f64 / seconds.max(1e-9), wall_time: self.trained_seconds, val };
        self.history.steps.push(record.clone());
        if self.hp.snapshot_every > 0 && next % self.hp.snapshot_every == 0 {
            self.auto_snapshot();
        }
        Ok(record)
    }

    /// Trains until `stop`, a cancel request, or a NaN; `on_step` sees every step and
    /// the history so far. Steps already taken are kept whatever stops the run.
    pub fn train(&mut self, stop: Stop, on_step: &mut dyn FnMut(&StepRecord, &History)) -> Result<TrainReport> {
        let started = Instant::now();
        let mut steps = 0u64;
        loop {
            let done = match stop {
                Stop::Steps(n) => steps >= n,
                Stop::Time(limit) => started.elapsed() >= limit,
            };
            if done {
                return Ok(TrainReport { steps, halted: None });
            }
            match self.step() {
                Ok(record) => {
                    steps += 1;
                    on_step(&record, &self.history);
                }
                Err(Error::Interrupted { .. }) => return Ok(TrainReport { steps, halted: Some(Halt::Interrupted) }),
                Err(Error::NonFinite(message)) if self.hp.precision != Precision::F16 => {
                    return Ok(TrainReport { steps, halted: Some(Halt::NonFinite(message)) })
                }
                Err(Error::NonFinite(_)) => {} // f16 overflow: the scale is lower, go on
                Err(other) => return Err(other),
            }
        }
    }

    /// The data set's fixed validation batches, as [`Trainer::evaluate`] reads them.
    pub fn validation_batches(&self) -> Vec<Batch> {
        self.data.val_batches(self.hp.batch, self.ctx(), self.hp.eval_batches)
    }

    /// Validation metrics on the data set's fixed validation batches, in eval mode.
    pub fn evaluate(&self) -> Result<EvalMetrics> {
        let batches = self.validation_batches();
        if batches.is_empty() {
            return invalid!("no validation data: load data with a validation fraction (`--val 0.1`)");
        }
        tch::no_grad(|| match &self.data {
            Dataset::Classify(data) => {
                let n = data.labels.len();
                let mut confusion = vec![vec![0u64; n]; n];
                let (mut loss_sum, mut count) = (0.0, 0i64);
                for batch in &batches {
                    self.check_cancel("evaluating")?;
                    let logits = self.logits(batch)?;
                    let targets = batch.targets.to_device(logits.device());
                    let size = targets.size()[0];
                    loss_sum += logits.to_kind(Kind::Float).cross_entropy_for_logits(&targets).double_value(&[]) * size as f64;
                    count += size;
                    let predicted: Vec<i64> = Vec::try_from(logits.argmax(-1, false).to_device(tch::Device::Cpu))?;
                    let actual: Vec<i64> = Vec::try_from(targets.to_device(tch::Device::Cpu))?;
                    for (t, p) in actual.into_iter().zip(predicted) {
                        confusion[t as usize][p as usize] += 1;
                    }
                }
                Ok(EvalMetrics::classification(loss_sum / count as f64, confusion, data.labels.clone()))
            }
            _ => {
                let (mut loss_sum, mut count) = (0.0, 0i64);
                for batch in &batches {
                    self.check_cancel("evaluating")?;
                    let targets = batch.targets.to_device(self.model.device());
                    let n = targets.ne(-100).sum(Kind::Int64).int64_value(&[]);
                    loss_sum += self.loss_of(&self.logits(batch)?, batch).double_value(&[]) * n as f64;
                    count += n;
                }
                let loss = loss_sum / count.max(1) as f64;
                Ok(EvalMetrics { loss, perplexity: Some(loss.exp()), ..Default::default() })
            }
        })
    }

    /// On source → target pairs, the validation sources' generations — greedy, or the best
    /// of a beam search with `beams` — scored against their targets (the text of each
    /// side without special tokens or the stop token), up to `max_new_tokens` each
    /// (default: the longest validation target); ROUGE stems its tokens with `stemmer`.
    pub fn score_generations(&self, beams: Option<usize>, max_new_tokens: Option<usize>, stemmer: bool) -> Result<crate::metrics::TextScores> {
        if !self.data.is_seq2seq() {
            return invalid!("generation scores are for source → target pairs (`%data pairs ...`, `%data synth TASK --seq2seq`)");
        }
        let batches = self.validation_batches();
        let rows_of = |t: &Tensor| -> Result<Vec<Vec<i64>>> { Ok(Vec::<Vec<i64>>::try_from(t.to_device(tch::Device::Cpu))?) };
        let mut pairs = vec![];
        for batch in &batches {
            let source = batch.source.as_ref().expect("pairs have sources");
            let masks = match &batch.mask {
                Some(m) => rows_of(m)?,
                None => vec![vec![1; source.size()[1] as usize]; source.size()[0] as usize],
            };
            for ((source, mask), target) in rows_of(source)?.into_iter().zip(masks).zip(rows_of(&batch.targets)?) {
                let source: Vec<i64> = source.into_iter().zip(mask).filter(|(_, m)| *m == 1).map(|(id, _)| id).collect();
                pairs.push((source, target.into_iter().filter(|&id| id != -100).collect::<Vec<i64>>()));
            }
        }
        let longest = pairs.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
        let stop_ids = self.model.config().eos_token_ids();
        let max_new_tokens = max_new_tokens.unwrap_or(longest);
        let text = |ids: &[i64]| -> Result<String> {
            let end = if ids.last().is_some_and(|id| stop_ids.contains(id)) { ids.len() - 1 } else { ids.len() };
            self.tokenizer.decode(&ids[..end])
        };
        let (mut targets, mut predictions) = (vec![], vec![]);
        for (source, target) in &pairs {
            self.check_cancel("generating for the validation sources")?;
            let ids = match beams {
                Some(beams) => {
                    let search = crate::beam::BeamOptions { beams, max_new_tokens, stop_ids: stop_ids.clone(), ..Default::default() };
                    crate::beam::beam_search(&self.model, source, &search)?.swap_remove(0).ids
                }
                None => {
                    let opts = crate::generate::GenerateOptions { max_new_tokens, stop_ids: stop_ids.clone(), ..Default::default() };
                    crate::generate::generate(&self.model, source, &opts)?
                }
            };
            targets.push(text(target)?);
            predictions.push(text(&ids)?);
        }
        Ok(crate::metrics::score_texts(&targets, &predictions, stemmer))
    }

    fn check_cancel(&self, what: &str) -> Result<()> {
        if self.cancel.load(Ordering::SeqCst) {
            return Err(crate::interrupt::cancelled(what));
        }
        Ok(())
    }

    /// Runs `batches` training batches, drawn from a fixed seed (the data cursor does not
    /// move), through the model without gradients: the calibration data of pruning.
    pub fn run_calibration(&self, batches: usize) -> Result<()> {
        let mut rng = Rng::new(self.seed ^ CALIBRATION_SEED);
        tch::no_grad(|| {
            for _ in 0..batches {
                self.check_cancel("calibrating")?;
                let batch = self.data.train_batch(self.sizing.micro_batch, self.ctx(), &self.tokenizer, &mut rng)?;
                let _ = self.logits(&batch)?;
            }
            Ok(())
        })
    }

    /// Language-model window length ([`Sizing::window`]).
    fn ctx(&self) -> usize {
        self.sizing.window
    }

    /// How steps are sized now, and why.
    pub fn sizing(&self) -> &Sizing {
        &self.sizing
    }

    fn forward(&self, batch: &Batch, opts: &ForwardOptions) -> Result<Output> {
        let device = self.model.device();
        let inputs = batch.inputs.to_device(device);
        let mask = batch.mask.as_ref().map(|m| m.to_device(device));
        match &batch.source {
            // An encoder–decoder: the encoder reads the source, the decoder the target.
            Some(source) => {
                let mut cache = self.model.encode_source(&source.to_device(device), mask.as_ref(), opts)?;
                self.model.forward(&inputs, None, opts, Some(&mut cache))
            }
            None => self.model.forward(&inputs, mask.as_ref(), opts, None),
        }
    }

    /// The logits of an evaluation pass.
    fn logits(&self, batch: &Batch) -> Result<Tensor> {
        let out = self.forward(batch, &ForwardOptions::default())?;
        Ok(head_logits(&out)?.shallow_clone())
    }

    /// The batch's mean loss given the model's logits on it.
    fn loss_of(&self, logits: &Tensor, batch: &Batch) -> Tensor {
        let targets = batch.targets.to_device(logits.device());
        match self.model.task() {
            Task::LanguageModel | Task::Seq2Seq => super::lm_loss(logits, &targets),
            Task::Classification { .. } | Task::Encoder { .. } => logits.to_kind(Kind::Float).cross_entropy_for_logits(&targets),
        }
    }

    /// The batch's mean loss in a training pass, its gradient times `weight` added to
    /// the weights' — through a checkpointed pass when `checkpointing` is set.
    fn loss_backward(&self, batch: &Batch, weight: f64) -> Result<f64> {
        let loss = std::cell::Cell::new(f64::NAN);
        let backward = |out: &Output| -> Result<()> {
            let l = self.loss_of(head_logits(out)?, batch);
            (&l * weight).f_backward()?;
            loss.set(l.double_value(&[]));
            Ok(())
        };
        let opts = ForwardOptions { train: true, ..Default::default() };
        match self.hp.checkpointing {
            true => drop(self.forward(batch, &ForwardOptions { checkpoint: Some(Backward(&backward)), ..opts })?),
            false => backward(&self.forward(batch, &opts)?)?,
        }
        Ok(loss.get())
    }

    // ---- the timeline: snapshots, rewind, fork ----

    /// Everything a rewind restores, copied: the weights that train (all of them, or
    /// only the adapters': a frozen base does not change), the optimiser, the cursor.
    fn capture(&self, name: &str, auto: bool) -> Snapshot {
        let weights: Vec<(String, Tensor)> =
            self.model.named_tensors().into_iter().filter(|(_, t)| t.requires_grad()).map(|(n, t)| (n, t.detach().copy())).collect();
        Snapshot {
            name: name.to_string(),
            branch: self.branch.clone(),
            step: self.step,
            auto,
            weights,
            optimizer: self.opt.state_tensors(),
            optimizer_steps: self.opt.steps,
            rng: self.rng.clone(),
            hp: self.hp.clone(),
            history: self.history.clone(),
            loss_scale: self.loss_scale,
            trained_seconds: self.trained_seconds,
            lora: self.model.adapters().map(|a| (a.config.clone(), a.enabled)),
            base_version: self.model.base_version(),
            masks: self.model.masks(),
        }
    }

    /// Keeps the current state in memory under `name` (replacing a snapshot of that
    /// name). Named snapshots are never dropped to save memory.
    pub fn snapshot(&mut self, name: &str) -> Result<&Snapshot> {
        if name.is_empty() || name.parse::<i64>().is_ok() {
            return invalid!("a snapshot name must not be empty or a number (numbers name steps): got `{name}`");
        }
        let snapshot = self.capture(name, false);
        Ok(self.timeline.insert(snapshot))
    }

    /// Drops the snapshots whose names `drop` accepts.
    pub fn drop_snapshots(&mut self, drop: impl Fn(&str) -> bool) {
        self.timeline.remove_where(drop);
    }

    fn auto_snapshot(&mut self) {
        let snapshot = self.capture(&format!("step-{}", self.step), true);
        self.timeline.insert_auto(snapshot, self.hp.snapshot_budget_mb << 20);
    }

    /// Goes back to a snapshot, by name or by step (the latest snapshot of that step on
    /// this branch): weights, optimiser, data cursor, hyperparameters and history.
    pub fn rewind(&mut self, target: &str) -> Result<()> {
        let snapshot = self.timeline.find(target, &self.branch)?.clone_shallow();
        self.restore(&snapshot)
    }

    /// Starts branch `name` from the snapshot `from` (or from the current state), with
    /// hyperparameter `changes`. The branch left behind keeps its history for
    /// comparison. Nothing changes if any part is invalid.
    pub fn fork(&mut self, name: &str, from: Option<&str>, changes: &[(String, String)]) -> Result<()> {
        if name.is_empty() || name == self.branch || self.timeline.branches.contains_key(name) {
            return invalid!("a branch named `{name}` exists already; `%runs` lists the branches");
        }
        let mut check = self.hp.clone();
        for (k, v) in changes {
            check_setting(&mut check, k, v)?;
        }
        check_fit(&self.model, &self.tokenizer, &self.data, &check)?;
        let start = match from {
            Some(target) => self.timeline.find(target, &self.branch)?.clone_shallow(),
            None => self.capture("fork", false),
        };
        self.timeline.branches.insert(self.branch.clone(), self.history.clone());
        self.restore(&start)?;
        self.branch = name.to_string();
        for (k, v) in changes {
            self.set(k, v)?;
        }
        Ok(())
    }

    /// Goes back to a snapshot on the branch it was taken on. Unlike [`Trainer::rewind`],
    /// which stays on the current branch, the current branch's history is kept for
    /// comparison (as a fork keeps it) and the snapshot's branch is current again.
    pub fn return_to(&mut self, target: &str) -> Result<()> {
        let snapshot = self.timeline.find(target, &self.branch)?.clone_shallow();
        let left = self.history.clone();
        self.restore(&snapshot)?;
        if snapshot.branch != self.branch {
            let previous = std::mem::replace(&mut self.branch, snapshot.branch.clone());
            self.timeline.branches.insert(previous, left);
            self.timeline.branches.remove(&snapshot.branch);
        }
        Ok(())
    }

    /// Takes over the training state of `other`, a trainer of the same model and data
    /// (a sweep's trial, loaded from its checkpoint): weights, optimiser, data cursor,
    /// step, hyperparameters and history. This trainer's branch, other branches and
    /// snapshots stay. Refused, changing nothing, when the variables differ.
    pub fn adopt(&mut self, other: &Trainer) -> Result<()> {
        let base = |t: &Trainer| -> Vec<(String, Vec<i64>)> {
            let mut v: Vec<(String, Vec<i64>)> =
                t.model.vars.variables().into_iter().filter(|(n, _)| !Model::is_adapter_variable(n)).map(|(n, t)| (n, t.size())).collect();
            v.sort();
            v
        };
        if base(self) != base(other) {
            return invalid!("the state to adopt is not of this model: its variables differ in names or shapes");
        }
        if other.data_spec != self.data_spec {
            return invalid!("the state to adopt was trained on other data than this trainer has");
        }
        // The other trainer started from this one's state, loaded from its checkpoint:
        // the same base under another version.
        let mut state = other.capture("adopted", false);
        state.base_version = self.model.base_version();
        self.restore(&state)
    }

    /// Every branch's history, the current one last.
    pub fn runs(&self) -> Vec<(&str, &History)> {
        let mut runs: Vec<(&str, &History)> = self.timeline.branches.iter().filter(|(n, _)| **n != self.branch).map(|(n, h)| (n.as_str(), h)).collect();
        runs.push((&self.branch, &self.history));
        runs
    }

    /// Puts the state of `s` back: its adapters first (made again when the model has
    /// others or none: a sweep's trial of another rank, a snapshot from before `%lora`),
    /// then its weights, optimiser, cursor and history. Everything is checked before
    /// anything changes.
    fn restore(&mut self, s: &Snapshot) -> Result<()> {
        let lora = s.lora.as_ref().map(|(config, _)| config);
        if lora.is_some() && s.base_version != self.model.base_version() {
            return invalid!(
                "`{}` holds only the LoRA adapters, and the weights under them changed since it was taken (they were trained without adapters, merged into or set); nothing was changed",
                s.name
            );
        }
        let expected: std::collections::BTreeSet<String> = match lora {
            Some(config) => self.model.lora_variable_names(config)?.into_iter().collect(),
            None => self.model.vars.variables().into_keys().filter(|n| !Model::is_adapter_variable(n)).collect(),
        };
        if s.weights.len() != expected.len() || s.weights.iter().any(|(n, _)| !expected.contains(n)) {
            return invalid!("`{}` does not fit this model: its weights are not the ones it would put back; nothing was changed", s.name);
        }
        let sizing = size_step(&self.model, &self.data, &s.hp)?;
        let reshaped = self.model.adapters().map(|a| &a.config) != lora;
        if reshaped {
            self.model.reshape_lora(lora)?;
            self.what_trains_changed()?;
        }
        if let Some((_, enabled)) = &s.lora {
            self.model.set_lora_enabled(*enabled)?;
        }
        self.model.set_masks(&s.masks)?;
        if s.hp.precision != self.hp.precision {
            self.apply_precision(s.hp.precision)?;
        }
        self.sizing = sizing;
        let vars = self.model.vars.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, saved) in &s.weights {
                vars[name].shallow_clone().f_copy_(saved)?;
            }
            Ok(())
        })?;
        if lora.is_none() {
            self.model.set_base_version(s.base_version);
        }
        self.opt.load_state_tensors(&s.optimizer, s.optimizer_steps)?;
        self.opt.method = method(&s.hp);
        self.opt.weight_decay = s.hp.weight_decay;
        self.hp = s.hp.clone();
        self.step = s.step;
        self.rng = s.rng.clone();
        self.history = s.history.clone();
        self.loss_scale = s.loss_scale;
        self.trained_seconds = s.trained_seconds;
        Ok(())
    }
}

/// Mixed into the seed calibration batches are drawn from.
const CALIBRATION_SEED: u64 = 0xCA11_B4A7;

/// Mixed into the seed that new adapters made by `%set lora_r` are drawn from.
const LORA_SEED: u64 = 0x10AA_5EED;

/// `key`'s value in `config`, as `%set` writes it.
fn setting_text(config: &crate::models::lora::LoraConfig, key: &str) -> String {
    match key {
        "lora_r" => config.r.to_string(),
        "lora_alpha" => config.alpha.to_string(),
        _ => config.dropout.to_string(),
    }
}

/// Checks `key=value` as `%set` would apply it: a hyperparameter into `hp`, or one of
/// the LoRA settings ([`crate::models::lora::SETTINGS`]), which act on the model.
pub fn check_setting(hp: &mut HParams, key: &str, value: &str) -> Result<()> {
    if crate::models::lora::is_setting(key) {
        return crate::models::lora::LoraConfig::default().with_setting(key, value).map(drop);
    }
    hp.set(key, value)
}

/// The logits a model's head gives, or why there are none to train on.
fn head_logits(out: &Output) -> Result<&Tensor> {
    out.logits.as_ref().ok_or_else(|| Error::Invalid("this model has no head to train (an encoder without a classifier)".into()))
}

/// libtorch's seed for step `step`: a mix of the run's seed and the step.
fn step_seed(seed: u64, step: i64) -> i64 {
    let mut rng = Rng::new(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (rng.next_u64() >> 1) as i64
}

pub(super) fn method(hp: &HParams) -> Method {
    match hp.optimizer {
        OptimizerKind::AdamW => Method::AdamW { beta1: hp.beta1, beta2: hp.beta2, eps: hp.eps },
        OptimizerKind::Sgd => Method::Sgd { momentum: hp.momentum },
    }
}

/// Checks that the model, its tokenizer, the data and the hyperparameters go together,
/// and sizes a step for them.
pub(super) fn check_fit(model: &Model, tokenizer: &Tokenizer, data: &Dataset, hp: &HParams) -> Result<Sizing> {
    let config = model.config();
    if tokenizer.vocab_size() as i64 > config.vocab_size() {
        return invalid!(
            "the tokenizer has {} ids but the model's vocabulary only {}; build the model with --vocab {}",
            tokenizer.vocab_size(),
            config.vocab_size(),
            tokenizer.vocab_size()
        );
    }
    match (model.task(), data) {
        (Task::Seq2Seq, Dataset::Synth { seq2seq: true, .. }) => {
            let start = tokenizer.encode_corpus("=")?;
            if config.decoder_start_token_id().map(|id| vec![id]) != Some(start.clone()) {
                return invalid!(
                    "the synthetic pairs start the decoder from `=` (id {start:?}) but this model's decoder starts from id {:?}; build it for this data with `%model t5` or `%model bart`",
                    config.decoder_start_token_id()
                );
            }
        }
        (Task::Seq2Seq, Dataset::Pairs(_)) => {}
        (Task::Seq2Seq, _) => {
            return invalid!(
                "a {} encoder–decoder trains on source → target pairs: `%data pairs FILE --source F --target F`, or `%data synth reverse --seq2seq` (other data sets are one text, not pairs)",
                config.model_type()
            )
        }
        (_, Dataset::Synth { seq2seq: true, .. } | Dataset::Pairs(_)) => {
            return invalid!("source → target pairs (`--seq2seq`) train an encoder–decoder (`%model t5` or `%model bart`); this model is a {}", config.model_type())
        }
        (Task::LanguageModel, Dataset::Synth { .. }) => {
            let needed = data.example_len().unwrap_or(0) as i64 - 1;
            if needed > config.max_positions() {
                return invalid!(
                    "synthetic examples need a context of {needed} tokens but the model has {}; build it with --ctx {needed}",
                    config.max_positions()
                );
            }
        }
        (Task::LanguageModel, Dataset::Text(_) | Dataset::Chat(_)) => {}
        (Task::Classification { classes }, Dataset::Classify(c)) if classes as usize == c.labels.len() => {}
        (Task::Classification { classes }, Dataset::Classify(c)) => {
            return invalid!("the classifier has {classes} classes but the data has {} labels ({})", c.labels.len(), c.labels.join(", "))
        }
        (Task::Encoder { .. }, Dataset::Classify(c)) => {
            return invalid!("this {} model has no classification head; load it as a classifier with --classes {}", config.model_type(), c.labels.len())
        }
        (Task::LanguageModel, Dataset::Classify(_)) | (Task::Classification { .. }, Dataset::Chat(_)) => {
            return invalid!(
                "classification data needs an encoder with a classification head (BERT family); this model is a {} language model",
                config.model_type()
            )
        }
        (_, _) => return invalid!("a {} encoder trains on classification data (`%data classify ...`), not on language-model data", config.model_type()),
    }
    if hp.precision == Precision::F16 && model.device() == tch::Device::Cpu {
        return invalid!("precision=f16 needs CUDA (loss scaling on the GPU); on the CPU use precision=bf16");
    }
    if let Dataset::Classify(c) = data {
        let longest = c.longest();
        if longest as i64 > config.max_positions() {
            return invalid!(
                "the longest example has {longest} tokens but the model reads at most {}; shorten the texts, or use a tokenizer that truncates",
                config.max_positions()
            );
        }
    }
    size_step(model, data, hp)
}

/// The window and micro-batch of a step ([`Sizing`]): `ctx` when it is set (at most the
/// model's context); otherwise what the data needs — a synthetic example, the longest
/// example, or for a text corpus the model's context up to [`DEFAULT_TEXT_WINDOW`] and
/// the corpus's length. The batch runs whole when its activations fit in memory; the
/// default batch, which nobody chose, else runs in the largest parts that do. What still
/// does not fit is refused, the message naming `ctx` and `batch`.
fn size_step(model: &Model, data: &Dataset, hp: &HParams) -> Result<Sizing> {
    let config = model.config();
    let model_ctx = config.max_positions().max(1) as usize;
    let asked = |what: &str, natural: usize| -> (usize, String) {
        match hp.ctx {
            0 => (natural.clamp(1, model_ctx), format!("ctx=0: {what}")),
            n if n > model_ctx => (model_ctx, format!("ctx={n}, cut to the model's context of {model_ctx}")),
            n => (n.min(natural.max(1)), format!("ctx={n}")),
        }
    };
    let (window, window_why) = match data {
        Dataset::Synth { .. } => {
            let n = data.example_len().unwrap_or(1);
            (n, "the synthetic task's examples".to_string())
        }
        Dataset::Text(c) => {
            let fits = c.sizes().0.saturating_sub(1).max(1);
            match hp.ctx {
                0 => {
                    let window = model_ctx.min(DEFAULT_TEXT_WINDOW).min(fits);
                    let why = if window == fits && fits < model_ctx.min(DEFAULT_TEXT_WINDOW) {
                        "ctx=0: the whole training text (it is shorter than a window)".to_string()
                    } else if model_ctx > DEFAULT_TEXT_WINDOW {
                        format!("ctx=0: {DEFAULT_TEXT_WINDOW} tokens for a text corpus (the model reads up to {model_ctx}; `%set ctx=N` for more)")
                    } else {
                        format!("ctx=0: the model's context of {model_ctx}")
                    };
                    (window, why)
                }
                n => (n.min(model_ctx), if n > model_ctx { format!("ctx={n}, cut to the model's context of {model_ctx}") } else { format!("ctx={n}") }),
            }
        }
        Dataset::Classify(c) => (c.longest().max(1), "the longest example".to_string()),
        Dataset::Chat(c) => asked("the longest example", c.longest()),
        Dataset::Pairs(p) => (p.longest().max(1), "the longest source or target".to_string()),
    };
    let estimate = |micro: usize| config.activation_estimate(micro, window, hp.checkpointing);
    let usable = crate::limits::usable_bytes(model.device()).unwrap_or(f64::INFINITY);
    // Only the batch nobody chose runs in parts: a batch set with `%set` is the user's
    // to size, and one that does not fit is refused, as it always was.
    let may_split = hp.batch == HParams::default().batch;
    let mut micro = hp.batch.max(1);
    while may_split && micro > 1 && estimate(micro) > usable {
        micro = micro.div_ceil(2);
    }
    let advice = match (may_split, hp.checkpointing) {
        (true, false) => {
            "lower `ctx` (the window) with `%set ctx=N`, or `%set checkpointing=true` (activations recomputed in the backward pass), or train a smaller model"
        }
        (true, true) => "lower `ctx` (the window) with `%set ctx=N`, or train a smaller model",
        (false, false) => "lower `batch` (and raise `accum` to keep the effective batch), or `ctx` (the window), or `%set checkpointing=true`",
        (false, true) => "lower `batch` (and raise `accum` to keep the effective batch), or `ctx` (the window)",
    };
    crate::limits::ensure_fits(&format!("a training step on {micro} × {window} tokens ({window_why})"), estimate(micro), model.device(), advice)?;
    let micro_why = (micro < hp.batch).then(|| {
        format!(
            "the batch of {} needs about {} of activations and memory holds {}: it runs in {} parts of {micro}",
            hp.batch,
            crate::limits::format_bytes(estimate(hp.batch)),
            crate::limits::format_bytes(usable),
            hp.batch.div_ceil(micro)
        )
    });
    Ok(Sizing { window, window_why, micro_batch: micro, micro_why })
}
