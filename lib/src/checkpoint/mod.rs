//! Loading and saving weights: Hugging Face model directories (`config.json` with
//! `model.safetensors`, a sharded `model.safetensors.index.json`, or
//! `pytorch_model.bin`), single `.safetensors` and `.pt`/`.bin` files, and llama.cpp's
//! GGUF files (weights, config, tokenizer and chat template in one file).
//!
//! Loading is strict: every variable of the model must be in the file with the right
//! shape, checked before anything is copied, so a failed load changes nothing. Keys
//! the model has no place for are reported, as `transformers` does. Saving writes the
//! Hugging Face layout (GPT-2's Conv1D weights transposed back), so `transformers`
//! reads what tchlab writes, and every file is written atomically.
//!
//! Not here: training state (optimizer moments, schedule, RNG), which the trainer's
//! checkpoints add on top of these files.

pub mod find;
pub mod gguf_write;
pub mod peft;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use crate::embedding::Pooling;
use crate::error::{Error, Result};
use crate::formats::{gguf, pickle, safetensors};
use crate::models::{Model, ModelConfig, Task, TaskKind};
use crate::tokenize::Tokenizer;

/// What a load did besides filling the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// The weight files read.
    pub files: Vec<PathBuf>,
    /// Number of model variables filled from the files.
    pub loaded: usize,
    /// Model variables the files do not hold (left as initialised; only in a partial load).
    pub missing: Vec<String>,
    /// Tensors in the files the model has no place for.
    pub unexpected: Vec<String>,
}

/// A model read from a checkpoint, with what came beside it.
pub struct Loaded {
    /// The model, its weights filled.
    pub model: Model,
    /// The tokenizer from `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<Tokenizer>,
    /// Sentence-embedding pooling from sentence-transformers' files, when present.
    pub pooling: Option<Pooling>,
    /// The chat template from `tokenizer_config.json`, `chat_template.jinja` or the
    /// GGUF metadata, when there is one.
    pub chat_template: Option<crate::chat::Template>,
    /// What was read, what was missing, what was left over.
    pub report: LoadReport,
}

/// Loads a Hugging Face model directory, or a single weights file with its
/// `config.json` beside it, onto `device`.
pub fn load(path: impl AsRef<Path>, device: Device) -> Result<Loaded> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() && (path.extension().is_some_and(|e| e == "gguf") || gguf::is_gguf(path)) {
        return load_gguf(path, device);
    }
    let dir = if meta.is_dir() { path.to_path_buf() } else { path.parent().unwrap_or(Path::new(".")).to_path_buf() };
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        let message = if meta.is_dir() {
            "no config.json here: a Hugging Face model directory holds config.json and model.safetensors (or pytorch_model.bin)"
        } else {
            "no config.json beside this file, so its architecture is unknown; put the model's config.json next to it, or build a model and load the weights into it"
        };
        return Err(Error::format(path, message));
    }
    let config = ModelConfig::from_file(&config_path)?;
    let files = if meta.is_dir() { weight_files(path)? } else { vec![path.to_path_buf()] };
    let tensors = read_files(&files)?;
    let task = config.task_for_checkpoint(&tensors);
    let mut model = Model::for_checkpoint(config.clone(), task, device)?;
    let mut report = assign(&model, tensors, path, true)?;
    let config_json: serde_json::Value = serde_json::from_str(&crate::limits::read_text(&config_path, crate::limits::MAX_JSON_BYTES)?).unwrap_or_default();
    model.generation = crate::generation_config::GenerationConfig::from_model_dir(&dir, &config_json)?;
    report.files = files;
    let tokenizer = match dir.join("tokenizer.json") {
        p if p.exists() => Some(Tokenizer::from_model_dir(&dir, config.max_positions())?),
        _ if dir.join("source.spm").exists() => {
            return Err(Error::format(
                &dir,
                "its tokenizer is Marian's two SentencePiece files (source.spm, target.spm) with vocab.json, and tchlab reads tokenizer.json: \
                 convert the source side with candle's marian-mt `convert_slow_tokenizer.py` (a Unigram model re-indexed through vocab.json), \
                 save it here as tokenizer.json, and load again",
            ))
        }
        _ => None,
    };
    let pooling = Pooling::from_model_dir(&dir)?;
    Ok(Loaded { model, tokenizer, pooling, chat_template: chat_template(&dir), report })
}

/// The chat template a model directory ships: `chat_template.jinja` (newer
/// transformers) or `chat_template` in `tokenizer_config.json`, with the BOS and EOS
/// tokens `tokenizer_config.json` names.
fn chat_template(dir: &Path) -> Option<crate::chat::Template> {
    let config: serde_json::Value = crate::limits::read_text(&dir.join("tokenizer_config.json"), crate::limits::MAX_JSON_BYTES)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let source = crate::limits::read_text(&dir.join("chat_template.jinja"), crate::limits::MAX_JSON_BYTES)
        .ok()
        .or_else(|| config.get("chat_template")?.as_str().map(str::to_string))?;
    // A token is a string, or an AddedToken object with its `content`.
    let token = |key: &str| {
        let value = config.get(key);
        value.and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str())).unwrap_or_default().to_string()
    };
    Some(crate::chat::Template { source, bos_token: token("bos_token"), eos_token: token("eos_token") })
}

/// The registry's way of reading a GGUF file's architecture, or an error naming it.
pub fn gguf_family(meta: &gguf::Metadata) -> Result<&'static gguf::GgufFamily> {
    let arch = meta.string("general.architecture")?;
    if let Some(gguf) = crate::models::FAMILIES.iter().filter_map(|f| f.gguf).find(|g| g.architectures.contains(&arch)) {
        return Ok(gguf);
    }
    let known: Vec<&str> = crate::models::FAMILIES.iter().filter_map(|f| f.gguf).flat_map(|g| g.architectures.iter().copied()).collect();
    Err(Error::format(&meta.path, format!("its architecture is `{arch}`, which tchlab does not build; GGUF files of {} load", known.join(", "))))
}

/// Loads a GGUF file: the family from `general.architecture`, its config, tokenizer and
/// chat template from the metadata, the weights dequantised to float32.
pub fn load_gguf(path: &Path, device: Device) -> Result<Loaded> {
    let meta = gguf::read_metadata(path)?;
    let family = gguf_family(&meta)?;
    let config = ModelConfig::from_json(&(family.config)(&meta)?).map_err(|e| match e {
        Error::Invalid(message) => Error::format(path, format!("its metadata gives an unusable config: {message}")),
        other => other,
    })?;
    let tokenizer = Tokenizer::from_gguf(&meta, config.max_positions())?;
    let chat_template = meta.string("tokenizer.chat_template").ok().map(|source| crate::chat::Template {
        source: source.to_string(),
        bos_token: meta.token("tokenizer.ggml.bos_token_id").unwrap_or_default().to_string(),
        eos_token: meta.token("tokenizer.ggml.eos_token_id").unwrap_or_default().to_string(),
    });
    // The model first: it is refused before anything is dequantised when it does not fit.
    let model = Model::for_checkpoint(config, Task::LanguageModel, device)?;
    let tensors = gguf::read_tensors(&meta, family)?;
    let mut report = assign(&model, tensors, path, true)?;
    report.files = vec![path.to_path_buf()];
    Ok(Loaded { model, tokenizer: Some(tokenizer), pooling: None, chat_template, report })
}

/// Loads a BERT checkpoint with a new classification head of `classes` classes, for
/// fine-tuning: the encoder (and pooler, when the checkpoint has one) come from the
/// file, the head starts freshly initialised.
pub fn load_classifier(path: impl AsRef<Path>, device: Device, classes: i64) -> Result<Loaded> {
    let path = path.as_ref();
    let mut loaded = load(path, device)?;
    let config = loaded.model.config();
    if !config.family().tasks.contains(&TaskKind::Classification) {
        return Err(Error::format(path, format!("a classification head goes on an encoder (BERT family); this checkpoint is a {}", config.model_type())));
    }
    let model = Model::new(config, Task::Classification { classes }, device)?;
    let mut report = load_weights(&model, path, false)?;
    report.missing.retain(|name| !name.starts_with("classifier."));
    let unexpected_missing: Vec<&String> = report.missing.iter().filter(|n| !n.starts_with("pooler.")).collect();
    if !unexpected_missing.is_empty() {
        return Err(Error::format(path, format!("the encoder is incomplete: missing {unexpected_missing:?}")));
    }
    report.missing = vec!["classifier.weight".into(), "classifier.bias".into()];
    loaded.model = model;
    loaded.report = report;
    Ok(loaded)
}

/// Loads the weights in `path` (a model directory or a weights file) into an existing
/// model. With `strict`, every model variable must be in the file; otherwise missing
/// ones keep their values and are listed. On error the model is unchanged.
pub fn load_weights(model: &Model, path: impl AsRef<Path>, strict: bool) -> Result<LoadReport> {
    let path = path.as_ref();
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let files = if meta.is_dir() { weight_files(path)? } else { vec![path.to_path_buf()] };
    let mut report = assign(model, read_files(&files)?, path, strict)?;
    report.files = files;
    Ok(report)
}

/// Finds the weight files of a Hugging Face model directory, in the order
/// `transformers` prefers them.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        if dir.join(name).is_file() {
            return Ok(vec![dir.join(name)]);
        }
    }
    for name in ["model.safetensors.index.json", "pytorch_model.bin.index.json"] {
        let index = dir.join(name);
        if index.is_file() {
            let text = crate::limits::read_text(&index, crate::limits::MAX_JSON_BYTES)?;
            let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("not valid JSON: {e}")))?;
            let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
            let mut shards: Vec<String> = map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
            shards.sort();
            shards.dedup();
            return shards
                .into_iter()
                .map(|s| {
                    let shard = dir.join(&s);
                    if shard.is_file() {
                        Ok(shard)
                    } else {
                        Err(Error::format(&index, format!("names shard {s}, which is not in {}", dir.display())))
                    }
                })
                .collect();
        }
    }
    Err(Error::format(dir, "no weights here: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"))
}

/// Every tensor of one weights file, by the file's own names, on the CPU.
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext {
        "safetensors" => safetensors::read(path),
        "bin" | "pt" | "pth" => pickle::read_torch_zip(path),
        // tch's own format (`VarStore::save`, `Tensor::save_multi`) is read by libtorch's
        // TorchScript loader, which can run code from the file: never opened here.
        "ot" => Err(Error::format(
            path,
            "tchlab does not open .ot files: libtorch reads them with its TorchScript loader, which can run code stored in the file. \
             Convert a file you trust to safetensors, e.g. in Rust `Tensor::write_safetensors(&Tensor::load_multi(\"w.ot\")?, \"w.safetensors\")`, then load that",
        )),
        _ => Err(Error::format(path, "unknown weights format: tchlab reads .safetensors and .bin/.pt/.pth (torch.save of a state dict)")),
    }
}

fn read_files(files: &[PathBuf]) -> Result<Vec<(String, Tensor)>> {
    let mut all = vec![];
    for f in files {
        all.extend(read_file(f)?);
    }
    Ok(all)
}

/// Copies checkpoint tensors into the model's variables after checking every name and
/// shape; on error nothing has been copied. A checkpoint fills the base: LoRA adapters'
/// variables are not looked for in it.
fn assign(model: &Model, tensors: Vec<(String, Tensor)>, origin: &Path, strict: bool) -> Result<LoadReport> {
    let mut vars = model.vars.variables();
    vars.retain(|name, _| !Model::is_adapter_variable(name));
    let mut plan = vec![];
    let mut filled = HashSet::new();
    let mut unexpected = vec![];
    for (key, tensor) in tensors {
        crate::interrupt::check(&format!("loading {}", origin.display()))?;
        let Some((var_name, transposed)) = model.network.var_for_key(&key) else { continue };
        let Some(var) = vars.get(&var_name) else {
            unexpected.push(key);
            continue;
        };
        let found = tensor.size();
        let expected = if transposed { var.size().into_iter().rev().collect() } else { var.size() };
        if found != expected {
            return Err(Error::ShapeMismatch { path: origin.to_path_buf(), name: key, expected, found });
        }
        let tensor = if transposed { tensor.f_t_copy()? } else { tensor };
        plan.push((var.shallow_clone(), tensor));
        filled.insert(var_name);
    }
    let mut missing: Vec<String> = vars.keys().filter(|k| !filled.contains(*k) && !model.network.may_be_missing(k)).cloned().collect();
    missing.sort();
    if strict && !missing.is_empty() {
        let shown = missing.iter().take(5).map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ");
        let more = if missing.len() > 5 { format!(" and {} more", missing.len() - 5) } else { String::new() };
        let hint = if filled.is_empty() { " None of the model's tensors are there: are these weights for another architecture?" } else { "" };
        return Err(Error::format(origin, format!("missing {} of the model's {} tensors: {shown}{more}.{hint}", missing.len(), vars.len())));
    }
    crate::models::copy_checked(&plan)?;
    unexpected.sort();
    Ok(LoadReport { files: vec![], loaded: plan.len(), missing, unexpected })
}

/// The model's weights under Hugging Face names and layouts, as `save_pretrained` writes
/// them: the base's (LoRA adapters are saved apart, as peft saves them).
pub fn hf_state_dict(model: &Model) -> Result<Vec<(String, Tensor)>> {
    model
        .named_tensors()
        .into_iter()
        .filter(|(name, _)| !Model::is_adapter_variable(name))
        .map(|(name, t)| {
            let (key, transposed) = model.network.key_for_var(&name);
            let t = t.detach();
            Ok((key, if transposed { t.f_t_copy()? } else { t }))
        })
        .collect()
}

/// The `config.json` `transformers` needs to read the model back.
pub fn hf_config(model: &Model) -> serde_json::Value {
    let mut json = model.config().to_json();
    // transformers sizes a classifier from the label names.
    if let Task::Classification { classes } = model.task() {
        if json.get("id2label").and_then(|m| m.as_object()).is_none_or(|m| m.len() as i64 != classes) {
            json["id2label"] = (0..classes).map(|i| (i.to_string(), serde_json::Value::from(format!("LABEL_{i}")))).collect::<serde_json::Map<_, _>>().into();
        }
    }
    json["architectures"] = serde_json::json!([model.network.architecture()]);
    json
}

/// The file that marks a directory as one tchlab wrote, so that a later save may
/// replace it; directories without it are never replaced.
pub const MARKER: &str = ".tchlab-checkpoint";

/// Checks that a save may write into `dir`: it does not exist yet, is empty, or is a
/// checkpoint tchlab wrote (it has [`MARKER`], or the `trainer.json` of earlier
/// versions). Anything else is refused, naming what is there, and nothing is written.
pub fn check_save_target(dir: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
        Ok(meta) => meta,
    };
    let meta = if meta.file_type().is_symlink() { std::fs::metadata(dir).map_err(|e| Error::io(dir, e))? } else { meta };
    if !meta.is_dir() {
        return Err(Error::format(dir, "is a file, not a directory: a save writes a directory of files; choose another path"));
    }
    let ours = dir.join(MARKER).is_file()
        || crate::limits::read_text(&dir.join("trainer.json"), crate::limits::MAX_JSON_BYTES).is_ok_and(|t| t.contains("\"tchlab-trainer/"));
    if ours {
        return Ok(());
    }
    let mut names: Vec<String> =
        std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    if names.is_empty() {
        return Ok(());
    }
    names.sort();
    let shown = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 5 { format!(" and {} more", names.len() - 5) } else { String::new() };
    Err(Error::format(
        dir,
        format!(
            "holds files tchlab did not write ({shown}{more}); a save replaces only directories it made itself (they hold {MARKER}), so nothing was written. Choose a new directory, or empty this one"
        ),
    ))
}

/// Writes [`MARKER`] into `dir`.
pub(crate) fn mark(dir: &Path) -> Result<()> {
    let marker = serde_json::json!({ "format": "tchlab-checkpoint/1", "written_by": format!("tchlab {}", env!("CARGO_PKG_VERSION")) });
    crate::atomic::write(&dir.join(MARKER), |w| w.write_all(marker.to_string().as_bytes()))
}

/// Saves `model` (and its tokenizer) as a Hugging Face model directory: `config.json`,
/// `model.safetensors`, `tokenizer.json`. Each file is replaced atomically; a directory
/// that holds files tchlab did not write is refused ([`check_save_target`]).
pub fn save_hf(model: &Model, tokenizer: Option<&Tokenizer>, dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    check_save_target(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config = serde_json::to_vec_pretty(&hf_config(model)).expect("JSON");
    crate::atomic::write(&dir.join("config.json"), |w| w.write_all(&config))?;
    let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::write(&dir.join("model.safetensors"), &hf_state_dict(model)?, &metadata)?;
    if let Some(t) = tokenizer {
        t.save(&dir.join("tokenizer.json"))?;
    }
    if !model.generation.is_empty() {
        let generation = serde_json::to_vec_pretty(&model.generation).expect("JSON");
        crate::atomic::write(&dir.join("generation_config.json"), |w| w.write_all(&generation))?;
    }
    mark(dir)
}
