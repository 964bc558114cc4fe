//! Reaching a live session from another process. Rust code cells run in a child
//! process (evcxr's), so they read the session's model, tokenizer and history, and hand
//! weights back, through this module; `use tchlab::live;` is already in scope there.
//!
//! ```no_run
//! # use tchlab::live;
//! # fn main() -> tchlab::Result<()> {
//! let w = live::weight("transformer.h.0.attn.c_attn.weight")?; // the trained tensor
//! let resid = live::activation("blocks.0.hook_resid_post")?; // kept by `%cache TEXT`
//! live::set_weight("transformer.h.0.attn.c_attn.weight", &(w * 0.5))?;
//! live::run("%eval")?; // commands see the change
//! # Ok(())
//! # }
//! ```
//!
//! Why a second process and not shared memory: the session stays in the front end's
//! process, so a cell that panics, loops forever or is killed loses only its own
//! variables, never the trained model. A request is one JSON line ([`Request`]) on a
//! fresh connection to the Unix socket named by `$TCHLAB_LIVE`; the answer is one JSON
//! line ([`Reply`]), served while the cell runs. Tensors travel as safetensors files in
//! the socket's directory (private to the user, on tmpfs where the system has one).
//!
//! Not here: answering requests ([`crate::session::Session::serve_live`]) and running
//! cells (the `tchlab-cells` crate).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Tensor};

use crate::checkpoint::Loaded;
use crate::error::{Error, Result};
use crate::tokenize::Tokenizer;
use crate::train::History;

pub use crate::display::Show;

/// The environment variable naming the session's socket.
pub const SOCKET_VAR: &str = "TCHLAB_LIVE";

/// What a cell asks of the session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The model's family, configuration and parameters; device, step and branch.
    Info,
    /// Write these weights (every one when `names` is empty) to `file` as safetensors.
    Weights {
        /// Variable names, as `%weights` lists them.
        names: Vec<String>,
        /// Where to write, in the socket's directory.
        file: PathBuf,
    },
    /// Copy the tensors in the safetensors `file` into the model's weights of the same
    /// names; all are checked before any is copied.
    SetWeights {
        /// The file, in the socket's directory.
        file: PathBuf,
    },
    /// Save the model and tokenizer as a Hugging Face directory at `dir`.
    Model {
        /// The directory, in the socket's directory.
        dir: PathBuf,
    },
    /// Write the tokenizer to `file`.
    Tokenizer {
        /// The file, in the socket's directory.
        file: PathBuf,
    },
    /// The current branch's training history.
    History,
    /// Write the activations `%cache` kept (every one when `names` is empty) to `file`.
    Activations {
        /// Hook names, as `%cache` lists them.
        names: Vec<String>,
        /// Where to write, in the socket's directory.
        file: PathBuf,
    },
    /// Run command lines (`%eval`, `%train 10`); their output shows in the cell.
    Run {
        /// One or more command lines.
        cell: String,
    },
}

/// The session's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// Done; the value depends on the request.
    Ok(Value),
    /// Refused or failed; nothing changed.
    Error {
        /// `UsageError`, `ShapeError`, ... as commands name their errors.
        name: String,
        /// What went wrong and what to do.
        message: String,
    },
}

/// What [`info`] returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// `gpt2` or `bert`.
    pub model_type: String,
    /// The model's `config.json`.
    pub config: Value,
    /// Every weight: name, shape, dtype.
    pub parameters: Vec<Parameter>,
    /// `cpu`, `cuda:0`.
    pub device: String,
    /// Steps taken on the current branch (0 without training).
    pub step: i64,
    /// The current branch, once there is a trainer.
    pub branch: Option<String>,
}

/// One weight's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    /// Its name, as `%weights` lists it.
    pub name: String,
    /// Its shape.
    pub shape: Vec<i64>,
    /// Its dtype, as tch spells it (`Float`, `BFloat16`).
    pub dtype: String,
}

/// The model's description and configuration.
pub fn info() -> Result<Info> {
    decode(call(&Request::Info)?)
}

/// Every weight of the model, by name, on the session's device.
pub fn weights() -> Result<Vec<(String, Tensor)>> {
    fetch_weights(vec![])
}

/// One weight of the model (a copy: change it with [`set_weight`]).
pub fn weight(name: &str) -> Result<Tensor> {
    let mut all = fetch_weights(vec![name.to_string()])?;
    all.pop().map(|(_, t)| t).ok_or_else(|| Error::Invalid(format!("the session sent no tensor for `{name}`")))
}

/// Copies `tensor` into the model's weight `name` (same shape; converted to its dtype
/// and device). Commands use it from then on; the history records the change.
pub fn set_weight(name: &str, tensor: &Tensor) -> Result<()> {
    set_weights(&[(name, tensor)])
}

/// Copies several tensors into the model's weights at once: if any name, shape or
/// value is wrong, none is copied.
pub fn set_weights<S: AsRef<str>>(tensors: &[(S, &Tensor)]) -> Result<()> {
    let file = Scratch::new("set.safetensors")?;
    let named: Vec<(&str, Tensor)> = tensors.iter().map(|(n, t)| (n.as_ref(), t.detach().to_device(Device::Cpu).contiguous())).collect();
    Tensor::write_safetensors(&named, &file.0).map_err(|e| Error::Invalid(format!("writing the tensors for the session: {e}")))?;
    call(&Request::SetWeights { file: file.0.clone() }).map(drop)
}

/// A copy of the session's model with its tokenizer (`pooling` is not carried over),
/// to run or change freely in the cell; hand weights back with [`set_weights`].
pub fn model() -> Result<Loaded> {
    let dir = Scratch::new("model")?;
    let reply = call(&Request::Model { dir: dir.0.clone() })?;
    crate::checkpoint::load(&dir.0, device_of(&reply)?)
}

/// The session's tokenizer.
pub fn tokenizer() -> Result<Tokenizer> {
    let file = Scratch::new("tokenizer.json")?;
    call(&Request::Tokenizer { file: file.0.clone() })?;
    Tokenizer::from_file(&file.0)
}

/// The current branch's training history (steps, losses, learning rates, evaluations).
pub fn history() -> Result<History> {
    decode(call(&Request::History)?)
}

/// One activation `%cache` kept, by its hook name (`blocks.0.hook_resid_post`).
pub fn activation(name: &str) -> Result<Tensor> {
    let mut all = fetch_tensors(|file| Request::Activations { names: vec![name.to_string()], file })?;
    all.pop().map(|(_, t)| t).ok_or_else(|| Error::Invalid(format!("the session sent no activation `{name}`")))
}

/// Every activation `%cache` kept, by hook name.
pub fn activations() -> Result<Vec<(String, Tensor)>> {
    fetch_tensors(|file| Request::Activations { names: vec![], file })
}

/// Runs command lines in the session, as a command cell would; their output shows in
/// this cell. Returns the last command's result as JSON (`null` when it has none).
pub fn run(cell: &str) -> Result<Value> {
    call(&Request::Run { cell: cell.to_string() })
}

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Invalid(format!("an unexpected answer from the session: {e}")))
}

fn fetch_weights(names: Vec<String>) -> Result<Vec<(String, Tensor)>> {
    fetch_tensors(|file| Request::Weights { names, file })
}

/// Sends the request for tensors that `request` makes with a scratch file, and reads them.
fn fetch_tensors(request: impl FnOnce(PathBuf) -> Request) -> Result<Vec<(String, Tensor)>> {
    let file = Scratch::new("tensors.safetensors")?;
    let reply = call(&request(file.0.clone()))?;
    let device = device_of(&reply)?;
    let tensors = Tensor::read_safetensors(&file.0).map_err(|e| Error::format(&file.0, e.to_string()))?;
    let mut tensors: Vec<(String, Tensor)> = tensors.into_iter().map(|(n, t)| (n, t.to_device(device))).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(tensors)
}

fn device_of(reply: &Value) -> Result<Device> {
    let name = reply["device"].as_str().unwrap_or("cpu");
    crate::device::parse_device(name).ok_or_else(|| Error::Invalid(format!("the session is on `{name}`, which this process cannot use")))
}

/// Sends one request and waits for the answer.
fn call(request: &Request) -> Result<Value> {
    let socket = socket()?;
    let io = |e: std::io::Error| Error::io(&socket, e);
    let mut stream = UnixStream::connect(&socket).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    if answer.is_empty() {
        return Err(Error::Invalid("the session closed the connection without answering (was the cell interrupted?)".into()));
    }
    match serde_json::from_str(&answer) {
        Ok(Reply::Ok(value)) => Ok(value),
        Ok(Reply::Error { name, message }) => Err(Error::Invalid(format!("{name}: {message}"))),
        Err(e) => Err(Error::Invalid(format!("an unexpected answer from the session ({e}): {answer}"))),
    }
}

fn socket() -> Result<PathBuf> {
    std::env::var_os(SOCKET_VAR)
        .map(PathBuf::from)
        .ok_or_else(|| Error::Invalid(format!("no live session: ${SOCKET_VAR} is not set. `tchlab::live` works in Rust cells of the tchlab kernel and REPL")))
}

/// A file or directory in the socket's directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Result<Self> {
        static COUNT: AtomicU64 = AtomicU64::new(0);
        let socket = socket()?;
        let dir = socket.parent().unwrap_or(Path::new("."));
        Ok(Scratch(dir.join(format!("cell-{}-{}-{name}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed)))))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = if self.0.is_dir() { std::fs::remove_dir_all(&self.0) } else { std::fs::remove_file(&self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_one_json_line_each() {
        let request = Request::Weights { names: vec!["lm_head.weight".into()], file: "/tmp/x".into() };
        let line = serde_json::to_string(&request).unwrap();
        assert_eq!(line, r#"{"op":"weights","names":["lm_head.weight"],"file":"/tmp/x"}"#);
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), request);
        let reply: Reply = serde_json::from_str(r#"{"error":{"name":"ShapeError","message":"m"}}"#).unwrap();
        assert_eq!(reply, Reply::Error { name: "ShapeError".into(), message: "m".into() });
    }
}
