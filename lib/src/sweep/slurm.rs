//! Trials as Slurm job arrays (`%sweep --on slurm`): the jobs that can start together
//! are written as [`worker`](super::worker) task files and submitted as one array
//! with `sbatch`, each array task running the front end's own binary on its task file;
//! `squeue` and `scontrol` follow them; outcomes are read from the files the tasks
//! write. Everything lives in the study's directory, which the cluster's nodes must
//! see (a shared filesystem), so a kernel that dies mid-sweep loses nothing: the jobs
//! go on, and `%sweep --attach DIR` follows them again and carries the sweep on.
//!
//! ```text
//! DIR/study.jsonl      every finished rung (super::study)
//! DIR/sweep.json       the plan, the Slurm options, the program and device
//! DIR/arrays.jsonl     one line per submitted array: its job id and its tasks
//! DIR/array-N.sh       the script of array N, as submitted
//! DIR/start/           the trainer as the sweep started
//! DIR/states/          states kept for later rungs and the best trial's last
//! DIR/tasks/           task files, outcomes, what each worker said, Slurm's output
//! ```
//!
//! An interrupt cancels the sweep's jobs (`scancel`); the finished ones stay in the study.

use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::executor::{Executor, Job, Outcome};
use super::schedule::{Exploit, State};
use super::study::{self, StudyWriter};
use super::worker::{self, Workspace, WORKER_ARG};
use super::{Param, Plan, Progress, Runner, SweepResult, Trial, Values};
use crate::error::{Error, Result};
use crate::train::Trainer;

/// How often `squeue` is asked.
const SQUEUE_EVERY: Duration = Duration::from_secs(1);
/// How long an array task may be gone from `squeue` without an outcome before it
/// counts as failed (a shared filesystem can show a file late).
const GRACE: Duration = Duration::from_secs(3);
/// How long Slurm's commands may fail in a row before the sweep gives up following.
const UNREACHABLE: Duration = Duration::from_secs(120);

/// What `--on slurm` asks of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, as Slurm writes it (`30`, `1:00:00`, `2-0`).
    pub time: Option<String>,
    /// `--gpus` per array task.
    pub gpus: Option<u32>,
    /// `--cpus-per-task`.
    pub cpus: Option<u32>,
    /// At most this many of the sweep's jobs at once (default: every job that can start).
    pub jobs: Option<usize>,
}

impl Options {
    /// Checks every value before it reaches a job script.
    pub fn check(&self) -> Result<()> {
        if let Some(p) = &self.partition {
            if p.is_empty() || p.len() > 64 || !p.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) {
                return Err(Error::Invalid(format!("--partition {p:?}: a partition name is letters, digits, `_`, `-` and `.`")));
            }
        }
        if let Some(t) = &self.time {
            if t.is_empty() || t.len() > 16 || !t.chars().all(|c| c.is_ascii_digit() || c == ':' || c == '-') || !t.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(Error::Invalid(format!("--time {t:?}: give minutes or Slurm's D-HH:MM:SS (30, 1:00:00, 2-0)")));
            }
        }
        if self.gpus.is_some_and(|g| g > 64) {
            return Err(Error::Invalid("--gpus must be between 0 and 64".into()));
        }
        if self.cpus.is_some_and(|c| !(1..=1024).contains(&c)) {
            return Err(Error::Invalid("--cpus must be between 1 and 1024".into()));
        }
        if let Some(jobs) = self.jobs {
            worker::check_jobs(jobs)?;
        }
        Ok(())
    }

    /// The `#SBATCH` lines these options make.
    fn directives(&self) -> Vec<String> {
        let mut lines = vec![];
        if let Some(p) = &self.partition {
            lines.push(format!("--partition={p}"));
        }
        if let Some(t) = &self.time {
            lines.push(format!("--time={t}"));
        }
        if let Some(g) = self.gpus {
            lines.push(format!("--gpus={g}"));
        }
        if let Some(c) = self.cpus {
            lines.push(format!("--cpus-per-task={c}"));
        }
        lines
    }
}

/// `DIR/sweep.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SweepFile {
    tchlab_slurm_sweep: u32,
    plan: Plan,
    options: Options,
    program: PathBuf,
    device: String,
}

/// One array task as `arrays.jsonl` records it: the job, and its trial's values and
/// lineage when it started (a PBT exploit changes them).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Element {
    trial: usize,
    rung: usize,
    steps: u64,
    from: Option<State>,
    set: Values,
    keep: bool,
    values: Values,
    lineage: Vec<Exploit>,
}

/// One line of `arrays.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Array {
    job: String,
    tasks: Vec<Element>,
}

const ARRAYS: &str = "arrays.jsonl";
const SWEEP: &str = "sweep.json";
const LOCK: &str = ".follower.lock";

/// A submitted array task being followed.
struct Following {
    array: String,
    index: usize,
    trial: usize,
    file: PathBuf,
    missing_since: Option<Instant>,
}

impl Following {
    fn name(&self) -> String {
        format!("{}_{}", self.array, self.index)
    }
}

/// The Slurm executor.
pub struct Slurm {
    workspace: Workspace,
    options: Options,
    program: PathBuf,
    /// Written, not yet submitted: the job, its task file and its trial's values and lineage.
    queued: Vec<(Job, PathBuf, Values, Vec<Exploit>)>,
    following: Vec<Following>,
    arrays: usize,
    last_listing: Option<Instant>,
    unreachable_since: Option<Instant>,
    /// This process started the sweep (rather than attached to it): if nothing was
    /// submitted, what it wrote goes again, and the directory if it made it.
    fresh: bool,
    made_dir: bool,
    /// Held while this process follows the sweep.
    _lock: std::fs::File,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Takes the directory's follower lock: one session at a time follows a sweep.
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Invalid(format!("{}: another session is following this sweep; wait for it or stop it first", dir.display())));
    }
    Ok(file)
}

/// Refuses a directory whose path a job script cannot carry.
fn check_dir(dir: &Path) -> Result<()> {
    let text = dir.to_str().ok_or_else(|| Error::Invalid(format!("--study {}: a Slurm sweep's directory must be UTF-8", dir.display())))?;
    if text.chars().any(char::is_control) {
        return Err(Error::Invalid(format!("--study {text:?}: a Slurm sweep's directory must not hold control characters")));
    }
    Ok(())
}

/// `text` quoted for `sh`.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Runs a Slurm command; its standard output, or an error that says what failed.
fn slurm(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        Error::Invalid(format!("{program} could not be run ({e}): --on slurm needs a machine where Slurm's commands work (a login node of the cluster)"))
    })?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Invalid(format!("{program} {}: {} ({})", args.join(" "), said.trim(), out.status)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Slurm {
    /// Saves the trainer into `dir` (a new sweep's study directory) and prepares to
    /// submit jobs there.
    pub fn submit(trainer: &Trainer, plan: &Plan, options: Options, dir: PathBuf) -> Result<Slurm> {
        options.check()?;
        check_dir(&dir)?;
        let made_dir = !dir.exists();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock = lock(&dir)?;
        let sweep_file = dir.join(SWEEP);
        if sweep_file.symlink_metadata().is_ok() {
            return Err(Error::Invalid(format!("{} holds a Slurm sweep already: `%sweep --attach {}` follows it", dir.display(), dir.display())));
        }
        let workspace = Workspace::new(dir, crate::device::device_name(trainer.model().device()));
        let program = worker::this_program()?;
        let file =
            SweepFile { tchlab_slurm_sweep: 1, plan: plan.clone(), options: options.clone(), program: program.clone(), device: workspace.device().into() };
        let json = serde_json::to_vec_pretty(&file).expect("JSON");
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).open(&sweep_file).map_err(io(&sweep_file))?;
        out.write_all(&json).and_then(|()| out.sync_all()).map_err(io(&sweep_file))?;
        let slurm = Slurm {
            workspace,
            options,
            program,
            queued: vec![],
            following: vec![],
            arrays: 0,
            last_listing: None,
            unreachable_since: None,
            fresh: true,
            made_dir,
            _lock: lock,
        };
        slurm.workspace.save_start(trainer)?;
        Ok(slurm)
    }

    /// Submits the queued jobs as one array.
    fn flush(&mut self) -> Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let dir = self.workspace.dir().to_str().expect("checked UTF-8").to_string();
        let script_path = self.workspace.dir().join(format!("array-{}.sh", self.arrays));
        let files: Vec<String> = self.queued.iter().map(|(_, f, _, _)| quote(f.to_str().expect("under a UTF-8 directory"))).collect();
        let mut script =
            format!("#!/bin/sh\n#SBATCH --job-name=tchlab-sweep\n#SBATCH --array=0-{}\n#SBATCH --output={dir}/tasks/slurm-%A_%a.out\n", self.queued.len() - 1);
        for line in self.options.directives() {
            script.push_str(&format!("#SBATCH {line}\n"));
        }
        script.push_str(&format!(
            "# A tchlab sweep ({dir}): array task i trains the i-th task file below, one trial's rung.\nset -- {}\nshift \"$SLURM_ARRAY_TASK_ID\"\nexec {} {WORKER_ARG} \"$1\" 2> \"${{1%.json}}.stderr\"\n",
            files.join(" "),
            quote(self.program.to_str().ok_or_else(|| Error::Invalid("this program's path is not UTF-8".into()))?)
        ));
        std::fs::write(&script_path, script).map_err(io(&script_path))?;
        let said = slurm("sbatch", &["--parsable", script_path.to_str().expect("UTF-8")])?;
        let job = said.trim().split(';').next().unwrap_or("").to_string();
        if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::Invalid(format!("sbatch answered {said:?}, not a job id")));
        }
        self.arrays += 1;
        let record = Array {
            job: job.clone(),
            tasks: self
                .queued
                .iter()
                .map(|(j, _, values, lineage)| Element {
                    trial: j.id,
                    rung: j.rung,
                    steps: j.steps,
                    from: j.from,
                    set: j.set.clone(),
                    keep: j.keep,
                    values: values.clone(),
                    lineage: lineage.clone(),
                })
                .collect(),
        };
        let arrays = self.workspace.dir().join(ARRAYS);
        let mut line = serde_json::to_string(&record).expect("JSON");
        line.push('\n');
        let mut out = std::fs::OpenOptions::new().append(true).create(true).open(&arrays).map_err(io(&arrays))?;
        out.write_all(line.as_bytes()).and_then(|()| out.sync_data()).map_err(io(&arrays))?;
        for (index, (j, file, _, _)) in self.queued.drain(..).enumerate() {
            self.following.push(Following { array: job.clone(), index, trial: j.trial, file, missing_since: None });
        }
        self.last_listing = None;
        Ok(())
    }

    /// The array tasks `squeue` lists as pending or running, or `None` when it could
    /// not be asked (for less than [`UNREACHABLE`]).
    fn listed(&mut self) -> Result<Option<Vec<String>>> {
        match slurm("squeue", &["--noheader", "--array", "--format=%i", "--jobs", &self.arrays_followed().join(",")]) {
            Ok(out) => {
                self.unreachable_since = None;
                Ok(Some(out.lines().map(|l| l.trim().to_string()).collect()))
            }
            // squeue refuses ids it no longer knows: every task of them has ended.
            Err(e) if e.to_string().contains("Invalid job id") => Ok(Some(vec![])),
            Err(e) => {
                let since = *self.unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE {
                    let dir = self.workspace.dir().display();
                    return Err(Error::Invalid(format!("Slurm cannot be reached ({e}); the jobs may still run: `%sweep --attach {dir}` follows them later")));
                }
                Ok(None)
            }
        }
    }

    /// The job ids of the arrays with tasks still followed.
    fn arrays_followed(&self) -> Vec<String> {
        let mut arrays: Vec<String> = self.following.iter().map(|f| f.array.clone()).collect();
        arrays.sort_unstable();
        arrays.dedup();
        arrays
    }

    /// How an array task ended, as `scontrol` tells it.
    fn ending(name: &str) -> String {
        let Ok(out) = slurm("scontrol", &["show", "job", name]) else { return "its Slurm job ended without an outcome".into() };
        let field = |key: &str| out.split_whitespace().find_map(|w| w.strip_prefix(key)).unwrap_or("?").to_string();
        format!("its Slurm job {name} ended {} (reason {}, exit code {})", field("JobState="), field("Reason="), field("ExitCode="))
    }
}

impl Executor for Slurm {
    fn has_room(&self) -> bool {
        self.queued.len() + self.following.len() < self.options.jobs.unwrap_or(super::MAX_TRIALS)
    }

    fn busy(&self) -> bool {
        !self.queued.is_empty() || !self.following.is_empty()
    }

    fn start(&mut self, job: &Job, trials: &mut [Trial], _: &mut dyn Progress) -> Result<Option<Outcome>> {
        let file = self.workspace.write_task(job)?;
        let trial = &trials[job.trial];
        self.queued.push((job.clone(), file, trial.values.clone(), trial.lineage.clone()));
        Ok(None)
    }

    fn wait(&mut self) -> Result<(usize, Outcome)> {
        self.flush()?;
        loop {
            crate::interrupt::check("waiting for the sweep's Slurm jobs")?;
            if let Some(k) = self.following.iter().position(|f| self.workspace.outcome(&f.file).is_some()) {
                let f = self.following.swap_remove(k);
                return Ok((f.trial, self.workspace.ended(&f.file, "its Slurm job wrote no outcome")));
            }
            if self.last_listing.is_none_or(|t| t.elapsed() >= SQUEUE_EVERY) {
                self.last_listing = Some(Instant::now());
                if let Some(listed) = self.listed()? {
                    for f in &mut self.following {
                        f.missing_since = if listed.contains(&f.name()) { None } else { Some(f.missing_since.unwrap_or_else(Instant::now)) };
                    }
                }
                if let Some(k) = self.following.iter().position(|f| f.missing_since.is_some_and(|t| t.elapsed() >= GRACE)) {
                    let f = self.following.swap_remove(k);
                    let ending = Slurm::ending(&f.name());
                    return Ok((f.trial, self.workspace.failure(&f.file, &ending)));
                }
            }
            std::thread::sleep(worker::POLL * 5);
        }
    }

    fn release(&mut self, state: State) -> Result<()> {
        self.workspace.release(state)
    }

    fn adopt(&mut self, state: State) -> Result<Option<Trainer>> {
        self.workspace.load(state).map(Some)
    }
}

impl Drop for Slurm {
    /// Cancels what still runs: the sweep ended early (an interrupt, an error). A sweep
    /// that never submitted a job (sbatch refused it) leaves nothing behind.
    fn drop(&mut self) {
        let arrays = self.arrays_followed();
        if !arrays.is_empty() {
            let _ = slurm("scancel", &arrays.iter().map(String::as_str).collect::<Vec<_>>());
        }
        if self.fresh && self.arrays == 0 {
            let dir = self.workspace.dir();
            for made in ["start", "states", "tasks"] {
                let _ = std::fs::remove_dir_all(dir.join(made));
            }
            for made in [SWEEP, LOCK, "array-0.sh"] {
                let _ = std::fs::remove_file(dir.join(made));
            }
            if self.made_dir {
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

/// A Slurm sweep found again in its directory (`%sweep --attach DIR`): its plan, its
/// parameters, and a runner and executor ready to follow it.
pub struct Attached {
    /// What it searches.
    pub plan: Plan,
    /// The plan's parameters.
    pub params: Vec<Param>,
    executor: Slurm,
    trials: Vec<Trial>,
    running: Vec<super::executor::Job>,
    kept: Vec<State>,
}

/// Reads a Slurm sweep's directory: the plan, every trial from the study and the
/// arrays, which array tasks have not reported yet, and the states on disk.
pub fn attach(dir: &Path) -> Result<Attached> {
    let sweep_path = dir.join(SWEEP);
    let text = crate::limits::read_text(&sweep_path, crate::limits::MAX_JSON_BYTES)?;
    let file: SweepFile = serde_json::from_str(&text)
        .map_err(|e| Error::format(&sweep_path, format!("not a tchlab Slurm sweep ({e}); `%sweep ... --on slurm --study DIR` writes one")))?;
    if file.tchlab_slurm_sweep != 1 {
        return Err(Error::format(&sweep_path, format!("Slurm sweep format {} (this tchlab reads 1)", file.tchlab_slurm_sweep)));
    }
    file.options.check().map_err(|e| Error::format(&sweep_path, e.to_string()))?;
    check_dir(dir)?;
    let params = file.plan.parse_params().map_err(|e| Error::format(&sweep_path, e.to_string()))?;
    file.plan.check().map_err(|e| Error::format(&sweep_path, e.to_string()))?;
    file.plan.method.sampler(&params, file.plan.trials, file.plan.seed).map_err(|e| Error::format(&sweep_path, e.to_string()))?;
    let lock = lock(dir)?;
    let mut trials: Vec<Trial> = match study::read(dir) {
        Ok(study) => study.trials,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(e),
    };
    let arrays_path = dir.join(ARRAYS);
    let arrays_text = match crate::limits::read_text(&arrays_path, 64 << 20) {
        Ok(text) => text,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut following = vec![];
    let mut running = vec![];
    let mut arrays = 0;
    for (n, line) in arrays_text.lines().enumerate() {
        crate::interrupt::check("reading a sweep's arrays")?;
        let array: Array = serde_json::from_str(line).map_err(|e| Error::format(&arrays_path, format!("line {}: {e}", n + 1)))?;
        if array.job.is_empty() || !array.job.chars().all(|c| c.is_ascii_digit()) || array.tasks.len() > super::MAX_TRIALS {
            return Err(Error::format(&arrays_path, format!("line {}: not an array tchlab submitted", n + 1)));
        }
        arrays += 1;
        for (index, e) in array.tasks.into_iter().enumerate() {
            let bad = |what: String| Error::format(&arrays_path, format!("line {}: {what}", n + 1));
            if e.trial == 0 || e.trial > super::MAX_TRIALS {
                return Err(bad(format!("trial {} is outside 1..{}", e.trial, super::MAX_TRIALS)));
            }
            if e.rung > super::MAX_ROUNDS || e.steps == 0 || e.values.iter().map(|(k, _)| k).ne(file.plan.params.iter().map(|(k, _)| k)) {
                return Err(bad(format!("trial {}: not a rung of this sweep's plan", e.trial)));
            }
            if running.iter().any(|j: &super::executor::Job| j.id == e.trial) {
                return Err(bad(format!("trial {} has two rungs unreported", e.trial)));
            }
            let trial = match trials.iter().position(|t| t.id == e.trial) {
                Some(i) => &mut trials[i],
                None => {
                    trials.push(Trial::new(e.trial, e.values.clone()));
                    trials.last_mut().expect("just pushed")
                }
            };
            if e.rung < trial.rungs.len() {
                continue; // reported already
            }
            trial.status = "running".into();
            trial.values = e.values;
            trial.lineage = e.lineage;
            let i = e.trial - 1;
            let task_file = dir.join("tasks").join(format!("{}-{}.json", e.trial, e.rung));
            following.push(Following { array: array.job.clone(), index, trial: i, file: task_file, missing_since: None });
            running.push(super::executor::Job { trial: i, id: e.trial, rung: e.rung, steps: e.steps, from: e.from, set: e.set, keep: e.keep });
        }
    }
    trials.sort_by_key(|t| t.id);
    if trials.iter().enumerate().any(|(i, t)| t.id != i + 1) {
        return Err(Error::format(dir, "the study and the arrays do not number the trials 1, 2, 3, …"));
    }
    let workspace = Workspace::new(dir.to_path_buf(), file.device);
    let kept = kept_states(&workspace)?;
    let executor = Slurm {
        workspace,
        options: file.options,
        program: file.program,
        queued: vec![],
        following,
        arrays,
        last_listing: None,
        unreachable_since: None,
        fresh: false,
        made_dir: false,
        _lock: lock,
    };
    Ok(Attached { plan: file.plan, params, executor, trials, running, kept })
}

/// The states found in a workspace's `states/`.
fn kept_states(workspace: &Workspace) -> Result<Vec<State>> {
    let dir = workspace.dir().join("states");
    let Ok(entries) = std::fs::read_dir(&dir) else { return Ok(vec![]) };
    let mut states = vec![];
    for entry in entries {
        let name = entry.map_err(io(&dir))?.file_name();
        let parsed = name
            .to_str()
            .and_then(|n| n.strip_prefix("trial-"))
            .and_then(|n| n.split_once('-'))
            .and_then(|(t, r)| Some(State { trial: t.parse().ok()?, rung: r.parse().ok()? }));
        states.extend(parsed.filter(|s| workspace.state(*s).join("trainer.json").is_file()));
    }
    Ok(states)
}

impl Attached {
    /// Follows the sweep to its end (its trials as found, shown to `progress` first),
    /// writing what finishes to its study; with `adopt`, also loads the best trial's
    /// last state.
    pub fn follow(mut self, adopt: bool, progress: &mut dyn Progress) -> Result<(SweepResult, Option<Trainer>)> {
        let params = std::mem::take(&mut self.params);
        let mut runner = Runner::new(&self.plan, &params, std::mem::take(&mut self.trials), true)?;
        runner.resume(std::mem::take(&mut self.running), std::mem::take(&mut self.kept));
        progress.step(&runner.trials);
        runner.run(&mut self.executor, progress)?;
        let best = study::best(&runner.trials);
        let loaded = match (adopt, runner.best_state()) {
            (true, Some(state)) => Some(self.executor.workspace.load(state)?),
            _ => None,
        };
        Ok((SweepResult { trials: runner.trials, best, adopted: loaded.is_some() }, loaded))
    }

    /// The study writer that appends to this sweep's study.
    pub fn study(&self) -> Result<StudyWriter> {
        StudyWriter::append(self.executor.workspace.dir(), study::Header::of(&self.plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_could_break_a_job_script_are_refused() {
        let ok = Options { partition: Some("gpu-a100.short".into()), time: Some("1-12:00:00".into()), gpus: Some(1), cpus: Some(8), jobs: Some(4) };
        assert!(ok.check().is_ok());
        assert_eq!(ok.directives(), ["--partition=gpu-a100.short", "--time=1-12:00:00", "--gpus=1", "--cpus-per-task=8"]);
        for bad in [
            Options { partition: Some("debug\n#SBATCH --uid=0".into()), ..Options::default() },
            Options { partition: Some(String::new()), ..Options::default() },
            Options { time: Some("1:00; rm -rf /".into()), ..Options::default() },
            Options { time: Some("-1".into()), ..Options::default() },
            Options { gpus: Some(65), ..Options::default() },
            Options { cpus: Some(0), ..Options::default() },
            Options { jobs: Some(0), ..Options::default() },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert!(check_dir(Path::new("/tmp/a\nb")).is_err());
    }
}
