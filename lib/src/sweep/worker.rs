//! Trials in worker processes (`%sweep --jobs N`): the trainer is saved once as an
//! exact-resume checkpoint, and each trial (each rung of it, under halving) is one
//! process of the front end's own binary that loads it, sets the trial's values,
//! trains, scores, saves its own state when a later rung will resume it, and writes its
//! outcome. Training is a function of the saved state, the values and the thread
//! count, which the task carries, so a trial's losses are bit for bit those it has in
//! the session's own process.
//!
//! A front end makes its binary a worker by calling [`hook`] first thing in `main`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Trial, Values};
use crate::checkpoint::atomic_write;
use crate::error::{Error, Result};
use crate::train::{Halt, Stop, Trainer};

/// The argument that makes a front end's binary run one task.
const WORKER_ARG: &str = "__tchlab-sweep-worker";
/// How often the runner looks at its workers (and for an interrupt).
const POLL: Duration = Duration::from_millis(20);
/// The most worker processes one sweep runs at once.
pub const MAX_JOBS: usize = 64;

/// One trial's rung for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The trial's id.
    pub id: usize,
    /// Its hyperparameters, set when `from` is the sweep's start.
    pub values: Values,
    /// Whether `from` is the sweep's start (else the trial's own state, values set).
    pub first_rung: bool,
    /// Steps to train.
    pub steps: u64,
    /// The checkpoint to start from.
    pub from: PathBuf,
    /// Where to save the state after training (for the next rung).
    pub keep: Option<PathBuf>,
    /// The device, as `%device` names it.
    pub device: String,
    /// libtorch's CPU threads, as the session has them.
    pub threads: i32,
}

/// What a worker found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    /// `(step, loss)` of each step.
    pub losses: Vec<(i64, f64)>,
    /// Whether the loss or a gradient stopped being finite.
    pub diverged: bool,
    /// The validation loss after training, when there is validation data.
    pub validation: Option<f64>,
    /// Why the worker failed (it was killed, say), when it did.
    #[serde(skip)]
    pub failed: Option<String>,
}

/// Where a task's outcome goes.
fn outcome_path(task_file: &Path) -> PathBuf {
    task_file.with_extension("outcome.json")
}

/// Runs one task when the process was started as a worker (and then exits); returns
/// at once otherwise.
pub fn hook() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(WORKER_ARG) {
        return;
    }
    let code = match args.get(2).map(|t| run_task(Path::new(t))) {
        Some(Ok(())) => 0,
        Some(Err(e)) => {
            eprintln!("tchlab sweep worker: {e}");
            1
        }
        None => 2,
    };
    std::process::exit(code);
}

fn run_task(task_file: &Path) -> Result<()> {
    let text = crate::limits::read_text(task_file, crate::limits::MAX_JSON_BYTES)?;
    let task: Task = serde_json::from_str(&text).map_err(|e| Error::format(task_file, format!("not a sweep task: {e}")))?;
    tch::set_num_threads(task.threads);
    let device = crate::session::format::parse_device(&task.device).ok_or_else(|| Error::Invalid(format!("unknown device {}", task.device)))?;
    crate::cuda::prepare(device);
    let mut trainer = Trainer::load(&task.from, device)?;
    if task.first_rung {
        for (k, v) in &task.values {
            trainer.set(k, v)?;
        }
    }
    let mut losses = vec![];
    let report = trainer.train(Stop::Steps(task.steps), &mut |r, _| losses.push((r.step, r.loss)))?;
    let diverged = match report.halted {
        Some(Halt::NonFinite(_)) => true,
        Some(Halt::Interrupted) => return Err(Error::Interrupted { step: trainer.step_count() }),
        None => false,
    };
    let validation = if diverged { None } else { super::validation_loss(&trainer) };
    if let (Some(keep), false) = (&task.keep, diverged) {
        trainer.save(keep)?;
    }
    let json = serde_json::to_vec(&Outcome { losses, diverged, validation, failed: None }).expect("JSON");
    atomic_write(&outcome_path(task_file), |w| std::io::Write::write_all(w, &json))
}

/// Worker processes of this binary, running tasks in a directory of their own.
pub struct Pool {
    dir: PathBuf,
    jobs: usize,
    device: String,
    running: Vec<(Child, usize, PathBuf)>,
}

impl Pool {
    /// A pool of `jobs` workers over the trainer's state, saved into a new private
    /// directory.
    pub fn start(trainer: &Trainer, jobs: usize) -> Result<Pool> {
        if !(1..=MAX_JOBS).contains(&jobs) {
            return Err(Error::Invalid(format!("--jobs must be between 1 and {MAX_JOBS}, got {jobs}")));
        }
        static POOLS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("tchlab-sweep-{}-{}", std::process::id(), POOLS.fetch_add(1, Ordering::Relaxed)));
        // A new directory, made here and only by this pool: what it holds is its own to remove.
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let pool = Pool { dir, jobs, device: crate::session::format::device_name(trainer.model().device()), running: vec![] };
        trainer.save(pool.start_state())?;
        Ok(pool)
    }

    fn start_state(&self) -> PathBuf {
        self.dir.join("start")
    }

    fn state_of(&self, id: usize) -> PathBuf {
        self.dir.join(format!("trial-{id}"))
    }

    /// Whether another task can start now.
    pub fn has_room(&self) -> bool {
        self.running.len() < self.jobs
    }

    /// Whether any task runs.
    pub fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    /// Starts trial `trials[i]`'s next rung of `steps` steps (its first when it has no
    /// losses yet), keeping its state when `resumable`.
    pub fn spawn(&mut self, trial: &Trial, i: usize, steps: u64, resumable: bool) -> Result<()> {
        let first_rung = trial.losses.is_empty();
        let task = Task {
            id: trial.id,
            values: trial.values.clone(),
            first_rung,
            steps,
            from: if first_rung { self.start_state() } else { self.state_of(trial.id) },
            keep: resumable.then(|| self.state_of(trial.id)),
            device: self.device.clone(),
            threads: tch::get_num_threads(),
        };
        let file = self.dir.join(format!("task-{}-{}.json", trial.id, trial.losses.len()));
        let json = serde_json::to_vec(&task).expect("JSON");
        atomic_write(&file, |w| std::io::Write::write_all(w, &json))?;
        let exe = std::env::current_exe().map_err(|e| Error::Invalid(format!("the sweep's workers run this program, which cannot be found: {e}")))?;
        // To a file, not a pipe: a pipe nobody reads until the end could fill and stall the worker.
        let said = std::fs::File::create(file.with_extension("stderr")).map_err(|e| Error::io(&file, e))?;
        let child = Command::new(exe)
            .arg(WORKER_ARG)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(said)
            .spawn()
            .map_err(|e| Error::Invalid(format!("starting a sweep worker: {e}")))?;
        self.running.push((child, i, file));
        Ok(())
    }

    /// Waits for the next task to end: the trial's index and what it found (or why its
    /// worker failed). Checks for an interrupt while it waits (the caller then stops the
    /// pool).
    pub fn next(&mut self) -> Result<(usize, Outcome)> {
        loop {
            crate::interrupt::check("waiting for the sweep's workers")?;
            for k in 0..self.running.len() {
                let status = self.running[k].0.try_wait().map_err(|e| Error::Invalid(format!("a sweep worker: {e}")))?;
                let Some(status) = status else { continue };
                let (_, i, file) = self.running.swap_remove(k);
                let path = outcome_path(&file);
                let read = || -> Result<Outcome> {
                    let text = crate::limits::read_text(&path, crate::limits::MAX_JSON_BYTES)?;
                    serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))
                };
                return Ok((
                    i,
                    match (status.success(), read()) {
                        (true, Ok(outcome)) => outcome,
                        (_, read) => {
                            let said = crate::limits::read_text(&file.with_extension("stderr"), 64 << 10).unwrap_or_default();
                            let why = if status.success() { read.err().map_or(String::new(), |e| e.to_string()) } else { said.trim().to_string() };
                            Outcome {
                                losses: vec![],
                                diverged: false,
                                validation: None,
                                failed: Some(format!("{status}{}", if why.is_empty() { String::new() } else { format!(": {why}") })),
                            }
                        }
                    },
                ));
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Pool {
    /// Stops what still runs and removes the pool's files: they are its own.
    fn drop(&mut self) {
        for (child, _, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
