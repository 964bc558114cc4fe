//! Executors: where a rung of a trial trains. The runner hands each one [`Job`]s and
//! takes back [`Outcome`]s; it does not know whether they ran in this process
//! ([`InProcess`]), in worker processes ([`super::worker::Pool`]) or as Slurm jobs
//! ([`super::slurm::Slurm`]). Every executor trains a job the same way — from the
//! sweep's start or from a saved [`State`], the job's values set, `steps` steps — so
//! a trial's losses are the same bit for bit on any of them.

use serde::{Deserialize, Serialize};

use super::schedule::State;
use super::space::Values;
use super::{Progress, Trial};
use crate::error::{Error, Result};
use crate::train::{Halt, StepRecord, Stop, Trainer};

/// One rung of one trial.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The trial's index in the sweep.
    pub trial: usize,
    /// The trial's id.
    pub id: usize,
    /// Which rung (PBT: round) this is, from 0.
    pub rung: usize,
    /// Steps to train.
    pub steps: u64,
    /// The state it starts from: `None` for the sweep's start.
    pub from: Option<State>,
    /// Hyperparameters set once the state is loaded.
    pub set: Values,
    /// Whether to keep the state it ends in, as `State { trial: id, rung }`.
    pub keep: bool,
}

impl Job {
    /// The state this job leaves behind.
    pub fn state(&self) -> State {
        State { trial: self.id, rung: self.rung }
    }
}

/// What a rung found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    /// `(step, loss)` of each step.
    pub losses: Vec<(i64, f64)>,
    /// Whether the loss or a gradient stopped being finite.
    pub diverged: bool,
    /// The validation loss after training, when there is validation data.
    pub validation: Option<f64>,
    /// Why it failed (its process was killed, its job cancelled), when it did.
    #[serde(skip)]
    pub failed: Option<String>,
}

impl Outcome {
    /// A rung that did not run to its end, for the reason given.
    pub fn failed(why: String) -> Self {
        Outcome { failed: Some(why), ..Outcome::default() }
    }
}

/// Where jobs run.
pub trait Executor {
    /// Whether another job can start now.
    fn has_room(&self) -> bool;
    /// Whether a job is running (or waiting to).
    fn busy(&self) -> bool;
    /// Starts `job`. An executor that trains in this process trains it to the end,
    /// telling `progress` after each step (the losses go into `trials[job.trial]` as
    /// they come and are taken out again for the outcome), and returns its outcome.
    fn start(&mut self, job: &Job, trials: &mut [Trial], progress: &mut dyn Progress) -> Result<Option<Outcome>>;
    /// Waits for a started job to end: its trial's index and its outcome. Checks for
    /// an interrupt while it waits.
    fn wait(&mut self) -> Result<(usize, Outcome)>;
    /// Forgets a kept state that no job will start from.
    fn release(&mut self, state: State) -> Result<()>;
    /// A kept state, for `--adopt`: loaded as a trainer of its own, or `None` when the
    /// executor trains the session's trainer and has put it there already.
    fn adopt(&mut self, state: State) -> Result<Option<Trainer>>;
}

/// Trains `trainer` for `steps` steps (telling `on_step`), then scores it: the
/// training that every executor does for a job once its state is in place.
pub fn train_rung(trainer: &mut Trainer, steps: u64, on_step: &mut dyn FnMut(&StepRecord)) -> Result<Outcome> {
    let mut losses = vec![];
    let report = trainer.train(Stop::Steps(steps), &mut |r: &StepRecord, _| {
        losses.push((r.step, r.loss));
        on_step(r);
    })?;
    let diverged = match report.halted {
        Some(Halt::Interrupted) => return Err(Error::Interrupted { step: trainer.step_count() }),
        Some(Halt::NonFinite(_)) => true,
        None => false,
    };
    let validation = if diverged { None } else { trainer.evaluate().ok().map(|m| m.loss) };
    Ok(Outcome { losses, diverged, validation, failed: None })
}

/// Name of the snapshot every trial's first rung starts from.
pub const START: &str = "__sweep_start";

/// The in-memory snapshot holding a kept state.
fn snapshot_name(state: State) -> String {
    format!("__sweep_{}_{}", state.trial, state.rung)
}

/// One job after another in this process, from snapshots of the session's trainer.
pub struct InProcess<'t> {
    trainer: &'t mut Trainer,
}

impl<'t> InProcess<'t> {
    /// Trains on `trainer`, which holds the [`START`] snapshot.
    pub fn new(trainer: &'t mut Trainer) -> Self {
        InProcess { trainer }
    }
}

impl Executor for InProcess<'_> {
    fn has_room(&self) -> bool {
        true
    }

    fn busy(&self) -> bool {
        false
    }

    fn start(&mut self, job: &Job, trials: &mut [Trial], progress: &mut dyn Progress) -> Result<Option<Outcome>> {
        self.trainer.rewind(&job.from.map_or(START.to_string(), snapshot_name))?;
        for (k, v) in &job.set {
            self.trainer.set(k, v)?;
        }
        let before = trials[job.trial].losses.len();
        let outcome = train_rung(self.trainer, job.steps, &mut |r| {
            trials[job.trial].losses.push((r.step, r.loss));
            progress.step(trials);
        });
        trials[job.trial].losses.truncate(before);
        let outcome = outcome?;
        if job.keep && !outcome.diverged {
            self.trainer.snapshot(&snapshot_name(job.state()))?;
        }
        Ok(Some(outcome))
    }

    fn wait(&mut self) -> Result<(usize, Outcome)> {
        unreachable!("jobs in this process end before start returns")
    }

    fn release(&mut self, state: State) -> Result<()> {
        let name = snapshot_name(state);
        self.trainer.drop_snapshots(|n| n == name);
        Ok(())
    }

    fn adopt(&mut self, state: State) -> Result<Option<Trainer>> {
        self.trainer.rewind(&snapshot_name(state))?;
        Ok(None)
    }
}
