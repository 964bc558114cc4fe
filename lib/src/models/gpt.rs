//! The GPT-2 family: a decoder-only transformer with learned positions, pre-LayerNorm
//! blocks, causal self-attention, a GELU MLP and an LM head tied to the token
//! embedding.
//!
//! Paper: Radford et al., "Language Models are Unsupervised Multitask Learners" (2019).
//! Mirrors `transformers/models/gpt2/modeling_gpt2.py` (`GPT2LMHeadModel`) and
//! nanoGPT's `model.py`. Variables are named after the Hugging Face checkpoint keys
//! (`transformer.h.0.attn.c_attn.weight`), so loading needs no rename table; the one
//! difference, Conv1D's transposed weights, is handled in [`hf_to_var`].
//!
//! ```no_run
//! use tchlab::models::gpt::{Gpt, GptConfig};
//! let config = GptConfig::tiny(64, 32);
//! let vs = tch::nn::VarStore::new(tch::Device::Cpu);
//! let gpt = Gpt::new(&vs.root(), &config).unwrap();
//! let ids = tch::Tensor::from_slice(&[1i64, 2, 3]).unsqueeze(0);
//! let logits = gpt.forward(&ids, &Default::default(), None).unwrap().logits; // (1, 3, 64)
//! ```
//!
//! Through the registry, as the rest of tchlab uses it:
//!
//! ```no_run
//! use tchlab::models::{gpt::GptConfig, Model, Task};
//! let model = Model::new(GptConfig::tiny(64, 32), Task::LanguageModel, tch::Device::Cpu).unwrap();
//! ```

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::Tensor;

use super::attention::{attend, Mask};
use super::checkpointing::run_blocks;
use super::hooks::{Point, Site};
use super::linear::Linear;
use super::{Activation, Architecture, Dims, Family, ForwardOptions, KvCache, ModelConfig, Network, Output, Readout, Task, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "gpt",
    model_types: &["gpt2"],
    from_json: |json| Ok(Box::new(super::read_config::<GptConfig>(json, "GPT-2")?)),
    tasks: &[TaskKind::LanguageModel],
    gguf: None,
    lora_targets: &["c_attn"],
};

/// `config.json` of a GPT-2 checkpoint, with the keys `transformers` writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Number of token ids.
    pub vocab_size: i64,
    /// Context length: the number of learned positions.
    #[serde(default = "default_n_positions")]
    pub n_positions: i64,
    /// Width of the residual stream.
    pub n_embd: i64,
    /// Number of blocks.
    pub n_layer: i64,
    /// Attention heads per block.
    pub n_head: i64,
    /// Width of the MLP's hidden layer; 4 × `n_embd` when absent.
    #[serde(default)]
    pub n_inner: Option<i64>,
    /// MLP activation (`gelu_new`, `gelu`, `relu`, ...).
    #[serde(default = "default_activation")]
    pub activation_function: String,
    /// Dropout on each residual branch.
    #[serde(default = "default_dropout")]
    pub resid_pdrop: f64,
    /// Dropout after the embeddings.
    #[serde(default = "default_dropout")]
    pub embd_pdrop: f64,
    /// Dropout on the attention probabilities.
    #[serde(default = "default_dropout")]
    pub attn_pdrop: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    /// End-of-sequence token id: generation stops there.
    #[serde(default)]
    pub eos_token_id: Option<i64>,
}

fn default_n_positions() -> i64 {
    1024
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}

impl GptConfig {
    /// A small configuration for experiments: 2 layers, 2 heads, width 64, no dropout.
    pub fn tiny(vocab_size: i64, n_positions: i64) -> Self {
        GptConfig {
            vocab_size,
            n_positions,
            n_embd: 64,
            n_layer: 2,
            n_head: 2,
            n_inner: None,
            activation_function: default_activation(),
            resid_pdrop: 0.0,
            embd_pdrop: 0.0,
            attn_pdrop: 0.0,
            layer_norm_epsilon: default_eps(),
            bos_token_id: None,
            eos_token_id: None,
        }
    }

    /// Checks the numbers fit together; the message names the offending keys.
    pub fn validate(&self) -> Result<()> {
        use super::{MAX_DIMENSION, MAX_LAYERS};
        super::check_dimensions(&[
            ("vocab_size", self.vocab_size, MAX_DIMENSION),
            ("n_positions", self.n_positions, MAX_DIMENSION),
            ("n_embd", self.n_embd, MAX_DIMENSION),
            ("n_layer", self.n_layer, MAX_LAYERS),
            ("n_head", self.n_head, MAX_DIMENSION),
            ("n_inner", self.n_inner(), MAX_DIMENSION),
        ])?;
        if !(self.layer_norm_epsilon > 0.0 && self.layer_norm_epsilon.is_finite()) {
            return invalid!("`layer_norm_epsilon` must be a finite number > 0, got {}", self.layer_norm_epsilon);
        }
        for (key, p) in [("resid_pdrop", self.resid_pdrop), ("embd_pdrop", self.embd_pdrop), ("attn_pdrop", self.attn_pdrop)] {
            if !(0.0..1.0).contains(&p) {
                return invalid!("`{key}` must be a probability in [0, 1), got {p}");
            }
        }
        if self.n_embd % self.n_head != 0 {
            return invalid!("`n_embd` ({}) must be a multiple of `n_head` ({})", self.n_embd, self.n_head);
        }
        Activation::parse(&self.activation_function)?;
        Ok(())
    }

    fn n_inner(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: i64,
    dropout: f64,
}

impl Attention {
    fn new(p: &nn::Path, c: &GptConfig) -> Self {
        let d = c.n_embd;
        Attention {
            c_attn: Linear::new(&(p / "c_attn"), d, 3 * d, linear_init()),
            // Residual projections start smaller, as GPT-2's paper prescribes.
            c_proj: Linear::new(&(p / "c_proj"), d, d, residual_init(c)),
            n_head: c.n_head,
            dropout: c.attn_pdrop,
        }
    }

    fn forward(&self, x: &Tensor, cache: &mut Option<&mut KvCache>, layer: usize, opts: &ForwardOptions) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, d) = x.size3()?;
        let heads = |z: &Tensor, site| opts.hook(Point::block(layer, site), z.view([b, t, self.n_head, d / self.n_head]).transpose(1, 2)); // (B, nh, T, hs)
        let qkv = self.c_attn.forward_t(x, opts.train)?.split(d, 2);
        let q = heads(&qkv[0], Site::Q)?;
        let (k, v) = super::layers::cached(cache, layer, heads(&qkv[1], Site::K)?, heads(&qkv[2], Site::V)?);
        let dropout = if opts.train { self.dropout } else { 0.0 };
        attend(&q, &k, &v, Mask::Causal, None, dropout, &self.c_proj, layer, opts)
    }
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    activation: Activation,
}

struct Block {
    ln_1: nn::LayerNorm,
    attn: Attention,
    ln_2: nn::LayerNorm,
    mlp: Mlp,
    resid_pdrop: f64,
}

impl Block {
    fn new(p: &nn::Path, c: &GptConfig) -> Result<Self> {
        let ln = |name: &str| nn::layer_norm(p / name, vec![c.n_embd], nn::LayerNormConfig { eps: c.layer_norm_epsilon, ..Default::default() });
        let mlp = &(p / "mlp");
        Ok(Block {
            ln_1: ln("ln_1"),
            attn: Attention::new(&(p / "attn"), c),
            ln_2: ln("ln_2"),
            mlp: Mlp {
                c_fc: Linear::new(&(mlp / "c_fc"), c.n_embd, c.n_inner(), linear_init()),
                c_proj: Linear::new(&(mlp / "c_proj"), c.n_inner(), c.n_embd, residual_init(c)),
                activation: Activation::parse(&c.activation_function)?,
            },
            resid_pdrop: c.resid_pdrop,
        })
    }

    fn forward(&self, x: Tensor, cache: &mut Option<&mut KvCache>, layer: usize, opts: &ForwardOptions) -> Result<(Tensor, Option<Tensor>)> {
        let hook = |site, x| opts.hook(Point::block(layer, site), x);
        let x = hook(Site::ResidPre, x)?;
        let (a, probs) = self.attn.forward(&hook(Site::Ln1Normalized, self.ln_1.forward(&x))?, cache, layer, opts)?;
        let a = hook(Site::AttnOut, a)?;
        let x = hook(Site::ResidMid, &x + a.dropout(self.resid_pdrop, opts.train))?;
        let pre = hook(Site::MlpPre, self.mlp.c_fc.forward_t(&hook(Site::Ln2Normalized, self.ln_2.forward(&x))?, opts.train)?)?;
        let post = hook(Site::MlpPost, self.mlp.activation.apply(&pre))?;
        let m = hook(Site::MlpOut, self.mlp.c_proj.forward_t(&post, opts.train)?)?;
        let x = hook(Site::ResidPost, &x + m.dropout(self.resid_pdrop, opts.train))?;
        Ok((x, probs))
    }
}

/// A GPT-2 language model (`GPT2LMHeadModel`).
pub struct Gpt {
    config: GptConfig,
    wte: nn::Embedding,
    wpe: nn::Embedding,
    h: Vec<Block>,
    ln_f: nn::LayerNorm,
    /// The LM head, tied to `wte`.
    lm_head: Linear,
}

impl Gpt {
    /// Builds the model's variables under `p` with GPT-2's initialisation.
    pub fn new(p: &nn::Path, config: &GptConfig) -> Result<Self> {
        config.validate()?;
        let t = &(p / "transformer");
        let embedding = nn::EmbeddingConfig { ws_init: normal_init(), ..Default::default() };
        let h = (0..config.n_layer).map(|i| Block::new(&(t / "h" / i), config)).collect::<Result<_>>()?;
        let wte = nn::embedding(t / "wte", config.vocab_size, config.n_embd, embedding);
        Ok(Gpt {
            config: config.clone(),
            lm_head: Linear::tied_head(&(p / "lm_head"), &wte.ws),
            wte,
            wpe: nn::embedding(t / "wpe", config.n_positions, config.n_embd, embedding),
            h,
            ln_f: nn::layer_norm(t / "ln_f", vec![config.n_embd], nn::LayerNormConfig { eps: config.layer_norm_epsilon, ..Default::default() }),
        })
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &GptConfig {
        &self.config
    }

    /// Logits for `ids: (B, T)`. With a cache, `ids` are the positions after those cached,
    /// and the cache grows by `T`.
    pub fn forward(&self, ids: &Tensor, opts: &ForwardOptions, mut cache: Option<&mut KvCache>) -> Result<Output> {
        let (_, t) = match ids.size().as_slice() {
            &[b, t] => (b, t),
            shape => return invalid!("GPT input ids must be (batch, time), got shape {shape:?}"),
        };
        let past = cache.as_ref().map_or(0, |c| c.len());
        if past + t > self.config.n_positions {
            return invalid!(
                "{} tokens do not fit the model's context of {} positions; shorten the input or build a model with a larger `n_positions`",
                past + t,
                self.config.n_positions
            );
        }
        super::check_ids(ids, self.config.vocab_size)?;
        let positions = Tensor::arange_start(past, past + t, (tch::Kind::Int64, ids.device()));
        let tokens = opts.hook(Point::outside(Site::Embed), self.wte.forward(ids))?;
        let positions = opts.hook(Point::outside(Site::PosEmbed), self.wpe.forward(&positions).unsqueeze(0))?;
        let x = (tokens + positions).dropout(self.config.embd_pdrop, opts.train); // (B, T, C)
        let block = |i: usize, x| self.h[i].forward(x, &mut cache, i, opts);
        run_blocks(self.h.len(), x, opts, block, |x, attentions| {
            let hidden = opts.hook(Point::outside(Site::LnFinal), self.ln_f.forward(&x))?;
            // The LM head shares the token embedding's weights (weight tying).
            let logits = self.lm_head.forward_t(&hidden, opts.train)?; // (B, T, vocab)
            Ok(Output { hidden, logits: Some(logits), pooled: None, attentions })
        })
    }
}

impl Architecture for GptConfig {
    fn family(&self) -> &'static Family {
        &FAMILY
    }
    fn model_type(&self) -> &str {
        "gpt2"
    }
    fn validate(&self) -> Result<()> {
        GptConfig::validate(self)
    }
    fn dims(&self) -> Dims {
        Dims {
            layers: self.n_layer,
            width: self.n_embd,
            heads: self.n_head,
            kv_heads: self.n_head,
            head_dim: self.n_embd / self.n_head.max(1),
            inner: self.n_inner(),
            vocab: self.vocab_size,
            extra_embeddings: self.n_positions,
            gated: false,
            untied_head: false,
        }
    }
    fn max_positions(&self) -> i64 {
        self.n_positions
    }
    fn to_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(self).expect("config serializes");
        json["model_type"] = "gpt2".into();
        json
    }
    fn build(&self, p: &nn::Path, _task: Task) -> Result<Box<dyn Network>> {
        Ok(Box::new(Gpt::new(p, self)?))
    }
    fn clone_box(&self) -> Box<dyn Architecture> {
        Box::new(self.clone())
    }
    fn eos_token_ids(&self) -> Vec<i64> {
        self.eos_token_id.into_iter().collect()
    }
}

impl Network for Gpt {
    fn config(&self) -> ModelConfig {
        self.config.clone().into()
    }
    fn task(&self) -> Task {
        Task::LanguageModel
    }
    fn forward(&self, ids: &Tensor, mask: Option<&Tensor>, opts: &ForwardOptions, cache: Option<&mut KvCache>) -> Result<Output> {
        if mask.is_some() {
            return invalid!("a GPT-2 model takes no padding mask: it reads every position causally");
        }
        Gpt::forward(self, ids, opts, cache)
    }
    fn var_for_key(&self, key: &str) -> Option<(String, bool)> {
        hf_to_var(key)
    }
    fn key_for_var(&self, var: &str) -> (String, bool) {
        var_to_hf(var)
    }
    fn architecture(&self) -> &'static str {
        "GPT2LMHeadModel"
    }
    fn readout(&self) -> Option<Readout> {
        Some(Readout {
            weight: self.ln_f.ws.as_ref()?.shallow_clone(),
            bias: self.ln_f.bs.as_ref().map(Tensor::shallow_clone),
            centred: true,
            eps: self.config.layer_norm_epsilon,
            unembed: self.lm_head.effective_weight().ok()?,
        })
    }
}

/// Maps a Hugging Face GPT-2 checkpoint key to this model's variable name, or `None`
/// for keys that hold no parameter (causal-mask buffers, the tied LM head). The flag
/// says the tensor is a Conv1D weight, stored `(in, out)` where we store `(out, in)`.
pub fn hf_to_var(key: &str) -> Option<(String, bool)> {
    // Checkpoints from the original release have no `transformer.` prefix.
    let key = key.strip_prefix("transformer.").unwrap_or(key);
    if key == "lm_head.weight" || key.ends_with(".attn.bias") || key.ends_with(".attn.masked_bias") {
        return None;
    }
    let conv1d = [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"].iter().any(|s| key.ends_with(s));
    Some((format!("transformer.{key}"), conv1d))
}

/// The Hugging Face key and Conv1D flag for one of this model's variables.
pub fn var_to_hf(var: &str) -> (String, bool) {
    let conv1d = hf_to_var(var).is_some_and(|(_, c)| c);
    (var.to_string(), conv1d)
}

fn normal_init() -> nn::Init {
    super::normal(0.02)
}

fn linear_init() -> nn::LinearConfig {
    nn::LinearConfig { ws_init: normal_init(), bs_init: Some(nn::Init::Const(0.0)), bias: true }
}

fn residual_init(c: &GptConfig) -> nn::LinearConfig {
    let stdev = 0.02 / (2.0 * c.n_layer as f64).sqrt();
    nn::LinearConfig { ws_init: super::normal(stdev), ..linear_init() }
}
