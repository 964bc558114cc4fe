//! Model families and what they share: the configuration read from `config.json`,
//! a model that owns its variables, forward options, activations.
//!
//! One file per family ([`gpt`], [`bert`]), each readable top to bottom. This module
//! does not load weights (that is [`crate::checkpoint`]) or train (that is [`crate::train`]).

pub mod attention;
pub mod bert;
pub mod gpt;

use std::path::Path;

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::error::{invalid, Error, Result};

/// Options of a forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions {
    /// Training mode: dropout is active.
    pub train: bool,
    /// Return every layer's attention probabilities.
    pub capture_attention: bool,
}

/// A feed-forward activation, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU with the erf (`gelu`).
    Gelu,
    /// GELU's tanh approximation (`gelu_new`, `gelu_pytorch_tanh`), GPT-2's.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    /// Reads a `hidden_act` / `activation_function` value.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => invalid!("unknown activation `{other}`; tchlab knows gelu, gelu_new, gelu_pytorch_tanh and relu"),
        }
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
        }
    }
}

/// A model family's configuration, as `config.json` states it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    /// `model_type: "gpt2"`.
    Gpt(gpt::GptConfig),
    /// `model_type: "bert"`.
    Bert(bert::BertConfig),
}

impl ModelConfig {
    /// Reads `config.json`; the error names the file and what is wrong.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = crate::limits::read_text(path, crate::limits::MAX_JSON_BYTES)?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&json).map_err(|e| match e {
            Error::Invalid(message) => Error::format(path, message),
            other => other,
        })
    }

    /// Reads a parsed `config.json`.
    pub fn from_json(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let config = match model_type {
            "gpt2" => ModelConfig::Gpt(serde_json::from_value(json.clone()).map_err(|e| Error::Invalid(format!("GPT-2 config: {e}")))?),
            "bert" => ModelConfig::Bert(serde_json::from_value(json.clone()).map_err(|e| Error::Invalid(format!("BERT config: {e}")))?),
            "" => return invalid!("no `model_type`; tchlab reads model_type \"gpt2\" and \"bert\""),
            other => return invalid!("unknown model_type \"{other}\"; tchlab knows \"gpt2\" (GPT-2 family) and \"bert\" (BERT family)"),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Gpt(c) => c.validate(),
            ModelConfig::Bert(c) => c.validate(),
        }
    }

    /// The family's name, as `model_type` spells it.
    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt(_) => "gpt2",
            ModelConfig::Bert(_) => "bert",
        }
    }

    /// The longest input the model takes.
    pub fn max_positions(&self) -> i64 {
        match self {
            ModelConfig::Gpt(c) => c.n_positions,
            ModelConfig::Bert(c) => c.max_position_embeddings,
        }
    }

    /// About how many parameters a model of this configuration has: what is checked
    /// against the device's memory before the model is built.
    pub fn parameter_estimate(&self) -> f64 {
        match self {
            ModelConfig::Gpt(c) => {
                let (d, inner) = (c.n_embd as f64, c.n_inner.unwrap_or(4 * c.n_embd) as f64);
                let block = 3.0 * d * d + 3.0 * d + d * d + d + 4.0 * d + 2.0 * d * inner + inner + d;
                (c.vocab_size + c.n_positions) as f64 * d + c.n_layer as f64 * block + 2.0 * d
            }
            ModelConfig::Bert(c) => {
                let (d, inner) = (c.hidden_size as f64, c.intermediate_size as f64);
                let block = 4.0 * (d * d + d) + 4.0 * d + 2.0 * d * inner + inner + d;
                (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as f64 * d + 2.0 * d + c.num_hidden_layers as f64 * block + d * d + d
            }
        }
    }

    /// About how many bytes one training step's activations take for `batch` windows
    /// of `ctx` tokens in float32: hidden states and MLP activations kept for the
    /// backward pass, attention scores, and the logits with their gradient.
    pub fn activation_estimate(&self, batch: usize, ctx: usize) -> f64 {
        let (layers, d, heads, inner, vocab) = match self {
            ModelConfig::Gpt(c) => (c.n_layer, c.n_embd, c.n_head, c.n_inner.unwrap_or(4 * c.n_embd), c.vocab_size),
            ModelConfig::Bert(c) => (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, 2),
        };
        let (tokens, t) = (batch as f64 * ctx as f64, ctx as f64);
        let per_layer = 12.0 * d as f64 + 2.0 * inner as f64 + 3.0 * heads as f64 * t;
        4.0 * tokens * (layers as f64 * per_layer + 3.0 * vocab as f64)
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Gpt(c) => c.vocab_size,
            ModelConfig::Bert(c) => c.vocab_size,
        }
    }
}

/// The network of one family.
pub enum Network {
    /// A GPT-2 language model.
    Gpt(gpt::Gpt),
    /// A BERT encoder.
    Bert(bert::Bert),
}

/// A model with the variables it owns.
pub struct Model {
    /// Every parameter, named after the checkpoint keys.
    pub vars: VarStore,
    /// The network whose forward pass reads `vars`.
    pub network: Network,
}

/// The largest width, vocabulary, context or head count a configuration may give:
/// beyond it, sizes stop being models and start being typos.
pub(crate) const MAX_DIMENSION: i64 = 1 << 24;
/// The most blocks a configuration may give.
pub(crate) const MAX_LAYERS: i64 = 1 << 12;

/// Checks that each `(key, value)` is in `1..=max`; the message names the key.
pub(crate) fn check_dimensions(dimensions: &[(&str, i64, i64)]) -> Result<()> {
    for &(key, value, max) in dimensions {
        if value <= 0 {
            return invalid!("`{key}` must be positive, got {value}");
        }
        if value > max {
            return invalid!("`{key}` is {value}; tchlab builds models with `{key}` up to {max}");
        }
    }
    Ok(())
}

/// Checks that every id in `ids` has an embedding row: a tokenizer larger than the
/// model's vocabulary is an error naming both, before any forward pass indexes past
/// the table.
pub(crate) fn check_ids(ids: &Tensor, vocab_size: i64) -> Result<()> {
    if ids.numel() == 0 {
        return Ok(());
    }
    let (lo, hi) = (ids.f_min()?.int64_value(&[]), ids.f_max()?.int64_value(&[]));
    if lo < 0 || hi >= vocab_size {
        let bad = if lo < 0 { lo } else { hi };
        return invalid!(
            "token id {bad} is outside the model's vocabulary of {vocab_size} ids (0..{}): the tokenizer and the model do not match; build the model with a vocabulary at least the tokenizer's size",
            vocab_size - 1
        );
    }
    Ok(())
}

/// Refuses to build a model whose float32 weights would not fit in `device`'s memory.
fn ensure_weights_fit(config: &ModelConfig, device: Device) -> Result<()> {
    let parameters = config.parameter_estimate();
    crate::limits::ensure_fits(
        &format!("a {} model of about {:.3e} parameters", config.model_type(), parameters),
        parameters * 4.0,
        device,
        "build a smaller one (fewer layers, a smaller width or vocabulary)",
    )
}

impl Model {
    /// A freshly initialised GPT-2 model on `device`.
    pub fn gpt(config: &gpt::GptConfig, device: Device) -> Result<Self> {
        config.validate()?;
        ensure_weights_fit(&ModelConfig::Gpt(config.clone()), device)?;
        let vars = VarStore::new(device);
        let network = Network::Gpt(gpt::Gpt::new(&vars.root(), config)?);
        Ok(Model { vars, network })
    }

    /// A freshly initialised BERT model on `device`.
    pub fn bert(config: &bert::BertConfig, heads: bert::BertHeads, device: Device) -> Result<Self> {
        config.validate()?;
        ensure_weights_fit(&ModelConfig::Bert(config.clone()), device)?;
        let vars = VarStore::new(device);
        let network = Network::Bert(bert::Bert::new(&vars.root(), config, heads)?);
        Ok(Model { vars, network })
    }

    /// The model's configuration.
    pub fn config(&self) -> ModelConfig {
        match &self.network {
            Network::Gpt(m) => ModelConfig::Gpt(m.config().clone()),
            Network::Bert(m) => ModelConfig::Bert(m.config().clone()),
        }
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vars.device()
    }

    /// Number of parameters.
    pub fn num_parameters(&self) -> i64 {
        self.vars.trainable_variables().iter().map(Tensor::numel).sum::<usize>() as i64
    }

    /// Every variable by name, sorted by name.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut all: Vec<_> = self.vars.variables().into_iter().collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Copies `tensors` into the variables of the same names, converting dtype and
    /// device. Every name, shape and value is checked first (known name, same shape,
    /// finite values): on error no variable has changed. Returns the names set.
    pub fn set_tensors(&self, tensors: &[(String, Tensor)]) -> Result<Vec<String>> {
        let vars = self.vars.variables();
        let mut plan = Vec::with_capacity(tensors.len());
        for (name, tensor) in tensors {
            let Some(var) = vars.get(name) else {
                let close = crate::suggest::did_you_mean(name, vars.keys().map(String::as_str));
                return invalid!("the model has no weight `{name}`{close}; `%weights` lists them");
            };
            if tensor.size() != var.size() {
                return invalid!("weight `{name}` has shape {:?}; the tensor given has shape {:?}", var.size(), tensor.size());
            }
            if !tensor.is_floating_point() {
                return invalid!("weight `{name}` needs floating-point values; the tensor given is {:?}", tensor.kind());
            }
            if !bool::try_from(tensor.f_isfinite()?.f_all()?)? {
                return Err(Error::NonFinite(format!("the tensor given for `{name}` holds NaN or infinite values; no weight was changed")));
            }
            plan.push((var.shallow_clone(), tensor.to_device(var.device()).to_kind(var.kind())));
        }
        copy_checked(&plan)?;
        Ok(tensors.iter().map(|(n, _)| n.clone()).collect())
    }

    /// A 64-bit FNV-1a hash of every variable's name, shape, dtype and bytes: equal
    /// exactly when the weights are bit for bit the same (tests use it to show that a
    /// failed command changed nothing).
    pub fn checksum(&self) -> Result<u64> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (name, t) in self.named_tensors() {
            let t = t.f_detach()?.f_to_device(Device::Cpu)?.f_contiguous()?;
            feed(name.as_bytes());
            feed(format!("{:?}{:?}", t.size(), t.kind()).as_bytes());
            let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut bytes, t.numel())?;
            feed(&bytes);
        }
        Ok(hash)
    }

    /// Converts every floating-point variable to `kind` (f32, bf16, f16).
    pub fn set_kind(&mut self, kind: Kind) {
        match kind {
            Kind::BFloat16 => self.vars.bfloat16(),
            Kind::Half => self.vars.half(),
            Kind::Double => self.vars.double(),
            _ => self.vars.float(),
        }
    }
}

/// Copies each tensor into its variable, without recording gradients. Callers check
/// every name and shape first, so that a failure leaves the model as it was.
pub(crate) fn copy_checked(plan: &[(Tensor, Tensor)]) -> Result<()> {
    tch::no_grad(|| {
        for (var, tensor) in plan {
            var.shallow_clone().f_copy_(tensor)?;
        }
        Ok(())
    })
}
