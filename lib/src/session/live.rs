//! The session's side of [`crate::live`]: answers to Rust code running in another
//! process. A front end reads request lines from its socket and hands each to
//! [`Session::serve_live`]; the answer goes back as one line.

use std::path::Path;

use serde_json::{json, Value};

use super::output::{CellError, Output};
use super::parse::{split_cell, Cell};
use super::{Ctx, Session};
use crate::live::{Info, Parameter, Reply, Request};

/// Writes the tensors of `all` named in `names` (all when empty) to `file`; an unknown
/// name is refused with the closest ones.
fn write_chosen(all: &[(String, tch::Tensor)], names: &[String], file: &Path, missing: &str, listing: &str) -> Result<(), CellError> {
    let mut chosen = vec![];
    if names.is_empty() {
        chosen.extend(all.iter().map(|(n, t)| (n.clone(), t.shallow_clone())));
    }
    for name in names {
        let Some((_, t)) = all.iter().find(|(n, _)| n == name) else {
            let close = crate::suggest::did_you_mean(name, all.iter().map(|(n, _)| n.as_str()));
            return Err(CellError { name: "UsageError".into(), message: format!("{missing} `{name}`{close}; {listing}") });
        };
        chosen.push((name.clone(), t.shallow_clone()));
    }
    let cpu: Vec<(String, tch::Tensor)> = chosen.into_iter().map(|(n, t)| (n, t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    tch::Tensor::write_safetensors(&cpu, file).map_err(|e| CellError::from(crate::Error::from(e)))
}

impl Session {
    /// Answers one request line from a Rust cell. Files named in requests must lie in
    /// `scratch` (the socket's directory); command output (`live::run`) goes to `sink`.
    /// A refused request changes nothing.
    pub fn serve_live(&mut self, line: &str, scratch: &Path, sink: &mut dyn FnMut(Output)) -> String {
        let _scope = crate::interrupt::Scope::enter(&self.cancel);
        let reply = match serde_json::from_str::<Request>(line) {
            Ok(request) => match crate::interrupt::contain("a `tchlab::live` request", || self.answer(request, scratch, sink)) {
                Ok(value) => Reply::Ok(value),
                Err(e) => Reply::Error { name: e.name, message: e.message },
            },
            Err(e) => Reply::Error { name: "UsageError".into(), message: format!("not a request tchlab understands ({e})") },
        };
        serde_json::to_string(&reply).expect("replies serialize")
    }

    fn answer(&mut self, request: Request, scratch: &Path, sink: &mut dyn FnMut(Output)) -> Result<Value, CellError> {
        // A file must sit directly in the scratch directory once every link is resolved,
        // and must not itself be a link: a cell cannot make the session read or write
        // elsewhere through `..` or a symbolic link.
        let inside = |path: &Path| -> Result<(), CellError> {
            let refuse =
                || CellError { name: "UsageError".into(), message: format!("{}: files for the session must be in {}", path.display(), scratch.display()) };
            let parent = path.parent().ok_or_else(refuse)?.canonicalize().map_err(|_| refuse())?;
            if parent != scratch.canonicalize().map_err(|_| refuse())? || path.file_name().is_none_or(|n| n == "..") {
                return Err(refuse());
            }
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(refuse());
            }
            Ok(())
        };
        let device = json!({ "device": crate::device::device_name(self.device) });
        match request {
            Request::Info => {
                let model = self.model_or_err()?;
                let parameters =
                    model.named_tensors().into_iter().map(|(name, t)| Parameter { name, shape: t.size(), dtype: format!("{:?}", t.kind()) }).collect();
                let info = Info {
                    model_type: model.config().model_type().into(),
                    config: crate::checkpoint::hf_config(model),
                    parameters,
                    device: crate::device::device_name(self.device),
                    step: self.trainer.as_ref().map_or(0, |t| t.step_count()),
                    branch: self.trainer.as_ref().map(|t| t.branch().to_string()),
                };
                Ok(serde_json::to_value(info).expect("info serializes"))
            }
            Request::Weights { names, file } => {
                inside(&file)?;
                let all = self.model_or_err()?.named_tensors();
                write_chosen(&all, &names, &file, "the model has no weight", "`%weights` lists them")?;
                Ok(device)
            }
            Request::Activations { names, file } => {
                inside(&file)?;
                let cache = self
                    .activations
                    .as_ref()
                    .ok_or_else(|| CellError { name: "UsageError".into(), message: "no activations kept: `%cache \"some text\"` keeps them first".into() })?;
                write_chosen(&cache.tensors, &names, &file, "`%cache` kept no activation", "`%cache` lists what it kept")?;
                Ok(device)
            }
            Request::SetWeights { file } => {
                inside(&file)?;
                let tensors = tch::Tensor::read_safetensors(&file).map_err(|e| CellError::from(crate::Error::format(&file, e.to_string())))?;
                if let Some(trainer) = self.trainer.as_mut() {
                    trainer.set_weights(&tensors, "a Rust cell")?;
                } else {
                    self.model_or_err()?.set_tensors(&tensors)?;
                }
                self.saved_at = None;
                Ok(json!({ "set": tensors.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>() }))
            }
            Request::Model { dir } => {
                inside(&dir)?;
                crate::checkpoint::save_hf(self.model_or_err()?, self.tokenizer(), &dir)?;
                Ok(device)
            }
            Request::Tokenizer { file } => {
                inside(&file)?;
                self.tokenizer_or_err()?.save(&file)?;
                Ok(Value::Null)
            }
            Request::History => {
                let trainer = self
                    .trainer
                    .as_ref()
                    .ok_or_else(|| CellError { name: "UsageError".into(), message: "no training yet: the history starts with `%train` or `%step`".into() })?;
                Ok(serde_json::to_value(trainer.history()).expect("history serializes"))
            }
            Request::Run { cell } => {
                let Cell::Commands(invocations) = split_cell(&cell)? else {
                    return Err(CellError { name: "UsageError".into(), message: "`live::run` takes command lines such as \"%eval\", not Rust".into() });
                };
                let mut result = Value::Null;
                let mut forward = |output: Output| {
                    if let Output::Result(bundle) = &output {
                        result = bundle.data().cloned().unwrap_or_else(|| Value::String(bundle.plain().to_string()));
                    }
                    sink(output);
                };
                let mut ctx = Ctx { sink: &mut forward, declared: None };
                for inv in invocations {
                    self.run_invocation(&inv, &mut ctx)?;
                }
                Ok(result)
            }
        }
    }
}
