//! Hyperparameter exploration from the current training state: grid, random and
//! successive-halving sweeps, and the learning-rate range test.
//!
//! Every trial starts from the same snapshot of the trainer and the trainer is put
//! back there afterwards, so a sweep changes nothing but what it reports (and, when
//! asked, the hyperparameters of the best trial).

use serde::Serialize;

use crate::data::Rng;
use crate::error::{invalid, Error, Result};
use crate::train::{Halt, StepRecord, Stop, Trainer};

/// Where a hyperparameter's values come from.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub enum Space {
    /// These values (`[a,b,c]`).
    List(Vec<String>),
    /// Log-uniform between two positive bounds (`log(lo,hi)`).
    LogUniform(f64, f64),
    /// Uniform between two bounds (`uniform(lo,hi)`).
    Uniform(f64, f64),
}

/// One swept hyperparameter.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Param {
    /// Its name.
    pub key: String,
    /// Its values.
    pub space: Space,
}

impl Param {
    /// Reads `key` and `[a,b]`, `log(lo,hi)` or `uniform(lo,hi)`.
    pub fn parse(key: &str, value: &str) -> Result<Self> {
        let v = value.trim();
        let inner = |open: &str| v.strip_prefix(open).and_then(|r| r.strip_suffix(')')).map(|r| r.split(',').map(str::trim).collect::<Vec<_>>());
        let bounds = |parts: Vec<&str>| -> Result<(f64, f64)> {
            match parts.as_slice() {
                [lo, hi] => match (lo.parse::<f64>(), hi.parse::<f64>()) {
                    (Ok(lo), Ok(hi)) if lo < hi && lo.is_finite() && hi.is_finite() => Ok((lo, hi)),
                    _ => invalid!("{key}={v}: expected two numbers, the lower first"),
                },
                _ => invalid!("{key}={v}: expected two bounds"),
            }
        };
        let space = if let Some(list) = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let values: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
            if values.is_empty() {
                return invalid!("{key}={v}: the list is empty");
            }
            Space::List(values)
        } else if let Some(parts) = inner("log(") {
            let (lo, hi) = bounds(parts)?;
            if lo <= 0.0 {
                return invalid!("{key}={v}: a log range needs positive bounds");
            }
            Space::LogUniform(lo, hi)
        } else if let Some(parts) = inner("uniform(") {
            let (lo, hi) = bounds(parts)?;
            Space::Uniform(lo, hi)
        } else {
            Space::List(vec![v.to_string()])
        };
        // Every value must be one the trainer accepts.
        let mut check = crate::train::HParams::default();
        for sample in samples_of(&space) {
            check.set(key, &sample)?;
        }
        Ok(Param { key: key.to_string(), space })
    }

    fn draw(&self, rng: &mut Rng) -> String {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        match &self.space {
            Space::List(values) => values[rng.below(values.len() as u64) as usize].clone(),
            Space::LogUniform(lo, hi) => format_value((lo.ln() + u * (hi.ln() - lo.ln())).exp()),
            Space::Uniform(lo, hi) => format_value(lo + u * (hi - lo)),
        }
    }
}

/// Values to validate a space with: its list, or its bounds.
fn samples_of(space: &Space) -> Vec<String> {
    match space {
        Space::List(v) => v.clone(),
        Space::LogUniform(lo, hi) | Space::Uniform(lo, hi) => vec![format_value(*lo), format_value(*hi)],
    }
}

/// Three significant digits.
fn format_value(v: f64) -> String {
    format!("{v:.3e}").parse::<f64>().map_or_else(|_| v.to_string(), |x| x.to_string())
}

/// How trials are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Every combination of listed values.
    Grid,
    /// `trials` random draws.
    Random,
    /// Random draws, trained in rungs; the better half goes on, at twice the steps.
    Halving,
}

impl Method {
    /// Reads `grid`, `random` or `halving`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "grid" => Ok(Method::Grid),
            "random" => Ok(Method::Random),
            "halving" => Ok(Method::Halving),
            other => invalid!("--method {other}: choose grid, random or halving"),
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

/// The most trials one sweep runs.
pub const MAX_TRIALS: usize = 1000;

/// The trials' hyperparameters.
fn plan(params: &[Param], method: Method, trials: usize, seed: u64) -> Result<Vec<Vec<(String, String)>>> {
    if method == Method::Grid {
        let lists = params
            .iter()
            .map(|p| match &p.space {
                Space::List(values) => Ok((p.key.as_str(), values)),
                _ => invalid!("{}: a grid needs listed values ({}=[a,b]); ranges go with --method random or halving", p.key, p.key),
            })
            .collect::<Result<Vec<_>>>()?;
        // Counted before anything is built: a grid of a few long lists is astronomically large.
        let size = lists.iter().fold(1usize, |n, (_, values)| n.saturating_mul(values.len()));
        if size > MAX_TRIALS {
            return invalid!("the grid has {size} combinations, more than the {MAX_TRIALS} a sweep runs; use --method random with --trials N");
        }
        let mut combos: Vec<Vec<(String, String)>> = vec![vec![]];
        for (key, values) in lists {
            combos = combos.into_iter().flat_map(|c| values.iter().map(move |v| [c.clone(), vec![(key.to_string(), v.clone())]].concat())).collect();
        }
        return Ok(combos);
    }
    if !(1..=MAX_TRIALS).contains(&trials) {
        return invalid!("--trials must be between 1 and {MAX_TRIALS}, got {trials}");
    }
    let mut rng = Rng::new(seed ^ 0x53_57_45_45_50);
    Ok((0..trials).map(|_| params.iter().map(|p| (p.key.clone(), p.draw(&mut rng))).collect()).collect())
}

/// Runs a sweep of `steps` steps per trial (halving: the first rung's steps). `on_event`
/// sees the trials after every step. The trainer ends where it started.
pub fn sweep(trainer: &mut Trainer, params: &[Param], method: Method, steps: u64, trials: usize, on_event: &mut dyn FnMut(&[Trial])) -> Result<SweepResult> {
    if params.is_empty() {
        return invalid!("nothing to sweep: give key=[a,b] or key=log(lo,hi)");
    }
    if steps == 0 {
        return invalid!("--steps must be at least 1");
    }
    let plans = plan(params, method, trials, trainer.seed())?;
    from_start_and_back(trainer, |t| run_trials(t, plans, method, steps, on_event))
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

fn run_trials(trainer: &mut Trainer, plans: Vec<Vec<(String, String)>>, method: Method, steps: u64, on_event: &mut dyn FnMut(&[Trial])) -> Result<SweepResult> {
    let mut trials: Vec<Trial> =
        plans.into_iter().enumerate().map(|(i, values)| Trial { id: i + 1, values, losses: vec![], score: f64::INFINITY, status: "waiting".into() }).collect();
    let mut alive: Vec<usize> = (0..trials.len()).collect();
    let mut rung_steps = steps;
    loop {
        for &i in &alive {
            // A trial continues from its own snapshot after the first rung.
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
            let mut halted = None;
            let report = {
                let trials_view = &mut trials;
                trainer.train(Stop::Steps(rung_steps), &mut |r: &StepRecord, _| {
                    trials_view[i].losses.push((r.step, r.loss));
                    on_event(trials_view);
                })?
            };
            match report.halted {
                Some(Halt::Interrupted) => halted = Some(Error::Interrupted { step: trainer.step_count() }),
                Some(Halt::NonFinite(_)) => trials[i].status = "diverged".into(),
                None => {}
            }
            if let Some(e) = halted {
                return Err(e);
            }
            if trials[i].status != "diverged" {
                trials[i].score = score(trainer, &trials[i])?;
                trials[i].status = "done".into();
            }
            if method == Method::Halving {
                trainer.snapshot(&resume)?;
            }
            on_event(&trials);
        }
        if method != Method::Halving || alive.len() <= 1 {
            break;
        }
        // Successive halving: the better half trains on, twice as long.
        alive.sort_by(|&a, &b| trials[a].score.total_cmp(&trials[b].score));
        for &i in &alive[alive.len().div_ceil(2)..] {
            trials[i].status = "stopped".into();
        }
        alive.truncate(alive.len().div_ceil(2));
        rung_steps *= 2;
    }
    let best = trials.iter().filter(|t| t.score.is_finite()).min_by(|a, b| a.score.total_cmp(&b.score)).map(|t| t.id);
    Ok(SweepResult { trials, best })
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
    fn spaces_parse_and_refuse_bad_values() {
        assert_eq!(Param::parse("lr", "[1e-3, 3e-4]").unwrap().space, Space::List(vec!["1e-3".into(), "3e-4".into()]));
        assert_eq!(Param::parse("lr", "log(1e-4,1e-2)").unwrap().space, Space::LogUniform(1e-4, 1e-2));
        assert!(Param::parse("lr", "log(0,1)").unwrap_err().to_string().contains("positive"));
        assert!(Param::parse("batch", "[8,zero]").unwrap_err().to_string().contains("batch=zero"));
        assert!(Param::parse("lr", "log(1e-2,1e-4)").is_err());
    }

    #[test]
    fn grids_combine_and_random_draws_stay_in_range() {
        let params = [Param::parse("lr", "[1,2]").unwrap(), Param::parse("batch", "[8,16,32]").unwrap()];
        assert_eq!(plan(&params, Method::Grid, 0, 0).unwrap().len(), 6);
        let ranged = [Param::parse("lr", "log(1e-4,1e-2)").unwrap()];
        assert!(plan(&ranged, Method::Grid, 0, 0).unwrap_err().to_string().contains("--method random"));
        for trial in plan(&ranged, Method::Random, 50, 1).unwrap() {
            let lr: f64 = trial[0].1.parse().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        }
    }

    #[test]
    fn the_valley_is_two_thirds_down_the_longest_fall() {
        let losses = [5.0, 4.0, 3.0, 2.0, 1.0, 0.9, 0.8, 3.0, 9.0];
        // Falling from index 0 to 6: sections = 2, the point is 0 + 2 + 1.
        assert_eq!(valley(&losses), Some(3));
    }
}
