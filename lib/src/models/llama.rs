//! Llama-style decoders: Llama 2 and 3.x (with Llama 3.1's `llama3` rotary scaling),
//! SmolLM2, Qwen2 (biases on q, k and v), Qwen3 (RMSNorm on q and k per head, an
//! explicit `head_dim`) and Mistral (attention over a sliding window of the last
//! `sliding_window` positions). Pre-RMSNorm blocks, grouped-query causal attention with
//! rotary positions, a SwiGLU MLP, an LM head tied to the embeddings or not.
//!
//! Papers: Touvron et al., "LLaMA" (2023) and "Llama 2" (2023); Grattafiori et al.,
//! "The Llama 3 Herd of Models" (2024). Mirrors `transformers/models/llama/modeling_llama.py`
//! (`LlamaForCausalLM`), `qwen2/modeling_qwen2.py`, `qwen3/modeling_qwen3.py` and
//! `mistral/modeling_mistral.py` with eager attention. Variables are named after the
//! Hugging Face checkpoint keys (`model.layers.0.self_attn.q_proj.weight`); GGUF files
//! (llama.cpp's names) are mapped in [`GGUF`].
//!
//! `config.json` is read as transformers 4.x writes it (`rope_theta`, `rope_scaling`,
//! `torch_dtype`) and as 5.x writes it (`rope_parameters`, `dtype`).
//!
//! ```no_run
//! use tchlab::models::{llama::LlamaConfig, Model, Task};
//! let config = LlamaConfig::small(256, 128, 4, 4, 2, 128);
//! let model = Model::new(config, Task::LanguageModel, tch::Device::Cpu).unwrap();
//! ```

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::RotaryAttention;
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::layers::{GatedMlp, Llama3Scaling, RmsNorm, Rotary};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Readout, Task, TaskKind};
use crate::error::{invalid, Error, Result};
use crate::formats::gguf::{GgufFamily, MetaValue, Metadata};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "llama",
    model_types: &["llama", "qwen2", "qwen3", "mistral"],
    from_json: |json| Ok(Box::new(LlamaConfig::from_json(json)?)),
    tasks: &[TaskKind::LanguageModel],
    gguf: Some(&GGUF),
    lora_targets: &["q_proj", "v_proj"],
};

/// `config.json` of a Llama, Qwen2, Qwen3 or Mistral checkpoint, with the keys `transformers` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `qwen2`, `qwen3` or `mistral`: which variant of the block.
    pub model_type: String,
    /// Number of token ids.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Query heads per block.
    pub num_attention_heads: i64,
    /// Key/value heads per block (grouped-query attention when fewer than the query heads).
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    /// Width of one head; `hidden_size / num_attention_heads` when absent (Qwen3 states it).
    #[serde(default)]
    pub head_dim: Option<i64>,
    /// The gate's activation (`silu`).
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    /// The longest input.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// The rotary base (transformers 4.x; 5.x puts it in `rope_parameters`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// Rotary scaling (transformers 4.x): `null`, or `{"rope_type": "llama3", ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary settings (transformers 5.x): `{"rope_type", "rope_theta", ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Biases on the q, k, v and output projections (Llama); Qwen2 has them on q, k, v always.
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on the MLP's projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Mistral: each query sees its own position and the `sliding_window − 1` before it
    /// (`null`: the whole past). Qwen2 writes one too, used only with
    /// `use_sliding_window`, which is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<i64>,
    /// The LM head is the token embedding (no `lm_head.weight` in the checkpoint).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<Value>,
    /// End-of-sequence id, or a list of them (Llama 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// Padding id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_activation() -> String {
    "silu".into()
}
fn default_positions() -> i64 {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_init() -> f64 {
    0.02
}

/// The variant of the block a `model_type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
}

impl LlamaConfig {
    /// A configuration for training from scratch: `layers` blocks of width `dim`,
    /// `heads` query heads sharing `kv_heads` key/value heads, an MLP of `8/3 dim`
    /// (rounded up to a multiple of 8), a tied head.
    pub fn small(vocab_size: i64, ctx: i64, layers: i64, heads: i64, kv_heads: i64, dim: i64) -> Self {
        let inner = (8 * dim / 3 + 7) / 8 * 8;
        LlamaConfig {
            model_type: "llama".into(),
            vocab_size,
            hidden_size: dim,
            intermediate_size: inner.max(8),
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            hidden_act: default_activation(),
            max_position_embeddings: ctx,
            rms_norm_eps: 1e-5,
            rope_theta: Some(10_000.0),
            rope_scaling: None,
            rope_parameters: None,
            attention_bias: false,
            mlp_bias: false,
            attention_dropout: 0.0,
            sliding_window: None,
            tie_word_embeddings: true,
            initializer_range: default_init(),
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            other: Map::new(),
        }
    }

    /// Reads a parsed `config.json` of either transformers generation.
    pub fn from_json(json: &Value) -> Result<Self> {
        let mut config: LlamaConfig = super::read_config(json, "Llama-style")?;
        // The dtype the weights were saved in says nothing about the model; saves write their own.
        config.other.remove("torch_dtype");
        config.other.remove("dtype");
        config.other.remove("architectures");
        if config.model_type == "qwen3" && config.head_dim.is_none() {
            config.head_dim = Some(128); // Qwen3Config's default
        }
        Ok(config)
    }

    fn variant(&self) -> Variant {
        match self.model_type.as_str() {
            "qwen2" => Variant::Qwen2,
            "qwen3" => Variant::Qwen3,
            "mistral" => Variant::Mistral,
            _ => Variant::Llama,
        }
    }

    /// The attention's window: Mistral's `sliding_window`, none for the others.
    fn window(&self) -> Option<i64> {
        self.sliding_window.filter(|_| self.variant() == Variant::Mistral)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The rotary base and scaling, from 5.x's `rope_parameters` or 4.x's keys.
    pub fn rope(&self) -> Result<(f64, Option<Llama3Scaling>)> {
        let parameters = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref()).filter(|v| !v.is_null());
        let theta = parameters.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(self.rope_theta).unwrap_or(10_000.0);
        let Some(p) = parameters else { return Ok((theta, None)) };
        let kind = p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str).unwrap_or("default");
        match kind {
            "default" => Ok((theta, None)),
            "llama3" => {
                let number = |key: &str| -> Result<f64> {
                    match p.get(key).and_then(Value::as_f64) {
                        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
                        _ => invalid!("rope scaling `llama3` needs a positive number `{key}`"),
                    }
                };
                let scaling = Llama3Scaling {
                    factor: number("factor")?,
                    low_freq_factor: number("low_freq_factor")?,
                    high_freq_factor: number("high_freq_factor")?,
                    original_max_position_embeddings: number("original_max_position_embeddings")?,
                };
                if scaling.high_freq_factor <= scaling.low_freq_factor {
                    return invalid!("rope scaling `llama3` needs high_freq_factor > low_freq_factor");
                }
                Ok((theta, Some(scaling)))
            }
            other => invalid!("rope scaling of type `{other}` is not supported; tchlab reads `default` and `llama3`"),
        }
    }
}

impl Architecture for LlamaConfig {
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
            ("num_key_value_heads", self.kv_heads(), MAX_DIMENSION),
            ("head_dim", self.head_dim(), MAX_DIMENSION),
            ("max_position_embeddings", self.max_position_embeddings, MAX_DIMENSION),
        ])?;
        if self.num_attention_heads % self.kv_heads() != 0 {
            return invalid!("`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})", self.num_attention_heads, self.kv_heads());
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            return invalid!("`hidden_size` ({}) must be a multiple of `num_attention_heads` ({})", self.hidden_size, self.num_attention_heads);
        }
        if self.head_dim() % 2 != 0 {
            return invalid!("`head_dim` ({}) must be even: rotary embeddings turn pairs of features", self.head_dim());
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return invalid!("`rms_norm_eps` must be a finite number > 0, got {}", self.rms_norm_eps);
        }
        if !(0.0..1.0).contains(&self.attention_dropout) {
            return invalid!("`attention_dropout` must be a probability in [0, 1), got {}", self.attention_dropout);
        }
        let (theta, _) = self.rope()?;
        if !(theta > 1.0 && theta.is_finite()) {
            return invalid!("`rope_theta` must be a finite number > 1, got {theta}");
        }
        if let Some(pad) = self.pad_token_id.filter(|p| !(0..self.vocab_size).contains(p)) {
            return invalid!("`pad_token_id` is {pad} but the vocabulary has ids 0..{}", self.vocab_size - 1);
        }
        if let Some(w) = self.window().filter(|w| *w < 1) {
            return invalid!("`sliding_window` must be at least 1 (a query sees itself), got {w}; `null` for attention over the whole past");
        }
        if self.variant() == Variant::Qwen2 && self.other.get("use_sliding_window") == Some(&Value::Bool(true)) {
            return invalid!("Qwen2 with `use_sliding_window: true` (a window on some layers) is not supported; set it to false to attend over the whole past");
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }
    fn dims(&self) -> Dims {
        Dims {
            layers: self.num_hidden_layers,
            width: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.kv_heads(),
            head_dim: self.head_dim(),
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
        if self.num_key_value_heads.is_none() {
            json["num_key_value_heads"] = self.kv_heads().into();
        }
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Llama::new(p, self)?))
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.pad_token_id.unwrap_or(0)
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        super::token_ids(self.eos_token_id.as_ref())
    }
}

/// The block's attention as this variant builds it.
fn attention(p: &nn::Path, c: &LlamaConfig) -> RotaryAttention {
    let (h, hd) = (c.hidden_size, c.head_dim());
    let variant = c.variant();
    let qkv_bias = c.attention_bias || variant == Variant::Qwen2;
    let linear = |name: &str, i, o, bias| Linear::new(&(p / name), i, o, linear_init(c, bias));
    let norm = |name: &str| (variant == Variant::Qwen3).then(|| RmsNorm::new(p / name, hd, c.rms_norm_eps));
    RotaryAttention {
        q_proj: linear("q_proj", h, c.num_attention_heads * hd, qkv_bias),
        k_proj: linear("k_proj", h, c.kv_heads() * hd, qkv_bias),
        v_proj: linear("v_proj", h, c.kv_heads() * hd, qkv_bias),
        o_proj: linear("o_proj", c.num_attention_heads * hd, h, c.attention_bias),
        q_norm: norm("q_norm"),
        k_norm: norm("k_norm"),
        heads: c.num_attention_heads,
        kv_heads: c.kv_heads(),
        head_dim: hd,
        scale: None,
        dropout: c.attention_dropout,
        window: c.window(),
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: RotaryAttention,
    post_attention_layernorm: RmsNorm,
    mlp: GatedMlp,
}

/// A Llama-style language model (`LlamaForCausalLM`, `Qwen2ForCausalLM`, `Qwen3ForCausalLM`).
pub struct Llama {
    config: LlamaConfig,
    embed_tokens: nn::Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    /// The LM head: a weight of its own, or `embed_tokens`'s when tied.
    lm_head: Linear,
    rotary: Rotary,
}

impl Llama {
    /// Builds the model's variables under `p`, initialised as transformers does
    /// (normal with `initializer_range`, norms at one).
    pub fn new(p: &nn::Path, config: &LlamaConfig) -> Result<Self> {
        config.validate()?;
        let activation = Activation::parse(&config.hidden_act)?;
        let m = &(p / "model");
        let init = super::normal(config.initializer_range);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &(m / "layers" / i);
                Block {
                    input_layernorm: RmsNorm::new(l / "input_layernorm", config.hidden_size, config.rms_norm_eps),
                    self_attn: attention(&(l / "self_attn"), config),
                    post_attention_layernorm: RmsNorm::new(l / "post_attention_layernorm", config.hidden_size, config.rms_norm_eps),
                    mlp: GatedMlp::new(&(l / "mlp"), config.hidden_size, config.intermediate_size, activation, config.mlp_bias, init),
                }
            })
            .collect();
        let (theta, scaling) = config.rope()?;
        let embed_tokens =
            nn::embedding(m / "embed_tokens", config.vocab_size, config.hidden_size, nn::EmbeddingConfig { ws_init: init, ..Default::default() });
        let lm_head = match config.tie_word_embeddings {
            true => Linear::tied_head(&(p / "lm_head"), &embed_tokens.ws),
            false => Linear::head(&(p / "lm_head"), config.hidden_size, config.vocab_size, linear_init(config, false)),
        };
        Ok(Llama {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm::new(m / "norm", config.hidden_size, config.rms_norm_eps),
            lm_head,
            rotary: Rotary::new(config.head_dim(), theta, scaling, p.device()),
        })
    }
}

impl Network for Llama {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::LanguageModel
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let c = &self.config;
        let (t, past) = super::causal_input(ids, mask, cache.as_deref(), c.max_position_embeddings, c.vocab_size, &self.config.model_type)?;
        let (cos, sin) = self.rotary.cos_sin(past, t);
        let x = opts.hook(Point::outside(Site::Embed), self.embed_tokens.forward(ids))?; // (B, T, C)
        let block = |i: usize, x: Tensor| {
            let block = &self.layers[i];
            let hook = |site, x| opts.hook(Point::block(i, site), x);
            let x = hook(Site::ResidPre, x)?;
            let (a, probs) = block.self_attn.forward(&hook(Site::Ln1Normalized, block.input_layernorm.forward(&x))?, (&cos, &sin), &mut cache, i, opts)?;
            let h = hook(Site::ResidMid, &x + hook(Site::AttnOut, a)?)?;
            let m = block.mlp.forward(&hook(Site::Ln2Normalized, block.post_attention_layernorm.forward(&h))?, opts.train, |site, x| hook(site, x))?;
            Ok((hook(Site::ResidPost, &h + hook(Site::MlpOut, m)?)?, probs))
        };
        run_blocks(self.layers.len(), x, opts, block, |x, attentions| {
            let hidden = opts.hook(Point::outside(Site::LnFinal), self.norm.forward(&x))?;
            let logits = self.lm_head.forward_t(&hidden, opts.train)?;
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
        let unembed = self.lm_head.effective_weight().ok()?;
        Some(Readout { weight: self.norm.scale(), bias: None, centred: false, eps: self.config.rms_norm_eps, unembed })
    }
    fn architecture(&self) -> &'static str {
        match self.config.variant() {
            Variant::Llama => "LlamaForCausalLM",
            Variant::Qwen2 => "Qwen2ForCausalLM",
            Variant::Qwen3 => "Qwen3ForCausalLM",
            Variant::Mistral => "MistralForCausalLM",
        }
    }
}

fn linear_init(c: &LlamaConfig, bias: bool) -> nn::LinearConfig {
    nn::LinearConfig { ws_init: super::normal(c.initializer_range), bs_init: Some(nn::Init::Const(0.0)), bias }
}

/// How llama.cpp's GGUF files of these architectures read: the config from the
/// metadata, tensor names, and the Q/K row order.
pub const GGUF: GgufFamily = GgufFamily {
    architectures: &["llama", "qwen2", "qwen3"],
    config: gguf_config,
    tensor_name: gguf_tensor_name,
    unpermute: gguf_unpermute,
    shift: |_| 0.0,
    metadata: gguf_metadata,
    gguf_name: gguf_name_for,
};

/// `config.json` from a GGUF file's metadata, as transformers' GGUF loader makes it.
fn gguf_config(meta: &Metadata) -> Result<Value> {
    let arch = meta.string("general.architecture")?;
    let key = |k: &str| format!("{arch}.{k}");
    let int = |k: &str| meta.int(&key(k));
    let layers = int("block_count")?;
    let heads = int("attention.head_count")?;
    let width = int("embedding_length")?;
    let vocab = match meta.int(&key("vocab_size")) {
        Ok(v) => v,
        Err(_) => meta.array_len("tokenizer.ggml.tokens")? as i64,
    };
    let mut json = json!({
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.int(&key("attention.head_count_kv")).unwrap_or(heads),
        "max_position_embeddings": int("context_length")?,
        "rms_norm_eps": meta.float(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.float(&key("rope.freq_base")).unwrap_or(10_000.0),
        "hidden_act": "silu",
        "tie_word_embeddings": !meta.has_tensor("output.weight"),
    });
    if let Ok(head_dim) = meta.int(&key("attention.key_length")) {
        json["head_dim"] = head_dim.into();
    }
    crate::formats::gguf::set_special_token_ids(meta, &mut json);
    Ok(json)
}

/// A block's modules in llama.cpp (`blk.N.attn_q`) and transformers (`model.layers.N.self_attn.q_proj`).
const GGUF_BLOCK_MODULES: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
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

/// The model's metadata in a GGUF file, as llama.cpp's converter writes it (the inverse
/// of [`gguf_config`]).
fn gguf_metadata(config: &Value) -> Result<Vec<(String, MetaValue)>> {
    let c: LlamaConfig = serde_json::from_value(config.clone()).map_err(|e| Error::Invalid(format!("the model's config: {e}")))?;
    let arch = c.model_type.as_str();
    if !GGUF.architectures.contains(&arch) {
        return invalid!("GGUF files of `{arch}` models are not written; tchlab writes {}", GGUF.architectures.join(", "));
    }
    let (theta, scaling) = c.rope()?;
    if scaling.is_some() {
        return invalid!("the model scales its rotary embeddings (llama3 rope scaling), which tchlab does not write to GGUF yet");
    }
    let uint = |v: i64| MetaValue::Uint(v as u64);
    let key = |k: &str| format!("{arch}.{k}");
    Ok(vec![
        ("general.architecture".into(), MetaValue::Str(arch.into())),
        (key("vocab_size"), uint(c.vocab_size)),
        (key("context_length"), uint(c.max_position_embeddings)),
        (key("embedding_length"), uint(c.hidden_size)),
        (key("block_count"), uint(c.num_hidden_layers)),
        (key("feed_forward_length"), uint(c.intermediate_size)),
        (key("attention.head_count"), uint(c.num_attention_heads)),
        (key("attention.head_count_kv"), uint(c.kv_heads())),
        (key("attention.key_length"), uint(c.head_dim())),
        (key("attention.value_length"), uint(c.head_dim())),
        (key("rope.dimension_count"), uint(c.head_dim())),
        (key("rope.freq_base"), MetaValue::Float(theta)),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::Float(c.rms_norm_eps)),
    ])
}

/// How many heads' rows llama.cpp interleaved for rotary embeddings in this tensor
/// (its converter permutes Q and K of `llama` models only), for transformers' undoing.
fn gguf_unpermute(arch: &str, name: &str, meta: &Metadata) -> Option<i64> {
    if arch != "llama" {
        return None;
    }
    if name.ends_with(".attn_q.weight") || name.ends_with(".attn_q.bias") {
        return meta.int("llama.attention.head_count").ok();
    }
    if name.ends_with(".attn_k.weight") || name.ends_with(".attn_k.bias") {
        return meta.int("llama.attention.head_count_kv").or_else(|_| meta.int("llama.attention.head_count")).ok();
    }
    None
}
