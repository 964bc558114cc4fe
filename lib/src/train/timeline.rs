//! The training timeline: in-memory snapshots (named, or automatic within a memory
//! budget) to rewind to or fork from, and the histories of branches left behind.

use std::collections::BTreeMap;

use tch::Tensor;

use super::history::History;
use super::hparams::HParams;
use crate::data::Rng;
use crate::error::{invalid, Result};
use crate::models::lora::LoraConfig;

/// A copy of everything training depends on, at one step.
pub struct Snapshot {
    /// Its name (`step-N` for automatic ones).
    pub name: String,
    /// The branch it was taken on.
    pub branch: String,
    /// Steps taken when it was taken.
    pub step: i64,
    /// Taken automatically (and dropped first when memory runs short).
    pub auto: bool,
    pub(super) weights: Vec<(String, Tensor)>,
    pub(super) optimizer: Vec<(String, Tensor)>,
    pub(super) optimizer_steps: i64,
    pub(super) rng: Rng,
    pub(super) hp: HParams,
    pub(super) history: History,
    pub(super) loss_scale: f64,
    pub(super) trained_seconds: f64,
    /// The model's LoRA adapters then, and whether they were on.
    pub(super) lora: Option<(LoraConfig, bool)>,
    /// The version of the base's weights then ([`crate::models::Model::base_version`]).
    pub(super) base_version: u64,
    /// The pruning masks then (shared: a mask never changes once made).
    pub(super) masks: Vec<(String, Tensor)>,
}

impl Snapshot {
    /// Memory the snapshot's tensors take.
    pub fn bytes(&self) -> usize {
        self.weights.iter().chain(&self.optimizer).map(|(_, t)| t.numel() * t.kind().elt_size_in_bytes()).sum()
    }

    /// The same snapshot sharing its tensors (restoring copies out of them).
    pub(super) fn clone_shallow(&self) -> Snapshot {
        let share = |v: &Vec<(String, Tensor)>| v.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        Snapshot {
            name: self.name.clone(),
            branch: self.branch.clone(),
            step: self.step,
            auto: self.auto,
            weights: share(&self.weights),
            optimizer: share(&self.optimizer),
            optimizer_steps: self.optimizer_steps,
            rng: self.rng.clone(),
            hp: self.hp.clone(),
            history: self.history.clone(),
            loss_scale: self.loss_scale,
            trained_seconds: self.trained_seconds,
            lora: self.lora.clone(),
            base_version: self.base_version,
            masks: share(&self.masks),
        }
    }
}

/// Snapshots and the branches not being trained.
#[derive(Default)]
pub struct Timeline {
    snapshots: Vec<Snapshot>,
    /// Histories of branches other than the current one, by name.
    pub branches: BTreeMap<String, History>,
}

impl Timeline {
    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    /// Memory all snapshots take.
    pub fn bytes(&self) -> usize {
        self.snapshots.iter().map(Snapshot::bytes).sum()
    }

    /// Drops the snapshots whose names `drop` accepts.
    pub fn remove_where(&mut self, drop: impl Fn(&str) -> bool) {
        self.snapshots.retain(|s| !drop(&s.name));
    }

    /// Adds a snapshot, replacing one of the same name.
    pub fn insert(&mut self, snapshot: Snapshot) -> &Snapshot {
        self.snapshots.retain(|s| s.name != snapshot.name);
        self.snapshots.push(snapshot);
        self.snapshots.last().expect("just pushed")
    }

    /// Adds an automatic snapshot, dropping the oldest automatic ones while all
    /// automatic snapshots together take more than `budget` bytes.
    pub fn insert_auto(&mut self, snapshot: Snapshot, budget: usize) {
        if snapshot.bytes() > budget {
            return;
        }
        self.insert(snapshot);
        let auto_bytes = |t: &Timeline| t.snapshots.iter().filter(|s| s.auto).map(Snapshot::bytes).sum::<usize>();
        while auto_bytes(self) > budget {
            let oldest = self.snapshots.iter().position(|s| s.auto).expect("over budget means some exist");
            self.snapshots.remove(oldest);
        }
    }

    /// The snapshot named `target`, or else the latest one taken at step `target` on
    /// `branch`.
    pub fn find(&self, target: &str, branch: &str) -> Result<&Snapshot> {
        if let Some(s) = self.snapshots.iter().find(|s| s.name == target) {
            return Ok(s);
        }
        if let Ok(step) = target.parse::<i64>() {
            if let Some(s) = self.snapshots.iter().rev().find(|s| s.step == step && s.branch == branch) {
                return Ok(s);
            }
        }
        let known: Vec<String> = self.snapshots.iter().map(|s| format!("{} (step {}, {})", s.name, s.step, s.branch)).collect();
        if known.is_empty() {
            invalid!("no snapshot `{target}`: there are none yet; take one with `%snapshot NAME` or `%set snapshot_every=N`")
        } else {
            invalid!("no snapshot `{target}` on branch {branch}; there are: {}", known.join(", "))
        }
    }
}
