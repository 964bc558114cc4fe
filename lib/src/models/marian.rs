//! Marian, the translation models of OPUS-MT (`Helsinki-NLP/opus-mt-*`): BART's
//! post-norm encoder–decoder ([`super::bart`] builds it) with sinusoidal positions that
//! are computed, not stored, no LayerNorm after the embeddings, embeddings scaled by
//! `√d_model`, a swish MLP and a real `final_logits_bias`. This file holds what differs:
//! the defaults of `MarianConfig`, the sinusoids, and what the lab refuses.
//!
//! Mirrors `transformers/models/marian/modeling_marian.py` (`MarianMTModel`), facts in
//! `../shared/NOTES-encoder-decoder.md` §2.

use serde_json::Value;
use tch::Tensor;

use super::bart::BartConfig;
use super::{Family, TaskKind};
use crate::error::{invalid, Result};

/// The registry entry.
pub const FAMILY: Family = Family {
    name: "marian",
    model_types: &["marian"],
    from_json: |json| Ok(Box::new(from_json(json)?)),
    tasks: &[TaskKind::Seq2Seq],
    gguf: None,
    lora_targets: &["q_proj", "v_proj"],
};

/// Reads a parsed Marian `config.json`: `MarianConfig`'s defaults where the file is
/// silent (they differ from BART's in the special ids and the vocabulary).
pub fn from_json(json: &Value) -> Result<BartConfig> {
    let mut json = json.clone();
    if let Some(map) = json.as_object_mut() {
        for (key, value) in [
            ("vocab_size", Value::from(58101)),
            ("pad_token_id", 58100.into()),
            ("eos_token_id", 0.into()),
            ("bos_token_id", Value::Null),
            ("decoder_start_token_id", 58100.into()),
            ("forced_eos_token_id", 0.into()),
        ] {
            map.entry(key).or_insert(value);
        }
    }
    BartConfig::read(&json, "Marian")
}

/// One vocabulary for both sides: the only kind of Marian model the lab builds.
pub(super) fn check_shared_vocabulary(config: &BartConfig) -> Result<()> {
    let separate = config.other.get("share_encoder_decoder_embeddings").and_then(Value::as_bool) == Some(false);
    let decoder_vocab = config.other.get("decoder_vocab_size").and_then(Value::as_i64).unwrap_or(config.vocab_size);
    if separate || decoder_vocab != config.vocab_size {
        return invalid!(
            "this Marian model has separate source and target vocabularies (`share_encoder_decoder_embeddings` false, `decoder_vocab_size` {decoder_vocab}), which tchlab does not build; OPUS-MT models with one shared vocabulary load"
        );
    }
    Ok(())
}

/// `MarianSinusoidalPositionalEmbedding`'s table `(positions, dim)`, computed in float64
/// and stored in float32 as transformers does: sines in the first half of the features,
/// cosines in the second (not interleaved), `p / 10000^(2i/dim)` in feature `i` of each.
pub fn sinusoids(positions: i64, dim: i64) -> Tensor {
    let half = (dim + 1) / 2;
    let mut table = Vec::with_capacity((positions * dim) as usize);
    for p in 0..positions {
        let angle = |j: i64| p as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
        table.extend((0..half).map(|i| angle(2 * i).sin() as f32));
        table.extend((0..dim - half).map(|i| angle(2 * i + 1).cos() as f32));
    }
    Tensor::from_slice(&table).view([positions, dim])
}
