//! Schedulers: how long each trial trains, which go on and which stop, as Ray Tune's
//! trial schedulers and Optuna's pruners decide it. A scheduler only decides; the
//! runner ([`super::run`]) carries its decisions out on an executor.
//!
//! Every decision is a function of the trials as they stand (their statuses, the score
//! after each rung, whom a PBT member copied), not of a history the scheduler keeps,
//! so a sweep followed again after a restart (`%sweep --attach`) decides as it would
//! have. A *rung* is one stretch of a trial's training: under halving and ASHA rung `k`
//! trains `steps · 2^k` steps more than rung `k − 1`; under PBT every round is a rung of
//! `steps` steps.
//!
//! - [`Schedule::None`]: every trial trains one rung.
//! - [`Schedule::Halving`]: successive halving (Jamieson & Talwalkar, 2016), synchronous:
//!   once every trial of a rung is in, the better half goes on to the next.
//! - [`Schedule::Asha`]: asynchronous successive halving (Li et al., 2020, algorithm 2):
//!   whenever a worker is free, a trial in the top half of the trials finished at some
//!   rung goes on (highest rung first), else a new trial starts. No one waits for a
//!   rung to fill, so parallel workers stay busy.
//! - [`Schedule::Pbt`]: population-based training (Jaderberg et al., 2017), synchronous,
//!   with Ray Tune's defaults: after each round the bottom quarter of the population
//!   takes over the state of a member of the top quarter (exploit: a fork of its saved
//!   state) with perturbed hyperparameters (explore: [`Param::perturb`]).

use serde::{Deserialize, Serialize};

use super::space::{Param, Values};
use super::Trial;
use crate::data::Rng;
use crate::error::{invalid, Result};

/// How long trials train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Every trial trains its steps.
    None,
    /// Successive halving: every trial trains a rung; the better half goes on at twice the steps, until one is left.
    Halving,
    /// Asynchronous successive halving: a trial goes on as soon as it is in the top half of its rung so far.
    Asha,
    /// Population-based training: rounds of steps; after each, the worst quarter copies the best quarter's state with perturbed values.
    Pbt,
}

/// The names `--schedule` takes.
pub const SCHEDULES: &str = "none, halving, asha or pbt";

impl Schedule {
    /// Reads `none`, `halving`, `asha` or `pbt`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(Schedule::None),
            "halving" => Ok(Schedule::Halving),
            "asha" => Ok(Schedule::Asha),
            "pbt" => Ok(Schedule::Pbt),
            other => invalid!("--schedule {other}: choose {SCHEDULES}"),
        }
    }

    /// Its name, as `--schedule` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::None => "none",
            Schedule::Halving => "halving",
            Schedule::Asha => "asha",
            Schedule::Pbt => "pbt",
        }
    }

    /// Its scheduler: rungs of `steps` (the first rung; a PBT round), `rounds` rounds
    /// under PBT, perturbations seeded by `seed`.
    pub fn scheduler(self, params: &[Param], steps: u64, rounds: usize, seed: u64) -> Box<dyn Scheduler> {
        match self {
            Schedule::None => Box::new(OneRung { steps }),
            Schedule::Halving => Box::new(Halving { steps }),
            Schedule::Asha => Box::new(Asha { steps }),
            Schedule::Pbt => Box::new(Pbt { params: params.to_vec(), steps, rounds, seed }),
        }
    }
}

/// The most rounds a PBT sweep runs.
pub const MAX_ROUNDS: usize = 1000;

/// A saved training state: a trial's, after one of its rungs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct State {
    /// The trial's id.
    pub trial: usize,
    /// The rung it finished, from 0.
    pub rung: usize,
}

/// One PBT exploit: a member took over a better member's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Exploit {
    /// The round it starts, from 1.
    pub round: usize,
    /// The step it happened at.
    pub step: i64,
    /// The id of the member whose state it took.
    pub from: usize,
    /// Its hyperparameters before.
    pub replaced: Values,
    /// Its hyperparameters after: the other member's, perturbed.
    pub values: Values,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Start a new trial (its values from the sampler) on its first rung.
    NewTrial {
        /// Steps of the first rung.
        steps: u64,
    },
    /// Train a trial for another rung.
    Rung {
        /// The trial's index.
        trial: usize,
        /// Steps to train.
        steps: u64,
        /// The state to start from (the trial's own, or under PBT another's).
        from: State,
        /// PBT: the member it copies and the values it takes.
        exploit: Option<Exploit>,
    },
    /// Trial `trials[trial]` goes no further: mark it stopped.
    Stop(usize),
    /// Nothing can start until a running rung ends.
    Wait,
    /// Nothing more will start.
    Done,
}

/// Decides, from the trials so far, what the sweep does next.
pub trait Scheduler {
    /// The next thing to do, given every trial so far and how many trials the sweep
    /// starts in all. Called until it answers `Wait` or `Done`, or the executor is full.
    fn next(&self, trials: &[Trial], count: usize) -> Next;
    /// The saved states a later rung may still start from.
    fn needed(&self, trials: &[Trial]) -> Vec<State>;
    /// Whether any rung starts from a saved state (so rungs must keep theirs).
    fn resumes(&self) -> bool;
}

/// Rungs trial `t` has started (the one it is on included).
fn started(t: &Trial) -> usize {
    t.rungs.len() + usize::from(t.status == "running")
}

/// Trial `t`'s state after its last finished rung.
fn latest(t: &Trial) -> Option<State> {
    t.rungs.len().checked_sub(1).map(|rung| State { trial: t.id, rung })
}

/// The indices of the trials that finished rung `k` with a finite score, best first
/// (ties in trial order).
fn ranked(trials: &[Trial], k: usize) -> Vec<usize> {
    let mut done: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].rungs.get(k).is_some_and(|s| s.is_finite())).collect();
    done.sort_by(|&a, &b| trials[a].rungs[k].total_cmp(&trials[b].rungs[k]).then(a.cmp(&b)));
    done
}

/// Steps of rung `k` under halving and ASHA: twice the rung before.
fn rung_steps(steps: u64, k: usize) -> u64 {
    steps.saturating_mul(1u64.checked_shl(k as u32).unwrap_or(u64::MAX))
}

struct OneRung {
    steps: u64,
}

impl Scheduler for OneRung {
    fn next(&self, trials: &[Trial], count: usize) -> Next {
        if trials.len() < count {
            Next::NewTrial { steps: self.steps }
        } else {
            Next::Done
        }
    }

    fn needed(&self, _: &[Trial]) -> Vec<State> {
        vec![]
    }

    fn resumes(&self) -> bool {
        false
    }
}

struct Halving {
    steps: u64,
}

impl Scheduler for Halving {
    fn next(&self, trials: &[Trial], count: usize) -> Next {
        if trials.len() < count {
            return Next::NewTrial { steps: self.steps };
        }
        for k in 0.. {
            // Rung k's trials are those that started it; it is over when none runs it.
            if trials.iter().any(|t| t.status == "running" && t.rungs.len() == k) {
                return Next::Wait;
            }
            let survivors = ranked(trials, k);
            if survivors.len() <= 1 {
                return Next::Done;
            }
            let (promoted, stopped) = survivors.split_at(survivors.len().div_ceil(2));
            if let Some(&i) = stopped.iter().find(|&&i| trials[i].status == "done" && trials[i].rungs.len() == k + 1) {
                return Next::Stop(i);
            }
            if let Some(&i) = promoted.iter().find(|&&i| started(&trials[i]) == k + 1) {
                return Next::Rung { trial: i, steps: rung_steps(self.steps, k + 1), from: State { trial: trials[i].id, rung: k }, exploit: None };
            }
        }
        unreachable!("every rung halves the survivors, so some rung has at most one")
    }

    fn needed(&self, trials: &[Trial]) -> Vec<State> {
        trials.iter().filter(|t| t.status == "done").filter_map(latest).collect()
    }

    fn resumes(&self) -> bool {
        true
    }
}

struct Asha {
    steps: u64,
}

impl Asha {
    /// The top rung: where halving `count` trials leaves one.
    fn top(count: usize) -> usize {
        count.next_power_of_two().trailing_zeros() as usize
    }
}

impl Scheduler for Asha {
    fn next(&self, trials: &[Trial], count: usize) -> Next {
        let top = Asha::top(count);
        for k in (0..top).rev() {
            let finished = ranked(trials, k);
            for &i in &finished[..finished.len() / 2] {
                if trials[i].status == "done" && trials[i].rungs.len() == k + 1 {
                    return Next::Rung { trial: i, steps: rung_steps(self.steps, k + 1), from: State { trial: trials[i].id, rung: k }, exploit: None };
                }
            }
        }
        if trials.len() < count {
            return Next::NewTrial { steps: self.steps };
        }
        if trials.iter().any(|t| t.status == "running") {
            return Next::Wait;
        }
        // The end: trials left below the highest rung reached were stopped there.
        let reached = trials.iter().filter(|t| t.status == "done").map(|t| t.rungs.len()).max().unwrap_or(0);
        match trials.iter().position(|t| t.status == "done" && t.rungs.len() < reached) {
            Some(i) => Next::Stop(i),
            None => Next::Done,
        }
    }

    fn needed(&self, trials: &[Trial]) -> Vec<State> {
        trials.iter().filter(|t| t.status == "done").filter_map(latest).collect()
    }

    fn resumes(&self) -> bool {
        true
    }
}

struct Pbt {
    params: Vec<Param>,
    steps: u64,
    rounds: usize,
    seed: u64,
}

/// The share of the population that exploits and is exploited (Ray Tune's
/// `quantile_fraction`).
const QUANTILE: f64 = 0.25;

impl Scheduler for Pbt {
    fn next(&self, trials: &[Trial], count: usize) -> Next {
        if trials.len() < count {
            return Next::NewTrial { steps: self.steps };
        }
        let members: Vec<usize> = (0..trials.len()).filter(|&i| trials[i].status != "stopped").collect();
        let Some(round) = members.iter().map(|&i| started(&trials[i])).min() else { return Next::Done };
        if round >= self.rounds {
            return if members.iter().any(|&i| trials[i].status == "running") { Next::Wait } else { Next::Done };
        }
        // Rounds are synchronous: round r starts once every member has finished r − 1.
        if members.iter().any(|&i| trials[i].rungs.len() < round) {
            return Next::Wait;
        }
        let i = *members.iter().find(|&&i| started(&trials[i]) == round).expect("the minimum is someone's");
        // Best first; members that diverged or failed last, in trial order.
        let ranking = ranked(trials, round - 1);
        let order: Vec<usize> = ranking.iter().copied().chain(members.iter().copied().filter(|m| !ranking.contains(m))).collect();
        let quantile = ((members.len() as f64 * QUANTILE).ceil() as usize).min(members.len() / 2);
        let top = &ranking[..quantile.min(ranking.len())];
        let finite = ranking.contains(&i);
        if top.is_empty() {
            // No member has a state worth copying: those without one stop.
            return if finite {
                Next::Rung { trial: i, steps: self.steps, from: State { trial: trials[i].id, rung: round - 1 }, exploit: None }
            } else {
                Next::Stop(i)
            };
        }
        if finite && !order[order.len() - quantile..].contains(&i) {
            return Next::Rung { trial: i, steps: self.steps, from: State { trial: trials[i].id, rung: round - 1 }, exploit: None };
        }
        let mut rng = Rng::new(self.seed ^ 0x50_42_54 ^ ((round as u64) << 32) ^ trials[i].id as u64);
        let donor = &trials[top[rng.below(top.len() as u64) as usize]];
        let values = self.params.iter().zip(&donor.values).map(|(p, (k, v))| (k.clone(), p.perturb(v, &mut rng))).collect();
        Next::Rung {
            trial: i,
            steps: self.steps,
            from: State { trial: donor.id, rung: round - 1 },
            // Rounds are of equal length: the donor's state is from its step `round · steps`.
            exploit: Some(Exploit {
                round,
                step: donor.losses.get((round as u64 * self.steps) as usize - 1).map_or(0, |(s, _)| *s),
                from: donor.id,
                replaced: trials[i].values.clone(),
                values,
            }),
        }
    }

    fn needed(&self, trials: &[Trial]) -> Vec<State> {
        // Every member's latest state, and the last round everyone finished: members
        // yet to start the round after it copy from there.
        let shared = trials.iter().map(|t| t.rungs.len()).min().and_then(|r| r.checked_sub(1));
        let mut states: Vec<State> = trials.iter().filter_map(latest).collect();
        if let Some(rung) = shared {
            states.extend(trials.iter().map(|t| State { trial: t.id, rung }));
        }
        states
    }

    fn resumes(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    //! The schedulers through the runner, on a toy executor: a "state" is a distance
    //! travelled, each step travels as far as the learning rate is good (best at 1e-3),
    //! and the loss is `1 / (1 + distance)`. Jobs end in the order they started, at most
    //! `slots` at a time, as workers would.
    use std::collections::{HashMap, VecDeque};

    use super::super::executor::{Executor, Job, Outcome};
    use super::super::{Method, Plan, Progress, Runner};
    use super::*;
    use crate::train::Trainer;

    struct Toy {
        slots: usize,
        states: HashMap<State, (f64, i64)>,
        queue: VecDeque<(Job, Outcome)>,
        started: Vec<Job>,
        /// Starts and ends in order: `(started, trial index, rung)`.
        log: Vec<(bool, usize, usize)>,
        most_kept: usize,
    }

    fn rate(values: &Values) -> f64 {
        let lr: f64 = values[0].1.parse().unwrap();
        (1.0 - (lr.log10() + 3.0).powi(2) / 4.0).max(0.01)
    }

    impl Executor for Toy {
        fn has_room(&self) -> bool {
            self.queue.len() < self.slots
        }
        fn busy(&self) -> bool {
            !self.queue.is_empty()
        }
        fn start(&mut self, job: &Job, trials: &mut [Trial], _: &mut dyn Progress) -> Result<Option<Outcome>> {
            let (mut x, mut step) = match job.from {
                None => (0.0, 0),
                Some(s) => *self.states.get(&s).unwrap_or_else(|| panic!("{s:?} was released before {job:?} started from it")),
            };
            let values = &trials[job.trial].values;
            let mut losses = vec![];
            for _ in 0..job.steps {
                x += rate(values);
                step += 1;
                losses.push((step, 1.0 / (1.0 + x)));
            }
            if job.keep {
                self.states.insert(job.state(), (x, step));
                self.most_kept = self.most_kept.max(self.states.len());
            }
            self.started.push(job.clone());
            self.log.push((true, job.trial, job.rung));
            self.queue.push_back((job.clone(), Outcome { losses, ..Outcome::default() }));
            Ok(None)
        }
        fn wait(&mut self) -> Result<(usize, Outcome)> {
            let (job, outcome) = self.queue.pop_front().expect("busy");
            self.log.push((false, job.trial, job.rung));
            Ok((job.trial, outcome))
        }
        fn release(&mut self, state: State) -> Result<()> {
            assert!(self.states.remove(&state).is_some(), "{state:?} released twice");
            Ok(())
        }
        fn adopt(&mut self, _: State) -> Result<Option<Trainer>> {
            unreachable!()
        }
    }

    fn run(schedule: Schedule, trials: usize, rounds: usize, slots: usize) -> (Vec<Trial>, Toy) {
        let plan =
            Plan { params: vec![("lr".into(), "log(1e-5,1e-1)".into())], method: Method::Random, schedule, steps: 4, trials, rounds, seed: 7, adopt: false };
        let params = plan.parse_params().unwrap();
        let mut toy = Toy { slots, states: HashMap::new(), queue: VecDeque::new(), started: vec![], log: vec![], most_kept: 0 };
        let mut runner = Runner::new(&plan, &params, vec![], false).unwrap();
        runner.run(&mut toy, &mut |_: &[Trial]| {}).unwrap();
        (runner.trials, toy)
    }

    fn count(trials: &[Trial], status: &str) -> usize {
        trials.iter().filter(|t| t.status == status).count()
    }

    #[test]
    fn halving_keeps_the_better_half_of_each_full_rung() {
        let (trials, toy) = run(Schedule::Halving, 8, 0, 3);
        assert_eq!(count(&trials, "stopped"), 7);
        let winner = trials.iter().find(|t| t.status == "done").unwrap();
        assert_eq!(winner.rungs.len(), 4, "8 → 4 → 2 → 1");
        assert_eq!(winner.losses.len(), 4 + 8 + 16 + 32);
        let best_start = trials.iter().min_by(|a, b| a.rungs[0].total_cmp(&b.rungs[0])).unwrap();
        assert_eq!(winner.id, best_start.id, "a deterministic objective: the best first rung stays best");
        // Synchronous: no rung-1 job started before every first rung had.
        let first_promotion = toy.started.iter().position(|j| j.rung == 1).unwrap();
        assert!(toy.started[..first_promotion].iter().filter(|j| j.rung == 0).count() == 8);
        assert!(toy.states.is_empty(), "every state released at the end");
    }

    #[test]
    fn asha_promotes_without_waiting_for_a_rung_to_fill() {
        let (trials, toy) = run(Schedule::Asha, 16, 0, 2);
        let first_promotion = toy.started.iter().position(|j| j.rung == 1).unwrap();
        assert!(first_promotion < 16, "a trial went on before all 16 had started (at job {first_promotion})");
        // Each promotion from rung k was, when made, in the top half of the trials that had finished rung k.
        for (n, &(_, trial, rung)) in toy.log.iter().enumerate().filter(|(_, (started, _, rung))| *started && *rung > 0) {
            let k = rung - 1;
            let finished: Vec<f64> = toy.log[..n].iter().filter(|(started, _, r)| !started && *r == k).map(|(_, t, _)| trials[*t].rungs[k]).collect();
            let better = finished.iter().filter(|&&s| s < trials[trial].rungs[k]).count();
            assert!(better < finished.len() / 2, "trial #{} went on to rung {rung} from outside the top half of {finished:?}", trial + 1);
        }
        assert!(trials.iter().any(|t| t.rungs.len() == 4), "16 trials reach the top rung, 4");
        assert_eq!(count(&trials, "running"), 0);
        let reached = trials.iter().map(|t| t.rungs.len()).max().unwrap();
        assert!(trials.iter().all(|t| t.status == "stopped" || t.rungs.len() == reached), "the rest are stopped where they were left");
        assert!(toy.states.is_empty());
    }

    #[test]
    fn pbt_replaces_the_worst_quarter_with_perturbed_copies_of_the_best() {
        let (trials, toy) = run(Schedule::Pbt, 8, 5, 3);
        assert!(trials.iter().all(|t| t.rungs.len() == 5 && t.losses.len() == 20 && t.status == "done"), "5 rounds of 4 steps for all");
        let exploits: Vec<(&Trial, &Exploit)> = trials.iter().flat_map(|t| t.lineage.iter().map(move |e| (t, e))).collect();
        assert_eq!(exploits.len(), 4 * 2, "a quarter of 8 in each of the 4 rounds after the first");
        for (t, e) in &exploits {
            let r = e.round - 1;
            let mut ranking: Vec<(f64, usize)> = trials.iter().map(|x| (x.rungs[r], x.id)).collect();
            ranking.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            assert!(ranking[..2].iter().any(|(_, id)| *id == e.from), "member #{} copied #{}, not in the top quarter of round {r}", t.id, e.from);
            assert!(ranking[6..].iter().any(|(_, id)| *id == t.id), "member #{} was not in the bottom quarter of round {r}", t.id);
            let job = toy.started.iter().find(|j| j.id == t.id && j.rung == e.round).unwrap();
            assert_eq!(job.from, Some(State { trial: e.from, rung: r }), "the exploit starts from the donor's state");
            assert_eq!(job.set, e.values);
            // The copy goes on from the donor's distance: its first loss continues the donor's curve.
            assert_eq!(trials.iter().find(|x| x.id == e.from).unwrap().losses[4 * e.round - 1].0, e.step);
            assert_eq!(t.losses[4 * e.round].0, e.step + 1);
        }
        let first: f64 = trials.iter().map(|t| rate(t.proposed())).sum::<f64>() / 8.0;
        let last: f64 = trials.iter().map(|t| rate(&t.values)).sum::<f64>() / 8.0;
        assert!(last > first, "the population's learning rates got better: {first} → {last}");
        assert!(toy.most_kept <= 16, "at most two rounds of states at once, kept {}", toy.most_kept);
    }

    #[test]
    fn without_a_schedule_every_trial_trains_once_and_nothing_is_kept() {
        let (trials, toy) = run(Schedule::None, 5, 0, 2);
        assert!(trials.iter().all(|t| t.status == "done" && t.rungs.len() == 1));
        assert_eq!(toy.most_kept, 0);
    }
}
