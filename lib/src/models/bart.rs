//! BART, the denoising encoder–decoder, and the post-norm encoder–decoder it shares with
//! Marian ([`super::marian`] reads Marian's configuration into this one and builds this
//! network): token embeddings (scaled by `√d_model` when `scale_embedding`) plus
//! positions — learned with an offset of 2 (BART) or sinusoidal (Marian) — then, for
//! BART only, a LayerNorm; blocks whose sublayers each add to the stream and normalise
//! after (self-attention, the decoder's cross-attention, a two-layer MLP), with biases
//! everywhere and `1/√head_dim` scaling; no final norm; the LM head tied to the shared
//! embedding, plus `final_logits_bias`.
//!
//! Paper: Lewis et al., "BART: Denoising Sequence-to-Sequence Pre-training" (2020).
//! Mirrors `transformers/models/bart/modeling_bart.py` (`BartForConditionalGeneration`)
//! and `marian/modeling_marian.py` (`MarianMTModel`) with eager attention, facts in
//! `../shared/NOTES-encoder-decoder.md` §2. Variables are named after the checkpoint
//! keys (`model.encoder.layers.0.self_attn.q_proj.weight`); hook points as T5's, after
//! TransformerLens's encoder–decoder (`encoder.0.attn.hook_pattern`,
//! `decoder.0.cross_attn.hook_pattern`), the norms numbered as in post-norm BERT:
//! `ln1` after the self-attention, `ln2` after the cross-attention (decoder) or the MLP
//! (encoder), `ln3` after the decoder's MLP.
//!
//! As T5, it runs in two calls: [`Network::encode`] reads the source, and
//! [`Network::forward`] runs the decoder with a [`KvCache`] holding the encoder's output.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::attention::{attend, padding_bias, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{BlockId, Site, Stack};
use super::layers::cached;
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Task, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "bart",
    model_types: &["bart"],
    from_json: |json| Ok(Box::new(BartConfig::from_json(json)?)),
    tasks: &[TaskKind::Seq2Seq],
    gguf: None,
    lora_targets: &["q_proj", "v_proj"],
};

/// `config.json` of a BART or Marian checkpoint, with the keys `transformers` writes
/// (the defaults are `BartConfig`'s; Marian's are filled in by [`super::marian`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BartConfig {
    /// `bart` or `marian`.
    pub model_type: String,
    /// Number of token ids.
    #[serde(default = "default_vocab")]
    pub vocab_size: i64,
    /// The longest source and target.
    #[serde(default = "default_positions")]
    pub max_position_embeddings: i64,
    /// Width of the residual stream.
    #[serde(default = "default_d_model")]
    pub d_model: i64,
    /// Encoder blocks.
    #[serde(default = "default_layers")]
    pub encoder_layers: i64,
    /// Decoder blocks.
    #[serde(default = "default_layers")]
    pub decoder_layers: i64,
    /// Heads of the encoder's attention.
    #[serde(default = "default_heads")]
    pub encoder_attention_heads: i64,
    /// Heads of the decoder's self- and cross-attention.
    #[serde(default = "default_heads")]
    pub decoder_attention_heads: i64,
    /// Width of the encoder's MLP.
    #[serde(default = "default_ffn")]
    pub encoder_ffn_dim: i64,
    /// Width of the decoder's MLP.
    #[serde(default = "default_ffn")]
    pub decoder_ffn_dim: i64,
    /// The MLP's activation (`gelu`, erf; Marian's `swish`).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Dropout on embeddings and sublayer outputs.
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Dropout on attention probabilities.
    #[serde(default)]
    pub attention_dropout: f64,
    /// Dropout on the MLP's hidden activations.
    #[serde(default)]
    pub activation_dropout: f64,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Token embeddings are multiplied by `√d_model`.
    #[serde(default)]
    pub scale_embedding: bool,
    /// Padding id (its embedding gets no gradient).
    #[serde(default = "default_pad")]
    pub pad_token_id: i64,
    /// Beginning-of-sequence id.
    #[serde(default = "default_bos")]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence id.
    #[serde(default = "default_eos")]
    pub eos_token_id: Option<i64>,
    /// The id the decoder starts from.
    #[serde(default = "default_eos")]
    pub decoder_start_token_id: Option<i64>,
    /// Generation's forced first token, when `generation_config.json` says nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_bos_token_id: Option<i64>,
    /// Generation's forced last token, when `generation_config.json` says nothing.
    #[serde(default = "default_eos")]
    pub forced_eos_token_id: Option<i64>,
    /// The LM head is the shared embedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    /// Every other key of the file, kept so that a save writes them back.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn default_vocab() -> i64 {
    50265
}
fn default_positions() -> i64 {
    1024
}
fn default_d_model() -> i64 {
    1024
}
fn default_layers() -> i64 {
    12
}
fn default_heads() -> i64 {
    16
}
fn default_ffn() -> i64 {
    4096
}
fn default_activation() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_init_std() -> f64 {
    0.02
}
fn default_pad() -> i64 {
    1
}
fn default_bos() -> Option<i64> {
    Some(0)
}
fn default_eos() -> Option<i64> {
    Some(2)
}

/// BART's learned positions start at row 2 of their table (a fairseq legacy).
const POSITION_OFFSET: i64 = 2;

impl BartConfig {
    /// A configuration for training from scratch: `layers` encoder and `decoder_layers`
    /// decoder blocks of width `dim` with `heads` heads and a GELU MLP of `4 × dim`,
    /// learned positions for `positions` tokens, the decoder starting from `start`,
    /// which also pads; no end token (a synthetic task's answers have a fixed length).
    pub fn small(vocab_size: i64, layers: i64, decoder_layers: i64, heads: i64, dim: i64, start: i64, positions: i64) -> Self {
        BartConfig {
            model_type: "bart".into(),
            vocab_size,
            max_position_embeddings: positions,
            d_model: dim,
            encoder_layers: layers,
            decoder_layers,
            encoder_attention_heads: heads,
            decoder_attention_heads: heads,
            encoder_ffn_dim: 4 * dim,
            decoder_ffn_dim: 4 * dim,
            activation_function: default_activation(),
            dropout: 0.0,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            init_std: default_init_std(),
            scale_embedding: false,
            pad_token_id: start,
            bos_token_id: None,
            eos_token_id: None,
            decoder_start_token_id: Some(start),
            forced_bos_token_id: None,
            forced_eos_token_id: None,
            tie_word_embeddings: Some(true),
            other: Map::new(),
        }
    }

    /// Reads a parsed BART `config.json`.
    pub fn from_json(json: &Value) -> Result<Self> {
        Self::read(json, "BART")
    }

    /// Reads a parsed `config.json` as `what` (BART or Marian) into this configuration.
    pub(super) fn read(json: &Value, what: &str) -> Result<Self> {
        let mut config: BartConfig = super::read_config(json, what)?;
        for key in ["torch_dtype", "dtype", "architectures"] {
            config.other.remove(key);
        }
        Ok(config)
    }

    /// Marian: sinusoidal positions and no embedding LayerNorm.
    pub fn is_marian(&self) -> bool {
        self.model_type == "marian"
    }

    /// The head is the shared embedding unless the file says `false`.
    pub fn tied(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(true)
    }

    fn embed_scale(&self) -> f64 {
        if self.scale_embedding {
            (self.d_model as f64).sqrt()
        } else {
            1.0
        }
    }
}

impl Architecture for BartConfig {
    fn family(&self) -> &'static Family {
        if self.is_marian() {
            &super::marian::FAMILY
        } else {
            &FAMILY
        }
    }
    fn model_type(&self) -> &str {
        &self.model_type
    }
    fn validate(&self) -> Result<()> {
        use super::{MAX_DIMENSION, MAX_LAYERS};
        super::check_dimensions(&[
            ("vocab_size", self.vocab_size, MAX_DIMENSION),
            ("max_position_embeddings", self.max_position_embeddings, MAX_DIMENSION),
            ("d_model", self.d_model, MAX_DIMENSION),
            ("encoder_layers", self.encoder_layers, MAX_LAYERS),
            ("decoder_layers", self.decoder_layers, MAX_LAYERS),
            ("encoder_attention_heads", self.encoder_attention_heads, MAX_DIMENSION),
            ("decoder_attention_heads", self.decoder_attention_heads, MAX_DIMENSION),
            ("encoder_ffn_dim", self.encoder_ffn_dim, MAX_DIMENSION),
            ("decoder_ffn_dim", self.decoder_ffn_dim, MAX_DIMENSION),
        ])?;
        for (key, heads) in [("encoder_attention_heads", self.encoder_attention_heads), ("decoder_attention_heads", self.decoder_attention_heads)] {
            if self.d_model % heads != 0 {
                return invalid!("`d_model` ({}) must be divisible by `{key}` ({heads})", self.d_model);
            }
        }
        for (key, p) in [("dropout", self.dropout), ("attention_dropout", self.attention_dropout), ("activation_dropout", self.activation_dropout)] {
            if !(0.0..1.0).contains(&p) {
                return invalid!("`{key}` must be a probability in [0, 1), got {p}");
            }
        }
        if !(self.init_std > 0.0 && self.init_std.is_finite()) {
            return invalid!("`init_std` must be a finite number > 0, got {}", self.init_std);
        }
        for (key, id) in [
            ("pad_token_id", Some(self.pad_token_id)),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("forced_bos_token_id", self.forced_bos_token_id),
            ("forced_eos_token_id", self.forced_eos_token_id),
        ] {
            if let Some(id) = id.filter(|id| !(0..self.vocab_size).contains(id)) {
                return invalid!("`{key}` is {id} but the vocabulary has ids 0..{}", self.vocab_size - 1);
            }
        }
        Activation::parse(&self.activation_function)?;
        if self.is_marian() {
            super::marian::check_shared_vocabulary(self)?;
        }
        Ok(())
    }
    fn dims(&self) -> Dims {
        Dims {
            // Both stacks, the decoder's cross-attention counted as a third of a block more.
            layers: self.encoder_layers + self.decoder_layers + self.decoder_layers / 3,
            width: self.d_model,
            heads: self.encoder_attention_heads,
            kv_heads: self.encoder_attention_heads,
            head_dim: self.d_model / self.encoder_attention_heads.max(1),
            inner: self.encoder_ffn_dim.max(self.decoder_ffn_dim),
            vocab: self.vocab_size,
            extra_embeddings: 2 * (self.max_position_embeddings + POSITION_OFFSET),
            gated: false,
            untied_head: !self.tied(),
        }
    }
    fn max_positions(&self) -> i64 {
        self.max_position_embeddings
    }
    fn to_json(&self) -> Value {
        let mut json = serde_json::to_value(self).expect("config serializes");
        json["torch_dtype"] = "float32".into();
        json["is_encoder_decoder"] = true.into();
        json["tie_word_embeddings"] = self.tied().into();
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Bart::new(p, self)?))
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
        self.decoder_start_token_id.or(self.bos_token_id)
    }
}

/// An attention: self-attention, or the decoder's cross-attention.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: i64,
    head_dim: i64,
}

impl Attention {
    fn new(p: &nn::Path, c: &BartConfig, heads: i64) -> Self {
        let linear = |name: &str| Linear::new(&(p / name), c.d_model, c.d_model, linear_init(c));
        Attention {
            q_proj: linear("q_proj"),
            k_proj: linear("k_proj"),
            v_proj: linear("v_proj"),
            out_proj: linear("out_proj"),
            heads,
            head_dim: c.d_model / heads,
        }
    }

    /// `x: (B, T, d)` projected by `proj` as heads `(B, heads, T, head_dim)`.
    fn heads(&self, proj: &Linear, x: &Tensor, opts: &ForwardOptions) -> Result<Tensor> {
        let (b, t, _) = x.size3()?;
        Ok(proj.forward_t(x, opts.train)?.f_view([b, t, self.heads, self.head_dim])?.f_transpose(1, 2)?)
    }
}

fn linear_init(c: &BartConfig) -> nn::LinearConfig {
    nn::LinearConfig { ws_init: super::normal(c.init_std), bs_init: Some(nn::Init::Const(0.0)), bias: true }
}

fn layer_norm(p: nn::Path, c: &BartConfig) -> nn::LayerNorm {
    nn::layer_norm(p, vec![c.d_model], nn::LayerNormConfig { eps: 1e-5, ..Default::default() })
}

/// A block: self-attention, the decoder's cross-attention, the MLP, each followed by
/// its LayerNorm.
struct Block {
    self_attn: Attention,
    self_attn_layer_norm: nn::LayerNorm,
    encoder_attn: Option<(Attention, nn::LayerNorm)>,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: nn::LayerNorm,
}

impl Block {
    fn new(p: &nn::Path, c: &BartConfig, decoder: bool) -> Self {
        let (heads, ffn) = if decoder { (c.decoder_attention_heads, c.decoder_ffn_dim) } else { (c.encoder_attention_heads, c.encoder_ffn_dim) };
        Block {
            self_attn: Attention::new(&(p / "self_attn"), c, heads),
            self_attn_layer_norm: layer_norm(p / "self_attn_layer_norm", c),
            encoder_attn: decoder.then(|| (Attention::new(&(p / "encoder_attn"), c, heads), layer_norm(p / "encoder_attn_layer_norm", c))),
            fc1: Linear::new(&(p / "fc1"), c.d_model, ffn, linear_init(c)),
            fc2: Linear::new(&(p / "fc2"), ffn, c.d_model, linear_init(c)),
            final_layer_norm: layer_norm(p / "final_layer_norm", c),
        }
    }
}

/// Where positions come from.
enum Positions {
    /// BART's table `embed_positions`, read from row 2 on.
    Learned(nn::Embedding),
    /// Marian's fixed sinusoids `(max_positions, d_model)`, recomputed rather than stored.
    Sinusoidal(Tensor),
}

/// One stack's input side: positions and, for BART, the LayerNorm after them.
struct Embedding {
    positions: Positions,
    layernorm_embedding: Option<nn::LayerNorm>,
}

impl Embedding {
    fn new(p: &nn::Path, c: &BartConfig) -> Self {
        if c.is_marian() {
            let table = super::marian::sinusoids(c.max_position_embeddings, c.d_model).to_device(p.device());
            return Embedding { positions: Positions::Sinusoidal(table), layernorm_embedding: None };
        }
        let init = nn::EmbeddingConfig { ws_init: super::normal(c.init_std), ..Default::default() };
        Embedding {
            positions: Positions::Learned(nn::embedding(p / "embed_positions", c.max_position_embeddings + POSITION_OFFSET, c.d_model, init)),
            layernorm_embedding: Some(layer_norm(p / "layernorm_embedding", c)),
        }
    }

    /// The stream entering the first block for token embeddings `tokens: (B, T, d)` at
    /// positions `past..past + T`, before dropout.
    fn forward(&self, tokens: Tensor, past: i64) -> Result<Tensor> {
        let t = tokens.size()[1];
        let rows = Tensor::arange_start(past, past + t, (Kind::Int64, tokens.device()));
        let positions = match &self.positions {
            Positions::Learned(table) => table.forward(&(rows + POSITION_OFFSET)),
            Positions::Sinusoidal(table) => table.f_index_select(0, &rows)?.f_to_kind(tokens.kind())?,
        };
        let x = tokens.f_add(&positions)?;
        Ok(match &self.layernorm_embedding {
            Some(norm) => norm.forward(&x),
            None => x,
        })
    }
}

/// A BART or Marian encoder–decoder (`BartForConditionalGeneration`, `MarianMTModel`).
pub struct Bart {
    config: BartConfig,
    shared: nn::Embedding,
    encoder_embedding: Embedding,
    encoder: Vec<Block>,
    decoder_embedding: Embedding,
    decoder: Vec<Block>,
    /// The LM head: the shared embedding's weight unless the file unties it.
    lm_head: Linear,
    /// `(1, vocab)`, added to the logits; a buffer in transformers, so it is not trained.
    final_logits_bias: Tensor,
    activation: Activation,
}

impl Bart {
    /// Builds the model's variables under `p`, initialised as transformers does.
    pub fn new(p: &nn::Path, config: &BartConfig) -> Result<Self> {
        config.validate()?;
        let model = p / "model";
        let init = nn::EmbeddingConfig { ws_init: super::normal(config.init_std), padding_idx: config.pad_token_id, ..Default::default() };
        let shared = nn::embedding(&model / "shared", config.vocab_size, config.d_model, init);
        // transformers zeroes the padding row at initialisation.
        let _ = tch::no_grad(|| shared.ws.get(config.pad_token_id).zero_());
        let stack = |name: &str, layers: i64, decoder: bool| {
            let s = &model / name;
            (Embedding::new(&s, config), (0..layers).map(|i| Block::new(&(&s / "layers" / i), config, decoder)).collect::<Vec<_>>())
        };
        let (encoder_embedding, encoder) = stack("encoder", config.encoder_layers, false);
        let (decoder_embedding, decoder) = stack("decoder", config.decoder_layers, true);
        let lm_head = match config.tied() {
            true => Linear::tied_head(&(p / "lm_head"), &shared.ws),
            false => Linear::head(
                &(p / "lm_head"),
                config.d_model,
                config.vocab_size,
                nn::LinearConfig { ws_init: super::normal(config.init_std), bs_init: None, bias: false },
            ),
        };
        let final_logits_bias = p.zeros_no_train("final_logits_bias", &[1, config.vocab_size]);
        let activation = Activation::parse(&config.activation_function)?;
        Ok(Bart { config: config.clone(), shared, encoder_embedding, encoder, decoder_embedding, decoder, lm_head, final_logits_bias, activation })
    }

    fn dropout(&self, x: Tensor, opts: &ForwardOptions) -> Tensor {
        x.dropout(self.config.dropout, opts.train)
    }

    fn attention_dropout(&self, opts: &ForwardOptions) -> f64 {
        if opts.train {
            self.config.attention_dropout
        } else {
            0.0
        }
    }

    /// The token embeddings of `ids`, scaled, plus positions from `past` on, as the
    /// stack `embedding` gives them.
    fn embed(&self, embedding: &Embedding, ids: &Tensor, past: i64, opts: &ForwardOptions) -> Result<Tensor> {
        let tokens = self.shared.forward(ids) * self.config.embed_scale();
        Ok(self.dropout(embedding.forward(tokens, past)?, opts))
    }

    /// An attention sublayer over `memory` (the stream itself, or the encoder's output),
    /// its residual add and its LayerNorm, through the hook points.
    #[allow(clippy::too_many_arguments)]
    fn attention_sublayer(
        &self,
        x: Tensor,
        attention: &Attention,
        norm: &nn::LayerNorm,
        mask: Mask,
        cache: &mut Option<&mut KvCache>,
        at: BlockId,
        [out_site, mid_site, norm_site]: [Site; 3],
        opts: &ForwardOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let q = opts.hook(at.at(Site::Q), attention.heads(&attention.q_proj, &x, opts)?)?;
        let project = |memory: &Tensor| -> Result<(Tensor, Tensor)> {
            let k = opts.hook(at.at(Site::K), attention.heads(&attention.k_proj, memory, opts)?)?;
            let v = opts.hook(at.at(Site::V), attention.heads(&attention.v_proj, memory, opts)?)?;
            Ok((k, v))
        };
        let (k, v) = match at.stack {
            Stack::Cross => cache.as_deref_mut().expect("the decoder runs with a cache").cross(at.layer, project)?,
            Stack::Decoder => {
                let (k, v) = project(&x)?;
                cached(cache, at.layer, k, v)
            }
            Stack::Encoder | Stack::Blocks => project(&x)?,
        };
        let (a, probs) = attend(&q, &k, &v, mask, None, self.attention_dropout(opts), &attention.out_proj, at, opts)?;
        let block = BlockId { stack: if at.stack == Stack::Encoder { Stack::Encoder } else { Stack::Decoder }, layer: at.layer };
        let h = opts.hook(block.at(mid_site), &x + opts.hook(block.at(out_site), self.dropout(a, opts))?)?;
        Ok((opts.hook(block.at(norm_site), norm.forward(&h))?, probs))
    }

    /// The MLP sublayer, its residual add and its LayerNorm, through the hook points.
    fn feed_forward(&self, block: &Block, x: Tensor, norm_site: Site, at: BlockId, opts: &ForwardOptions) -> Result<Tensor> {
        let pre = opts.hook(at.at(Site::MlpPre), block.fc1.forward_t(&x, opts.train)?)?;
        let post = opts.hook(at.at(Site::MlpPost), self.activation.apply(&pre))?;
        let post = post.dropout(self.config.activation_dropout, opts.train);
        let m = opts.hook(at.at(Site::MlpOut), block.fc2.forward_t(&post, opts.train)?)?;
        let h = opts.hook(at.at(Site::ResidPost), x + self.dropout(m, opts))?;
        opts.hook(at.at(norm_site), block.final_layer_norm.forward(&h))
    }
}

impl Network for Bart {
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
        let bias = mask.map(padding_bias).transpose()?;
        let attention_mask = bias.as_ref().map_or(Mask::Full, Mask::Additive);
        let x = self.embed(&self.encoder_embedding, ids, 0, opts)?;
        let block = |i: usize, x: Tensor| {
            let (block, at) = (&self.encoder[i], BlockId { stack: Stack::Encoder, layer: i });
            let x = opts.hook(at.at(Site::ResidPre), x)?;
            let sites = [Site::AttnOut, Site::ResidMid, Site::Ln1Normalized];
            let (h, probs) = self.attention_sublayer(x, &block.self_attn, &block.self_attn_layer_norm, attention_mask, &mut None, at, sites, opts)?;
            Ok((self.feed_forward(block, h, Site::Ln2Normalized, at, opts)?, probs))
        };
        let out = run_blocks(self.encoder.len(), x, opts, block, |hidden, _| Ok(Output { hidden, logits: None, pooled: None, attentions: None }))?;
        Ok(out.hidden)
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let t = super::seq2seq_ids(ids, self.config.vocab_size, "target", opts)?;
        let name = if self.config.is_marian() { "Marian" } else { "BART" };
        let source = super::seq2seq_source(cache.as_deref(), mask, name)?;
        let cross_bias = source.mask.as_ref().map(padding_bias).transpose()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.config.max_positions() {
            return invalid!("a target of {} tokens is longer than the model's {} positions", past + t, self.config.max_positions());
        }
        let x = self.embed(&self.decoder_embedding, ids, past, opts)?;
        let block = |i: usize, x: Tensor| {
            let (block, at) = (&self.decoder[i], BlockId { stack: Stack::Decoder, layer: i });
            let x = opts.hook(at.at(Site::ResidPre), x)?;
            let sites = [Site::AttnOut, Site::ResidMid, Site::Ln1Normalized];
            let (h, probs) = self.attention_sublayer(x, &block.self_attn, &block.self_attn_layer_norm, Mask::Causal, &mut cache, at, sites, opts)?;
            let (cross, norm) = block.encoder_attn.as_ref().expect("decoder blocks have cross-attention");
            let cross_at = BlockId { stack: Stack::Cross, layer: i };
            let cross_mask = cross_bias.as_ref().map_or(Mask::Full, Mask::Additive);
            let sites = [Site::CrossAttnOut, Site::ResidMidCross, Site::Ln2Normalized];
            let (h, _) = self.attention_sublayer(h, cross, norm, cross_mask, &mut cache, cross_at, sites, opts)?;
            Ok((self.feed_forward(block, h, Site::Ln3Normalized, at, opts)?, probs))
        };
        run_blocks(self.decoder.len(), x, opts, block, |hidden, attentions| {
            let logits = self.lm_head.forward_t(&hidden, opts.train)?.f_add(&self.final_logits_bias)?;
            Ok(Output { hidden, logits: Some(logits), pooled: None, attentions })
        })
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        // `BartModel` files (bart-base) name the stacks without the `model.` prefix.
        let key = match key {
            k if k.starts_with("encoder.") || k.starts_with("decoder.") || k.starts_with("shared.") => format!("model.{k}"),
            k => k.to_string(),
        };
        let ignored = key.ends_with(".embed_tokens.weight")
            || key.ends_with(".version")
            || (key == "lm_head.weight" && self.config.tied())
            || (self.config.is_marian() && key.ends_with(".embed_positions.weight"));
        (!ignored).then_some((key, false))
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        (var.to_string(), false)
    }
    fn may_be_missing(&self, var: &str) -> bool {
        // `BartModel` files have no head bias; transformers then uses zeros.
        var == "final_logits_bias"
    }
    fn architecture(&self) -> &'static str {
        if self.config.is_marian() {
            "MarianMTModel"
        } else {
            "BartForConditionalGeneration"
        }
    }
}
