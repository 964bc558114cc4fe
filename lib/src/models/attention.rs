//! Scaled dot-product attention shared by the model families: multi-head or
//! grouped-query (fewer key/value heads than query heads), causal, bidirectional or
//! padded, with optional capture of the attention probabilities.
//!
//! Without capture it calls libtorch's fused kernel (flash / memory-efficient where
//! available, grouped-query without copying keys and values); with capture it computes
//! the same thing step by step so the probabilities exist to return, one map per query
//! head. Capture costs nothing when it is not asked for.

use tch::{Kind, Tensor};

/// Which positions a query may attend to.
#[derive(Clone, Copy)]
pub enum Mask<'a> {
    /// Every query sees every key.
    Full,
    /// A query sees keys up to its own position. Queries are the last `tq` of the
    /// `tk` positions (a key/value cache holds the earlier ones).
    Causal,
    /// An additive mask broadcastable to `(B, nh, tq, tk)`: 0 where allowed, a large
    /// negative number where not (padding).
    Additive(&'a Tensor),
}

/// `softmax(q k^T / sqrt(hs) + mask) v` for `q: (B, nh, tq, hs)`, `k, v: (B, nkv, tk, hs)`
/// where `nkv` divides `nh` (query head `h` reads key/value head `h / (nh / nkv)`).
/// Returns the output `(B, nh, tq, hs)` and, when `capture`, the probabilities
/// `(B, nh, tq, tk)` before dropout.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask, dropout: f64, capture: bool) -> (Tensor, Option<Tensor>) {
    let (tq, tk) = (q.size()[2], k.size()[2]);
    let groups = q.size()[1] / k.size()[1];
    if !capture {
        let gqa = groups > 1;
        let y = match mask {
            Mask::Full => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, false, None, gqa),
            // libtorch's `is_causal` aligns the mask top-left, which is only right when
            // queries and keys are the same positions; a single new query sees all keys.
            Mask::Causal if tq == tk => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, true, None, gqa),
            Mask::Causal if tq == 1 => Tensor::scaled_dot_product_attention::<Tensor>(q, k, v, None, dropout, false, None, gqa),
            Mask::Causal => {
                let allowed = causal_allowed(tq, tk, q.device());
                Tensor::scaled_dot_product_attention(q, k, v, Some(allowed), dropout, false, None, gqa)
            }
            Mask::Additive(m) => Tensor::scaled_dot_product_attention(q, k, v, Some(m.to_kind(q.kind())), dropout, false, None, gqa),
        };
        return (y, None);
    }
    let (k, v) = (&repeat_kv(k, groups), &repeat_kv(v, groups));
    let hs = q.size()[3];
    let mut scores = q.matmul(&k.transpose(-2, -1)) * (1.0 / (hs as f64).sqrt()); // (B, nh, tq, tk)
    match mask {
        Mask::Full => {}
        Mask::Causal => {
            let allowed = causal_allowed(tq, tk, q.device());
            scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
        }
        Mask::Additive(m) => scores = &scores + m.to_kind(scores.kind()),
    }
    let probs = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    let y = probs.dropout(dropout, dropout > 0.0).matmul(v); // (B, nh, tq, hs)
    (y, Some(probs))
}

/// `(tq, tk)` booleans, true where query `i` (position `tk - tq + i`) may see key `j`.
fn causal_allowed(tq: i64, tk: i64, device: tch::Device) -> Tensor {
    Tensor::ones([tq, tk], (Kind::Bool, device)).tril(tk - tq)
}

/// Repeats each of `kv_heads` key/value heads `groups` times (`repeat_kv`): head `h`
/// of the queries reads key/value head `h / groups`.
fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let (b, kv, t, d) = x.size4().expect("(B, kv_heads, T, head_dim)");
    x.unsqueeze(2).expand([b, kv, groups, t, d], false).reshape([b, kv * groups, t, d])
}
