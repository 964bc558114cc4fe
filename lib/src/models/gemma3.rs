//! Gemma 3's text model (`Gemma3ForCausalLM`): pre- and post-norms around both the
//! attention and the MLP (four RMSNorms per block, each scaling by `1 + w`), RMSNorm on
//! queries and keys per head, queries scaled by `query_pre_attn_scalar^-½`, grouped-query
//! attention over a sliding window on local layers (five of every six) and over the whole
//! past on global ones, each kind with its own rotary base, a GeGLU MLP (tanh GELU),
//! embeddings multiplied by √hidden, a head tied to the embeddings.
//!
//! Paper: Gemma Team, "Gemma 3 Technical Report" (2025). Mirrors
//! `transformers/models/gemma3/modeling_gemma3.py` with eager attention, and llama.cpp's
//! `gemma3` graph for GGUF files ([`GGUF`]; see `../shared/NOTES-gemma3.md`). Variables
//! are named after the Hugging Face keys (`model.layers.0.self_attn.q_norm.weight`).
//!
//! `config.json` is read as transformers 4.x writes it (`rope_theta`,
//! `rope_local_base_freq`, `rope_scaling`, `sliding_window_pattern`) and as 5.x writes it
//! (`rope_parameters` per layer type, `layer_types`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::RotaryAttention;
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::layers::{GatedMlp, RmsNorm, Rotary};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Readout, Task, TaskKind};
use crate::error::{invalid, Error, Result};
use crate::formats::gguf::{GgufFamily, MetaValue, Metadata};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "gemma3",
    model_types: &["gemma3_text"],
    from_json: |json| Ok(Box::new(Gemma3Config::from_json(json)?)),
    tasks: &[TaskKind::LanguageModel],
    gguf: Some(&GGUF),
    lora_targets: &["q_proj", "v_proj"],
};

/// `config.json` of a Gemma 3 text model (`Gemma3TextConfig`), defaults as transformers'.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gemma3Config {
    /// `gemma3_text`.
    pub model_type: String,
    /// Number of token ids.
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Query heads per block.
    pub num_attention_heads: i64,
    /// Key/value heads per block.
    pub num_key_value_heads: i64,
    /// Width of one head (not `hidden_size / heads`: 256 in the 270M model of width 640).
    #[serde(default = "default_head_dim")]
    pub head_dim: i64,
    /// The gate's activation (`gelu_pytorch_tanh`).
    #[serde(default = "default_activation")]
    pub hidden_activation: String,
    /// The longest input.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The global layers' rotary base (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// The local layers' rotary base (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_local_base_freq: Option<f64>,
    /// The global layers' rotary scaling (transformers 4.x): `null` or `{"rope_type": "linear", "factor"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary settings per layer type (transformers 5.x):
    /// `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Scores are scaled by `query_pre_attn_scalar^-½`.
    #[serde(default = "default_head_dim")]
    pub query_pre_attn_scalar: i64,
    /// A local layer's query sees its own position and the `sliding_window − 1` before it.
    #[serde(default = "default_window")]
    pub sliding_window: i64,
    /// `sliding_attention` or `full_attention` per layer; when absent, every
    /// `sliding_window_pattern`-th layer is global (transformers' default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layer_types: Option<Vec<String>>,
    /// Logits become `c · tanh(logits / c)` (none in Gemma 3's releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_logit_softcapping: Option<f64>,
    /// Biases on the attention's projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The LM head is the token embedding.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(default = "default_bos", skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id, or a list of them.
    #[serde(default = "default_eos")]
    pub eos_token_id: Value,
    /// Padding id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_vocab() -> i64 {
    262_208
}
fn default_head_dim() -> i64 {
    256
}
fn default_activation() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_positions() -> i64 {
    131_072
}
fn default_eps() -> f64 {
    1e-6
}
fn default_window() -> i64 {
    4096
}
fn default_true() -> bool {
    true
}
fn default_init() -> f64 {
    0.02
}
fn default_bos() -> Option<i64> {
    Some(2)
}
fn default_eos() -> Value {
    1.into()
}

/// transformers' pattern when a config names none: every sixth layer is global.
const DEFAULT_PATTERN: i64 = 6;

/// The rotary settings of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Rope {
    theta: f64,
    /// `rope_type: linear`'s factor.
    linear: Option<f64>,
}

impl Gemma3Config {
    /// Reads a parsed `config.json` of either transformers generation.
    pub fn from_json(json: &Value) -> Result<Self> {
        let mut config: Gemma3Config = super::read_config(json, "Gemma 3")?;
        for key in ["torch_dtype", "dtype", "architectures"] {
            config.other.remove(key);
        }
        Ok(config)
    }

    /// Whether layer `i` attends over the sliding window (else over the whole past).
    pub fn is_local(&self, i: i64) -> bool {
        match &self.layer_types {
            Some(types) => types.get(i as usize).is_some_and(|t| t == "sliding_attention"),
            None => {
                let pattern = self.other.get("sliding_window_pattern").and_then(Value::as_i64).unwrap_or(DEFAULT_PATTERN);
                (i + 1) % pattern.max(1) != 0
            }
        }
    }

    /// The global and local layers' rotary settings, from 5.x's `rope_parameters` or 4.x's keys.
    fn ropes(&self) -> Result<(Rope, Rope)> {
        let read = |p: Option<&Value>, theta: f64, what: &str| -> Result<Rope> {
            let Some(p) = p.filter(|p| !p.is_null()) else { return Ok(Rope { theta, linear: None }) };
            let theta = p.get("rope_theta").and_then(Value::as_f64).unwrap_or(theta);
            match p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default") {
                "default" => Ok(Rope { theta, linear: None }),
                "linear" => match p.get("factor").and_then(Value::as_f64) {
                    Some(f) if f.is_finite() && f > 0.0 => Ok(Rope { theta, linear: Some(f) }),
                    _ => invalid!("the {what} layers' rope scaling `linear` needs a positive number `factor`"),
                },
                other => invalid!("the {what} layers' rope scaling of type `{other}` is not supported; tchlab reads `default` and `linear` for Gemma 3"),
            }
        };
        let global_theta = self.rope_theta.unwrap_or(1_000_000.0);
        let local_theta = self.rope_local_base_freq.unwrap_or(10_000.0);
        match &self.rope_parameters {
            Some(p) if p.get("full_attention").is_some() || p.get("sliding_attention").is_some() => {
                Ok((read(p.get("full_attention"), global_theta, "global")?, read(p.get("sliding_attention"), local_theta, "local")?))
            }
            Some(p) => Ok((read(Some(p), global_theta, "global")?, Rope { theta: local_theta, linear: None })),
            // 4.x: the scaling is the global layers'; the local ones always use the default.
            None => Ok((read(self.rope_scaling.as_ref(), global_theta, "global")?, Rope { theta: local_theta, linear: None })),
        }
    }
}

impl Architecture for Gemma3Config {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn model_type(&self) -> &str {
        &self.model_type
    }
    fn validate(&self) -> Result<()> {
        use super::{MAX_DIMENSION, MAX_LAYERS};
        super::check_dimensions(&[
            ("vocab_size", self.vocab_size, MAX_DIMENSION),
            ("hidden_size", self.hidden_size, MAX_DIMENSION),
            ("intermediate_size", self.intermediate_size, MAX_DIMENSION),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_DIMENSION),
            ("num_key_value_heads", self.num_key_value_heads, MAX_DIMENSION),
            ("head_dim", self.head_dim, MAX_DIMENSION),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar, i64::MAX),
            ("max_position_embeddings", self.max_position_embeddings, MAX_DIMENSION),
        ])?;
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return invalid!("`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})", self.num_attention_heads, self.num_key_value_heads);
        }
        if self.head_dim % 2 != 0 {
            return invalid!("`head_dim` ({}) must be even: rotary embeddings turn pairs of features", self.head_dim);
        }
        if self.sliding_window < 1 {
            return invalid!("`sliding_window` must be at least 1 (a query sees itself), got {}", self.sliding_window);
        }
        if let Some(types) = &self.layer_types {
            if types.len() as i64 != self.num_hidden_layers {
                return invalid!("`layer_types` has {} entries for {} layers", types.len(), self.num_hidden_layers);
            }
            if let Some(bad) = types.iter().find(|t| *t != "sliding_attention" && *t != "full_attention") {
                return invalid!("`layer_types` holds `{bad}`; each layer is `sliding_attention` or `full_attention`");
            }
        }
        if let Some(pattern) = self.other.get("sliding_window_pattern").filter(|p| !p.as_i64().is_some_and(|p| p >= 1)) {
            return invalid!("`sliding_window_pattern` must be a positive integer, got {pattern}");
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return invalid!("`rms_norm_eps` must be a finite number > 0, got {}", self.rms_norm_eps);
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return invalid!("`attention_dropout` must be a probability in [0, 1), got {}", self.attention_dropout);
        }
        if let Some(c) = self.final_logit_softcapping.filter(|c| !(*c > 0.0 && c.is_finite())) {
            return invalid!("`final_logit_softcapping` must be a finite number > 0 or null, got {c}");
        }
        for key in ["attn_logit_softcapping", "use_bidirectional_attention"] {
            if self.other.get(key).is_some_and(|v| !v.is_null() && *v != Value::Bool(false)) {
                return invalid!("Gemma 3 with `{key}` set is not supported (the released models have none)");
            }
        }
        let (global, local) = self.ropes()?;
        for (rope, what) in [(global, "rope_theta"), (local, "rope_local_base_freq")] {
            if !(rope.theta > 1.0 && rope.theta.is_finite()) {
                return invalid!("`{what}` must be a finite number > 1, got {}", rope.theta);
            }
        }
        if let Some(pad) = self.pad_token_id.filter(|p| !(0..self.vocab_size).contains(p)) {
            return invalid!("`pad_token_id` is {pad} but the vocabulary has ids 0..{}", self.vocab_size - 1);
        }
        Activation::parse(&self.hidden_activation)?;
        Ok(())
    }
    fn dims(&self) -> Dims {
        Dims {
            layers: self.num_hidden_layers,
            width: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            inner: self.intermediate_size,
            vocab: self.vocab_size,
            extra_embeddings: 0,
            gated: true,
            untied_head: !self.tie_word_embeddings,
        }
    }
    fn max_positions(&self) -> i64 {
        self.max_position_embeddings
    }
    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).expect("config serializes");
        json["torch_dtype"] = "float32".into();
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Gemma3::new(p, self)?))
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(0)
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        super::token_ids(Some(&self.eos_token_id))
    }
}

/// A block's attention: q/k norms always, scores scaled by `query_pre_attn_scalar^-½`,
/// the sliding window on a local layer.
fn attention(p: &nn::Path, c: &Gemma3Config, local: bool) -> RotaryAttention {
    let (h, hd) = (c.hidden_size, c.head_dim);
    let config = nn::LinearConfig { ws_init: super::normal(c.initializer_range), bs_init: Some(nn::Init::Const(0.0)), bias: c.attention_bias };
    let linear = |name: &str, i, o| Linear::new(&(p / name), i, o, config);
    RotaryAttention {
        q_proj: linear("q_proj", h, c.num_attention_heads * hd),
        k_proj: linear("k_proj", h, c.num_key_value_heads * hd),
        v_proj: linear("v_proj", h, c.num_key_value_heads * hd),
        o_proj: linear("o_proj", c.num_attention_heads * hd, h),
        q_norm: Some(RmsNorm::gemma(p / "q_norm", hd, c.rms_norm_eps)),
        k_norm: Some(RmsNorm::gemma(p / "k_norm", hd, c.rms_norm_eps)),
        heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: hd,
        scale: Some((c.query_pre_attn_scalar as f64).powf(-0.5)),
        dropout: c.attention_dropout,
        window: local.then_some(c.sliding_window),
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: RotaryAttention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: GatedMlp,
    post_feedforward_layernorm: RmsNorm,
}

/// A Gemma 3 language model (`Gemma3ForCausalLM`).
pub struct Gemma3 {
    config: Gemma3Config,
    embed_tokens: nn::Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// The LM head: `embed_tokens`'s weight when tied.
    lm_head: Linear,
    global_rotary: Rotary,
    local_rotary: Rotary,
}

impl Gemma3 {
    /// Builds the model's variables under `p`, initialised as transformers does (normal
    /// with `initializer_range`, norm offsets at zero).
    pub fn new(p: &nn::Path, config: &Gemma3Config) -> Result<Self> {
        config.validate()?;
        let activation = Activation::parse(&config.hidden_activation)?;
        let m = &(p / "model");
        let init = super::normal(config.initializer_range);
        let (width, eps) = (config.hidden_size, config.rms_norm_eps);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &(m / "layers" / i);
                Block {
                    input_layernorm: RmsNorm::gemma(l / "input_layernorm", width, eps),
                    self_attn: attention(&(l / "self_attn"), config, config.is_local(i)),
                    post_attention_layernorm: RmsNorm::gemma(l / "post_attention_layernorm", width, eps),
                    pre_feedforward_layernorm: RmsNorm::gemma(l / "pre_feedforward_layernorm", width, eps),
                    mlp: GatedMlp::new(&(l / "mlp"), width, config.intermediate_size, activation, false, init),
                    post_feedforward_layernorm: RmsNorm::gemma(l / "post_feedforward_layernorm", width, eps),
                }
            })
            .collect();
        let embed_tokens = nn::embedding(m / "embed_tokens", config.vocab_size, width, nn::EmbeddingConfig { ws_init: init, ..Default::default() });
        let lm_head = match config.tie_word_embeddings {
            true => Linear::tied_head(&(p / "lm_head"), &embed_tokens.ws),
            false => Linear::head(&(p / "lm_head"), width, config.vocab_size, nn::LinearConfig { ws_init: init, bs_init: None, bias: false }),
        };
        let rotary = |rope: Rope| {
            let r = Rotary::new(config.head_dim, rope.theta, None, p.device());
            match rope.linear {
                Some(factor) => r.linear(factor),
                None => r,
            }
        };
        let (global, local) = config.ropes()?;
        Ok(Gemma3 {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::gemma(m / "norm", width, eps),
            lm_head,
            global_rotary: rotary(global),
            local_rotary: rotary(local),
        })
    }
}

impl Network for Gemma3 {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::LanguageModel
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let c = &self.config;
        let (t, past) = super::causal_input(ids, mask, cache.as_deref(), c.max_position_embeddings, c.vocab_size, "Gemma 3")?;
        let global = self.global_rotary.cos_sin(past, t);
        let local = self.local_rotary.cos_sin(past, t);
        // √hidden in float32, then in the weights' dtype, as transformers rounds it.
        let weight = &self.embed_tokens.ws;
        let scale = Tensor::from((self.config.hidden_size as f32).sqrt()).to_device(weight.device()).to_kind(weight.kind());
        let x = opts.hook(Point::outside(Site::Embed), self.embed_tokens.forward(ids) * scale)?; // (B, T, C)
        let block = |i: usize, x: Tensor| {
            let block = &self.layers[i];
            let hook = |site, x| opts.hook(Point::block(i, site), x);
            let (cos, sin) = if block.self_attn.window.is_some() { &local } else { &global };
            let x = hook(Site::ResidPre, x)?;
            let normalized = hook(Site::Ln1Normalized, block.input_layernorm.forward(&x))?;
            let (a, probs) = block.self_attn.forward(&normalized, (cos, sin), &mut cache, i, opts)?;
            let h = hook(Site::ResidMid, &x + hook(Site::AttnOut, block.post_attention_layernorm.forward(&a))?)?;
            let normalized = hook(Site::Ln2Normalized, block.pre_feedforward_layernorm.forward(&h))?;
            let m = block.mlp.forward(&normalized, opts.train, |site, x| hook(site, x))?;
            Ok((hook(Site::ResidPost, &h + hook(Site::MlpOut, block.post_feedforward_layernorm.forward(&m))?)?, probs))
        };
        run_blocks(self.layers.len(), x, opts, block, |x, attentions| {
            let hidden = opts.hook(Point::outside(Site::LnFinal), self.norm.forward(&x))?;
            let mut logits = self.lm_head.forward_t(&hidden, opts.train)?;
            if let Some(c) = self.config.final_logit_softcapping {
                logits = (logits / c).tanh() * c;
            }
            Ok(Output { hidden, logits: Some(logits), pooled: None, attentions })
        })
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        super::rotary_decoder_var(key, self.config.tie_word_embeddings)
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        (var.to_string(), false)
    }
    fn readout(&self) -> Option<Readout> {
        // The logit lens reads through the final norm and head; a final soft-cap, which
        // Gemma 3's releases do not have, would bend logits it does not show.
        let unembed = self.lm_head.effective_weight().ok()?;
        Some(Readout { weight: self.norm.scale(), bias: None, centred: false, eps: self.config.rms_norm_eps, unembed })
    }
    fn architecture(&self) -> &'static str {
        "Gemma3ForCausalLM"
    }
}

/// How llama.cpp's `gemma3` GGUF files read: the config from the metadata, tensor
/// names, and the `+1` its converter added to every norm weight.
pub const GGUF: GgufFamily = GgufFamily {
    architectures: &["gemma3"],
    config: gguf_config,
    tensor_name: gguf_tensor_name,
    unpermute: |_, _, _| None,
    shift: gguf_shift,
    metadata: gguf_metadata,
    gguf_name: gguf_name_for,
};

/// `config.json` from a GGUF file's metadata. Keys the file does not hold take
/// llama.cpp's constants: the local rotary base 10,000, one global layer in six, queries
/// scaled by `key_length^-½`.
fn gguf_config(meta: &Metadata) -> Result<Value> {
    let int = |k: &str| meta.int(&format!("gemma3.{k}"));
    let heads = int("attention.head_count")?;
    let vocab = match int("vocab_size") {
        Ok(v) => v,
        Err(_) => meta.array_len("tokenizer.ggml.tokens")? as i64,
    };
    let head_dim = int("attention.key_length")?;
    let mut json = json!({
        "model_type": "gemma3_text",
        "vocab_size": vocab,
        "hidden_size": int("embedding_length")?,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": int("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
        "head_dim": head_dim,
        "query_pre_attn_scalar": head_dim,
        "max_position_embeddings": int("context_length")?,
        "rms_norm_eps": meta.float("gemma3.attention.layer_norm_rms_epsilon")?,
        "rope_theta": meta.float("gemma3.rope.freq_base").unwrap_or(1_000_000.0),
        "rope_local_base_freq": 10_000.0,
        "sliding_window": int("attention.sliding_window")?,
        "sliding_window_pattern": int("attention.sliding_window_pattern").unwrap_or(DEFAULT_PATTERN),
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": !meta.has_tensor("output.weight"),
    });
    if let Ok(cap) = meta.float("gemma3.final_logit_softcapping") {
        json["final_logit_softcapping"] = cap.into();
    }
    if let (Ok(kind), Ok(factor)) = (meta.string("gemma3.rope.scaling.type"), meta.float("gemma3.rope.scaling.factor")) {
        json["rope_scaling"] = json!({"rope_type": kind, "factor": factor});
    }
    crate::formats::gguf::set_special_token_ids(meta, &mut json);
    Ok(json)
}

/// A block's modules in llama.cpp and transformers. Unlike Llama's, `ffn_norm` is the
/// norm before the MLP, and two norms follow the attention and the MLP.
const GGUF_BLOCK_MODULES: [(&str, &str); 13] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("post_attention_norm", "post_attention_layernorm"),
    ("ffn_norm", "pre_feedforward_layernorm"),
    ("post_ffw_norm", "post_feedforward_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

fn gguf_tensor_name(name: &str) -> Option<String> {
    crate::formats::gguf::hf_name(name, &crate::formats::gguf::DECODER_TOP_TENSORS, &GGUF_BLOCK_MODULES)
}

fn gguf_name_for(name: &str) -> Option<String> {
    crate::formats::gguf::gguf_name(name, &crate::formats::gguf::DECODER_TOP_TENSORS, &GGUF_BLOCK_MODULES)
}

/// llama.cpp's converter stores every Gemma norm as `1 + w` (`norm_shift`); transformers'
/// reader subtracts the one again.
fn gguf_shift(name: &str) -> f64 {
    if name.ends_with("norm.weight") {
        1.0
    } else {
        0.0
    }
}

/// The model's metadata in a GGUF file, as llama.cpp's converter writes it (the inverse
/// of [`gguf_config`]).
fn gguf_metadata(config: &Value) -> Result<Vec<(String, MetaValue)>> {
    let c: Gemma3Config = serde_json::from_value(config.clone()).map_err(|e| Error::Invalid(format!("the model's config: {e}")))?;
    let (global, local) = c.ropes()?;
    if global.linear.is_some() || local.linear.is_some() || local.theta != 10_000.0 {
        return invalid!(
            "llama.cpp's gemma3 files hold only the global rotary base; this model's rotary settings ({global:?}, local {local:?}) would not read back"
        );
    }
    if c.query_pre_attn_scalar != c.head_dim {
        return invalid!("llama.cpp scales Gemma 3's queries by head_dim^-½; this model's query_pre_attn_scalar is {}", c.query_pre_attn_scalar);
    }
    let pattern: Vec<bool> = (0..c.num_hidden_layers).map(|i| c.is_local(i)).collect();
    let default: Vec<bool> = (0..c.num_hidden_layers).map(|i| (i + 1) % DEFAULT_PATTERN != 0).collect();
    if pattern != default {
        return invalid!("llama.cpp's gemma3 files assume one global layer in six; this model's layers are {:?}", c.layer_types);
    }
    let uint = |v: i64| MetaValue::Uint(v as u64);
    let key = |k: &str| format!("gemma3.{k}");
    let mut out = vec![
        ("general.architecture".into(), MetaValue::Str("gemma3".into())),
        (key("context_length"), uint(c.max_position_embeddings)),
        (key("embedding_length"), uint(c.hidden_size)),
        (key("block_count"), uint(c.num_hidden_layers)),
        (key("feed_forward_length"), uint(c.intermediate_size)),
        (key("attention.head_count"), uint(c.num_attention_heads)),
        (key("attention.head_count_kv"), uint(c.num_key_value_heads)),
        (key("attention.key_length"), uint(c.head_dim)),
        (key("attention.value_length"), uint(c.head_dim)),
        (key("attention.sliding_window"), uint(c.sliding_window)),
        (key("rope.freq_base"), MetaValue::Float(global.theta)),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::Float(c.rms_norm_eps)),
    ];
    if let Some(cap) = c.final_logit_softcapping {
        out.push((key("final_logit_softcapping"), MetaValue::Float(cap)));
    }
    Ok(out)
}
