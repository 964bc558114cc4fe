//! GPT-NeoX (`GPTNeoXForCausalLM`): EleutherAI's Pythia suite and GPT-NeoX-20B, the
//! models interpretability research uses most. Pre-LayerNorm blocks whose attention
//! and MLP read the same input and add to the stream together (`use_parallel_residual`;
//! one after the other when false), a fused `query_key_value` projection laid out head
//! by head, rotary positions on the first `rotary_pct` of each head's features, a GELU
//! MLP, biases everywhere, an untied head (`embed_out`).
//!
//! Papers: Black et al., "GPT-NeoX-20B" (2022); Biderman et al., "Pythia" (2023).
//! Mirrors `transformers/models/gpt_neox/modeling_gpt_neox.py` with eager attention.
//! Variables are named after the Hugging Face keys (`gpt_neox.layers.0.attention.dense.weight`).
//! `config.json` is read as transformers 4.x writes it (`rotary_pct`, `rotary_emb_base`)
//! and as 5.x writes it (`rope_parameters` with `partial_rotary_factor`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{attend, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::layers::{cached, Rotary};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Readout, Task, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "gpt-neox",
    model_types: &["gpt_neox"],
    from_json: |json| Ok(Box::new(GptNeoxConfig::from_json(json)?)),
    tasks: &[TaskKind::LanguageModel],
    gguf: None,
    lora_targets: &["query_key_value"],
};

/// `config.json` of a GPT-NeoX checkpoint, defaults as `GPTNeoXConfig`'s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptNeoxConfig {
    /// `gpt_neox`.
    pub model_type: String,
    /// Number of token ids.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Number of blocks.
    pub num_hidden_layers: i64,
    /// Heads per block.
    pub num_attention_heads: i64,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: i64,
    /// The MLP's activation (`gelu`).
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    /// The share of each head's features that rotary embeddings turn (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_pct: Option<f64>,
    /// The rotary base (transformers 4.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotary_emb_base: Option<f64>,
    /// Rotary settings (transformers 5.x): `{"rope_type", "rope_theta", "partial_rotary_factor"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_parameters: Option<Value>,
    /// Rotary scaling (transformers 4.x); only `null` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<Value>,
    /// The longest input.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Attention and MLP read the same input and add together (Pythia); else in turn.
    #[serde(default = "default_true")]
    pub use_parallel_residual: bool,
    /// Biases on the attention's projections.
    #[serde(default = "default_true")]
    pub attention_bias: bool,
    /// Dropout on the attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout on the attention's and the MLP's outputs.
    #[serde(default)]
    pub hidden_dropout: f64,
    /// The head is the input embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init")]
    pub initializer_range: f64,
    /// Beginning-of-sequence id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<i64>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_activation() -> String {
    "gelu".into()
}
fn default_positions() -> i64 {
    2048
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}
fn default_init() -> f64 {
    0.02
}

impl GptNeoxConfig {
    /// Reads a parsed `config.json` of either transformers generation.
    pub fn from_json(json: &Value) -> Result<Self> {
        let mut config: GptNeoxConfig = super::read_config(json, "GPT-NeoX")?;
        for key in ["torch_dtype", "dtype", "architectures"] {
            config.other.remove(key);
        }
        Ok(config)
    }

    fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// The rotary base and the share of each head it turns.
    fn rope(&self) -> (f64, f64) {
        let p = self.rope_parameters.as_ref();
        let number = |key: &str| p.and_then(|p| p.get(key)).and_then(Value::as_f64);
        let theta = number("rope_theta").or(self.rotary_emb_base).unwrap_or(10_000.0);
        let share =
            number("partial_rotary_factor").or_else(|| self.other.get("partial_rotary_factor").and_then(Value::as_f64)).or(self.rotary_pct).unwrap_or(0.25);
        (theta, share)
    }

    /// Features per head that rotary embeddings turn (`int(head_dim * rotary_pct)`).
    fn rotary_dims(&self) -> Result<i64> {
        super::layers::partial_rotary_dims("rotary_pct", self.rope().1, self.head_dim())
    }
}

impl Architecture for GptNeoxConfig {
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
            ("max_position_embeddings", self.max_position_embeddings, MAX_DIMENSION),
        ])?;
        if self.hidden_size % self.num_attention_heads != 0 {
            return invalid!("`hidden_size` ({}) must be a multiple of `num_attention_heads` ({})", self.hidden_size, self.num_attention_heads);
        }
        let (theta, _) = self.rope();
        self.rotary_dims()?;
        if !(theta > 1.0 && theta.is_finite()) {
            return invalid!("`rotary_emb_base` must be a finite number > 1, got {theta}");
        }
        if self.rope_scaling.as_ref().is_some_and(|s| !s.is_null()) {
            return invalid!("GPT-NeoX with `rope_scaling` is not supported; tchlab reads the default rotary embeddings");
        }
        if let Some(kind) = self.rope_parameters.as_ref().and_then(|p| p.get("rope_type")).and_then(Value::as_str).filter(|k| *k != "default") {
            return invalid!("rope scaling of type `{kind}` is not supported; tchlab reads `default` for GPT-NeoX");
        }
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return invalid!("`layer_norm_eps` must be a finite number > 0, got {}", self.layer_norm_eps);
        }
        for (name, p) in [("attention_dropout", self.attention_dropout), ("hidden_dropout", self.hidden_dropout)] {
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
            kv_heads: self.num_attention_heads,
            head_dim: self.head_dim(),
            inner: self.intermediate_size,
            vocab: self.vocab_size,
            extra_embeddings: 0,
            gated: false,
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
        Ok(Box::new(GptNeox::new(p, self)?))
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.other.get("pad_token_id").and_then(Value::as_i64).unwrap_or(0)
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id.into_iter().collect()
    }
}

struct Attention {
    /// Queries, keys and values of each head, side by side per head.
    query_key_value: Linear,
    dense: Linear,
    heads: i64,
    dropout: f64,
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
        let (b, t, c) = x.size3()?;
        let hd = c / self.heads;
        let hook = |site, x| opts.hook(Point::block(layer, site), x);
        let qkv = self.query_key_value.forward_t(x, opts.train)?.view([b, t, self.heads, 3 * hd]).transpose(1, 2); // (B, nh, T, 3 hd)
        let parts = qkv.split(hd, -1);
        let (cos, sin) = rotary;
        let q = hook(Site::RotQ, Rotary::apply(&hook(Site::Q, parts[0].shallow_clone())?, cos, sin))?;
        let k = hook(Site::RotK, Rotary::apply(&hook(Site::K, parts[1].shallow_clone())?, cos, sin))?;
        let v = hook(Site::V, parts[2].shallow_clone())?;
        let (k, v) = cached(cache, layer, k, v);
        let dropout = if opts.train { self.dropout } else { 0.0 };
        attend(&q, &k, &v, Mask::Causal, None, dropout, &self.dense, layer, opts)
    }
}

struct Block {
    input_layernorm: nn::LayerNorm,
    post_attention_layernorm: nn::LayerNorm,
    attention: Attention,
    dense_h_to_4h: Linear,
    dense_4h_to_h: Linear,
    activation: Activation,
}

/// A GPT-NeoX language model (`GPTNeoXForCausalLM`).
pub struct GptNeox {
    config: GptNeoxConfig,
    embed_in: nn::Embedding,
    layers: Vec<Block>,
    final_layer_norm: nn::LayerNorm,
    /// The LM head: `embed_out`, or `embed_in`'s weight when tied.
    embed_out: Linear,
    rotary: Rotary,
}

impl GptNeox {
    /// Builds the model's variables under `p`, initialised as transformers does.
    pub fn new(p: &nn::Path, config: &GptNeoxConfig) -> Result<Self> {
        config.validate()?;
        let m = &(p / "gpt_neox");
        let init = super::normal(config.initializer_range);
        let linear = |path: &nn::Path, i, o, bias| Linear::new(path, i, o, nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.0)), bias });
        let norm = |path: nn::Path| nn::layer_norm(path, vec![config.hidden_size], nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() });
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &(m / "layers" / i);
                Ok(Block {
                    input_layernorm: norm(l / "input_layernorm"),
                    post_attention_layernorm: norm(l / "post_attention_layernorm"),
                    attention: Attention {
                        query_key_value: linear(&(l / "attention" / "query_key_value"), h, 3 * h, config.attention_bias),
                        dense: linear(&(l / "attention" / "dense"), h, h, config.attention_bias),
                        heads: config.num_attention_heads,
                        dropout: config.attention_dropout,
                    },
                    dense_h_to_4h: linear(&(l / "mlp" / "dense_h_to_4h"), h, inner, true),
                    dense_4h_to_h: linear(&(l / "mlp" / "dense_4h_to_h"), inner, h, true),
                    activation: Activation::parse(&config.hidden_act)?,
                })
            })
            .collect::<Result<_>>()?;
        let embed_in = nn::embedding(m / "embed_in", config.vocab_size, h, nn::EmbeddingConfig { ws_init: init, ..Default::default() });
        let embed_out = match config.tie_word_embeddings {
            true => Linear::tied_head(&(p / "embed_out"), &embed_in.ws),
            false => Linear::head(&(p / "embed_out"), h, config.vocab_size, nn::LinearConfig { ws_init: init, bs_init: None, bias: false }),
        };
        Ok(GptNeox {
            config: config.clone(),
            embed_in,
            layers,
            final_layer_norm: norm(m / "final_layer_norm"),
            embed_out,
            rotary: Rotary::new(config.rotary_dims()?, config.rope().0, None, p.device()),
        })
    }
}

impl Network for GptNeox {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::LanguageModel
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let c = &self.config;
        let (t, past) = super::causal_input(ids, mask, cache.as_deref(), c.max_position_embeddings, c.vocab_size, "GPT-NeoX")?;
        let (cos, sin) = self.rotary.cos_sin(past, t);
        let x = opts.hook(Point::outside(Site::Embed), self.embed_in.forward(ids))?;
        let dropout = |x: Tensor| x.dropout(c.hidden_dropout, opts.train);
        let block = |i: usize, x: Tensor| {
            let block = &self.layers[i];
            let hook = |site, x| opts.hook(Point::block(i, site), x);
            let x = hook(Site::ResidPre, x)?;
            let normalized = hook(Site::Ln1Normalized, block.input_layernorm.forward(&x))?;
            let (a, probs) = block.attention.forward(&normalized, (&cos, &sin), &mut cache, i, opts)?;
            let a = dropout(hook(Site::AttnOut, a)?);
            let mlp = |input: &Tensor| -> Result<Tensor> {
                let pre =
                    hook(Site::MlpPre, block.dense_h_to_4h.forward_t(&hook(Site::Ln2Normalized, block.post_attention_layernorm.forward(input))?, opts.train)?)?;
                let post = hook(Site::MlpPost, block.activation.apply(&pre))?;
                Ok(dropout(hook(Site::MlpOut, block.dense_4h_to_h.forward_t(&post, opts.train)?)?))
            };
            // Parallel: attention and MLP read the same stream (TransformerLens has no
            // hook_resid_mid there); sequential: the MLP reads the stream after attention.
            let out = if c.use_parallel_residual {
                let m = mlp(&x)?;
                m + a + x
            } else {
                let h = hook(Site::ResidMid, a + x)?;
                mlp(&h)? + h
            };
            Ok((hook(Site::ResidPost, out)?, probs))
        };
        run_blocks(self.layers.len(), x, opts, block, |x, attentions| {
            let hidden = opts.hook(Point::outside(Site::LnFinal), self.final_layer_norm.forward(&x))?;
            let logits = self.embed_out.forward_t(&hidden, opts.train)?;
            Ok(Output { hidden, logits: Some(logits), pooled: None, attentions })
        })
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        // Buffers older checkpoints carry: the causal mask, its fill value, the rotary table.
        let buffer = ["attention.bias", "attention.masked_bias", "rotary_emb.inv_freq"].iter().any(|b| key.ends_with(b));
        if buffer || (key == "embed_out.weight" && self.config.tie_word_embeddings) {
            return None;
        }
        Some((key.to_string(), false))
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        (var.to_string(), false)
    }
    fn readout(&self) -> Option<Readout> {
        let unembed = self.embed_out.effective_weight().ok()?;
        let norm = &self.final_layer_norm;
        Some(Readout {
            weight: norm.ws.as_ref()?.shallow_clone(),
            bias: norm.bs.as_ref().map(Tensor::shallow_clone),
            centred: true,
            eps: self.config.layer_norm_eps,
            unembed,
        })
    }
    fn architecture(&self) -> &'static str {
        "GPTNeoXForCausalLM"
    }
}
