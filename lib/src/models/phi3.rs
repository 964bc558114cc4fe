//! Phi-3 and Phi-4-mini (`Phi3ForCausalLM`): a Llama-style decoder whose query, key and
//! value projections are one matrix (`qkv_proj`) and whose MLP's gate and up
//! projections are one (`gate_up_proj`), rotary positions on the first
//! `partial_rotary_factor` of each head, an optional sliding window, dropout on each
//! residual branch. The long-context rotary scalings (`longrope`, `su`, `yarn`) are
//! refused by name.
//!
//! Paper: Abdin et al., "Phi-3 Technical Report" (2024). Mirrors
//! `transformers/models/phi3/modeling_phi3.py` with eager attention. Variables are named
//! after the Hugging Face keys (`model.layers.0.self_attn.qkv_proj.weight`). llama.cpp's
//! `phi3` GGUF files keep both fused matrices as they are (`attn_qkv`, `ffn_up`) and turn
//! rotary pairs as transformers does (NeoX order), so no rows move either way.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{attend, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::layers::{cached, RmsNorm, Rotary};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Readout, Task, TaskKind};
use crate::error::{invalid, Error, Result};
use crate::formats::gguf::{GgufFamily, MetaValue, Metadata};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "phi3",
    model_types: &["phi3"],
    from_json: |json| Ok(Box::new(Phi3Config::from_json(json)?)),
    tasks: &[TaskKind::LanguageModel],
    gguf: Some(&GGUF),
    lora_targets: &["qkv_proj"],
};

/// `config.json` of a Phi-3 checkpoint, defaults as `Phi3Config`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phi3Config {
    /// `phi3`.
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
    /// Key/value heads per block (the query heads' number when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<i64>,
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
    /// Rotary scaling (4.x); only `null` or `default` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// Rotary settings (5.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// The share of each head's features rotary embeddings turn.
    #[serde(default = "default_share")]
    pub partial_rotary_factor: f64,
    /// A query sees its own position and the `sliding_window − 1` before it (`null`: the whole past).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<i64>,
    /// Dropout on each residual branch.
    #[serde(default)]
    pub resid_pdrop: f64,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// The LM head is the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// End-of-sequence id, or a list of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// Padding id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<i64>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_vocab() -> i64 {
    32_064
}
fn default_activation() -> String {
    "silu".into()
}
fn default_positions() -> i64 {
    4096
}
fn default_eps() -> f64 {
    1e-5
}
fn default_share() -> f64 {
    1.0
}
fn default_init() -> f64 {
    0.02
}

impl Phi3Config {
    /// Reads a parsed `config.json` of either transformers generation.
    pub fn from_json(json: &Value) -> Result<Self> {
        let mut config: Phi3Config = super::read_config(json, "Phi-3")?;
        for key in ["torch_dtype", "dtype", "architectures"] {
            config.other.remove(key);
        }
        Ok(config)
    }

    fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    fn head_dim(&self) -> i64 {
        self.other.get("head_dim").and_then(Value::as_i64).unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    fn theta(&self) -> f64 {
        self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).or(self.rope_theta).unwrap_or(10_000.0)
    }

    /// Features per head that rotary embeddings turn.
    fn rotary_dims(&self) -> Result<i64> {
        super::layers::partial_rotary_dims("partial_rotary_factor", self.partial_rotary_factor, self.head_dim())
    }
}

impl Architecture for Phi3Config {
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
        self.rotary_dims()?;
        let scaling = [&self.rope_scaling, &self.rope_parameters]
            .into_iter()
            .flatten()
            .find_map(|p| p.get("rope_type").or_else(|| p.get("type")).and_then(Value::as_str));
        if let Some(kind) = scaling.filter(|k| *k != "default") {
            return invalid!(
                "Phi-3's rope scaling `{kind}` (the long-context models') is not supported; tchlab reads the 4k-context models' default rotary embeddings"
            );
        }
        let theta = self.theta();
        if !(theta > 1.0 && theta.is_finite()) {
            return invalid!("`rope_theta` must be a finite number > 1, got {theta}");
        }
        if let Some(w) = self.sliding_window.filter(|w| *w < 1) {
            return invalid!("`sliding_window` must be at least 1 (a query sees itself), got {w}; `null` for attention over the whole past");
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return invalid!("`rms_norm_eps` must be a finite number > 0, got {}", self.rms_norm_eps);
        }
        for (name, p) in [("resid_pdrop", self.resid_pdrop), ("attention_dropout", self.attention_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return invalid!("`{name}` must be a probability in [0, 1), got {p}");
            }
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
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Phi3::new(p, self)?))
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.pad_token_id.filter(|p| (0..self.vocab_size).contains(p)).unwrap_or(0)
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        super::token_ids(self.eos_token_id.as_ref())
    }
}

struct Attention {
    /// Queries of every head, then keys, then values.
    qkv_proj: Linear,
    o_proj: Linear,
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    dropout: f64,
    window: Option<i64>,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        rotary: (&Tensor, &Tensor),
        cache: &mut Option<&mut KvCache>,
        layer: usize,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.size3()?;
        let hook = |site, x| opts.hook(Point::block(layer, site), x);
        let qkv = self.qkv_proj.forward_t(x, opts.train)?;
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let heads = |start: i64, n: i64| qkv.narrow(-1, start, n * self.head_dim).view([b, t, n, self.head_dim]).transpose(1, 2);
        let (cos, sin) = rotary;
        let q = hook(Site::RotQ, Rotary::apply(&hook(Site::Q, heads(0, self.heads))?, cos, sin))?;
        let k = hook(Site::RotK, Rotary::apply(&hook(Site::K, heads(q_width, self.kv_heads))?, cos, sin))?;
        let v = hook(Site::V, heads(q_width + kv_width, self.kv_heads))?;
        let (k, v) = cached(cache, layer, k, v);
        let dropout = if opts.train { self.dropout } else { 0.0 };
        attend(&q, &k, &v, self.window.map_or(Mask::Causal, Mask::SlidingWindow), None, dropout, &self.o_proj, layer, opts)
    }
}

struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    /// The gate's and the up projection's rows, one after the other.
    gate_up_proj: Linear,
    down_proj: Linear,
}

/// A Phi-3 language model (`Phi3ForCausalLM`).
pub struct Phi3 {
    config: Phi3Config,
    activation: Activation,
    embed_tokens: nn::Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: Rotary,
}

impl Phi3 {
    /// Builds the model's variables under `p`, initialised as transformers does.
    pub fn new(p: &nn::Path, config: &Phi3Config) -> Result<Self> {
        config.validate()?;
        let m = &(p / "model");
        let init = super::normal(config.initializer_range);
        let linear = |path: &nn::Path, i, o| Linear::new(path, i, o, nn::LinearConfig { ws_init: init, bs_init: None, bias: false });
        let (h, hd, inner, eps) = (config.hidden_size, config.head_dim(), config.intermediate_size, config.rms_norm_eps);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &(m / "layers" / i);
                let a = &(l / "self_attn");
                Block {
                    input_layernorm: RmsNorm::new(l / "input_layernorm", h, eps),
                    self_attn: Attention {
                        qkv_proj: linear(&(a / "qkv_proj"), h, (config.num_attention_heads + 2 * config.kv_heads()) * hd),
                        o_proj: linear(&(a / "o_proj"), config.num_attention_heads * hd, h),
                        heads: config.num_attention_heads,
                        kv_heads: config.kv_heads(),
                        head_dim: hd,
                        dropout: config.attention_dropout,
                        window: config.sliding_window,
                    },
                    post_attention_layernorm: RmsNorm::new(l / "post_attention_layernorm", h, eps),
                    gate_up_proj: linear(&(l / "mlp" / "gate_up_proj"), h, 2 * inner),
                    down_proj: linear(&(l / "mlp" / "down_proj"), inner, h),
                }
            })
            .collect();
        let embed_tokens = nn::embedding(m / "embed_tokens", config.vocab_size, h, nn::EmbeddingConfig { ws_init: init, ..Default::default() });
        let lm_head = match config.tie_word_embeddings {
            true => Linear::tied_head(&(p / "lm_head"), &embed_tokens.ws),
            false => Linear::head(&(p / "lm_head"), h, config.vocab_size, nn::LinearConfig { ws_init: init, bs_init: None, bias: false }),
        };
        Ok(Phi3 {
            config: config.clone(),
            activation: Activation::parse(&config.hidden_act)?,
            embed_tokens,
            layers,
            norm: RmsNorm::new(m / "norm", h, eps),
            lm_head,
            rotary: Rotary::new(config.rotary_dims()?, config.theta(), None, p.device()),
        })
    }
}

impl Network for Phi3 {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::LanguageModel
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let c = &self.config;
        let (t, past) = super::causal_input(ids, mask, cache.as_deref(), c.max_position_embeddings, c.vocab_size, "Phi-3")?;
        let (cos, sin) = self.rotary.cos_sin(past, t);
        let x = opts.hook(Point::outside(Site::Embed), self.embed_tokens.forward(ids))?;
        let dropout = |x: Tensor| x.dropout(c.resid_pdrop, opts.train);
        let block = |i: usize, x: Tensor| {
            let block = &self.layers[i];
            let hook = |site, x| opts.hook(Point::block(i, site), x);
            let x = hook(Site::ResidPre, x)?;
            let (a, probs) = block.self_attn.forward(&hook(Site::Ln1Normalized, block.input_layernorm.forward(&x))?, (&cos, &sin), &mut cache, i, opts)?;
            let h = hook(Site::ResidMid, &x + dropout(hook(Site::AttnOut, a)?))?;
            let gate_up = block.gate_up_proj.forward_t(&hook(Site::Ln2Normalized, block.post_attention_layernorm.forward(&h))?, opts.train)?;
            let halves = gate_up.chunk(2, -1);
            let gate = hook(Site::MlpPre, halves[0].shallow_clone())?;
            let up = hook(Site::MlpPreLinear, halves[1].shallow_clone())?;
            let post = hook(Site::MlpPost, up * self.activation.apply(&gate))?;
            let m = hook(Site::MlpOut, block.down_proj.forward_t(&post, opts.train)?)?;
            Ok((hook(Site::ResidPost, &h + dropout(m))?, probs))
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
        "Phi3ForCausalLM"
    }
}

/// How llama.cpp's `phi3` GGUF files map onto this family.
pub const GGUF: GgufFamily = GgufFamily {
    architectures: &["phi3"],
    config: gguf_config,
    tensor_name: |name| crate::formats::gguf::hf_name(name, &crate::formats::gguf::DECODER_TOP_TENSORS, &GGUF_BLOCK_MODULES),
    unpermute: |_, _, _| None,
    shift: |_| 0.0,
    metadata: gguf_metadata,
    gguf_name: |name| crate::formats::gguf::gguf_name(name, &crate::formats::gguf::DECODER_TOP_TENSORS, &GGUF_BLOCK_MODULES),
};

/// A block's modules in llama.cpp and transformers.
const GGUF_BLOCK_MODULES: [(&str, &str); 6] = [
    ("attn_norm", "input_layernorm"),
    ("attn_qkv", "self_attn.qkv_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_up", "mlp.gate_up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// `config.json` from a `phi3` GGUF file's metadata; the rotary share from
/// `rope.dimension_count`.
fn gguf_config(meta: &Metadata) -> Result<Value> {
    let int = |k: &str| meta.int(&format!("phi3.{k}"));
    let (hidden, heads) = (int("embedding_length")?, int("attention.head_count")?);
    if heads <= 0 || hidden % heads != 0 {
        return Err(Error::format(&meta.path, format!("`phi3.attention.head_count` is {heads}, which does not divide the width {hidden}")));
    }
    let head_dim = hidden / heads;
    let vocab = match int("vocab_size") {
        Ok(v) => v,
        Err(_) => meta.array_len("tokenizer.ggml.tokens")? as i64,
    };
    let mut json = serde_json::json!({
        "model_type": "phi3",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": int("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": int("attention.head_count_kv").unwrap_or(heads),
        "max_position_embeddings": int("context_length")?,
        "rms_norm_eps": meta.float("phi3.attention.layer_norm_rms_epsilon")?,
        "rope_theta": meta.float("phi3.rope.freq_base").unwrap_or(10_000.0),
        "partial_rotary_factor": int("rope.dimension_count").unwrap_or(head_dim) as f64 / head_dim as f64,
        "tie_word_embeddings": !meta.has_tensor("output.weight"),
    });
    if let Ok(window) = int("attention.sliding_window") {
        json["sliding_window"] = window.into();
    }
    crate::formats::gguf::set_special_token_ids(meta, &mut json);
    Ok(json)
}

/// The model's metadata in a GGUF file, as llama.cpp's converter writes it (the inverse
/// of [`gguf_config`]).
fn gguf_metadata(config: &Value) -> Result<Vec<(String, MetaValue)>> {
    let c: Phi3Config = serde_json::from_value(config.clone()).map_err(|e| Error::Invalid(format!("the model's config: {e}")))?;
    if c.hidden_act != "silu" {
        return invalid!("llama.cpp's phi3 files gate the MLP with SiLU; this model's activation is `{}`", c.hidden_act);
    }
    if c.head_dim() * c.num_attention_heads != c.hidden_size {
        return invalid!("llama.cpp's phi3 files have heads of hidden_size / heads features; this model's are {}", c.head_dim());
    }
    let uint = |v: i64| MetaValue::Uint(v as u64);
    let key = |k: &str| format!("phi3.{k}");
    let mut out = vec![
        ("general.architecture".into(), MetaValue::Str("phi3".into())),
        (key("context_length"), uint(c.max_position_embeddings)),
        (key("embedding_length"), uint(c.hidden_size)),
        (key("feed_forward_length"), uint(c.intermediate_size)),
        (key("block_count"), uint(c.num_hidden_layers)),
        (key("attention.head_count"), uint(c.num_attention_heads)),
        (key("attention.head_count_kv"), uint(c.kv_heads())),
        (key("attention.layer_norm_rms_epsilon"), MetaValue::Float(c.rms_norm_eps)),
        (key("rope.dimension_count"), uint(c.rotary_dims()?)),
        (key("rope.freq_base"), MetaValue::Float(c.theta())),
    ];
    if let Some(window) = c.sliding_window {
        out.push((key("attention.sliding_window"), uint(window)));
    }
    Ok(out)
}
