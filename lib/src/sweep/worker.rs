//! Jobs in worker processes: the trainer is saved once as an exact-resume checkpoint
//! (`start/` in a [`Workspace`]), and each job is one process of the front end's own
//! binary, run with a task file, that loads its starting state, sets the job's values,
//! trains, scores, saves its own state when a later rung will start from it, and
//! writes its outcome next to the task. Training is a function of the saved state, the
//! values and the thread count, which the task carries, so a trial's losses are bit for
//! bit those it has in the session's own process. [`Pool`] runs the processes here
//! (`%sweep --jobs N`); [`super::slurm`] runs the same command as Slurm array tasks.
//!
//! A front end makes its binary a worker by calling [`hook`] first thing in `main`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::executor::{train_rung, Executor, Job, Outcome};
use super::schedule::State;
use super::{Progress, Trial, Values};
use crate::error::{Error, Result};
use crate::train::Trainer;

/// The argument that makes a front end's binary run one task.
pub const WORKER_ARG: &str = "__tchlab-sweep-worker";
/// How often the runner looks at its workers (and for an interrupt).
pub const POLL: Duration = Duration::from_millis(20);
/// The most jobs one sweep runs at once.
pub const MAX_JOBS: usize = 64;

/// One job for a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    /// The trial's id.
    pub id: usize,
    /// The rung, from 0.
    pub rung: usize,
    /// Hyperparameters to set once `from` is loaded.
    pub set: Values,
    /// Steps to train.
    pub steps: u64,
    /// The checkpoint to start from.
    pub from: PathBuf,
    /// Where to save the state after training (for a later rung).
    pub keep: Option<PathBuf>,
    /// The device, as `%device` names it.
    pub device: String,
    /// libtorch's CPU threads, as the session has them.
    pub threads: i32,
}

/// Where a task's outcome goes.
fn outcome_path(task_file: &Path) -> PathBuf {
    task_file.with_extension("outcome.json")
}

/// Where a task's worker writes what it says.
pub fn stderr_path(task_file: &Path) -> PathBuf {
    task_file.with_extension("stderr")
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
    let device = crate::device::parse_device(&task.device).ok_or_else(|| Error::Invalid(format!("unknown device {}", task.device)))?;
    crate::cuda::prepare(device);
    let mut trainer = Trainer::load(&task.from, device)?;
    for (k, v) in &task.set {
        trainer.set(k, v)?;
    }
    let outcome = train_rung(&mut trainer, task.steps, &mut |_| {})?;
    if let (Some(keep), false) = (&task.keep, outcome.diverged) {
        trainer.save(keep)?;
    }
    let json = serde_json::to_vec(&outcome).expect("JSON");
    crate::atomic::write(&outcome_path(task_file), |w| std::io::Write::write_all(w, &json))
}

/// A sweep's files: the starting state, kept states, and task files with their
/// outcomes, in one directory.
pub struct Workspace {
    dir: PathBuf,
    device: String,
}

impl Workspace {
    /// The workspace in `dir`, whose trials train on `device` (as `%device` names it).
    pub fn new(dir: PathBuf, device: String) -> Self {
        Workspace { dir, device }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The device its trials train on.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The trainer as the sweep started.
    pub fn start(&self) -> PathBuf {
        self.dir.join("start")
    }

    /// Where a kept state is.
    pub fn state(&self, state: State) -> PathBuf {
        self.dir.join("states").join(format!("trial-{}-{}", state.trial, state.rung))
    }

    /// Saves the trainer as the sweep's start and makes the directories tasks use.
    pub fn save_start(&self, trainer: &Trainer) -> Result<()> {
        for sub in ["states", "tasks"] {
            let path = self.dir.join(sub);
            std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        trainer.save(self.start())
    }

    /// Writes `job`'s task file (training with the session's thread count); returns its path.
    pub fn write_task(&self, job: &Job) -> Result<PathBuf> {
        let task = Task {
            id: job.id,
            rung: job.rung,
            set: job.set.clone(),
            steps: job.steps,
            from: job.from.map_or_else(|| self.start(), |s| self.state(s)),
            keep: job.keep.then(|| self.state(job.state())),
            device: self.device.clone(),
            threads: tch::get_num_threads(),
        };
        let file = self.dir.join("tasks").join(format!("{}-{}.json", job.id, job.rung));
        let json = serde_json::to_vec(&task).expect("JSON");
        crate::atomic::write(&file, |w| std::io::Write::write_all(w, &json))?;
        // A task run before leaves nothing to be mistaken for this one's.
        for stale in [outcome_path(&file), stderr_path(&file)] {
            let _ = std::fs::remove_file(stale);
        }
        Ok(file)
    }

    /// The outcome a task's worker wrote, if it wrote one.
    pub fn outcome(&self, task_file: &Path) -> Option<Result<Outcome>> {
        let path = outcome_path(task_file);
        if path.symlink_metadata().is_err() {
            return None;
        }
        Some(
            crate::limits::read_text(&path, crate::limits::MAX_JSON_BYTES)
                .and_then(|text| serde_json::from_str(&text).map_err(|e| Error::format(&path, e.to_string()))),
        )
    }

    /// The outcome of a task whose worker has ended well: what it wrote, or a failure
    /// saying `missing` when it wrote nothing readable.
    pub fn ended(&self, task_file: &Path, missing: &str) -> Outcome {
        match self.outcome(task_file) {
            Some(Ok(outcome)) => outcome,
            Some(Err(e)) => Outcome::failed(format!("{missing}: {e}")),
            None => self.failure(task_file, missing),
        }
    }

    /// A task that failed: `ending` (how its process or job ended) and the last line its
    /// worker said.
    pub fn failure(&self, task_file: &Path, ending: &str) -> Outcome {
        let said = crate::limits::read_text(&stderr_path(task_file), 64 << 10).unwrap_or_default();
        Outcome::failed(match said.trim().lines().last() {
            Some(last) => format!("{ending}: {last}"),
            None => ending.to_string(),
        })
    }

    /// Removes a kept state.
    pub fn release(&self, state: State) -> Result<()> {
        let path = self.state(state);
        match std::fs::remove_dir_all(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// Loads a kept state.
    pub fn load(&self, state: State) -> Result<Trainer> {
        let device = crate::device::parse_device(&self.device).ok_or_else(|| Error::Invalid(format!("unknown device {}", self.device)))?;
        Trainer::load(self.state(state), device)
    }
}

/// The path of this program, which workers run.
pub fn this_program() -> Result<PathBuf> {
    std::env::current_exe().map_err(|e| Error::Invalid(format!("the sweep's workers run this program, which cannot be found: {e}")))
}

/// Worker processes of this binary, in a private workspace removed when the pool ends.
pub struct Pool {
    workspace: Workspace,
    jobs: usize,
    running: Vec<(Child, usize, PathBuf)>,
}

impl Pool {
    /// A pool of `jobs` workers over the trainer's state, saved into a new private
    /// directory.
    pub fn start(trainer: &Trainer, jobs: usize) -> Result<Pool> {
        check_jobs(jobs)?;
        static POOLS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!("tchlab-sweep-{}-{}", std::process::id(), POOLS.fetch_add(1, Ordering::Relaxed)));
        // A new directory, made here and only by this pool: what it holds is its own to remove.
        std::fs::create_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let pool = Pool { workspace: Workspace::new(dir, crate::device::device_name(trainer.model().device())), jobs, running: vec![] };
        pool.workspace.save_start(trainer)?;
        Ok(pool)
    }
}

/// Refuses a `--jobs` outside `1..=MAX_JOBS`.
pub fn check_jobs(jobs: usize) -> Result<()> {
    if (1..=MAX_JOBS).contains(&jobs) {
        Ok(())
    } else {
        Err(Error::Invalid(format!("--jobs must be between 1 and {MAX_JOBS}, got {jobs}")))
    }
}

impl Executor for Pool {
    fn has_room(&self) -> bool {
        self.running.len() < self.jobs
    }

    fn busy(&self) -> bool {
        !self.running.is_empty()
    }

    fn start(&mut self, job: &Job, _: &mut [Trial], _: &mut dyn Progress) -> Result<Option<Outcome>> {
        let file = self.workspace.write_task(job)?;
        // To a file, not a pipe: a pipe nobody reads until the end could fill and stall the worker.
        let said = std::fs::File::create(stderr_path(&file)).map_err(|e| Error::io(&file, e))?;
        let child = Command::new(this_program()?)
            .arg(WORKER_ARG)
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(said)
            .spawn()
            .map_err(|e| Error::Invalid(format!("starting a sweep worker: {e}")))?;
        self.running.push((child, job.trial, file));
        Ok(None)
    }

    fn wait(&mut self) -> Result<(usize, Outcome)> {
        loop {
            crate::interrupt::check("waiting for the sweep's workers")?;
            for k in 0..self.running.len() {
                let status = self.running[k].0.try_wait().map_err(|e| Error::Invalid(format!("a sweep worker: {e}")))?;
                let Some(status) = status else { continue };
                let (_, i, file) = self.running.swap_remove(k);
                let outcome = if status.success() {
                    self.workspace.ended(&file, "its worker process wrote no outcome")
                } else {
                    self.workspace.failure(&file, &format!("its worker process failed ({status})"))
                };
                return Ok((i, outcome));
            }
            std::thread::sleep(POLL);
        }
    }

    fn release(&mut self, state: State) -> Result<()> {
        self.workspace.release(state)
    }

    fn adopt(&mut self, state: State) -> Result<Option<Trainer>> {
        self.workspace.load(state).map(Some)
    }
}

impl Drop for Pool {
    /// Stops what still runs and removes the pool's files: they are its own.
    fn drop(&mut self) {
        for (child, _, _) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(self.workspace.dir());
    }
}
