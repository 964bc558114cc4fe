//! Hyperparameter search from the current training state, in parts as Optuna and Ray
//! Tune split it: the space ([`space`]: what each hyperparameter may be), samplers
//! ([`sampler`], [`tpe`]: what to try next given what finished), schedulers
//! ([`schedule`]: how long each trial trains, which go on, which copy whom), executors
//! ([`executor`]: this process; [`worker`]: local processes; [`slurm`]: a cluster's job
//! arrays), and the study file ([`study`]) every finished rung is written to. The
//! runner here ties them together. Also the learning-rate range test ([`lr_find`]).
//!
//! Every trial starts from the same state of the trainer and the trainer is put back
//! there afterwards, so a sweep changes nothing but what it reports — unless asked to
//! adopt the best trial, whose state the trainer then continues from.

pub mod executor;
pub mod lr_find;
pub mod sampler;
pub mod schedule;
pub mod slurm;
pub mod space;
pub mod study;
pub mod tpe;
pub mod worker;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::train::Trainer;
use executor::{Executor, InProcess, Job, Outcome, START};
pub use lr_find::{lr_find, LrFind};
pub use sampler::{Method, Observation, Sampler, MAX_TRIALS};
pub use schedule::{Exploit, Next, Schedule, Scheduler, State, MAX_ROUNDS};
pub use space::{Param, Space, Values};

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Trial {
    /// Its number, from 1.
    pub id: usize,
    /// The hyperparameters it trains with now (PBT changes them when it exploits).
    pub values: Values,
    /// `(step, loss)` of every step it took.
    pub losses: Vec<(i64, f64)>,
    /// The score it is ranked by, that of its last rung: validation loss when there is
    /// validation data, else the mean of the rung's last tenth of training losses.
    /// Infinite (null) for a trial that diverged or failed.
    pub score: f64,
    /// `running`, `done`, `stopped` (halving, ASHA), `diverged`, `failed` (its worker
    /// process or job).
    pub status: String,
    /// The score after each rung it trained (PBT: each round).
    pub rungs: Vec<f64>,
    /// PBT: each time it took over a better member's state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lineage: Vec<Exploit>,
}

impl Trial {
    /// A trial about to start its first rung.
    pub fn new(id: usize, values: Values) -> Self {
        Trial { id, values, losses: vec![], score: f64::INFINITY, status: "running".into(), rungs: vec![], lineage: vec![] }
    }

    /// The values the sampler proposed for it.
    pub fn proposed(&self) -> &Values {
        self.lineage.first().map_or(&self.values, |e| &e.replaced)
    }
}

/// What a sweep found.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SweepResult {
    /// Every trial, in the order started.
    pub trials: Vec<Trial>,
    /// The id of the best trial.
    pub best: Option<usize>,
    /// Whether the trainer now continues from the best trial's state.
    pub adopted: bool,
}

/// What a sweep tells as it goes.
pub trait Progress {
    /// After every step (and every start and end of a rung): every trial so far.
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

/// What a sweep searches and how: everything needed to run it again or follow it
/// after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// `(key, space)` as `%sweep` was given them (`lr`, `log(1e-4,1e-2)`).
    pub params: Vec<(String, String)>,
    /// How trials are chosen.
    pub method: Method,
    /// How long they train.
    pub schedule: Schedule,
    /// Steps of the first rung (PBT: of every round).
    pub steps: u64,
    /// Trials to start (a grid: its size; PBT: the population).
    pub trials: usize,
    /// PBT: rounds of `steps` steps.
    pub rounds: usize,
    /// Seeds the sampler and PBT's perturbations.
    pub seed: u64,
    /// Whether the trainer continues from the best trial's state afterwards.
    pub adopt: bool,
}

impl Plan {
    /// The parameters, parsed and checked.
    pub fn parse_params(&self) -> Result<Vec<Param>> {
        if self.params.is_empty() {
            return invalid!("nothing to sweep: give key=[a,b] or key=log(lo,hi)");
        }
        self.params.iter().map(|(k, v)| Param::parse(k, v)).collect()
    }

    /// Checks everything but the parameters.
    pub(crate) fn check(&self) -> Result<()> {
        if self.steps == 0 {
            return invalid!("--steps must be at least 1");
        }
        if self.schedule == Schedule::Pbt && !(1..=MAX_ROUNDS).contains(&self.rounds) {
            return invalid!("--rounds must be between 1 and {MAX_ROUNDS}, got {}", self.rounds);
        }
        Ok(())
    }
}

/// Where trials train.
#[derive(Debug, Clone, PartialEq)]
pub enum Place {
    /// One after another in this process, from snapshots.
    InProcess,
    /// In this many worker processes at once, from a saved checkpoint ([`worker`]).
    Workers(usize),
    /// As Slurm job arrays, their files in the study's directory ([`slurm`]).
    Slurm(slurm::Options, PathBuf),
}

/// Runs the sweep `plan` from the trainer's state on the executor `place` names,
/// telling `progress` as it goes. The trainer ends where it started, or with `adopt`
/// where the best trial ended.
pub fn sweep(trainer: &mut Trainer, plan: &Plan, place: Place, progress: &mut dyn Progress) -> Result<SweepResult> {
    let params = plan.parse_params()?;
    plan.check()?;
    // A Slurm sweep keeps its best trial's state on disk, for `--attach DIR --adopt` later.
    let keep_best = plan.adopt || matches!(place, Place::Slurm(..));
    let mut runner = Runner::new(plan, &params, vec![], keep_best)?;
    from_start_and_back(trainer, |t| {
        let mut executor: Box<dyn Executor + '_> = match place {
            Place::InProcess => Box::new(InProcess::new(t)),
            Place::Workers(jobs) => Box::new(worker::Pool::start(t, jobs)?),
            Place::Slurm(options, dir) => Box::new(slurm::Slurm::submit(t, plan, options, dir)?),
        };
        runner.run(&mut *executor, progress)?;
        let best = study::best(&runner.trials);
        let mut adopted = false;
        if let (true, Some(state)) = (plan.adopt, runner.best_state()) {
            if let Some(loaded) = executor.adopt(state)? {
                drop(executor);
                t.adopt(&loaded)?;
            }
            adopted = true;
        }
        Ok((SweepResult { trials: runner.trials, best, adopted }, adopted))
    })
}

/// Runs `explore` from a snapshot of the trainer and puts the trainer back there after,
/// whatever `explore` did or however it failed — unless it says, succeeding, that the
/// trainer stays where it left it. The sweep's snapshots are dropped.
pub(crate) fn from_start_and_back<T>(trainer: &mut Trainer, explore: impl FnOnce(&mut Trainer) -> Result<(T, bool)>) -> Result<T> {
    trainer.snapshot(START)?;
    let result = explore(trainer);
    let restored = match result {
        Ok((_, true)) => Ok(()),
        _ => trainer.rewind(START),
    };
    trainer.drop_snapshots(|name| name.starts_with("__sweep"));
    restored?;
    result.map(|(value, _)| value)
}

/// The sweep at work: the trials so far, what runs, the states kept for later rungs;
/// the sampler proposes a trial and the scheduler decides what trains next whenever
/// the executor has room.
pub struct Runner<'p> {
    params: &'p [Param],
    sampler: Box<dyn Sampler>,
    scheduler: Box<dyn Scheduler>,
    /// How many trials the sweep starts (fewer when a grid runs out).
    count: usize,
    keep_best: bool,
    /// Every trial so far.
    pub trials: Vec<Trial>,
    /// The jobs started and not yet finished.
    running: Vec<Job>,
    /// The states the executor keeps.
    kept: BTreeSet<State>,
    /// Each trial's first rung, as the sampler sees it.
    observed: Vec<Observation>,
}

impl<'p> Runner<'p> {
    /// A runner of `plan` over `params`, going on from `trials` (a sweep followed again:
    /// their first rungs are shown to the sampler, which proposes as many first).
    /// With `keep_best`, the best trial's last state is kept to the end.
    pub fn new(plan: &Plan, params: &'p [Param], trials: Vec<Trial>, keep_best: bool) -> Result<Self> {
        let (mut sampler, count) = plan.method.sampler(params, plan.trials, plan.seed)?;
        let observed: Vec<Observation> = trials.iter().filter_map(|t| Some((t.proposed().clone(), *t.rungs.first()?))).collect();
        for _ in &trials {
            sampler.propose(params, &observed);
        }
        Ok(Runner {
            params,
            sampler,
            scheduler: plan.schedule.scheduler(params, plan.steps, plan.rounds, plan.seed),
            count,
            keep_best,
            trials,
            running: vec![],
            kept: BTreeSet::new(),
            observed,
        })
    }

    /// Takes a job already running (found again on a cluster) and the states it keeps.
    pub fn resume(&mut self, running: Vec<Job>, kept: impl IntoIterator<Item = State>) {
        self.running = running;
        self.kept.extend(kept);
    }

    /// Runs until the scheduler is done and nothing runs.
    pub fn run(&mut self, executor: &mut dyn Executor, progress: &mut dyn Progress) -> Result<()> {
        loop {
            loop {
                match self.scheduler.next(&self.trials, self.count) {
                    Next::Stop(i) => {
                        self.trials[i].status = "stopped".into();
                        progress.finished(&self.trials[i])?;
                    }
                    Next::NewTrial { .. } | Next::Rung { .. } if !executor.has_room() => break,
                    Next::NewTrial { steps } => {
                        let Some(values) = self.sampler.propose(self.params, &self.observed) else {
                            self.count = self.trials.len();
                            continue;
                        };
                        let id = self.trials.len() + 1;
                        self.trials.push(Trial::new(id, values.clone()));
                        let job = Job { trial: id - 1, id, rung: 0, steps, from: None, set: values, keep: self.keeps() };
                        self.launch(executor, job, progress)?;
                    }
                    Next::Rung { trial, steps, from, exploit } => {
                        let t = &mut self.trials[trial];
                        let set = match exploit {
                            Some(exploit) => {
                                t.values = exploit.values.clone();
                                t.lineage.push(exploit);
                                t.values.clone()
                            }
                            None => vec![],
                        };
                        let job = Job { trial, id: t.id, rung: t.rungs.len(), steps, from: Some(from), set, keep: self.keeps() };
                        self.launch(executor, job, progress)?;
                    }
                    Next::Wait | Next::Done => break,
                }
            }
            if !executor.busy() {
                // The end: no rung will start from a kept state again.
                let best = self.best_state().filter(|_| self.keep_best);
                return self.release_all_but(best.into_iter().collect(), executor);
            }
            let (i, outcome) = executor.wait()?;
            self.finish(i, outcome, executor, progress)?;
        }
    }

    /// Releases every kept state not in `live`.
    fn release_all_but(&mut self, live: BTreeSet<State>, executor: &mut dyn Executor) -> Result<()> {
        for &state in self.kept.difference(&live) {
            executor.release(state)?;
        }
        self.kept.retain(|s| live.contains(s));
        Ok(())
    }

    fn keeps(&self) -> bool {
        self.scheduler.resumes() || self.keep_best
    }

    fn launch(&mut self, executor: &mut dyn Executor, job: Job, progress: &mut dyn Progress) -> Result<()> {
        self.trials[job.trial].status = "running".into();
        self.running.push(job.clone());
        progress.step(&self.trials);
        match executor.start(&job, &mut self.trials, progress)? {
            Some(outcome) => self.finish(job.trial, outcome, executor, progress),
            None => Ok(()),
        }
    }

    /// Records what trial `i`'s rung found, and forgets the states nothing needs now.
    fn finish(&mut self, i: usize, outcome: Outcome, executor: &mut dyn Executor, progress: &mut dyn Progress) -> Result<()> {
        let k = self.running.iter().position(|j| j.trial == i).expect("a trial that finishes was running");
        let job = self.running.swap_remove(k);
        let trial = &mut self.trials[i];
        trial.losses.extend(&outcome.losses);
        trial.score = if let Some(why) = &outcome.failed {
            trial.status = "failed".into();
            progress.note(&format!("trial {}: {why}; the sweep goes on without it", trial.id));
            f64::INFINITY
        } else if outcome.diverged {
            trial.status = "diverged".into();
            f64::INFINITY
        } else {
            trial.status = "done".into();
            if job.keep {
                self.kept.insert(job.state());
            }
            score(outcome.validation, &outcome.losses)
        };
        trial.rungs.push(trial.score);
        if job.rung == 0 {
            self.observed.push((trial.proposed().clone(), trial.score));
        }
        progress.step(&self.trials);
        progress.finished(&self.trials[i])?;
        let mut live: BTreeSet<State> = self.scheduler.needed(&self.trials).into_iter().collect();
        live.extend(self.running.iter().filter_map(|j| j.from));
        live.extend(self.best_state().filter(|_| self.keep_best));
        self.release_all_but(live, executor)
    }

    /// The best trial's state after its last rung.
    pub fn best_state(&self) -> Option<State> {
        let id = study::best(&self.trials)?;
        let trial = self.trials.iter().find(|t| t.id == id)?;
        Some(State { trial: id, rung: trial.rungs.len().checked_sub(1)? })
    }
}

/// A rung's score: its validation loss when there is one, else the mean of the last
/// tenth of its training losses.
fn score(validation: Option<f64>, losses: &[(i64, f64)]) -> f64 {
    validation.unwrap_or_else(|| {
        let n = (losses.len() / 10).max(1);
        let tail = &losses[losses.len().saturating_sub(n)..];
        if tail.is_empty() {
            f64::INFINITY
        } else {
            tail.iter().map(|(_, l)| l).sum::<f64>() / tail.len() as f64
        }
    })
}
