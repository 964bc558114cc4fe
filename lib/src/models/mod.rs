//! Model families and what they share: the registry of families, each family's
//! configuration read from `config.json`, a model that owns its variables, the task a
//! model serves, forward options and outputs.
//!
//! One file per family ([`gpt`], [`bert`], [`llama`], [`gemma3`], [`gpt_neox`], [`phi3`], [`t5`]), each readable top to bottom,
//! built from the shared layers in [`layers`] and [`attention`]. Adding a family is one
//! file that implements [`Architecture`] and [`Network`], and one line in [`FAMILIES`].
//! Everything outside this module (checkpoints, the trainer, generation, embeddings,
//! commands) works through those traits and [`Task`], never through a family's type.
//! This module does not load weights (that is [`crate::checkpoint`]) or train (that is
//! [`crate::train`]).

pub mod attention;
pub mod bart;
pub mod bert;
pub mod checkpointing;
pub mod gemma3;
pub mod gpt;
pub mod gpt_neox;
pub mod hooks;
pub mod layers;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod marian;
pub mod phi3;
pub mod prune;
pub mod quantize;
pub mod t5;

use std::path::Path;

use serde_json::Value;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

pub use layers::KvCache;

use crate::error::{invalid, Error, Result};

/// Every model family tchlab builds and loads. A checkpoint's `model_type` (or its
/// GGUF `general.architecture`) picks the entry.
pub const FAMILIES: &[&Family] =
    &[&gpt::FAMILY, &bert::FAMILY, &llama::FAMILY, &gemma3::FAMILY, &gpt_neox::FAMILY, &phi3::FAMILY, &t5::FAMILY, &bart::FAMILY, &marian::FAMILY];

/// One entry of the registry: the names a family answers to and how to read its
/// configuration. How to build it and name its weights is on its [`Architecture`].
pub struct Family {
    /// The name `%model` and messages use (`gpt`, `bert`, `llama`).
    pub name: &'static str,
    /// The `config.json` `model_type` values this family reads.
    pub model_types: &'static [&'static str],
    /// Reads a parsed `config.json` whose `model_type` is one of [`Family::model_types`].
    pub from_json: fn(&Value) -> Result<Box<dyn Architecture>>,
    /// The tasks a model of this family can serve.
    pub tasks: &'static [TaskKind],
    /// GGUF architectures (`general.architecture`) this family reads, with how.
    pub gguf: Option<&'static crate::formats::gguf::GgufFamily>,
    /// The layers `%lora` adapts when not told (peft's defaults for the architecture,
    /// `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING`).
    pub lora_targets: &'static [&'static str],
}

/// The family that reads `model_type`.
pub fn family_for(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().copied().find(|f| f.model_types.contains(&model_type))
}

/// What a model is for, apart from its family: the same Llama or BERT weights can serve
/// more than one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Next-token prediction: logits over the vocabulary at every position.
    LanguageModel,
    /// Hidden states only (sentence embeddings pool them); `pooler` when the checkpoint
    /// has BERT's pooler.
    Encoder {
        /// The model has a pooler over the first token.
        pooler: bool,
    },
    /// One label per sequence, from a head of `classes` outputs.
    Classification {
        /// Number of classes.
        classes: i64,
    },
    /// An encoder–decoder: the encoder reads a source ([`Network::encode`]), the decoder
    /// gives logits over the vocabulary at every target position.
    Seq2Seq,
}

/// A [`Task`] without its numbers, for what a family supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// [`Task::LanguageModel`].
    LanguageModel,
    /// [`Task::Encoder`].
    Encoder,
    /// [`Task::Classification`].
    Classification,
    /// [`Task::Seq2Seq`].
    Seq2Seq,
}

impl Task {
    /// The task without its numbers.
    pub fn kind(self) -> TaskKind {
        match self {
            Task::LanguageModel => TaskKind::LanguageModel,
            Task::Encoder { .. } => TaskKind::Encoder,
            Task::Classification { .. } => TaskKind::Classification,
            Task::Seq2Seq => TaskKind::Seq2Seq,
        }
    }

    /// The number of classes of a classifier.
    pub fn classes(self) -> Option<i64> {
        match self {
            Task::Classification { classes } => Some(classes),
            _ => None,
        }
    }
}

/// Options of a forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardOptions<'a> {
    /// Training mode: dropout is active.
    pub train: bool,
    /// Return every layer's attention probabilities.
    pub capture_attention: bool,
    /// Hooks that read and write activations at the named hook points.
    pub hooks: Option<&'a hooks::Hooks>,
    /// Gradient checkpointing: the pass recomputes each block in its own backward pass,
    /// which this runs on the output (see [`checkpointing`]).
    pub checkpoint: Option<checkpointing::Backward<'a>>,
}

/// How a language model reads its residual stream: the final norm, then the
/// unembedding. The logit lens reads every layer through it; direct logit attribution
/// uses it frozen at the last layer's scale, so that it is linear in each component.
pub struct Readout {
    /// The final norm's scale `(C,)`.
    pub weight: Tensor,
    /// Its shift (LayerNorm), `None` for RMSNorm.
    pub bias: Option<Tensor>,
    /// LayerNorm subtracts the mean; RMSNorm does not.
    pub centred: bool,
    /// The norm's epsilon.
    pub eps: f64,
    /// The unembedding `(vocab, C)`.
    pub unembed: Tensor,
}

impl Readout {
    /// `x` with the mean over features removed when the norm does that.
    pub fn centre(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.centred { x.f_sub(&x.f_mean_dim([-1].as_slice(), true, Kind::Float)?)? } else { x.shallow_clone() })
    }

    /// What the norm divides `x: (.., C)` by, `(.., 1)`.
    pub fn scale(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.centre(&x.f_to_kind(Kind::Float)?)?;
        Ok(x.f_pow_tensor_scalar(2)?.f_mean_dim([-1].as_slice(), true, Kind::Float)?.f_add_scalar(self.eps)?.f_sqrt()?)
    }

    /// Logits `(.., vocab)` for residual streams `x: (.., C)`.
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        let normal = self.centre(&x.f_to_kind(Kind::Float)?)?.f_div(&self.scale(x)?)?.f_mul(&self.weight.f_to_kind(Kind::Float)?)?;
        let normal = match &self.bias {
            Some(b) => normal.f_add(&b.f_to_kind(Kind::Float)?)?,
            None => normal,
        };
        Ok(normal.f_matmul(&self.unembed.f_to_kind(Kind::Float)?.f_transpose(0, 1)?)?)
    }

    /// The direction in the normalised stream whose dot product is token `token`'s
    /// logit (before the norm's shift): `weight ∘ unembed[token]`, `(C,)`.
    pub fn direction(&self, token: i64) -> Result<Tensor> {
        Ok(self.unembed.f_get(token)?.f_to_kind(Kind::Float)?.f_mul(&self.weight.f_to_kind(Kind::Float)?)?)
    }

    /// What the norm's shift adds to token `token`'s logit.
    pub fn bias_logit(&self, token: i64) -> Result<f64> {
        Ok(match &self.bias {
            Some(b) => b.f_to_kind(Kind::Float)?.f_dot(&self.unembed.f_get(token)?.f_to_kind(Kind::Float)?)?.double_value(&[]),
            None => 0.0,
        })
    }
}

/// What a forward pass returns, in every family.
#[derive(Debug)]
pub struct Output {
    /// Final hidden states `(B, T, H)` (after the final norm in pre-norm families).
    pub hidden: Tensor,
    /// The task's logits: `(B, T, vocab)` for a language model, `(B, classes)` for a
    /// classifier; `None` for an encoder.
    pub logits: Option<Tensor>,
    /// BERT's pooled first token `(B, H)`, when the model has a pooler.
    pub pooled: Option<Tensor>,
    /// Attention probabilities per layer, `(B, heads, T, T_total)` each, when asked for.
    pub attentions: Option<Vec<Tensor>>,
}

/// The sizes of a configuration that memory estimates and summaries need.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    /// Blocks.
    pub layers: i64,
    /// Width of the residual stream.
    pub width: i64,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads (fewer than `heads` with grouped-query attention).
    pub kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Width of the MLP's hidden layer.
    pub inner: i64,
    /// Token ids.
    pub vocab: i64,
    /// Rows of learned embeddings besides the tokens (positions, token types).
    pub extra_embeddings: i64,
    /// The MLP is gated (SwiGLU: three matrices instead of two).
    pub gated: bool,
    /// The LM head is a matrix of its own, not the token embedding.
    pub untied_head: bool,
}

/// A family's configuration: what `config.json` says, and how to build the network.
pub trait Architecture: std::fmt::Debug + Send + Sync {
    /// The registry entry.
    fn family(&self) -> &'static Family;
    /// `model_type` as `config.json` spells it.
    fn model_type(&self) -> &str;
    /// Checks the numbers fit together; the message names the offending keys.
    fn validate(&self) -> Result<()>;
    /// The sizes estimates need.
    fn dims(&self) -> Dims;
    /// The longest input the model takes.
    fn max_positions(&self) -> i64;
    /// The `config.json` that reads back to this configuration (without `architectures`).
    fn to_json(&self) -> Value;
    /// Builds the network's variables under `p`, freshly initialised.
    fn build(&self, p: &tch::nn::Path, task: Task) -> Result<Box<dyn Network>>;
    /// The task a checkpoint holding these tensors (by their file's names) serves.
    fn task_for_checkpoint(&self, _tensors: &[(String, Tensor)]) -> Task {
        Task::LanguageModel
    }
    /// A copy behind a new box.
    fn clone_box(&self) -> Box<dyn Architecture>;
    /// The padding id.
    fn pad_token_id(&self) -> i64 {
        0
    }
    /// Ids that end generation.
    fn eos_token_ids(&self) -> Vec<i64> {
        vec![]
    }
    /// Class names in index order, when the config names classes (`id2label`).
    fn labels(&self) -> Option<Vec<String>> {
        None
    }
    /// The id an encoder–decoder's decoder starts from; `None` for other models.
    fn decoder_start_token_id(&self) -> Option<i64> {
        None
    }
}

/// A built network: the forward pass and the names of its weights in checkpoints.
pub trait Network: Send {
    /// The configuration it was built with.
    fn config(&self) -> ModelConfig;
    /// The task it serves.
    fn task(&self) -> Task;
    /// Runs `ids: (B, T)`. `mask: (B, T)` marks real tokens (1) and padding (0) for
    /// encoders; decoders take a [`KvCache`] instead, holding the positions before `ids`.
    /// An encoder–decoder runs its decoder here, over target ids, with a cache that holds
    /// the encoder's output ([`KvCache::for_source`]).
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, cache: Option<&mut KvCache>) -> Result<Output>;
    /// An encoder–decoder's encoder: the final hidden states `(B, S, C)` of source ids
    /// `(B, S)` with their padding mask.
    fn encode(&self, _ids: &Tensor, _mask: Option<&Tensor>, _opts: &ForwardOptions) -> Result<Tensor> {
        invalid!("only an encoder–decoder encodes a source; this model reads its input in one pass")
    }
    /// The variable a Hugging Face checkpoint key fills, and whether it is stored
    /// transposed; `None` for keys that hold no parameter (buffers, a tied head).
    fn var_for_key(&self, key: &str) -> Option<(String, bool)>;
    /// The Hugging Face key of a variable, and whether it is saved transposed.
    fn key_for_var(&self, var: &str) -> (String, bool);
    /// A variable a checkpoint may lack, keeping its initial value (BART's
    /// `final_logits_bias`, zeros, which `BartModel` files do not hold).
    fn may_be_missing(&self, _var: &str) -> bool {
        false
    }
    /// `architectures[0]` in the `config.json` saved for it (`GPT2LMHeadModel`).
    fn architecture(&self) -> &'static str;
    /// The final norm and unembedding of a language model; `None` for encoders.
    fn readout(&self) -> Option<Readout> {
        None
    }
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
    /// `silu` (swish), the gate of Llama's SwiGLU.
    Silu,
}

impl Activation {
    /// Reads a `hidden_act` / `activation_function` value.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => invalid!("unknown activation `{other}`; tchlab knows gelu, gelu_new, gelu_pytorch_tanh, relu and silu"),
        }
    }

    /// Applies the activation elementwise.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Gelu => x.gelu("none"),
            Activation::GeluTanh => x.gelu("tanh"),
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
        }
    }
}

/// A configuration of any family.
pub struct ModelConfig(Box<dyn Architecture>);

impl Clone for ModelConfig {
    fn clone(&self) -> Self {
        ModelConfig(self.0.clone_box())
    }
}

impl std::fmt::Debug for ModelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl PartialEq for ModelConfig {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_json() == other.0.to_json()
    }
}

impl std::ops::Deref for ModelConfig {
    type Target = dyn Architecture;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl<A: Architecture + 'static> From<A> for ModelConfig {
    fn from(architecture: A) -> Self {
        ModelConfig(Box::new(architecture))
    }
}

impl ModelConfig {
    /// The family the model belongs to.
    pub fn family(&self) -> &'static Family {
        self.0.family()
    }

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

    /// Reads a parsed `config.json`, finding the family by its `model_type`.
    pub fn from_json(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let known = || FAMILIES.iter().flat_map(|f| f.model_types).map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(", ");
        if model_type.is_empty() {
            return invalid!("no `model_type`; tchlab reads model_type {}", known());
        }
        let Some(family) = family_for(model_type) else {
            return invalid!("unknown model_type \"{model_type}\"; tchlab knows {}", known());
        };
        let config = ModelConfig((family.from_json)(json)?);
        config.validate()?;
        Ok(config)
    }

    /// Number of token ids.
    pub fn vocab_size(&self) -> i64 {
        self.dims().vocab
    }

    /// About how many parameters a model of this configuration has: what is checked
    /// against the device's memory before the model is built.
    pub fn parameter_estimate(&self) -> f64 {
        let d = self.dims();
        let (w, inner) = (d.width as f64, d.inner as f64);
        let kv = (d.kv_heads * d.head_dim) as f64;
        let q = (d.heads * d.head_dim) as f64;
        let attention = w * q + 2.0 * w * kv + q * w + 2.0 * q + 2.0 * kv + w;
        let mlp = if d.gated { 3.0 * w * inner } else { 2.0 * w * inner + inner + w };
        let block = attention + mlp + 4.0 * w;
        let embeddings = (d.vocab + d.extra_embeddings) as f64 * w;
        let head = if d.untied_head { d.vocab as f64 * w } else { 0.0 };
        embeddings + d.layers as f64 * block + head + 2.0 * w
    }

    /// About how many bytes one training step's activations take for `batch` windows
    /// of `ctx` tokens in float32: hidden states and MLP activations kept for the
    /// backward pass, attention scores, and the logits with their gradient. With
    /// gradient checkpointing, each block keeps only its input and one block's
    /// activations live at a time.
    pub fn activation_estimate(&self, batch: usize, ctx: usize, checkpointing: bool) -> f64 {
        let d = self.dims();
        let (tokens, t) = (batch as f64 * ctx as f64, ctx as f64);
        let per_layer = 12.0 * d.width as f64 + 3.0 * d.inner as f64 + 3.0 * d.heads as f64 * t;
        let blocks = match checkpointing {
            true => d.layers as f64 * d.width as f64 + per_layer,
            false => d.layers as f64 * per_layer,
        };
        4.0 * tokens * (blocks + 3.0 * d.vocab as f64)
    }
}

/// A model with the variables it owns.
pub struct Model {
    /// Every parameter, named after the checkpoint keys.
    pub vars: VarStore,
    /// The network whose forward pass reads `vars`.
    pub network: Box<dyn Network>,
    /// Its linear layers, where adapters go ([`linear::collect`] found them as it built).
    linears: Vec<linear::LinearHandle>,
    /// The LoRA adapters it carries ([`lora`]).
    adapters: Option<lora::Adapters>,
    /// Names the weights of the base as they are now: it changes whenever they do
    /// (trained, merged into, set from outside), so that a snapshot that holds only the
    /// adapters is restored onto the base it was taken on and no other.
    base_version: std::sync::atomic::AtomicU64,
    /// How `generate` runs without being told: the checkpoint's
    /// `generation_config.json`, else its `config.json`'s generation keys.
    pub generation: crate::generation_config::GenerationConfig,
}

/// Versions of base weights, unique in the process.
static BASE_VERSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The largest width, vocabulary, context or head count a configuration may give:
/// beyond it, sizes stop being models and start being typos.
pub(crate) const MAX_DIMENSION: i64 = 1 << 24;
/// The most blocks a configuration may give.
pub(crate) const MAX_LAYERS: i64 = 1 << 12;

/// Reads a family's `config.json` into its configuration type; the message says which
/// family (`what`) and names the key whose value does not fit — found as the key without
/// which the file reads (or, for a required key, misses only that key), since serde's
/// messages do not name it.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(json: &Value, what: &str) -> Result<T> {
    let error = match serde_json::from_value::<T>(json.clone()) {
        Ok(config) => return Ok(config),
        Err(e) => e.to_string(),
    };
    let culprit = json.as_object().and_then(|fields| {
        fields.keys().find(|key| {
            let mut without = fields.clone();
            without.remove(*key);
            serde_json::from_value::<T>(Value::Object(without)).map_or_else(|e| e.to_string().starts_with(&format!("missing field `{key}`")), |_| true)
        })
    });
    match culprit {
        Some(key) => invalid!("{what} config: `{key}`: {error}"),
        None => invalid!("{what} config: {error}"),
    }
}

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
/// The ids a config's `eos_token_id` holds: a number, a list of them, or none.
pub(crate) fn token_ids(value: Option<&Value>) -> Vec<i64> {
    match value {
        Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_i64).collect(),
        Some(v) => v.as_i64().into_iter().collect(),
        None => vec![],
    }
}

/// `var_for_key` of the rotary decoders: every key is a variable of its own name, except
/// the rotary table transformers once saved and, when the head is tied, the head.
pub(crate) fn rotary_decoder_var(key: &str, tied_head: bool) -> Option<(String, bool)> {
    if key.ends_with("rotary_emb.inv_freq") || (key == "lm_head.weight" && tied_head) {
        return None;
    }
    Some((key.to_string(), false))
}

/// Checks what a causal decoder without padding is given: `ids: (B, T)` whose ids are in
/// its vocabulary, no mask, and the cache's `past` positions plus `T` within its context.
/// Returns `(T, past)`.
pub(crate) fn causal_input(
    ids: &Tensor,
    mask: Option<&Tensor>,
    cache: Option<&KvCache>,
    max_positions: i64,
    vocab_size: i64,
    model: &str,
) -> Result<(i64, i64)> {
    let t = match ids.size().as_slice() {
        &[_, t] => t,
        shape => return invalid!("input ids must be (batch, time), got shape {shape:?}"),
    };
    if mask.is_some() {
        return invalid!("a {model} model takes no padding mask here: it reads every position causally");
    }
    let past = cache.map_or(0, |c| c.len());
    if past + t > max_positions {
        return invalid!(
            "{} tokens do not fit the model's context of {max_positions} positions; shorten the input or build a model with a larger context",
            past + t
        );
    }
    check_ids(ids, vocab_size)?;
    Ok((t, past))
}

/// What both calls of an encoder–decoder check first: `ids: (B, T)` of its vocabulary,
/// and no gradient checkpointing, which does not cover these models. Returns `T`.
pub(crate) fn seq2seq_ids(ids: &Tensor, vocab_size: i64, what: &str, opts: &ForwardOptions) -> Result<i64> {
    let t = match ids.size().as_slice() {
        &[_, t] => t,
        shape => return invalid!("{what} ids must be (batch, time), got shape {shape:?}"),
    };
    if opts.checkpoint.is_some() {
        return invalid!("gradient checkpointing does not cover encoder–decoder models yet; `%set checkpointing=false`");
    }
    check_ids(ids, vocab_size)?;
    Ok(t)
}

/// The encoder's output an encoder–decoder's decoder reads from `cache`, or the error
/// saying where such a model runs; `mask` is the decoder's, which it does not take.
pub(crate) fn seq2seq_source<'a>(cache: Option<&'a KvCache>, mask: Option<&Tensor>, model: &str) -> Result<&'a layers::Source> {
    if mask.is_some() {
        return invalid!("{model}'s decoder takes no padding mask: it reads the target causally (the source's mask goes with the encoder)");
    }
    match cache.and_then(KvCache::source) {
        Some(source) => Ok(source),
        None => invalid!(
            "{model} is an encoder–decoder: it reads a source and writes a target, so it runs where there is a source (`%generate TEXT` reads TEXT as the source); what reads one text through one stack (training on text, `%attention`, `%logit-lens`, perplexity) does not run on it yet"
        ),
    }
}

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

thread_local! {
    /// Set while a model is built only to be filled from a checkpoint.
    static FILLED_FROM_CHECKPOINT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The initialisation of weights drawn from `N(0, stdev²)`, which every family uses.
/// While [`Model::for_checkpoint`] builds, weights start at zero instead: a strict load
/// overwrites every one, and drawing 100M random numbers takes a second.
pub(crate) fn normal(stdev: f64) -> tch::nn::Init {
    if FILLED_FROM_CHECKPOINT.with(std::cell::Cell::get) {
        tch::nn::Init::Const(0.0)
    } else {
        tch::nn::Init::Randn { mean: 0.0, stdev }
    }
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
    /// A freshly initialised model of `config` for `task` on `device`.
    pub fn new(config: impl Into<ModelConfig>, task: Task, device: Device) -> Result<Self> {
        let config = config.into();
        config.validate()?;
        if !config.family().tasks.contains(&task.kind()) {
            return invalid!("a {} model cannot serve {:?}; its family serves {:?}", config.model_type(), task.kind(), config.family().tasks);
        }
        crate::cuda::prepare(device);
        ensure_weights_fit(&config, device)?;
        let vars = VarStore::new(device);
        let (network, linears) = linear::collect(|| config.build(&vars.root(), task));
        let base_version = BASE_VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).into();
        let generation = crate::generation_config::GenerationConfig::from_model_config(&config.to_json());
        Ok(Model { network: network?, vars, linears, adapters: None, base_version, generation })
    }

    /// A model whose every weight a strict load is about to fill: built as
    /// [`Model::new`] builds it, without drawing random initial weights.
    pub fn for_checkpoint(config: impl Into<ModelConfig>, task: Task, device: Device) -> Result<Self> {
        struct Reset;
        impl Drop for Reset {
            fn drop(&mut self) {
                FILLED_FROM_CHECKPOINT.with(|f| f.set(false));
            }
        }
        FILLED_FROM_CHECKPOINT.with(|f| f.set(true));
        let _reset = Reset;
        Self::new(config, task, device)
    }

    /// The version of the base's weights (see [`Model::base_changed`]).
    pub fn base_version(&self) -> u64 {
        self.base_version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Says that the base's weights changed: they get a new version.
    pub fn base_changed(&self) {
        self.base_version.store(BASE_VERSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed), std::sync::atomic::Ordering::Relaxed);
    }

    /// Says that the base's weights are again those of version `version` (a snapshot of
    /// them was restored).
    pub fn set_base_version(&self, version: u64) {
        self.base_version.store(version, std::sync::atomic::Ordering::Relaxed);
    }

    /// The model's configuration.
    pub fn config(&self) -> ModelConfig {
        self.network.config()
    }

    /// The task the model serves.
    pub fn task(&self) -> Task {
        self.network.task()
    }

    /// An encoder–decoder's encoder (see [`Network::encode`]).
    pub fn encode(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<Tensor> {
        self.network.encode(ids, mask, opts)
    }

    /// An encoder–decoder's encoder over the source `ids` with their padding `mask`, as
    /// the cache its decoder reads the source through ([`KvCache::for_source`]).
    pub fn encode_source(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<KvCache> {
        let hidden = self.encode(ids, mask, opts)?;
        Ok(KvCache::for_source(layers::Source { hidden, mask: mask.map(Tensor::shallow_clone) }))
    }

    /// The forward pass (see [`Network::forward`]).
    pub fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, cache: Option<&mut KvCache>) -> Result<Output> {
        self.network.forward(ids, mask, opts, cache)
    }

    /// The device the variables live on.
    pub fn device(&self) -> Device {
        self.vars.device()
    }

    /// Number of parameters, adapters' included.
    pub fn num_parameters(&self) -> i64 {
        self.vars.variables().values().map(Tensor::numel).sum::<usize>() as i64
    }

    /// Number of parameters that train (all of them, or only the adapters').
    pub fn num_trainable(&self) -> i64 {
        self.vars.trainable_variables().iter().filter(|t| t.requires_grad()).map(Tensor::numel).sum::<usize>() as i64
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
        if tensors.iter().any(|(n, _)| !Self::is_adapter_variable(n)) {
            self.base_changed();
        }
        Ok(tensors.iter().map(|(n, _)| n.clone()).collect())
    }

    /// A 64-bit FNV-1a hash of every variable's name, shape, dtype and bytes: equal
    /// exactly when the weights are bit for bit the same (tests use it to show that a
    /// failed command changed nothing).
    pub fn checksum(&self) -> Result<u64> {
        self.checksum_of(|_| true)
    }

    /// [`Model::checksum`] of the variables whose names `keep` accepts (the frozen
    /// base alone, say).
    pub fn checksum_of(&self, keep: impl Fn(&str) -> bool) -> Result<u64> {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for &b in bytes {
                hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        for (name, t) in self.named_tensors().into_iter().filter(|(n, _)| keep(n)) {
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
        if self.vars.variables().values().any(|t| t.is_floating_point() && t.kind() != kind) {
            self.base_changed();
        }
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
