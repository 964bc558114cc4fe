//! Hyperparameter search from the current training state, in parts: the space
//! ([`space`]: what each hyperparameter may be), samplers ([`sampler`]: grid, random,
//! [`tpe`]: what to try next given what finished), the schedule (run every trial to the
//! end, or successive halving: the better half goes on at twice the steps), and the
//! runner here, which trains each trial in this process from a snapshot, and the study
//! file ([`study`]) the runner's [`Progress`] can write each trial to as it finishes.
//! Also the learning-rate range test.
//!
//! Every trial starts from the same snapshot of the trainer and the trainer is put
//! back there afterwards, so a sweep changes nothing but what it reports (and, when
//! asked, the hyperparameters of the best trial).

pub mod sampler;
pub mod space;
pub mod study;
pub mod tpe;
pub mod worker;

use serde::Serialize;

use crate::error::{invalid, Error, Result};
use crate::train::{Halt, StepRecord, Stop, Trainer};
pub use sampler::{Method, Observation, Sampler, MAX_TRIALS};
pub use space::{Param, Space, Values};

/// How long trials train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Every trial trains its steps.
    None,
    /// Successive halving: every trial trains a rung; the better half goes on at twice the steps, until one is left.
    Halving,
}

impl Schedule {
    /// Reads `none` or `halving`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Schedule::None),
            "halving" => Ok(Schedule::Halving),
            other => invalid!("--schedule {other}: choose none or halving"),
        }
    }

    /// Its name, as `--schedule` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::None => "none",
            Schedule::Halving => "halving",
        }
    }
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Trial {
    /// Its number, from 1.
    pub id: usize,
    /// The hyperparameters it set.
    pub values: Vec<(String, String)>,
    /// `(step, loss)` of every step it took.
    pub losses: Vec<(i64, f64)>,
    /// The score it is ranked by: validation loss when there is validation data, else
    /// the mean training loss of its last steps. Infinite for a diverged trial.
    pub score: f64,
    /// `running`, `done`, `stopped` (halving), `diverged`, `failed` (its worker process).
    pub status: String,
}

/// What a sweep found.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SweepResult {
    /// Every trial, in the order run.
    pub trials: Vec<Trial>,
    /// The id of the best trial.
    pub best: Option<usize>,
}

/// What a sweep tells as it goes.
pub trait Progress {
    /// After every step: every trial so far.
    fn step(&mut self, trials: &[Trial]);
    /// A trial finished a rung (done or diverged), was stopped, or failed; an error ends
    /// the sweep.
    fn finished(&mut self, trial: &Trial) -> Result<()>;
    /// Something the user should know (why a worker failed).
    fn note(&mut self, _text: &str) {}
}

/// A closure over the trials after every step is a progress that keeps nothing.
impl<F: FnMut(&[Trial])> Progress for F {
    fn step(&mut self, trials: &[Trial]) {
        self(trials)
    }

    fn finished(&mut self, _: &Trial) -> Result<()> {
        Ok(())
    }
}

/// Name of the snapshot sweeps start every trial from.
const START: &str = "__sweep_start";

/// Where trials train.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// One after another in this process, from a snapshot.
    InProcess,
    /// In this many worker processes at once, from a saved checkpoint ([`worker`]).
    Workers(usize),
}

/// Runs a sweep of `steps` steps per trial (halving: the first rung's steps), `trials`
/// of them (a grid: all its combinations), on `executor`, telling `progress` as it
/// goes. The trainer ends where it started.
#[allow(clippy::too_many_arguments)]
pub fn sweep(
    trainer: &mut Trainer,
    params: &[Param],
    method: Method,
    schedule: Schedule,
    steps: u64,
    trials: usize,
    executor: Executor,
    progress: &mut dyn Progress,
) -> Result<SweepResult> {
    if params.is_empty() {
        return invalid!("nothing to sweep: give key=[a,b] or key=log(lo,hi)");
    }
    if steps == 0 {
        return invalid!("--steps must be at least 1");
    }
    let (sampler, count) = method.sampler(params, trials, trainer.seed())?;
    from_start_and_back(trainer, |t| {
        let mut runner = match executor {
            Executor::InProcess => Runner::Here(t),
            Executor::Workers(jobs) => Runner::Pool(worker::Pool::start(t, jobs)?),
        };
        run_trials(&mut runner, params, sampler, count, schedule, steps, progress)
    })
}

/// Runs `explore` from a snapshot of the trainer and puts the trainer back there after,
/// whatever `explore` did or however it failed; the sweep's snapshots are dropped.
fn from_start_and_back<T>(trainer: &mut Trainer, explore: impl FnOnce(&mut Trainer) -> Result<T>) -> Result<T> {
    trainer.snapshot(START)?;
    let result = explore(trainer);
    let restored = trainer.rewind(START);
    trainer.drop_snapshots(|name| name.starts_with("__sweep"));
    restored?;
    result
}

/// An executor at work: this process's trainer, or a pool of workers.
enum Runner<'t> {
    Here(&'t mut Trainer),
    Pool(worker::Pool),
}

impl Runner<'_> {
    /// Whether another rung can start now.
    fn has_room(&self) -> bool {
        match self {
            Runner::Here(_) => true,
            Runner::Pool(pool) => pool.has_room(),
        }
    }

    /// Whether a rung is still running.
    fn busy(&self) -> bool {
        matches!(self, Runner::Pool(pool) if pool.busy())
    }

    /// Starts trial `i`'s next rung; returns `i` when it is finished already (here).
    fn start(&mut self, trials: &mut [Trial], i: usize, steps: u64, resumable: bool, progress: &mut dyn Progress) -> Result<Option<usize>> {
        match self {
            Runner::Here(trainer) => train_trial(trainer, trials, i, steps, resumable, progress).map(|()| Some(i)),
            Runner::Pool(pool) => {
                trials[i].status = "running".into();
                pool.spawn(&trials[i], i, steps, resumable)?;
                progress.step(trials);
                Ok(None)
            }
        }
    }

    /// Waits for a running rung to finish; returns its trial's index.
    fn wait(&mut self, trials: &mut [Trial], progress: &mut dyn Progress) -> Result<usize> {
        let Runner::Pool(pool) = self else { unreachable!("nothing runs in the background here") };
        let (i, outcome) = pool.next()?;
        let trial = &mut trials[i];
        trial.losses.extend(outcome.losses);
        if let Some(why) = outcome.failed {
            trial.status = "failed".into();
            trial.score = f64::INFINITY;
            progress.note(&format!("trial {}: its worker process failed ({why}); the sweep goes on without it", trial.id));
        } else if outcome.diverged {
            trial.status = "diverged".into();
        } else {
            trial.score = score(outcome.validation, &trial.losses);
            trial.status = "done".into();
        }
        progress.step(trials);
        progress.finished(&trials[i])?;
        Ok(i)
    }
}

fn run_trials(
    runner: &mut Runner,
    params: &[Param],
    mut sampler: Box<dyn Sampler>,
    count: usize,
    schedule: Schedule,
    steps: u64,
    progress: &mut dyn Progress,
) -> Result<SweepResult> {
    let resumable = schedule == Schedule::Halving;
    let mut trials: Vec<Trial> = vec![];
    let mut finished: Vec<Observation> = vec![];
    // The first rung: each trial proposed when there is room, seeing every one finished by then.
    let mut exhausted = false;
    loop {
        while !exhausted && trials.len() < count && runner.has_room() {
            let Some(values) = sampler.propose(params, &finished) else {
                exhausted = true;
                break;
            };
            trials.push(Trial { id: trials.len() + 1, values, losses: vec![], score: f64::INFINITY, status: "waiting".into() });
            let i = trials.len() - 1;
            if let Some(done) = runner.start(&mut trials, i, steps, resumable, progress)? {
                finished.push((trials[done].values.clone(), trials[done].score));
            }
        }
        if !runner.busy() {
            break;
        }
        let done = runner.wait(&mut trials, progress)?;
        finished.push((trials[done].values.clone(), trials[done].score));
    }
    let mut alive: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].status == "done").collect();
    let mut rung_steps = steps;
    while schedule == Schedule::Halving && alive.len() > 1 {
        // Successive halving: the better half trains on, twice as long.
        alive.sort_by(|&a, &b| trials[a].score.total_cmp(&trials[b].score));
        for &i in &alive[alive.len().div_ceil(2)..] {
            trials[i].status = "stopped".into();
            progress.finished(&trials[i])?;
        }
        alive.truncate(alive.len().div_ceil(2));
        rung_steps *= 2;
        for &i in &alive {
            while !runner.has_room() {
                runner.wait(&mut trials, progress)?;
            }
            runner.start(&mut trials, i, rung_steps, true, progress)?;
        }
        while runner.busy() {
            runner.wait(&mut trials, progress)?;
        }
        alive.retain(|&i| trials[i].status == "done");
    }
    let best = study::best(&trials);
    Ok(SweepResult { trials, best })
}

/// Trains trial `i` for `steps` steps: from the sweep's start with its values on its
/// first rung, from its own snapshot after that (kept when `resumable`), then scores it.
fn train_trial(trainer: &mut Trainer, trials: &mut [Trial], i: usize, steps: u64, resumable: bool, progress: &mut dyn Progress) -> Result<()> {
    let resume = format!("__sweep_{}", trials[i].id);
    if trials[i].losses.is_empty() {
        trainer.rewind(START)?;
        for (k, v) in trials[i].values.clone() {
            trainer.set(&k, &v)?;
        }
    } else {
        trainer.rewind(&resume)?;
    }
    trials[i].status = "running".into();
    let report = trainer.train(Stop::Steps(steps), &mut |r: &StepRecord, _| {
        trials[i].losses.push((r.step, r.loss));
        progress.step(trials);
    })?;
    match report.halted {
        Some(Halt::Interrupted) => return Err(Error::Interrupted { step: trainer.step_count() }),
        Some(Halt::NonFinite(_)) => trials[i].status = "diverged".into(),
        None => {
            trials[i].score = score(validation_loss(trainer), &trials[i].losses);
            trials[i].status = "done".into();
        }
    }
    if resumable {
        trainer.snapshot(&resume)?;
    }
    progress.step(trials);
    progress.finished(&trials[i])
}

/// The validation loss, when there is validation data.
fn validation_loss(trainer: &Trainer) -> Option<f64> {
    trainer.evaluate().ok().map(|m| m.loss)
}

/// A trial's score: its validation loss when there is one, else the mean of the last
/// tenth of its training losses.
fn score(validation: Option<f64>, losses: &[(i64, f64)]) -> f64 {
    validation.unwrap_or_else(|| {
        let n = (losses.len() / 10).max(1).min(losses.len().max(1));
        let tail = &losses[losses.len().saturating_sub(n)..];
        if tail.is_empty() {
            f64::INFINITY
        } else {
            tail.iter().map(|(_, l)| l).sum::<f64>() / tail.len() as f64
        }
    })
}

/// The learning-rate range test (Smith, 2017; fastai's `lr_find`).
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LrFind {
    /// Learning rates tried, one per step, rising exponentially.
    pub lrs: Vec<f64>,
    /// Smoothed (debiased EMA) loss at each.
    pub losses: Vec<f64>,
    /// The suggested learning rate: fastai's "valley", two thirds down the longest
    /// stretch over which the smoothed loss keeps falling.
    pub suggestion: Option<f64>,
}

/// Raises the learning rate from `start` to `end` over at most `steps` steps,
/// stopping early once the smoothed loss is four times its best; then puts the trainer
/// back as it was.
pub fn lr_find(trainer: &mut Trainer, start: f64, end: f64, steps: u64) -> Result<LrFind> {
    if !(start > 0.0 && end > start && end.is_finite()) {
        return invalid!("the range must rise from a positive start: got {start} to {end}");
    }
    if steps < 5 {
        return invalid!("--steps must be at least 5 for a range test");
    }
    from_start_and_back(trainer, |t| run_lr_find(t, start, end, steps))
}

fn run_lr_find(trainer: &mut Trainer, start: f64, end: f64, steps: u64) -> Result<LrFind> {
    trainer.set("warmup", "0")?;
    trainer.set("schedule", "constant")?;
    let (mut lrs, mut losses) = (vec![], vec![]);
    let (mut average, mut weight, mut best) = (0.0, 1.0, f64::INFINITY);
    for i in 0..steps {
        let lr = start * (end / start).powf(i as f64 / (steps - 1) as f64);
        trainer.set("lr", &lr.to_string())?;
        let loss = match trainer.step() {
            Ok(r) => r.loss,
            Err(Error::NonFinite(_)) => break,
            Err(e) => return Err(e),
        };
        average = 0.98 * average + 0.02 * loss;
        weight *= 0.98;
        let smoothed = average / (1.0 - weight);
        lrs.push(lr);
        losses.push(smoothed);
        best = best.min(smoothed);
        if smoothed > 4.0 * best {
            break;
        }
    }
    let suggestion = valley(&losses).map(|i| lrs[i]);
    Ok(LrFind { lrs, losses, suggestion })
}

/// fastai's valley: the longest decreasing subsequence of the losses, and the point two
/// thirds along it.
fn valley(losses: &[f64]) -> Option<usize> {
    let n = losses.len();
    if n < 3 {
        return None;
    }
    let mut longest = vec![1usize; n];
    let (mut max_start, mut max_end) = (0, 0);
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && longest[i] < longest[j] + 1 {
                longest[i] = longest[j] + 1;
            }
        }
        if longest[max_end] < longest[i] {
            max_end = i;
            max_start = max_end + 1 - longest[max_end];
        }
    }
    let sections = (max_end - max_start) as f64 / 3.0;
    Some((max_start + sections as usize + (sections / 2.0) as usize).min(n - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valley_is_two_thirds_down_the_longest_fall() {
        let losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 3.0, 9.0];
        // Falling from index 0 to 6: sections = 2, the point is 0 + 2 + 1.
        assert_eq!(valley(&losses), Some(3));
    }
}
