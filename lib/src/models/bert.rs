//! The BERT family: a bidirectional encoder with word, position and token-type
//! embeddings, post-LayerNorm blocks, an optional pooler and an optional
//! sequence-classification head.
//!
//! Paper: Devlin et al., "BERT: Pre-training of Deep Bidirectional Transformers for
//! Language Understanding" (2018). Mirrors `transformers/models/bert/modeling_bert.py`
//! (`BertModel`, `BertForSequenceClassification`) and candle's `bert.rs`. Variables
//! are named after `BertModel`'s checkpoint keys (`encoder.layer.0.attention.self.query.weight`);
//! [`hf_to_var`] strips the `bert.` prefix task heads add and renames TF-era
//! `gamma`/`beta`.
//!
//! ```no_run
//! # fn main() -> tchlab::Result<()> {
//! let loaded = tchlab::checkpoint::load("path/to/all-MiniLM-L6-v2", tch::Device::Cpu)?;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::{attend, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Task, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "bert",
    model_types: &["bert"],
    from_json: |json| Ok(Box::new(super::read_config::<BertConfig>(json, "BERT")?)),
    tasks: &[TaskKind::Encoder, TaskKind::Classification],
    gguf: None,
    lora_targets: &["query", "value"],
};

/// `config.json` of a BERT checkpoint, with the keys `transformers` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Number of token ids.
    pub vocab_size: i64,
    /// Width of the hidden states.
    pub hidden_size: i64,
    /// Number of encoder layers.
    pub num_hidden_layers: i64,
    /// Attention heads per layer.
    pub num_attention_heads: i64,
    /// Width of the feed-forward layer.
    pub intermediate_size: i64,
    /// Feed-forward activation (`gelu`, `gelu_new`, `relu`).
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    /// Dropout on embeddings and residual branches.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on the attention probabilities.
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Number of learned positions: the longest input.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// Number of token types (segments).
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: i64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: i64,
    /// Class names by index, for a sequence-classification head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
}

fn default_activation() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_positions() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Checks the numbers fit together; the message names the offending keys.
    pub fn validate(&self) -> Result<()> {
        use super::{MAX_DIMENSION, MAX_LAYERS};
        super::check_dimensions(&[
            ("vocab_size", self.vocab_size, MAX_DIMENSION),
            ("hidden_size", self.hidden_size, MAX_DIMENSION),
            ("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS),
            ("num_attention_heads", self.num_attention_heads, MAX_DIMENSION),
            ("intermediate_size", self.intermediate_size, MAX_DIMENSION),
            ("max_position_embeddings", self.max_position_embeddings, MAX_DIMENSION),
            ("type_vocab_size", self.type_vocab_size, MAX_DIMENSION),
        ])?;
        if !(self.layer_norm_eps > 0.0 && self.layer_norm_eps.is_finite()) {
            return invalid!("`layer_norm_eps` must be a finite number > 0, got {}", self.layer_norm_eps);
        }
        if !(0..self.vocab_size).contains(&self.pad_token_id) {
            return invalid!("`pad_token_id` is {} but the vocabulary has ids 0..{}", self.pad_token_id, self.vocab_size - 1);
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return invalid!("`hidden_size` ({}) must be a multiple of `num_attention_heads` ({})", self.hidden_size, self.num_attention_heads);
        }
        Activation::parse(&self.hidden_act)?;
        Ok(())
    }

    /// Class names in index order, when the config names classes.
    pub fn labels(&self) -> Option<Vec<String>> {
        let map = self.id2label.as_ref()?;
        let mut labels: Vec<(i64, &String)> = map.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v))).collect();
        labels.sort();
        Some(labels.into_iter().map(|(_, v)| v.clone()).collect())
    }
}

/// Which optional parts a BERT model has besides the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BertHeads {
    /// The pooler (`tanh(dense(h[CLS]))`).
    pub pooler: bool,
    /// A sequence-classification head over the pooled output, with this many classes.
    pub classes: Option<i64>,
}

struct Embeddings {
    word_embeddings: nn::Embedding,
    position_embeddings: nn::Embedding,
    token_type_embeddings: nn::Embedding,
    layer_norm: nn::LayerNorm,
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_output: Linear,
    attention_norm: nn::LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: nn::LayerNorm,
}

/// A BERT encoder (`BertModel`, or `BertForSequenceClassification` with a head).
pub struct Bert {
    config: BertConfig,
    heads: BertHeads,
    activation: Activation,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    classifier: Option<Linear>,
}

impl Bert {
    /// Builds the model's variables under `p` with BERT's initialisation.
    pub fn new(p: &nn::Path, config: &BertConfig, heads: BertHeads) -> Result<Self> {
        config.validate()?;
        if heads.classes.is_some() && !heads.pooler {
            return invalid!("a BERT classification head needs the pooler");
        }
        if let Some(n) = heads.classes.filter(|&n| !(1..=super::MAX_DIMENSION).contains(&n)) {
            return invalid!("a classification head needs at least 1 class (and at most {}), got {n}", super::MAX_DIMENSION);
        }
        let h = config.hidden_size;
        let norm = |p: nn::Path| nn::layer_norm(p, vec![h], nn::LayerNormConfig { eps: config.layer_norm_eps, ..Default::default() });
        let linear = |p: nn::Path, i, o| Linear::new(&p, i, o, linear_init());
        let embedding = |p: nn::Path, n| nn::embedding(p, n, h, nn::EmbeddingConfig { ws_init: normal_init(), ..Default::default() });
        let e = &(p / "embeddings");
        let embeddings = Embeddings {
            word_embeddings: embedding(e / "word_embeddings", config.vocab_size),
            position_embeddings: embedding(e / "position_embeddings", config.max_position_embeddings),
            token_type_embeddings: embedding(e / "token_type_embeddings", config.type_vocab_size),
            layer_norm: norm(e / "LayerNorm"),
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = &(p / "encoder" / "layer" / i);
                let (attention, s) = (&(l / "attention"), &(l / "attention" / "self"));
                Layer {
                    query: linear(s / "query", h, h),
                    key: linear(s / "key", h, h),
                    value: linear(s / "value", h, h),
                    attention_output: linear(attention / "output" / "dense", h, h),
                    attention_norm: norm(attention / "output" / "LayerNorm"),
                    intermediate: linear(l / "intermediate" / "dense", h, config.intermediate_size),
                    output: linear(l / "output" / "dense", config.intermediate_size, h),
                    output_norm: norm(l / "output" / "LayerNorm"),
                }
            })
            .collect();
        Ok(Bert {
            config: config.clone(),
            heads,
            activation: Activation::parse(&config.hidden_act)?,
            embeddings,
            layers,
            pooler: heads.pooler.then(|| linear(p / "pooler" / "dense", h, h)),
            classifier: heads.classes.map(|n| Linear::head(&(p / "classifier"), h, n, linear_init())),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The optional parts this model has.
    pub fn heads(&self) -> BertHeads {
        self.heads
    }

    /// Encodes `ids: (B, T)`; `attention_mask: (B, T)` is 1 for real tokens and 0 for
    /// padding (all ones when absent). Token types are all 0.
    pub fn forward(&self, ids: &Tensor, attention_mask: Option<&Tensor>, opts: &ForwardOptions) -> Result<Output> {
        let (b, t) = match ids.size().as_slice() {
            &[b, t] => (b, t),
            shape => return invalid!("BERT input ids must be (batch, time), got shape {shape:?}"),
        };
        if t > self.config.max_position_embeddings {
            return invalid!(
                "{t} tokens are more than the model's {} positions; truncate the input (tokenizers truncate to the model's maximum length)",
                self.config.max_position_embeddings
            );
        }
        super::check_ids(ids, self.config.vocab_size)?;
        let (nh, dropout) = (self.config.num_attention_heads, if opts.train { self.config.hidden_dropout_prob } else { 0.0 });
        let attn_dropout = if opts.train { self.config.attention_probs_dropout_prob } else { 0.0 };
        let e = &self.embeddings;
        let positions = Tensor::arange(t, (Kind::Int64, ids.device()));
        let types = ids.zeros_like();
        let words = opts.hook(Point::outside(Site::Embed), e.word_embeddings.forward(ids))?;
        let positions = opts.hook(Point::outside(Site::PosEmbed), e.position_embeddings.forward(&positions).unsqueeze(0))?;
        let types = opts.hook(Point::outside(Site::TokenTypeEmbed), e.token_type_embeddings.forward(&types))?;
        let x = e.layer_norm.forward(&(words + positions + types)).dropout(dropout, opts.train); // (B, T, H)

        // 0 where a key may be attended to, the dtype's minimum where it is padding.
        let additive = attention_mask.map(|m| (m.to_kind(x.kind()).ones_like() - m.to_kind(x.kind())).view([b, 1, 1, t]) * f64::from(f32::MIN));
        let mask = additive.as_ref().map_or(Mask::Full, Mask::Additive);
        let h = self.config.hidden_size;
        let block = |i: usize, x: Tensor| {
            // Post-norm, named as TransformerLens's BERT: `resid_mid` and `resid_post` are
            // the sums before each norm, `ln1`/`ln2.hook_normalized` what the norms give.
            let layer = &self.layers[i];
            let hook = |site, x| opts.hook(Point::block(i, site), x);
            let x = hook(Site::ResidPre, x)?;
            let heads = |z: Tensor, site| hook(site, z.view([b, t, nh, h / nh]).transpose(1, 2)); // (B, nh, T, hs)
            let (q, k, v) = (
                heads(layer.query.forward_t(&x, opts.train)?, Site::Q)?,
                heads(layer.key.forward_t(&x, opts.train)?, Site::K)?,
                heads(layer.value.forward_t(&x, opts.train)?, Site::V)?,
            );
            let (a, probs) = attend(&q, &k, &v, mask, None, attn_dropout, &layer.attention_output, i, opts)?;
            let mid = hook(Site::ResidMid, hook(Site::AttnOut, a)?.dropout(dropout, opts.train) + &x)?;
            let y = hook(Site::Ln1Normalized, layer.attention_norm.forward(&mid))?;
            let pre = hook(Site::MlpPre, layer.intermediate.forward_t(&y, opts.train)?)?;
            let post = hook(Site::MlpPost, self.activation.apply(&pre))?;
            let f = hook(Site::MlpOut, layer.output.forward_t(&post, opts.train)?)?;
            let resid_post = hook(Site::ResidPost, f.dropout(dropout, opts.train) + &y)?;
            Ok((hook(Site::Ln2Normalized, layer.output_norm.forward(&resid_post))?, probs))
        };
        run_blocks(self.layers.len(), x, opts, block, |x, attentions| {
            let pooled = self.pooler.as_ref().map(|d| d.forward_t(&x.select(1, 0), opts.train)).transpose()?.map(|p| p.tanh()); // (B, H)
            let logits = match (&self.classifier, &pooled) {
                (Some(c), Some(p)) => Some(c.forward_t(&p.dropout(dropout, opts.train), opts.train)?),
                _ => None,
            };
            Ok(Output { hidden: x, pooled, logits, attentions })
        })
    }
}

/// Maps a Hugging Face BERT checkpoint key to this model's variable name, or `None`
/// for keys that hold no parameter of ours (position-id buffers).
pub fn hf_to_var(key: &str) -> Option<String> {
    let key = key.strip_prefix("bert.").unwrap_or(key);
    if key.ends_with("position_ids") {
        return None;
    }
    // TensorFlow-era checkpoints name LayerNorm parameters gamma and beta.
    let key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias");
    Some(key)
}

/// The Hugging Face key for one of this model's variables: `BertForSequenceClassification`
/// keeps the encoder under `bert.`; a bare `BertModel` has no prefix.
pub fn var_to_hf(var: &str, heads: BertHeads) -> String {
    match heads.classes {
        Some(_) if !var.starts_with("classifier.") => format!("bert.{var}"),
        _ => var.to_string(),
    }
}

impl BertHeads {
    /// The parts a model for `task` has.
    pub fn for_task(task: Task) -> Self {
        match task {
            Task::Classification { classes } => BertHeads { pooler: true, classes: Some(classes) },
            Task::Encoder { pooler } => BertHeads { pooler, classes: None },
            Task::LanguageModel | Task::Seq2Seq => BertHeads::default(),
        }
    }

    /// The task a model with these parts serves.
    pub fn task(self) -> Task {
        match self.classes {
            Some(classes) => Task::Classification { classes },
            None => Task::Encoder { pooler: self.pooler },
        }
    }
}

impl Architecture for BertConfig {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn model_type(&self) -> &str {
        "bert"
    }
    fn validate(&self) -> Result<()> {
        BertConfig::validate(self)
    }
    fn dims(&self) -> Dims {
        Dims {
            layers: self.num_hidden_layers,
            width: self.hidden_size,
            heads: self.num_attention_heads,
            kv_heads: self.num_attention_heads,
            head_dim: self.hidden_size / self.num_attention_heads.max(1),
            inner: self.intermediate_size,
            vocab: self.vocab_size,
            extra_embeddings: self.max_position_embeddings + self.type_vocab_size,
            gated: false,
            untied_head: false,
        }
    }
    fn max_positions(&self) -> i64 {
        self.max_position_embeddings
    }
    fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("config serializes");
        json["model_type"] = "bert".into();
        json
    }
    fn build(&self, p: &nn::Path, task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Bert::new(p, self, BertHeads::for_task(task))?))
    }
    /// The pooler and classifier the checkpoint provides.
    fn task_for_checkpoint(&self, tensors: &[(String, Tensor)]) -> Task {
        let var = |name: &str| tensors.iter().find(|(k, _)| hf_to_var(k).as_deref() == Some(name)).map(|(_, t)| t);
        let pooler = var("pooler.dense.weight").is_some();
        // A malformed head (a scalar `classifier.weight`) gets no head here; the strict
        // load then names the tensor and its shape.
        match var("classifier.weight").and_then(|w| w.size().first().copied()).filter(|&n| n >= 1) {
            Some(classes) if pooler => Task::Classification { classes },
            _ => Task::Encoder { pooler },
        }
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn pad_token_id(&self) -> i64 {
        self.pad_token_id
    }
    fn labels(&self) -> Option<Vec<String>> {
        BertConfig::labels(self)
    }
}

impl Network for Bert {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        self.heads.task()
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, cache: Option<&mut KvCache>) -> Result<Output> {
        if cache.is_some() {
            return invalid!("a BERT encoder reads the whole text at once and has no key/value cache; generation needs a decoder");
        }
        Bert::forward(self, ids, mask, opts)
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        hf_to_var(key).map(|v| (v, false))
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        (var_to_hf(var, self.heads), false)
    }
    fn architecture(&self) -> &'static str {
        if self.heads.classes.is_some() {
            "BertForSequenceClassification"
        } else {
            "BertModel"
        }
    }
}

fn normal_init() -> nn::Init {
    super::normal(0.02)
}

fn linear_init() -> nn::LinearConfig {
    nn::LinearConfig { ws_init: normal_init(), bs_init: Some(nn::Init::Const(0.0)), bias: true }
}
