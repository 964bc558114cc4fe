//! Scaled dot-product attention shared by the model families: multi-head or
//! grouped-query (fewer key/value heads than query heads), causal (over the whole past
//! or a sliding window of it), bidirectional or padded, with its hook points and
//! optional capture of the attention probabilities.
//!
//! Unless the probabilities are wanted (captured, or read or written by a hook) it calls
//! libtorch's fused kernel (flash / memory-efficient where available, grouped-query
//! without copying keys and values); otherwise it computes the same thing step by step
//! so the probabilities exist, one map per query head. Neither costs anything when it
//! is not asked for.

use tch::{Kind, Tensor};

use super::hooks::{BlockId, Point, Site};
use super::layers::{cached, RmsNorm, Rotary};
use super::linear::Linear;
use super::{ForwardOptions, KvCache};
use crate::error::Result;

/// The self-attention of rotary decoders (Llama-style, Gemma 3): query, key and value
/// projections, optional per-head norms of queries and keys (Qwen3, Gemma 3), rotary
/// positions, grouped-query heads over the past or a sliding window of it, through the
/// hook points `hook_q`, `hook_k`, `hook_v`, `hook_rot_q`, `hook_rot_k` and [`attend`]'s.
pub struct RotaryAttention {
    /// Hidden → query heads.
    pub q_proj: Linear,
    /// Hidden → key heads.
    pub k_proj: Linear,
    /// Hidden → value heads.
    pub v_proj: Linear,
    /// Concatenated heads → hidden.
    pub o_proj: Linear,
    /// RMSNorm of each query head, before rotation.
    pub q_norm: Option<RmsNorm>,
    /// RMSNorm of each key head, before rotation.
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub heads: i64,
    /// Key/value heads (dividing `heads`).
    pub kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// Scores' scale; `1/√head_dim` when `None`.
    pub scale: Option<f64>,
    /// Dropout on the probabilities in training.
    pub dropout: f64,
    /// A query sees its own position and the `window − 1` before it; `None`: the whole past.
    pub window: Option<i64>,
}

impl RotaryAttention {
    /// Attention of `x: (B, T, C)` at block `layer`, rotated by `rotary = (cos, sin)`,
    /// extending the cache when there is one.
    pub fn forward(
        &self,
        x: &Tensor,
        rotary: (&Tensor, &Tensor),
        cache: &mut Option<&mut KvCache>,
        layer: usize,
        opts: &ForwardOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = x.size3()?;
        let hook = |site, x| opts.hook(Point::block(layer, site), x);
        let heads = |z: Tensor, n: i64, norm: &Option<RmsNorm>| {
            let z = z.view([b, t, n, self.head_dim]);
            norm.as_ref().map_or(z.shallow_clone(), |norm| tch::nn::Module::forward(norm, &z)).transpose(1, 2)
            // (B, n, T, head_dim)
        };
        let (cos, sin) = rotary;
        let q = hook(Site::Q, heads(self.q_proj.forward_t(x, opts.train)?, self.heads, &self.q_norm))?;
        let k = hook(Site::K, heads(self.k_proj.forward_t(x, opts.train)?, self.kv_heads, &self.k_norm))?;
        let v = hook(Site::V, heads(self.v_proj.forward_t(x, opts.train)?, self.kv_heads, &None))?;
        let q = hook(Site::RotQ, Rotary::apply(&q, cos, sin))?;
        let k = hook(Site::RotK, Rotary::apply(&k, cos, sin))?;
        let (k, v) = cached(cache, layer, k, v);
        let dropout = if opts.train { self.dropout } else { 0.0 };
        let mask = self.window.map_or(Mask::Causal, Mask::SlidingWindow);
        attend(&q, &k, &v, mask, self.scale, dropout, &self.o_proj, layer, opts)
    }
}

/// Which positions a query may attend to.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    /// Every query sees every key.
    Full,
    /// A query sees keys up to its own position. Queries are the last `tq` of the
    /// `tk` positions (a key/value cache holds the earlier ones).
    Causal,
    /// Causal within a window: a query sees its own position and the `w − 1` before it
    /// (Mistral's sliding window; transformers' `kv_idx > q_idx − sliding_window`).
    SlidingWindow(i64),
    /// An additive mask broadcastable to `(B, nh, tq, tk)`: 0 where allowed, a large
    /// negative number where not (padding).
    Additive(&'a Tensor),
}

/// One block's attention from projected heads to its output: `q: (B, nh, tq, hs)`,
/// `k, v: (B, nkv, tk, hs)` where `nkv` divides `nh` (query head `h` reads key/value head
/// `h / (nh / nkv)`), through the output projection `o_proj`. Scores are scaled by
/// `scale`, `1/√hs` when `None` (T5 does not scale: `Some(1.0)`). Runs the hook points
/// `hook_pattern`, `hook_z` and (when asked for) `hook_result` of block `at`. Returns
/// the output `(B, tq, C)` and, when `opts.capture_attention`, the probabilities
/// `(B, nh, tq, tk)` before dropout.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Mask,
    scale: Option<f64>,
    dropout: f64,
    o_proj: &Linear,
    at: impl Into<BlockId>,
    opts: &ForwardOptions,
) -> Result<(Tensor, Option<Tensor>)> {
    let at = at.into();
    let (b, nh, tq, hs) = q.size4()?;
    let pattern = at.at(Site::Pattern);
    let (z, probs) = if opts.capture_attention || opts.touches(pattern) {
        let groups = nh / k.size()[1];
        let probs = opts.hook(pattern, probabilities(q, &repeat_kv(k, groups)?, mask, scale))?;
        (probs.dropout(dropout, dropout > 0.0).matmul(&repeat_kv(v, groups)?), Some(probs))
    } else {
        (fused(q, k, v, mask, scale, dropout), None)
    };
    let z = opts.hook(at.at(Site::Z), z)?; // (B, nh, tq, hs)
    let result = at.at(Site::HeadResult);
    let out = if opts.touches(result) {
        // Each head's share of the output: its slice of the projection's columns.
        let w = o_proj.effective_weight()?.f_view([-1, nh, hs])?; // (C, nh, hs)
        let per_head = opts.hook(result, Tensor::f_einsum("bhtd,chd->bthc", &[&z, &w], None::<i64>)?)?; // (B, tq, nh, C)
        let summed = per_head.f_sum_dim_intlist([2].as_slice(), false, per_head.kind())?;
        match &o_proj.bs {
            Some(bias) => summed + bias,
            None => summed,
        }
    } else {
        o_proj.forward_t(&z.transpose(1, 2).contiguous().view([b, tq, nh * hs]), opts.train)?
    };
    Ok((out, probs))
}

/// libtorch's fused kernel (flash / memory-efficient where available; grouped-query
/// without copying keys and values).
fn fused(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask, scale: Option<f64>, dropout: f64) -> Tensor {
    let (tq, tk) = (q.size()[2], k.size()[2]);
    let gqa = q.size()[1] != k.size()[1];
    match mask {
        Mask::Full => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, false, scale, gqa),
        // libtorch's `is_causal` aligns the mask top-left, which is only right when
        // queries and keys are the same positions; a single new query sees all keys.
        Mask::Causal if tq == tk => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, true, scale, gqa),
        Mask::Causal if tq == 1 => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, false, scale, gqa),
        // A window that reaches the first key masks nothing causal masking does not.
        Mask::SlidingWindow(w) if w >= tk => fused(q, k, v, Mask::Causal, scale, dropout),
        Mask::Causal | Mask::SlidingWindow(_) => {
            let allowed = allowed(mask, tq, tk, q.device());
            Tensor::scaled_dot_product_attention(q, k, v, Some(allowed), dropout, false, scale, gqa)
        }
        Mask::Additive(m) => Tensor::scaled_dot_product_attention(q, k, v, Some(m.to_kind(q.kind())), dropout, false, scale, gqa),
    }
}

/// The attention probabilities, step by step, for `q` and `k` with the same heads.
fn probabilities(q: &Tensor, k: &Tensor, mask: Mask, scale: Option<f64>) -> Tensor {
    let (tq, tk, hs) = (q.size()[2], k.size()[2], q.size()[3]);
    let scale = scale.unwrap_or(1.0 / (hs as f64).sqrt());
    let mut scores = q.matmul(&k.transpose(-2, -1)) * scale; // (B, nh, tq, tk)
    match mask {
        Mask::Full => {}
        Mask::Causal | Mask::SlidingWindow(_) => {
            scores = scores.masked_fill(&allowed(mask, tq, tk, q.device()).logical_not(), f64::NEG_INFINITY);
        }
        Mask::Additive(m) => scores = &scores + m.to_kind(scores.kind()),
    }
    scores.softmax(-1, Kind::Float).to_kind(q.kind())
}

/// `(tq, tk)` booleans for a causal or sliding-window mask, true where query `i`
/// (position `tk - tq + i`) may see key `j`.
fn allowed(mask: Mask, tq: i64, tk: i64, device: tch::Device) -> Tensor {
    let causal = Tensor::ones([tq, tk], (Kind::Bool, device)).tril(tk - tq);
    match mask {
        Mask::SlidingWindow(w) => causal.triu(tk - tq - (w - 1)),
        _ => causal,
    }
}

/// Repeats each of `kv_heads` key/value heads `groups` times (`repeat_kv`): head `h`
/// of the queries reads key/value head `h / groups`.
fn repeat_kv(x: &Tensor, groups: i64) -> Result<Tensor> {
    if groups == 1 {
        return Ok(x.shallow_clone());
    }
    let (b, kv, t, d) = x.size4()?;
    Ok(x.unsqueeze(2).expand([b, kv, groups, t, d], false).reshape([b, kv * groups, t, d]))
}

/// `(B, S)` ones and zeros as an additive mask `(B, 1, 1, S)`: 0 where a key may be
/// seen, float32's lowest where it is padding (as transformers 5.x).
pub(crate) fn padding_bias(mask: &Tensor) -> Result<Tensor> {
    let hidden = mask.f_to_kind(Kind::Float)?.f_neg()?.f_add_scalar(1.0)?.f_mul_scalar(f64::from(f32::MIN))?;
    Ok(hidden.f_unsqueeze(1)?.f_unsqueeze(1)?)
}
