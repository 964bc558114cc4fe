//! Full training checkpoints: a directory that resumes training exactly.
//!
//! ```text
//! DIR/config.json          the model, as Hugging Face reads it
//! DIR/model.safetensors    its weights (Hugging Face names and layout)
//! DIR/tokenizer.json       the tokenizer
//! DIR/optimizer.safetensors  moments and master weights, by variable name
//! DIR/trainer.json         step, seed, data cursor, hyperparameters, data set,
//!                          optimizer step count, loss scale, histories, LoRA settings
//! DIR/adapter/             the LoRA adapters, in peft's files, when there are any
//! DIR/masks.safetensors    the pruning masks, by weight name, when there are any
//! ```
//!
//! The directory is written next to its destination and swapped in with one
//! `renameat2(RENAME_EXCHANGE)`, so a crash leaves either the old checkpoint or the
//! new one, never a mixture. A destination that holds files tchlab did not write is
//! refused, never replaced (`checkpoint::check_save_target`).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tch::Device;

use super::history::History;
use super::hparams::{HParams, Precision};
use super::timeline::Timeline;
use super::trainer::Trainer;
use crate::checkpoint;
use crate::data::{DataSpec, Rng};
use crate::error::{Error, Result};
use crate::formats::safetensors;
use crate::models::lora::LoraConfig;

const FORMAT: &str = "tchlab-trainer/1";

/// Numbers the staging directories of this process's saves.
static STAGING: AtomicU64 = AtomicU64::new(0);

#[derive(Serialize, Deserialize)]
struct TrainerFile {
    format: String,
    step: i64,
    seed: u64,
    rng: Rng,
    hparams: HParams,
    data: DataSpec,
    optimizer_steps: i64,
    loss_scale: f64,
    good_scaled_steps: i64,
    trained_seconds: f64,
    branch: String,
    history: History,
    branches: BTreeMap<String, History>,
    /// The LoRA adapters' settings, when the model has adapters (in `adapter/`).
    #[serde(default)]
    lora: Option<LoraConfig>,
    /// Whether they are on.
    #[serde(default)]
    lora_enabled: bool,
}

/// Where a checkpoint keeps the model's LoRA adapters.
const ADAPTER_DIR: &str = "adapter";
/// Where it keeps the pruning masks.
const MASKS: &str = "masks.safetensors";

impl Trainer {
    /// Saves everything needed to resume into the directory `dir`, replacing what was
    /// there atomically.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = dir.file_name().ok_or_else(|| Error::Invalid(format!("{}: not a directory name", dir.display())))?;
        checkpoint::check_save_target(dir)?;
        let staging = parent.join(format!(".{}.tmp-{}-{}", name.to_string_lossy(), std::process::id(), STAGING.fetch_add(1, Ordering::Relaxed)));
        // A new directory, never one that was there: what the staging name held is not ours to remove.
        std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        let written = self.write_into(&staging).and_then(|()| swap_in(&staging, dir));
        if written.is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        written
    }

    fn write_into(&self, dir: &Path) -> Result<()> {
        checkpoint::save_hf(&self.model, Some(&self.tokenizer), dir)?;
        if self.model.adapters().is_some() {
            let (config, weights) = self.model.peft_adapter(None, "CAUSAL_LM")?;
            checkpoint::peft::write(&dir.join(ADAPTER_DIR), &config, &weights)?;
        }
        let masks = self.model.masks();
        if !masks.is_empty() {
            safetensors::write(&dir.join(MASKS), &masks, &BTreeMap::new())?;
        }
        safetensors::write(&dir.join("optimizer.safetensors"), &self.opt.state_tensors(), &BTreeMap::new())?;
        let file = TrainerFile {
            format: FORMAT.into(),
            step: self.step,
            seed: self.seed,
            rng: self.rng.clone(),
            hparams: self.hp.clone(),
            data: self.data_spec.clone(),
            optimizer_steps: self.opt.steps,
            loss_scale: self.loss_scale,
            good_scaled_steps: self.good_scaled_steps,
            trained_seconds: self.trained_seconds,
            branch: self.branch.clone(),
            history: self.history.clone(),
            branches: self.timeline.branches.clone(),
            lora: self.model.adapters().map(|a| a.config.clone()),
            lora_enabled: self.model.adapters().is_some_and(|a| a.enabled),
        };
        let json = serde_json::to_vec_pretty(&file).expect("JSON");
        crate::atomic::write(&dir.join("trainer.json"), |w| w.write_all(&json))
    }

    /// Loads a checkpoint saved by [`Trainer::save`] onto `device`; training continues
    /// exactly where it stopped. The data set is made again from its description.
    pub fn load(dir: impl AsRef<Path>, device: Device) -> Result<Trainer> {
        let dir = dir.as_ref();
        let state_path = dir.join("trainer.json");
        let text = crate::limits::read_text(&state_path, crate::limits::MAX_JSON_BYTES)?;
        let file: TrainerFile = serde_json::from_str(&text).map_err(|e| Error::format(&state_path, format!("not a tchlab trainer checkpoint: {e}")))?;
        if file.format != FORMAT {
            return Err(Error::format(&state_path, format!("format `{}`, expected `{FORMAT}`", file.format)));
        }
        let mut loaded = checkpoint::load(dir, device)?;
        if let Some(config) = &file.lora {
            let adapter = checkpoint::peft::read(&dir.join(ADAPTER_DIR))?;
            loaded.model.load_peft_as(config, adapter)?;
            if !file.lora_enabled {
                loaded.model.set_lora_enabled(false)?;
            }
        }
        let tokenizer = loaded.tokenizer.ok_or_else(|| Error::format(dir, "no tokenizer.json: a trainer checkpoint always has one"))?;
        let hp = HParams { precision: Precision::F32, ..file.hparams.clone() };
        let mut trainer = Trainer::new(loaded.model, tokenizer, file.data, hp, file.seed)?;
        if file.hparams.precision != Precision::F32 {
            trainer.set("precision", &file.hparams.get("precision").expect("a key"))?;
            trainer.history.changes.clear();
        }
        if dir.join(MASKS).is_file() {
            let masks = safetensors::read(&dir.join(MASKS))?;
            trainer.model.set_masks(&masks).map_err(|e| Error::format(&dir.join(MASKS), e.to_string()))?;
        }
        let optimizer_path = dir.join("optimizer.safetensors");
        let state = safetensors::read(&optimizer_path)?;
        trainer.opt.load_state_tensors(&state, file.optimizer_steps).map_err(|e| Error::format(&optimizer_path, e.to_string()))?;
        trainer.step = file.step;
        trainer.rng = file.rng;
        trainer.loss_scale = file.loss_scale;
        trainer.good_scaled_steps = file.good_scaled_steps;
        trainer.trained_seconds = file.trained_seconds;
        trainer.branch = file.branch;
        trainer.history = file.history;
        trainer.timeline = Timeline::default();
        trainer.timeline.branches = file.branches;
        Ok(trainer)
    }
}

/// Puts the directory `staging` at `target` in one step: an atomic exchange when
/// `target` exists (the old one then sits at `staging` and is removed), a rename
/// when it does not.
fn swap_in(staging: &Path, target: &Path) -> Result<()> {
    if !target.exists() {
        return std::fs::rename(staging, target).map_err(|e| Error::io(target, e));
    }
    let cstr = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| Error::Invalid(format!("{}: path has a NUL byte", p.display())));
    let (from, to) = (cstr(staging)?, cstr(target)?);
    // SAFETY: both are valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc != 0 {
        return Err(Error::io(target, std::io::Error::last_os_error()));
    }
    let _ = std::fs::remove_dir_all(staging);
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent).and_then(|d| d.sync_all()).map_err(|e| Error::io(parent, e))?;
    }
    Ok(())
}
