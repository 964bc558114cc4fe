//! Layers the families share: RMSNorm, rotary position embeddings (default and
//! Llama 3's scaling), the gated MLP, and the key/value cache every decoder uses.
//! Attention itself is in [`super::attention`].
//!
//! Each mirrors its `transformers` counterpart numerically (dtypes included), so that
//! parity holds to float32 precision.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::hooks::Site;
use super::linear::Linear;
use super::Activation;
use crate::error::Result;

/// Keys and values of earlier positions, one pair per layer, so that generation runs
/// each token once. For an encoder–decoder it also holds what the decoder reads of the
/// source: the encoder's output, and each layer's cross-attention keys and values,
/// computed from it once per generation.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>, // per layer: (B, kv_heads, T_past, head_dim)
    source: Option<Source>,
    cross: Vec<(Tensor, Tensor)>, // per layer: (B, heads, S, head_dim)
}

/// An encoder's output as the decoder's cross-attention reads it.
pub struct Source {
    /// The encoder's final hidden states `(B, S, C)`.
    pub hidden: Tensor,
    /// `(B, S)`: 1 on source tokens, 0 on padding; `None` when nothing is padded.
    pub mask: Option<Tensor>,
}

impl KvCache {
    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.layers.first().filter(|(k, _)| k.numel() > 0).map_or(0, |(k, _)| k.size()[2])
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache for decoding from `source`, the encoder's output.
    pub fn for_source(source: Source) -> Self {
        KvCache { source: Some(source), ..Default::default() }
    }

    /// The encoder's output the decoder reads, in an encoder–decoder's cache.
    pub fn source(&self) -> Option<&Source> {
        self.source.as_ref()
    }

    /// Keeps, for each row of the next batch, the cached row `rows[i]` (beam search
    /// continuing some beams twice and others not at all; at its start, one source
    /// copied to every beam).
    pub fn reorder(&mut self, rows: &Tensor) -> Result<()> {
        for (k, v) in self.layers.iter_mut().chain(&mut self.cross) {
            if k.numel() > 0 {
                *k = k.f_index_select(0, rows)?;
                *v = v.f_index_select(0, rows)?;
            }
        }
        if let Some(source) = &mut self.source {
            source.hidden = source.hidden.f_index_select(0, rows)?;
            if let Some(mask) = &mut source.mask {
                *mask = mask.f_index_select(0, rows)?;
            }
        }
        Ok(())
    }

    /// `layer`'s cross-attention keys and values: `project` computes them from the
    /// source the first time, the cache keeps them after.
    pub fn cross(&mut self, layer: usize, project: impl FnOnce(&Tensor) -> Result<(Tensor, Tensor)>) -> Result<(Tensor, Tensor)> {
        let Some(source) = &self.source else {
            return crate::error::invalid!("an encoder–decoder's decoder reads the encoder's output, and this cache holds none");
        };
        if self.cross.len() <= layer {
            self.cross.resize_with(layer + 1, || (Tensor::new(), Tensor::new()));
        }
        if self.cross[layer].0.numel() == 0 {
            self.cross[layer] = project(&source.hidden)?;
        }
        let (k, v) = &self.cross[layer];
        Ok((k.shallow_clone(), v.shallow_clone()))
    }

    /// Appends this step's `k, v: (B, heads, T, head_dim)` to `layer`'s and returns
    /// every position's keys and values.
    pub fn extend(&mut self, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if self.layers.len() <= layer {
            self.layers.resize_with(layer + 1, || (Tensor::new(), Tensor::new()));
        }
        let slot = &mut self.layers[layer];
        let (k, v) = if slot.0.numel() > 0 { (Tensor::cat(&[&slot.0, &k], 2), Tensor::cat(&[&slot.1, &v], 2)) } else { (k, v) };
        *slot = (k.shallow_clone(), v.shallow_clone());
        (k, v)
    }
}

/// Appends to the cache when there is one; otherwise returns `k, v` as they are.
pub fn cached(cache: &mut Option<&mut KvCache>, layer: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
    match cache {
        Some(c) => c.extend(layer, k, v),
        None => (k, v),
    }
}

/// Root-mean-square normalisation with a learned scale (`LlamaRMSNorm`): computed in
/// float32 whatever the input's dtype, scaled after casting back. Gemma's variant
/// ([`RmsNorm::gemma`]) stores the scale as an offset from one and applies it before
/// casting back (`Gemma3RMSNorm`).
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    /// What the stored weight is an offset from: 0 (Llama), 1 (Gemma).
    offset: f64,
}

impl RmsNorm {
    /// A norm over the last `size` features, its scale starting at one.
    pub fn new(p: nn::Path, size: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[size], nn::Init::Const(1.0)), eps, offset: 0.0 }
    }

    /// Gemma's norm: it multiplies by `1 + weight` in float32, the weight starting at zero.
    pub fn gemma(p: nn::Path, size: i64, eps: f64) -> Self {
        RmsNorm { weight: p.var("weight", &[size], nn::Init::Const(0.0)), eps, offset: 1.0 }
    }

    /// The scale it multiplies by (the learned weight, plus one for Gemma's).
    pub fn scale(&self) -> Tensor {
        match self.offset {
            0.0 => self.weight.shallow_clone(),
            offset => self.weight.to_kind(Kind::Float) + offset,
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let h = x.to_kind(Kind::Float);
        let variance = h.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let h = h * (variance + self.eps).rsqrt();
        match self.offset {
            0.0 => &self.weight * h.to_kind(kind),
            offset => (h * (self.weight.to_kind(Kind::Float) + offset)).to_kind(kind),
        }
    }
}

/// How many features of a head of `head_dim` rotary embeddings turn when they turn the
/// share `share` of it (`int(head_dim * share)`, as GPT-NeoX's `rotary_pct` and Phi-3's
/// `partial_rotary_factor` say): the share must be in (0, 1] and the count even and at
/// least 2, since rotary embeddings turn pairs. `key` names the setting in messages.
pub fn partial_rotary_dims(key: &str, share: f64, head_dim: i64) -> crate::error::Result<i64> {
    if !(share > 0.0 && share <= 1.0) {
        return crate::error::invalid!("`{key}` must be in (0, 1], got {share}");
    }
    let dims = (head_dim as f64 * share) as i64;
    if dims < 2 || dims % 2 != 0 {
        return crate::error::invalid!(
            "`{key}` {share} of a head of {head_dim} features turns {dims} of them; rotary embeddings turn pairs, so that must be even and at least 2"
        );
    }
    Ok(dims)
}

/// Rotary position embeddings (Su et al., "RoFormer", 2021): inverse frequencies per
/// pair of features, optionally rescaled for long contexts as Llama 3.1 does.
#[derive(Debug)]
pub struct Rotary {
    inv_freq: Tensor, // (head_dim / 2,) float32
}

/// Llama 3.1's `rope_scaling` of type `llama3`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    /// How much longer the new context is.
    pub factor: f64,
    /// Wavelengths longer than `original / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// The context the model was first trained with.
    pub original_max_position_embeddings: f64,
}

impl Rotary {
    /// Frequencies for heads of `head_dim` features with base `theta`, as
    /// `LlamaRotaryEmbedding` computes them (in float32).
    pub fn new(head_dim: i64, theta: f64, scaling: Option<Llama3Scaling>, device: tch::Device) -> Self {
        let exponents = Tensor::arange_start_step(0, head_dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / head_dim as f64;
        let mut inv_freq = Tensor::from(theta).to_kind(Kind::Float).to_device(device).pow(&exponents).reciprocal();
        if let Some(s) = scaling {
            let low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
            let high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
            let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
            let scaled = inv_freq.where_self(&wavelen.le(low_freq_wavelen), &(&inv_freq / s.factor));
            let smooth = (wavelen.reciprocal() * s.original_max_position_embeddings - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
            let smoothed = (smooth.ones_like() - &smooth) * &scaled / s.factor + &smooth * &scaled;
            let medium = wavelen.ge(high_freq_wavelen).logical_and(&wavelen.le(low_freq_wavelen));
            inv_freq = smoothed.where_self(&medium, &scaled);
        }
        Rotary { inv_freq }
    }

    /// The same frequencies divided by `factor` (`rope_type: linear`, as Gemma 3's larger
    /// models scale their global layers): positions read as `factor` times closer.
    pub fn linear(self, factor: f64) -> Self {
        Rotary { inv_freq: self.inv_freq / factor }
    }

    /// `cos, sin: (T, head_dim)` for positions `start..start + t`.
    pub fn cos_sin(&self, start: i64, t: i64) -> (Tensor, Tensor) {
        let device = self.inv_freq.device();
        let positions = Tensor::arange_start(start, start + t, (Kind::Int64, device)).to_kind(Kind::Float);
        let freqs = positions.unsqueeze(1).matmul(&self.inv_freq.unsqueeze(0)); // (T, head_dim / 2)
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (emb.cos(), emb.sin())
    }

    /// Rotates `x: (B, heads, T, head_dim)` by the positions' angles; when `cos, sin`
    /// are narrower than a head (GPT-NeoX's `rotary_pct`), only its first features turn.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let (turned, width) = (cos.size()[1], x.size()[3]);
        if turned < width {
            let rotated = Self::apply(&x.narrow(-1, 0, turned), cos, sin);
            return Tensor::cat(&[&rotated, &x.narrow(-1, turned, width - turned)], -1);
        }
        let kind = x.kind();
        let half = x.size()[3] / 2;
        let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
        let rotated = Tensor::cat(&[&(-x2), &x1], -1);
        x * cos.to_kind(kind) + rotated * sin.to_kind(kind)
    }
}

/// The gated MLP of Llama-style models: `down(act(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct GatedMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl GatedMlp {
    /// The three projections under `p`, with `bias` on each when the config says so.
    pub fn new(p: &nn::Path, width: i64, inner: i64, activation: Activation, bias: bool, init: nn::Init) -> Self {
        let config = nn::LinearConfig { ws_init: init, bs_init: Some(nn::Init::Const(0.0)), bias };
        GatedMlp {
            gate_proj: Linear::new(&(p / "gate_proj"), width, inner, config),
            up_proj: Linear::new(&(p / "up_proj"), width, inner, config),
            down_proj: Linear::new(&(p / "down_proj"), inner, width, config),
            activation,
        }
    }
}

impl GatedMlp {
    /// `down(act(gate(x)) * up(x))`, through the hook points `mlp.hook_pre` (the gate),
    /// `mlp.hook_pre_linear` (up) and `mlp.hook_post` that `hook` runs.
    pub fn forward(&self, x: &Tensor, train: bool, hook: impl Fn(Site, Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let gate = hook(Site::MlpPre, self.gate_proj.forward_t(x, train)?)?;
        let up = hook(Site::MlpPreLinear, self.up_proj.forward_t(x, train)?)?;
        let post = hook(Site::MlpPost, self.activation.apply(&gate) * up)?;
        self.down_proj.forward_t(&post, train)
    }
}
