//! Sentence embeddings as sentence-transformers computes them: the encoder's hidden
//! states, pooled (mean, `[CLS]` or max over real tokens) and optionally normalised,
//! as the checkpoint's `modules.json` and `1_Pooling/config.json` say.
//!
//! Mirrors `sentence_transformers/models/Pooling.py` and `Normalize.py`.

use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{invalid, Error, Result};
use crate::models::{ForwardOptions, Model, Task};
use crate::tokenize::Tokenizer;

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// Average over real tokens.
    Mean,
    /// The first token's state.
    Cls,
    /// Elementwise maximum over real tokens.
    Max,
    /// Sum over real tokens divided by the square root of their count.
    MeanSqrtLen,
}

/// Pooling and normalisation of a sentence-transformers model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pooling {
    /// How token states are pooled.
    pub mode: PoolingMode,
    /// Whether the pooled vector is scaled to unit length.
    pub normalize: bool,
}

impl Default for Pooling {
    /// Mean pooling with normalisation, the most common sentence-transformers set-up.
    fn default() -> Self {
        Pooling { mode: PoolingMode::Mean, normalize: true }
    }
}

impl Pooling {
    /// Reads `modules.json` and the pooling module's `config.json`; `None` when the
    /// directory is not a sentence-transformers model.
    pub fn from_model_dir(dir: &Path) -> Result<Option<Self>> {
        let modules_path = dir.join("modules.json");
        if !modules_path.exists() {
            return Ok(None);
        }
        let text = crate::limits::read_text(&modules_path, crate::limits::MAX_JSON_BYTES)?;
        let modules: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| Error::format(&modules_path, format!("not a JSON list of modules: {e}")))?;
        let of_type = |suffix: &str| modules.iter().find(|m| m["type"].as_str().is_some_and(|t| t.ends_with(suffix)));
        let Some(pooling) = of_type(".Pooling") else { return Ok(None) };
        let config_path = dir.join(pooling["path"].as_str().unwrap_or("")).join("config.json");
        let text = crate::limits::read_text(&config_path, crate::limits::MAX_JSON_BYTES)?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&config_path, format!("not valid JSON: {e}")))?;
        let flag = |key: &str| config[key].as_bool().unwrap_or(false);
        let mode = if flag("pooling_mode_cls_token") {
            PoolingMode::Cls
        } else if flag("pooling_mode_max_tokens") {
            PoolingMode::Max
        } else if flag("pooling_mode_mean_sqrt_len_tokens") {
            PoolingMode::MeanSqrtLen
        } else if flag("pooling_mode_mean_tokens") {
            PoolingMode::Mean
        } else {
            return Err(Error::format(&config_path, "no pooling mode tchlab knows is enabled (cls, max, mean, mean_sqrt_len)"));
        };
        Ok(Some(Pooling { mode, normalize: of_type(".Normalize").is_some() }))
    }

    /// Pools `hidden: (B, T, H)` over the positions where `mask: (B, T)` is 1.
    pub fn apply(&self, hidden: &Tensor, mask: &Tensor) -> Tensor {
        let m = mask.to_kind(hidden.kind()).unsqueeze(-1); // (B, T, 1)
        let count = || m.sum_dim_intlist(1, false, hidden.kind()).clamp_min(1e-9); // (B, 1)
        let pooled = match self.mode {
            PoolingMode::Cls => hidden.select(1, 0),
            PoolingMode::Mean => (hidden * &m).sum_dim_intlist(1, false, hidden.kind()) / count(),
            PoolingMode::MeanSqrtLen => (hidden * &m).sum_dim_intlist(1, false, hidden.kind()) / count().sqrt(),
            PoolingMode::Max => hidden.masked_fill(&m.eq(0.0), -1e9).amax(1, false),
        };
        if self.normalize {
            // torch.nn.functional.normalize: x / max(||x||, eps)
            let norm = pooled.norm_scalaropt_dim(2.0, -1, true).clamp_min(1e-12);
            pooled / norm
        } else {
            pooled
        }
    }
}

/// Embeds `texts` with an encoder: tokenise, pad, encode, pool. Returns `(N, H)`.
pub fn embed(model: &Model, tokenizer: &Tokenizer, pooling: Pooling, texts: &[&str]) -> Result<Tensor> {
    if model.task() == Task::LanguageModel {
        return invalid!("sentence embeddings need an encoder (BERT family); this model is a {} language model", model.config().model_type());
    }
    if texts.is_empty() {
        return invalid!("nothing to embed: give at least one text");
    }
    let ids = texts.iter().map(|t| tokenizer.encode(t)).collect::<Result<Vec<_>>>()?;
    let (ids, mask) = pad_batch(&ids, model.config().pad_token_id());
    let device = model.device();
    let out = tch::no_grad(|| model.forward(&ids.to_device(device), Some(&mask.to_device(device)), &ForwardOptions::default(), None))?;
    Ok(pooling.apply(&out.hidden, &mask.to_device(device)))
}

/// Right-pads sequences to a batch `(N, T)` of ids and an attention mask of 1s and 0s.
pub fn pad_batch(sequences: &[Vec<i64>], pad_id: i64) -> (Tensor, Tensor) {
    let t = sequences.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = Vec::with_capacity(sequences.len() * t);
    let mut mask = Vec::with_capacity(sequences.len() * t);
    for s in sequences {
        ids.extend(s.iter().copied().chain(std::iter::repeat(pad_id)).take(t));
        mask.extend((0..t).map(|i| i64::from(i < s.len())));
    }
    let shape = [sequences.len() as i64, t as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape).to_kind(Kind::Int64))
}
