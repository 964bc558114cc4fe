//! T5, the encoder–decoder: T5 v1.0 (a ReLU MLP, the LM head tied to the embeddings and
//! the decoder's output rescaled by `d_model^-0.5`), and T5 v1.1 and Flan-T5 (a gated-GELU
//! MLP, an LM head of its own). Pre-RMSNorm blocks without biases; attention without the
//! `1/√d` scaling, with relative position buckets instead of position embeddings —
//! bidirectional in the encoder, causal in the decoder, each stack's table owned by its
//! first block and shared by the others; the decoder's cross-attention reads the
//! encoder's output with no position bias.
//!
//! Paper: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified
//! Text-to-Text Transformer" (2020). Mirrors `transformers/models/t5/modeling_t5.py`
//! (`T5ForConditionalGeneration`) with eager attention, facts in
//! `../shared/NOTES-encoder-decoder.md` §1. Variables are named after its checkpoint keys
//! (`encoder.block.0.layer.0.SelfAttention.q.weight`); hook points as TransformerLens's
//! `HookedEncoderDecoder` names them (`encoder.0.attn.hook_pattern`,
//! `decoder.0.cross_attn.hook_pattern`).
//!
//! The model runs in two calls: [`Network::encode`] reads the source once, and
//! [`Network::forward`] runs the decoder over target ids with a [`KvCache`] that holds the
//! encoder's output ([`KvCache::for_source`]) and, as generation goes on, the decoder's
//! keys and values and each layer's cross-attention keys and values.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::{attend, padding_bias, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{BlockId, Point, Site, Stack};
use super::layers::{cached, RmsNorm};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Task, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "t5",
    model_types: &["t5"],
    from_json: |json| Ok(Box::new(T5Config::from_json(json)?)),
    tasks: &[TaskKind::Seq2Seq],
    gguf: None,
    lora_targets: &["q", "v"],
};

/// `config.json` of a T5 checkpoint, with the keys `transformers` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct T5Config {
    /// `t5`.
    pub model_type: String,
    /// Number of token ids (T5's embedding is padded past its 32100 pieces).
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    /// Width of the residual stream.
    #[serde(default = "default_d_model")]
    pub d_model: i64,
    /// Width of one head; `num_heads * d_kv` need not be `d_model`.
    #[serde(default = "default_d_kv")]
    pub d_kv: i64,
    /// Width of the MLP's hidden layer.
    #[serde(default = "default_d_ff")]
    pub d_ff: i64,
    /// Encoder blocks.
    #[serde(default = "default_layers")]
    pub num_layers: i64,
    /// Decoder blocks; `num_layers` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_decoder_layers: Option<i64>,
    /// Heads per attention.
    #[serde(default = "default_heads")]
    pub num_heads: i64,
    /// Buckets of relative positions.
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: i64,
    /// Distances from which on the buckets stop growing.
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: i64,
    /// Dropout everywhere (embeddings, attention probabilities, sublayer outputs, the MLP).
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Scale of the initial weights.
    #[serde(default = "default_factor")]
    pub initializer_factor: f64,
    /// `relu` (v1.0) or `gated-gelu` (v1.1, Flan); `ACT` or `gated-ACT` in general.
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// The LM head is the shared embedding (v1.0); v1.1 and Flan files say `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// transformers 5.x: whether the decoder's output is scaled by `d_model^-0.5` before
    /// the head (4.x did so exactly when the head was tied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_decoder_outputs: Option<bool>,
    /// Padding id (also the decoder's start).
    #[serde(default)]
    pub pad_token_id: i64,
    /// End-of-sequence id (`null`: generation stops only at its length).
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<i64>,
    /// The id the decoder starts from (the hub's files say 0, the padding id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_start_token_id: Option<i64>,
    /// The longest input the lab gives either stack (relative positions have no limit of
    /// their own; memory does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n_positions: Option<i64>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_vocab() -> i64 {
    32128
}
fn default_d_model() -> i64 {
    512
}
fn default_d_kv() -> i64 {
    64
}
fn default_d_ff() -> i64 {
    2048
}
fn default_layers() -> i64 {
    6
}
fn default_heads() -> i64 {
    8
}
fn default_buckets() -> i64 {
    32
}
fn default_max_distance() -> i64 {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_factor() -> f64 {
    1.0
}
fn default_ff() -> String {
    "relu".into()
}
fn default_eos() -> Option<i64> {
    Some(1)
}

/// The positions the lab gives a T5 without `n_positions` (T5's pretraining length).
const DEFAULT_POSITIONS: i64 = 512;

impl T5Config {
    /// A configuration for training from scratch, as T5 v1.1 is built (a gated-GELU MLP
    /// of `2 × dim`, an LM head of its own): `layers` encoder and `decoder_layers`
    /// decoder blocks of width `dim` with `heads` heads, relative positions in 32
    /// buckets, sources and targets up to `positions` tokens, the decoder starting from
    /// `start` and no end token (a synthetic task's answers have a fixed length).
    pub fn small(vocab_size: i64, layers: i64, decoder_layers: i64, heads: i64, dim: i64, start: i64, positions: i64) -> Self {
        T5Config {
            model_type: "t5".into(),
            vocab_size,
            d_model: dim,
            d_kv: (dim / heads.max(1)).max(1),
            d_ff: 2 * dim,
            num_layers: layers,
            num_decoder_layers: Some(decoder_layers),
            num_heads: heads,
            relative_attention_num_buckets: default_buckets(),
            relative_attention_max_distance: default_max_distance(),
            dropout_rate: 0.0,
            layer_norm_epsilon: default_eps(),
            initializer_factor: default_factor(),
            feed_forward_proj: "gated-gelu".into(),
            tie_word_embeddings: Some(false),
            scale_decoder_outputs: Some(false),
            pad_token_id: start,
            eos_token_id: None,
            decoder_start_token_id: Some(start),
            n_positions: Some(positions),
            other: Map::new(),
        }
    }

    /// Reads a parsed `config.json` of either transformers generation.
    pub fn from_json(json: &Value) -> Result<Self> {
        let mut config: T5Config = super::read_config(json, "T5")?;
        for key in ["torch_dtype", "dtype", "architectures"] {
            config.other.remove(key);
        }
        Ok(config)
    }

    /// Decoder blocks.
    pub fn decoder_layers(&self) -> i64 {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// The head is the shared embedding: unless the file says `false` (transformers 5.x
    /// always writes `true` and leaves `lm_head.weight` out of a tied file).
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
    }

    /// The decoder's output is scaled by `d_model^-0.5`: 5.x's `scale_decoder_outputs`,
    /// else 4.x's rule, exactly when the head is tied.
    pub fn scales_output(&self) -> bool {
        self.scale_decoder_outputs.unwrap_or(self.tied())
    }

    /// The MLP's activation and whether it is gated, from `feed_forward_proj` as
    /// `T5Config` reads it (`gated-gelu` is the tanh GELU, for compatibility).
    pub fn feed_forward(&self) -> Result<(Activation, bool)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => return invalid!("`feed_forward_proj` is `{}`; T5 reads `ACT` or `gated-ACT` (relu, gated-gelu)", self.feed_forward_proj),
        };
        let act = if self.feed_forward_proj == "gated-gelu" { "gelu_new" } else { act };
        Ok((Activation::parse(act)?, gated))
    }

    fn inner(&self) -> i64 {
        self.num_heads * self.d_kv
    }
}

impl Architecture for T5Config {
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
            ("d_model", self.d_model, MAX_DIMENSION),
            ("d_kv", self.d_kv, MAX_DIMENSION),
            ("d_ff", self.d_ff, MAX_DIMENSION),
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_decoder_layers", self.decoder_layers(), MAX_LAYERS),
            ("num_heads", self.num_heads, MAX_DIMENSION),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets, MAX_DIMENSION),
            ("relative_attention_max_distance", self.relative_attention_max_distance, MAX_DIMENSION),
            ("n_positions", self.max_positions(), MAX_DIMENSION),
        ])?;
        if self.relative_attention_num_buckets < 4 {
            return invalid!(
                "`relative_attention_num_buckets` must be at least 4 (exact and logarithmic buckets, each way), got {}",
                self.relative_attention_num_buckets
            );
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 2 {
            return invalid!(
                "`relative_attention_max_distance` ({}) must be larger than the exact buckets (`relative_attention_num_buckets` / 2 = {})",
                self.relative_attention_max_distance,
                self.relative_attention_num_buckets / 2
            );
        }
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return invalid!("`layer_norm_epsilon` must be a finite number > 0, got {}", self.layer_norm_epsilon);
        }
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return invalid!("`dropout_rate` must be a probability in [0, 1), got {}", self.dropout_rate);
        }
        if !(self.initializer_factor > 0.0 && self.initializer_factor.is_finite()) {
            return invalid!("`initializer_factor` must be a finite number > 0, got {}", self.initializer_factor);
        }
        for (key, id) in
            [("pad_token_id", Some(self.pad_token_id)), ("eos_token_id", self.eos_token_id), ("decoder_start_token_id", self.decoder_start_token_id)]
        {
            if let Some(id) = id.filter(|id| !(0..self.vocab_size).contains(id)) {
                return invalid!("`{key}` is {id} but the vocabulary has ids 0..{}", self.vocab_size - 1);
            }
        }
        self.feed_forward()?;
        Ok(())
    }
    fn dims(&self) -> Dims {
        let (_, gated) = self.feed_forward().unwrap_or((Activation::Relu, false));
        Dims {
            // Both stacks, the decoder's cross-attention counted as a third of a block more.
            layers: self.num_layers + self.decoder_layers() + self.decoder_layers() / 3,
            width: self.d_model,
            heads: self.num_heads,
            kv_heads: self.num_heads,
            head_dim: self.d_kv,
            inner: self.d_ff,
            vocab: self.vocab_size,
            extra_embeddings: 0,
            gated,
            untied_head: !self.tied(),
        }
    }
    fn max_positions(&self) -> i64 {
        self.n_positions.unwrap_or(DEFAULT_POSITIONS)
    }
    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).expect("config serializes");
        json["torch_dtype"] = "float32".into();
        json["is_encoder_decoder"] = true.into();
        json["decoder_start_token_id"] = self.decoder_start().into();
        json["tie_word_embeddings"] = self.tied().into();
        json["scale_decoder_outputs"] = self.scales_output().into();
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(T5::new(p, self)?))
    }
    fn task_for_checkpoint(&self, _tensors: &[(String, Tensor)]) -> Task {
        Task::Seq2Seq
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.pad_token_id
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id.into_iter().collect()
    }
    fn decoder_start_token_id(&self) -> Option<i64> {
        Some(self.decoder_start())
    }
}

impl T5Config {
    /// The decoder's first id: `decoder_start_token_id`, else the padding id (T5's).
    fn decoder_start(&self) -> i64 {
        self.decoder_start_token_id.unwrap_or(self.pad_token_id)
    }
}

/// Relative positions `key − query` as T5's buckets (`_relative_position_bucket`, with
/// the same float32 operations so that the boundaries fall where transformers' do):
/// exact for small distances, logarithmic up to `max_distance`, one bucket beyond;
/// bidirectional buckets give each direction half, causal ones only look back.
fn relative_buckets(relative: &Tensor, bidirectional: bool, buckets: i64, max_distance: i64) -> Tensor {
    let (mut buckets, mut out) = (buckets, relative.zeros_like());
    let distance = if bidirectional {
        buckets /= 2;
        out += relative.gt(0).to_kind(Kind::Int64) * buckets;
        relative.abs()
    } else {
        -relative.clamp_max(0)
    };
    let exact = buckets / 2;
    let small = distance.lt(exact);
    let large = (distance.to_kind(Kind::Float) / exact as f64).log() / (max_distance as f64 / exact as f64).ln() * (buckets - exact) as f64;
    let large = (large.to_kind(Kind::Int64) + exact).clamp_max(buckets - 1);
    out + distance.where_self(&small, &large)
}

/// One attention: self-attention (with the stack's position table in its first block)
/// or cross-attention.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `relative_attention_bias`: `(buckets, heads)`, in the first block of each stack.
    relative: Option<nn::Embedding>,
    heads: i64,
    d_kv: i64,
}

impl Attention {
    fn new(p: &nn::Path, c: &T5Config, relative: bool) -> Self {
        let f = c.initializer_factor;
        let (d, inner) = (c.d_model, c.inner());
        let linear =
            |name: &str, i, o, stdev: f64| Linear::new(&(p / name), i, o, nn::LinearConfig { ws_init: super::normal(f * stdev), bs_init: None, bias: false });
        Attention {
            q: linear("q", d, inner, ((d * c.d_kv) as f64).powf(-0.5)),
            k: linear("k", d, inner, (d as f64).powf(-0.5)),
            v: linear("v", d, inner, (d as f64).powf(-0.5)),
            o: linear("o", inner, d, (inner as f64).powf(-0.5)),
            relative: relative.then(|| {
                let init = nn::EmbeddingConfig { ws_init: super::normal(f * (d as f64).powf(-0.5)), ..Default::default() };
                nn::embedding(p / "relative_attention_bias", c.relative_attention_num_buckets, c.num_heads, init)
            }),
            heads: c.num_heads,
            d_kv: c.d_kv,
        }
    }

    /// `x: (B, T, d)` as heads `(B, heads, T, d_kv)`.
    fn split(&self, x: Tensor) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        Ok(x.f_view([b, t, self.heads, self.d_kv])?.f_transpose(1, 2)?)
    }

    /// The position bias `(1, heads, tq, tk)` of queries at `past..past + tq` over keys
    /// `0..tk`, from this attention's table.
    fn bias(&self, c: &T5Config, tq: i64, tk: i64, past: i64, bidirectional: bool) -> Result<Tensor> {
        let Some(table) = &self.relative else { return invalid!("a T5 position bias comes from the first block's table") };
        let device = table.ws.device();
        let context = Tensor::arange_start(past, past + tq, (Kind::Int64, device)).unsqueeze(1);
        let memory = Tensor::arange(tk, (Kind::Int64, device)).unsqueeze(0);
        let buckets = relative_buckets(&(memory - context), bidirectional, c.relative_attention_num_buckets, c.relative_attention_max_distance);
        Ok(table.forward(&buckets).f_permute([2, 0, 1])?.f_unsqueeze(0)?)
    }
}

/// T5's MLP: `wo(act(wi(x)))`, or gated `wo(act(wi_0(x)) * wi_1(x))`.
struct FeedForward {
    wi: Linear,
    wi_1: Option<Linear>,
    wo: Linear,
    activation: Activation,
}

impl FeedForward {
    fn new(p: &nn::Path, c: &T5Config) -> Result<Self> {
        let (activation, gated) = c.feed_forward()?;
        let f = c.initializer_factor;
        let linear =
            |name: &str, i, o, stdev: f64| Linear::new(&(p / name), i, o, nn::LinearConfig { ws_init: super::normal(f * stdev), bs_init: None, bias: false });
        let into = (c.d_model as f64).powf(-0.5);
        Ok(FeedForward {
            wi: linear(if gated { "wi_0" } else { "wi" }, c.d_model, c.d_ff, into),
            wi_1: gated.then(|| linear("wi_1", c.d_model, c.d_ff, into)),
            wo: linear("wo", c.d_ff, c.d_model, (c.d_ff as f64).powf(-0.5)),
            activation,
        })
    }

    fn forward(&self, x: &Tensor, dropout: f64, opts: &ForwardOptions, at: BlockId) -> Result<Tensor> {
        let pre = opts.hook(at.at(Site::MlpPre), self.wi.forward_t(x, opts.train)?)?;
        let post = match &self.wi_1 {
            Some(wi_1) => self.activation.apply(&pre) * opts.hook(at.at(Site::MlpPreLinear), wi_1.forward_t(x, opts.train)?)?,
            None => self.activation.apply(&pre),
        };
        let post = opts.hook(at.at(Site::MlpPost), post)?;
        self.wo.forward_t(&post.dropout(dropout, opts.train), opts.train)
    }
}

/// A block: self-attention, the decoder's cross-attention, the MLP, each after its norm
/// (`layer.0`, `layer.1`, `layer.2` in the checkpoint's names).
struct Block {
    self_norm: RmsNorm,
    self_attn: Attention,
    cross: Option<(RmsNorm, Attention)>,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

impl Block {
    fn new(p: &nn::Path, c: &T5Config, first: bool, decoder: bool) -> Result<Self> {
        let layer = |i: i64| p / "layer" / i;
        let norm = |i: i64| RmsNorm::new(layer(i) / "layer_norm", c.d_model, c.layer_norm_epsilon);
        let ff_at = if decoder { 2 } else { 1 };
        Ok(Block {
            self_norm: norm(0),
            self_attn: Attention::new(&(layer(0) / "SelfAttention"), c, first),
            cross: decoder.then(|| (norm(1), Attention::new(&(layer(1) / "EncDecAttention"), c, false))),
            ff_norm: norm(ff_at),
            ff: FeedForward::new(&(layer(ff_at) / "DenseReluDense"), c)?,
        })
    }
}

/// A T5 encoder–decoder (`T5ForConditionalGeneration`).
pub struct T5 {
    config: T5Config,
    shared: nn::Embedding,
    encoder: Vec<Block>,
    encoder_norm: RmsNorm,
    decoder: Vec<Block>,
    decoder_norm: RmsNorm,
    /// The LM head: a weight of its own, or the shared embedding's when tied.
    lm_head: Linear,
}

impl T5 {
    /// Builds the model's variables under `p`, initialised as transformers does.
    pub fn new(p: &nn::Path, config: &T5Config) -> Result<Self> {
        config.validate()?;
        let f = config.initializer_factor;
        let shared = nn::embedding(p / "shared", config.vocab_size, config.d_model, nn::EmbeddingConfig { ws_init: super::normal(f), ..Default::default() });
        let stack = |name: &str, layers: i64, decoder: bool| -> Result<(Vec<Block>, RmsNorm)> {
            let s = p / name;
            let blocks = (0..layers).map(|i| Block::new(&(&s / "block" / i), config, i == 0, decoder)).collect::<Result<_>>()?;
            Ok((blocks, RmsNorm::new(&s / "final_layer_norm", config.d_model, config.layer_norm_epsilon)))
        };
        let (encoder, encoder_norm) = stack("encoder", config.num_layers, false)?;
        let (decoder, decoder_norm) = stack("decoder", config.decoder_layers(), true)?;
        let lm_head = match config.tied() {
            true => Linear::tied_head(&(p / "lm_head"), &shared.ws),
            false => {
                Linear::head(&(p / "lm_head"), config.d_model, config.vocab_size, nn::LinearConfig { ws_init: super::normal(f), bs_init: None, bias: false })
            }
        };
        Ok(T5 { config: config.clone(), shared, encoder, encoder_norm, decoder, decoder_norm, lm_head })
    }

    fn dropout(&self, x: Tensor, opts: &ForwardOptions) -> Tensor {
        x.dropout(self.config.dropout_rate, opts.train)
    }

    /// One block's self-attention sublayer, through its hook points: `bias` is the
    /// stack's position bias plus the mask.
    fn self_attention(
        &self,
        block: &Block,
        x: &Tensor,
        bias: &Tensor,
        cache: &mut Option<&mut KvCache>,
        at: BlockId,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let a = &block.self_attn;
        let h = opts.hook(at.at(Site::Ln1Normalized), block.self_norm.forward(x))?;
        let q = opts.hook(at.at(Site::Q), a.split(a.q.forward_t(&h, opts.train)?)?)?;
        let k = opts.hook(at.at(Site::K), a.split(a.k.forward_t(&h, opts.train)?)?)?;
        let v = opts.hook(at.at(Site::V), a.split(a.v.forward_t(&h, opts.train)?)?)?;
        let (k, v) = match at.stack {
            Stack::Decoder => cached(cache, at.layer, k, v),
            _ => (k, v),
        };
        attend(&q, &k, &v, Mask::Additive(bias), Some(1.0), self.attention_dropout(opts), &a.o, at, opts)
    }

    fn attention_dropout(&self, opts: &ForwardOptions) -> f64 {
        if opts.train {
            self.config.dropout_rate
        } else {
            0.0
        }
    }

    /// The MLP sublayer, through its hook points.
    fn feed_forward(&self, block: &Block, x: Tensor, norm_site: Site, at: BlockId, opts: &ForwardOptions) -> Result<Tensor> {
        let h = opts.hook(at.at(norm_site), block.ff_norm.forward(&x))?;
        let m = opts.hook(at.at(Site::MlpOut), self.dropout(block.ff.forward(&h, self.config.dropout_rate, opts, at)?, opts))?;
        opts.hook(at.at(Site::ResidPost), x + m)
    }
}

impl Network for T5 {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::Seq2Seq
    }
    fn encode(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<Tensor> {
        let s = super::seq2seq_ids(ids, self.config.vocab_size, "source", opts)?;
        if s > self.config.max_positions() {
            return invalid!("a source of {s} tokens is longer than the model's {} positions; shorten it", self.config.max_positions());
        }
        if let Some(m) = mask.filter(|m| m.size() != ids.size()) {
            return invalid!("the source's mask has shape {:?}, its ids {:?}", m.size(), ids.size());
        }
        let position = self.encoder[0].self_attn.bias(&self.config, s, s, 0, true)?;
        let bias = match mask {
            Some(m) => position.f_add(&padding_bias(m)?)?,
            None => position,
        };
        let x = self.dropout(self.shared.forward(ids), opts);
        let block = |i: usize, x: Tensor| {
            let (block, at) = (&self.encoder[i], BlockId { stack: Stack::Encoder, layer: i });
            let x = opts.hook(at.at(Site::ResidPre), x)?;
            let (a, probs) = self.self_attention(block, &x, &bias, &mut None, at, opts)?;
            let h = opts.hook(at.at(Site::ResidMid), &x + opts.hook(at.at(Site::AttnOut), self.dropout(a, opts))?)?;
            Ok((self.feed_forward(block, h, Site::Ln2Normalized, at, opts)?, probs))
        };
        let out = run_blocks(self.encoder.len(), x, opts, block, |x, _| {
            let hidden = self.dropout(opts.hook(Point::outside(Site::EncoderFinalLn), self.encoder_norm.forward(&x))?, opts);
            Ok(Output { hidden, logits: None, pooled: None, attentions: None })
        })?;
        Ok(out.hidden)
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let t = super::seq2seq_ids(ids, self.config.vocab_size, "target", opts)?;
        let source = super::seq2seq_source(cache.as_deref(), mask, "T5")?;
        let cross_bias = match &source.mask {
            Some(m) => padding_bias(m)?,
            None => Tensor::zeros([1, 1, 1, 1], (Kind::Float, ids.device())),
        };
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.config.max_positions() {
            return invalid!("a target of {} tokens is longer than the model's {} positions", past + t, self.config.max_positions());
        }
        let causal = Tensor::ones([t, past + t], (Kind::Bool, ids.device())).tril(past);
        let causal = Tensor::zeros([t, past + t], (Kind::Float, ids.device())).f_masked_fill(&causal.logical_not(), f64::from(f32::MIN))?;
        let bias = self.decoder[0].self_attn.bias(&self.config, t, past + t, past, false)?.f_add(&causal)?;
        let x = self.dropout(self.shared.forward(ids), opts);
        let block = |i: usize, x: Tensor| {
            let (block, at) = (&self.decoder[i], BlockId { stack: Stack::Decoder, layer: i });
            let x = opts.hook(at.at(Site::ResidPre), x)?;
            let (a, probs) = self.self_attention(block, &x, &bias, &mut cache, at, opts)?;
            let h = opts.hook(at.at(Site::ResidMid), &x + opts.hook(at.at(Site::AttnOut), self.dropout(a, opts))?)?;
            let (norm, cross) = block.cross.as_ref().expect("decoder blocks have cross-attention");
            let cross_at = BlockId { stack: Stack::Cross, layer: i };
            let normed = opts.hook(at.at(Site::Ln2Normalized), norm.forward(&h))?;
            let q = opts.hook(cross_at.at(Site::Q), cross.split(cross.q.forward_t(&normed, opts.train)?)?)?;
            let project = |memory: &Tensor| -> Result<(Tensor, Tensor)> {
                let k = opts.hook(cross_at.at(Site::K), cross.split(cross.k.forward_t(memory, opts.train)?)?)?;
                let v = opts.hook(cross_at.at(Site::V), cross.split(cross.v.forward_t(memory, opts.train)?)?)?;
                Ok((k, v))
            };
            let (k, v) = cache.as_deref_mut().expect("the decoder runs with a cache").cross(i, project)?;
            let (c, _) = attend(&q, &k, &v, Mask::Additive(&cross_bias), Some(1.0), self.attention_dropout(opts), &cross.o, cross_at, opts)?;
            let h = opts.hook(at.at(Site::ResidMidCross), &h + opts.hook(at.at(Site::CrossAttnOut), self.dropout(c, opts))?)?;
            Ok((self.feed_forward(block, h, Site::Ln3Normalized, at, opts)?, probs))
        };
        run_blocks(self.decoder.len(), x, opts, block, |x, attentions| {
            let hidden = self.dropout(opts.hook(Point::outside(Site::DecoderFinalLn), self.decoder_norm.forward(&x))?, opts);
            let scaled = if self.config.scales_output() { &hidden * (self.config.d_model as f64).powf(-0.5) } else { hidden.shallow_clone() };
            let logits = self.lm_head.forward_t(&scaled, opts.train)?;
            Ok(Output { hidden, logits: Some(logits), pooled: None, attentions })
        })
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        let ignored = key == "encoder.embed_tokens.weight"
            || key == "decoder.embed_tokens.weight"
            || key == "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"
            || (key == "lm_head.weight" && self.config.tied());
        (!ignored).then(|| (key.to_string(), false))
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        (var.to_string(), false)
    }
    fn architecture(&self) -> &'static str {
        "T5ForConditionalGeneration"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bucket tables transformers' own function gives (NOTES-encoder-decoder §1.4).
    #[test]
    fn buckets_fall_where_transformers_puts_them() {
        let bucket = |rel: i64, bidirectional: bool| relative_buckets(&Tensor::from_slice(&[rel]), bidirectional, 32, 128).int64_value(&[0]);
        for (rel, want) in [
            (-200, 15),
            (-91, 15),
            (-90, 14),
            (-64, 14),
            (-63, 13),
            (-46, 13),
            (-45, 12),
            (-8, 8),
            (-7, 7),
            (0, 0),
            (1, 17),
            (7, 23),
            (8, 24),
            (15, 25),
            (16, 26),
            (32, 28),
            (45, 28),
            (46, 29),
            (90, 30),
            (91, 31),
            (500, 31),
        ] {
            assert_eq!(bucket(rel, true), want, "bidirectional {rel}");
        }
        for (rel, want) in [(5, 0), (0, 0), (-1, 1), (-15, 15), (-16, 16), (-18, 16), (-19, 17), (-31, 21), (-99, 30), (-112, 30), (-113, 31), (-1000, 31)] {
            assert_eq!(bucket(rel, false), want, "causal {rel}");
        }
    }
}
