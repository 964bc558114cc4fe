//! A sweep's results on disk, as they come: `DIR/study.jsonl`, a header line (what was
//! searched, how) and one line per trial each time it finishes a rung or is stopped,
//! each line flushed to disk before the sweep goes on. A kernel that dies mid-sweep
//! loses only the trial that was running; `%sweep --show DIR` draws the study again.
//!
//! The file is created, never replaced: a directory that holds a study already is
//! refused. Reading it back trusts nothing in it: regular files of bounded size only,
//! every line checked, errors naming the file and line. A last line cut short (the
//! process stopped while writing it) is left out.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Exploit, Param, Plan, Trial, MAX_ROUNDS, MAX_TRIALS};
use crate::error::{Error, Result};

/// The study file in a study's directory.
pub const FILE: &str = "study.jsonl";
/// The format's version, in the header.
const VERSION: u32 = 1;
/// The largest study file read back.
const MAX_BYTES: u64 = 256 << 20;
/// The most hyperparameters a study may name.
const MAX_PARAMS: usize = 64;

/// What a study searched, its first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The format's version.
    pub tchlab_study: u32,
    /// `(key, space)` as `%sweep` was given them (`lr`, `log(1e-4,1e-2)`).
    pub params: Vec<(String, String)>,
    /// `grid`, `random` or `tpe`.
    pub method: String,
    /// `none`, `halving`, `asha` or `pbt`.
    pub schedule: String,
    /// Steps per trial (halving: in the first rung).
    pub steps: u64,
}

impl Header {
    /// The header of a study of `plan`.
    pub fn of(plan: &Plan) -> Self {
        Header {
            tchlab_study: VERSION,
            params: plan.params.clone(),
            method: plan.method.name().into(),
            schedule: plan.schedule.name().into(),
            steps: plan.steps,
        }
    }
}

/// One trial's line. Scores and losses that are not finite are written as `null`.
/// (`rungs` and `lineage` came with ASHA and PBT; older studies have neither.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Record {
    id: usize,
    values: Vec<(String, String)>,
    losses: Vec<(i64, f64)>,
    score: Option<f64>,
    status: String,
    #[serde(default)]
    rungs: Vec<Option<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    lineage: Vec<Exploit>,
}

/// A study being written: the file is made when the first trial finishes, so a sweep
/// refused before it trains leaves nothing behind.
pub struct StudyWriter {
    dir: PathBuf,
    path: PathBuf,
    header: Header,
    file: Option<std::fs::File>,
}

fn taken(dir: &Path, path: &Path) -> Error {
    Error::Invalid(format!("{} holds a study already: `%sweep --show {}` draws it; give --study another directory", path.display(), dir.display()))
}

impl StudyWriter {
    /// A writer of `dir/study.jsonl`; refuses at once a directory that holds a study
    /// already, or a path that is not a directory.
    pub fn new(dir: &Path, header: Header) -> Result<Self> {
        let path = dir.join(FILE);
        if dir.exists() && !dir.is_dir() {
            return Err(Error::Invalid(format!("--study {}: not a directory", dir.display())));
        }
        if path.symlink_metadata().is_ok() {
            return Err(taken(dir, &path));
        }
        Ok(StudyWriter { dir: dir.to_path_buf(), path, header, file: None })
    }

    /// A writer that appends to the study in `dir` (a sweep followed again), or starts
    /// it there when it has no finished trial yet.
    pub fn append(dir: &Path, header: Header) -> Result<Self> {
        let path = dir.join(FILE);
        let file = match std::fs::OpenOptions::new().append(true).open(&path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(StudyWriter { dir: dir.to_path_buf(), path, header, file })
    }

    /// Appends a trial as it is now, on disk before this returns.
    pub fn record(&mut self, trial: &Trial) -> Result<()> {
        let record = Record {
            id: trial.id,
            values: trial.values.clone(),
            losses: trial.losses.iter().copied().filter(|(_, l)| l.is_finite()).collect(),
            score: trial.score.is_finite().then_some(trial.score),
            status: trial.status.clone(),
            rungs: trial.rungs.iter().map(|s| s.is_finite().then_some(*s)).collect(),
            lineage: trial.lineage.clone(),
        };
        self.line(&serde_json::to_value(record).expect("JSON"))
    }

    fn line(&mut self, value: &serde_json::Value) -> Result<()> {
        if self.file.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
            // Created, never opened over something there: a file (or a link) made since is refused.
            let file = std::fs::OpenOptions::new().append(true).create_new(true).open(&self.path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    taken(&self.dir, &self.path)
                } else {
                    Error::io(&self.path, e)
                }
            })?;
            self.file = Some(file);
            let header = serde_json::to_value(&self.header).expect("JSON");
            self.line(&header)?;
        }
        let mut text = value.to_string();
        text.push('\n');
        let file = self.file.as_mut().expect("opened above");
        file.write_all(text.as_bytes()).and_then(|()| file.sync_data()).map_err(|e| Error::io(&self.path, e))
    }
}

/// A study read back: its header, the swept parameters, and each trial as last written.
#[derive(Debug, Clone)]
pub struct Study {
    /// What was searched.
    pub header: Header,
    /// The parameters, parsed again from the header.
    pub params: Vec<Param>,
    /// Every trial, by id (the order they started).
    pub trials: Vec<Trial>,
}

/// Reads the study in `dir` (or the study file itself).
pub fn read(dir: &Path) -> Result<Study> {
    let path = if dir.is_dir() { dir.join(FILE) } else { dir.to_path_buf() };
    let text = crate::limits::read_text(&path, MAX_BYTES)?;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let bad = |n: usize, what: String| Error::format(&path, format!("line {n}: {what}"));
    let Some(first) = lines.first() else { return Err(Error::format(&path, "empty: a study file starts with its header line")) };
    let header: Header =
        serde_json::from_str(first).map_err(|e| bad(1, format!("not a tchlab study header ({e}); `%sweep ... --study DIR` writes studies")))?;
    if header.tchlab_study != VERSION {
        return Err(bad(1, format!("study format {} (this tchlab reads {VERSION})", header.tchlab_study)));
    }
    if header.params.is_empty() || header.params.len() > MAX_PARAMS {
        return Err(bad(1, format!("names {} hyperparameters; a study has 1 to {MAX_PARAMS}", header.params.len())));
    }
    let params = header.params.iter().map(|(k, v)| Param::parse(k, v)).collect::<Result<Vec<_>>>().map_err(|e| bad(1, e.to_string()))?;
    let mut trials: Vec<Trial> = vec![];
    for (i, line) in lines.iter().enumerate().skip(1) {
        crate::interrupt::check("reading a study")?;
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: Record = match serde_json::from_str(line) {
            Ok(r) => r,
            // Cut short by a process that stopped while writing it.
            Err(_) if i + 1 == lines.len() && !line.ends_with('\n') => break,
            Err(e) => return Err(bad(n, format!("not a trial record: {e}"))),
        };
        if record.id == 0 || record.id > MAX_TRIALS {
            return Err(bad(n, format!("trial {} is outside 1..{MAX_TRIALS}", record.id)));
        }
        if record.values.iter().map(|(k, _)| k).ne(header.params.iter().map(|(k, _)| k)) {
            return Err(bad(n, format!("trial {} sets other hyperparameters than the header names", record.id)));
        }
        if !["running", "done", "stopped", "diverged", "failed"].contains(&record.status.as_str()) {
            return Err(bad(n, format!("trial {}: unknown status `{}`", record.id, record.status)));
        }
        if record.rungs.len() > MAX_ROUNDS + 1 || record.lineage.len() > MAX_ROUNDS {
            return Err(bad(n, format!("trial {}: more rungs than a sweep runs", record.id)));
        }
        if record.lineage.iter().any(|e| e.values.iter().map(|(k, _)| k).ne(header.params.iter().map(|(k, _)| k)) || e.from == 0 || e.from > MAX_TRIALS) {
            return Err(bad(n, format!("trial {}: its lineage names other hyperparameters or trials than the sweep has", record.id)));
        }
        let trial = Trial {
            id: record.id,
            values: record.values,
            losses: record.losses,
            score: record.score.unwrap_or(f64::INFINITY),
            status: record.status,
            rungs: record.rungs.into_iter().map(|s| s.unwrap_or(f64::INFINITY)).collect(),
            lineage: record.lineage,
        };
        match trials.iter_mut().find(|t| t.id == trial.id) {
            Some(slot) => *slot = trial,
            None => trials.push(trial),
        }
    }
    // Lines come in the order trials finish; trials are numbered in the order they started.
    trials.sort_by_key(|t| t.id);
    Ok(Study { header, params, trials })
}

/// The id of the best trial: the lowest finite score.
pub fn best(trials: &[Trial]) -> Option<usize> {
    trials.iter().filter(|t| t.score.is_finite()).min_by(|a, b| a.score.total_cmp(&b.score)).map(|t| t.id)
}
