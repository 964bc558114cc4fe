//! Hyperparameter search from the current training state, in parts: the space
//! ([`space`]: what each hyperparameter may be), samplers ([`sampler`]: grid, random,
//! [`tpe`]: what to try next given what finished), the schedule (run every trial to the
//! end, or successive halving: the better half goes on at twice the steps), and the
//! runner here, which trains each trial in this process from a snapshot. Also the
//! learning-rate range test.
//!
//! Every trial starts from the same snapshot of the trainer and the trainer is put
//! back there afterwards, so a sweep changes nothing but what it reports (and, when
//! asked, the hyperparameters of the best trial).

pub mod sampler;
pub mod space;
pub mod tpe;

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
    /// `running`, `done`, `stopped` (halving), `diverged`.
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

/// Name of the snapshot sweeps start every trial from.
const START: &str = "__sweep_start";

/// Runs a sweep of `steps` steps per trial (halving: the first rung's steps), `trials`
/// of them (a grid: all its combinations). `on_event` sees the trials after every step.
/// The trainer ends where it started.
pub fn sweep(
    trainer: &mut Trainer,
    params: &[Param],
    method: Method,
    schedule: Schedule,
    steps: u64,
    trials: usize,
    on_event: &mut dyn FnMut(&[Trial]),
) -> Result<SweepResult> {
    if params.is_empty() {
        return invalid!("nothing to sweep: give key=[a,b] or key=log(lo,hi)");
    }
    if steps == 0 {
        return invalid!("--steps must be at least 1");
    }
    let (sampler, count) = method.sampler(params, trials, trainer.seed())?;
    from_start_and_back(trainer, |t| run_trials(t, params, sampler, count, schedule, steps, on_event))
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

fn run_trials(
    trainer: &mut Trainer,
    params: &[Param],
    mut sampler: Box<dyn Sampler>,
    count: usize,
    schedule: Schedule,
    steps: u64,
    on_event: &mut dyn FnMut(&[Trial]),
) -> Result<SweepResult> {
    let mut trials: Vec<Trial> = vec![];
    let mut finished: Vec<Observation> = vec![];
    // The first rung: each trial proposed after the ones before it finished.
    for id in 1..=count {
        let Some(values) = sampler.propose(params, &finished) else { break };
        trials.push(Trial { id, values, losses: vec![], score: f64::INFINITY, status: "waiting".into() });
        let i = trials.len() - 1;
        train_trial(trainer, &mut trials, i, steps, schedule == Schedule::Halving, on_event)?;
        finished.push((trials[i].values.clone(), trials[i].score));
    }
    let mut alive: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].status != "diverged").collect();
    let mut rung_steps = steps;
    while schedule == Schedule::Halving && alive.len() > 1 {
        // Successive halving: the better half trains on, twice as long.
        alive.sort_by(|&a, &b| trials[a].score.total_cmp(&trials[b].score));
        for &i in &alive[alive.len().div_ceil(2)..] {
            trials[i].status = "stopped".into();
        }
        alive.truncate(alive.len().div_ceil(2));
        rung_steps *= 2;
        for &i in &alive {
            train_trial(trainer, &mut trials, i, rung_steps, true, on_event)?;
        }
        alive.retain(|&i| trials[i].status != "diverged");
    }
    let best = trials.iter().filter(|t| t.score.is_finite()).min_by(|a, b| a.score.total_cmp(&b.score)).map(|t| t.id);
    Ok(SweepResult { trials, best })
}

/// Trains trial `i` for `steps` steps: from the sweep's start with its values on its
/// first rung, from its own snapshot after that (kept when `resumable`), then scores it.
fn train_trial(trainer: &mut Trainer, trials: &mut [Trial], i: usize, steps: u64, resumable: bool, on_event: &mut dyn FnMut(&[Trial])) -> Result<()> {
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
        on_event(trials);
    })?;
    match report.halted {
        Some(Halt::Interrupted) => return Err(Error::Interrupted { step: trainer.step_count() }),
        Some(Halt::NonFinite(_)) => trials[i].status = "diverged".into(),
        None => {
            trials[i].score = score(trainer, &trials[i])?;
            trials[i].status = "done".into();
        }
    }
    if resumable {
        trainer.snapshot(&resume)?;
    }
    on_event(trials);
    Ok(())
}

/// Validation loss when there is validation data, else the mean of the last tenth of
/// the trial's training losses.
fn score(trainer: &Trainer, trial: &Trial) -> Result<f64> {
    match trainer.evaluate() {
        Ok(m) => Ok(m.loss),
        Err(_) => {
            let n = (trial.losses.len() / 10).max(1);
            let tail = &trial.losses[trial.losses.len() - n..];
            Ok(tail.iter().map(|(_, l)| l).sum::<f64>() / n as f64)
        }
    }
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
