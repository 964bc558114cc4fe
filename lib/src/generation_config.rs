//! What a checkpoint says about generating with it: `generation_config.json` read as
//! `transformers` reads it (or, when a directory has none, the generation keys of
//! `config.json`, as `GenerationConfig.from_model_config` takes them), and the logits
//! processors its settings turn on ([`Constraints`]): bad words, a minimum length, a
//! forced first and last token, and renormalisation — applied in `transformers`' order
//! (`_get_logits_processor`) by greedy decoding, sampling and beam search alike.
//!
//! The defaults it gives `%generate` (beams, lengths, the length penalty, early
//! stopping, n-gram bans) are what `model.generate(ids)` uses without arguments: BART's
//! summarisers search with 4 beams, OPUS-MT bans its padding id and renormalises.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tch::Tensor;

use crate::error::{Error, Result};

/// When a search may stop before the length limit (`early_stopping` in transformers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    /// `False`, the default: stop once `N` hypotheses are finished and the best running
    /// beam, scored at its current length, cannot beat the worst of them.
    Heuristic,
    /// `True`: stop as soon as `N` hypotheses are finished.
    AtOnce,
    /// `"never"`: as the heuristic, but with a positive length penalty the best running
    /// beam is scored at the longest length it could reach (canonical beam search).
    Never,
}

/// `generation_config.json`: the keys the lab acts on, and every other key kept so that
/// a save writes them back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Beams of the default search (1: greedy or sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_beams: Option<i64>,
    /// The longest output, counting an encoder–decoder's start token or a decoder's prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<i64>,
    /// The most new tokens (takes precedence over `max_length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<i64>,
    /// No end token before this length (counted as `max_length` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<i64>,
    /// Beam search's length penalty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_penalty: Option<f64>,
    /// `true`, `false` or `"never"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<Value>,
    /// Forbid repeating an n-gram of this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_repeat_ngram_size: Option<i64>,
    /// Sequences of ids never generated (the last id of each is banned where the output
    /// ends with the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_words_ids: Option<Vec<Vec<i64>>>,
    /// The first generated token of an encoder–decoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_bos_token_id: Option<i64>,
    /// The token generated at the last position `max_length` allows (one id or several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_eos_token_id: Option<Value>,
    /// A final `log_softmax` after the other processors (OPUS-MT's files set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renormalize_logits: Option<bool>,
    /// End-of-sequence ids: one or several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<Value>,
    /// The decoder's first id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoder_start_token_id: Option<i64>,
    /// Everything else (`bos_token_id`, `pad_token_id`, sampling settings, `transformers_version`).
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// The keys of a model's `config.json` that `from_model_config` turns into generation
/// settings (transformers 4.x kept them there).
const FROM_MODEL_CONFIG: &[&str] = &[
    "num_beams",
    "max_length",
    "min_length",
    "length_penalty",
    "early_stopping",
    "no_repeat_ngram_size",
    "bad_words_ids",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "eos_token_id",
    "decoder_start_token_id",
    "bos_token_id",
    "pad_token_id",
];

impl GenerationConfig {
    /// The generation settings in a model's `config.json` (`config`): the keys
    /// transformers takes from it, where they are not null.
    pub fn from_model_config(config: &Value) -> Self {
        let picked: Map<String, Value> =
            FROM_MODEL_CONFIG.iter().filter_map(|&key| config.get(key).filter(|v| !v.is_null()).map(|v| (key.to_string(), v.clone()))).collect();
        serde_json::from_value(Value::Object(picked)).unwrap_or_default()
    }

    /// `dir/generation_config.json` when there is one, else the settings of the model's
    /// `config.json` (`config`). A file that does not read as a generation config is an
    /// error naming it.
    pub fn from_model_dir(dir: &Path, config: &Value) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.is_file() {
            return Ok(Self::from_model_config(config));
        }
        let text = crate::limits::read_text(&path, crate::limits::MAX_JSON_BYTES)?;
        let not_one = |e: String| Error::format(&path, format!("not a generation config: {e}"));
        let json: Value = serde_json::from_str(&text).map_err(|e| not_one(e.to_string()))?;
        let parsed: GenerationConfig = serde_json::from_value(json.clone()).map_err(|e| {
            // serde does not say which key: the first that does not read alone is the one.
            let key = json.as_object().and_then(|map| {
                map.iter().find(|(k, v)| serde_json::from_value::<GenerationConfig>(Value::Object(Map::from_iter([((*k).clone(), (*v).clone())]))).is_err())
            });
            not_one(match key {
                Some((key, value)) => format!("`{key}` is {value}: {e}"),
                None => e.to_string(),
            })
        })?;
        parsed.check().map_err(|message| Error::format(&path, message))?;
        Ok(parsed)
    }

    /// What a file may not say: ids below zero, lengths below zero, no beams, a length
    /// penalty that is not a number, an early-stopping mode that does not exist.
    fn check(&self) -> std::result::Result<(), String> {
        for (key, value) in [
            ("num_beams", self.num_beams.map(|n| n - 1)),
            ("max_length", self.max_length),
            ("max_new_tokens", self.max_new_tokens),
            ("min_length", self.min_length),
            ("no_repeat_ngram_size", self.no_repeat_ngram_size),
            ("forced_bos_token_id", self.forced_bos_token_id),
            ("decoder_start_token_id", self.decoder_start_token_id),
        ] {
            if let Some(v) = value.filter(|&v| v < 0) {
                let shown = if key == "num_beams" { v + 1 } else { v };
                return Err(format!("`{key}` is {shown}; it must be {}", if key == "num_beams" { "at least 1" } else { "0 or more" }));
            }
        }
        if let Some(p) = self.length_penalty.filter(|p| !p.is_finite()) {
            return Err(format!("`length_penalty` is {p}; it must be a finite number"));
        }
        match &self.early_stopping {
            None | Some(Value::Bool(_)) => {}
            Some(Value::String(s)) if s == "never" => {}
            Some(other) => return Err(format!("`early_stopping` is {other}; it is true, false or \"never\"")),
        }
        for (key, value) in [("eos_token_id", &self.eos_token_id), ("forced_eos_token_id", &self.forced_eos_token_id)] {
            if value.as_ref().is_some_and(|v| ids(v).is_none()) {
                return Err(format!("`{key}` is {}; it is an id or a list of ids", value.as_ref().expect("checked")));
            }
        }
        if self.bad_words_ids.iter().flatten().any(|word| word.is_empty() || word.iter().any(|&id| id < 0)) {
            return Err("`bad_words_ids` holds an empty list or a negative id; it is a list of lists of ids".into());
        }
        Ok(())
    }

    /// Whether saving has anything to write.
    pub fn is_empty(&self) -> bool {
        *self == GenerationConfig::default()
    }

    /// The end ids it names, if it names any.
    pub fn eos_token_ids(&self) -> Option<Vec<i64>> {
        self.eos_token_id.as_ref().and_then(ids)
    }

    /// The early-stopping mode it names.
    pub fn early_stopping(&self) -> Option<EarlyStopping> {
        match self.early_stopping.as_ref()? {
            Value::Bool(true) => Some(EarlyStopping::AtOnce),
            Value::Bool(false) => Some(EarlyStopping::Heuristic),
            _ => Some(EarlyStopping::Never),
        }
    }

    /// The most new tokens it allows a decoder prompt of `prompt_len` tokens (an
    /// encoder–decoder's is its start token), if it says.
    pub fn max_new_tokens(&self, prompt_len: usize) -> Option<usize> {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => Some(n as usize),
            (None, Some(total)) => Some((total as usize).saturating_sub(prompt_len).max(1)),
            (None, None) => None,
        }
    }

    /// The processors it turns on, whose ids are checked against `vocab` and where the
    /// end ids are `eos` (the bad words never include an end id, as in transformers).
    pub fn constraints(&self, eos: &[i64], vocab: i64) -> Result<Constraints> {
        let in_vocab = |key: &str, id: i64| {
            if (0..vocab).contains(&id) {
                Ok(id)
            } else {
                crate::error::invalid!("the generation config's `{key}` is {id}, outside the vocabulary of {vocab} ids")
            }
        };
        let bad_words = self
            .bad_words_ids
            .iter()
            .flatten()
            .filter(|word| !(word.len() == 1 && eos.contains(&word[0])))
            .map(|word| word.iter().map(|&id| in_vocab("bad_words_ids", id)).collect::<Result<Vec<i64>>>())
            .collect::<Result<_>>()?;
        let forced_eos = match self.forced_eos_token_id.as_ref().and_then(ids) {
            Some(list) => list.into_iter().map(|id| in_vocab("forced_eos_token_id", id)).collect::<Result<_>>()?,
            None => vec![],
        };
        Ok(Constraints {
            no_repeat_ngram: self.no_repeat_ngram_size.unwrap_or(0) as usize,
            min_length: self.min_length.unwrap_or(0) as usize,
            forced_bos: self.forced_bos_token_id.map(|id| in_vocab("forced_bos_token_id", id)).transpose()?,
            forced_eos,
            bad_words,
            renormalize: self.renormalize_logits.unwrap_or(false),
        })
    }
}

/// One id or a list of them, as the JSON gives them.
fn ids(value: &Value) -> Option<Vec<i64>> {
    match value {
        Value::Number(n) => n.as_i64().filter(|&id| id >= 0).map(|id| vec![id]),
        Value::Array(items) => items.iter().map(|v| v.as_i64().filter(|&id| id >= 0)).collect(),
        _ => None,
    }
}

/// The logits processors besides sampling's, in the order transformers applies them:
/// the n-gram ban, bad words, the minimum length, the forced first and
/// last tokens, then renormalisation. Lengths count the whole decoder sequence (an
/// encoder–decoder's start token, a decoder's prompt), as `max_length` does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Constraints {
    /// Forbid repeating any n-gram of this size (0: no rule), counted over the prompt too.
    pub no_repeat_ngram: usize,
    /// No end token while the sequence is shorter than this.
    pub min_length: usize,
    /// The only token allowed when the sequence is one token long.
    pub forced_bos: Option<i64>,
    /// The only tokens allowed at the last position the length limit leaves.
    pub forced_eos: Vec<i64>,
    /// Token sequences never produced.
    pub bad_words: Vec<Vec<i64>>,
    /// `log_softmax` once the others are done.
    pub renormalize: bool,
}

impl Constraints {
    /// Whether any processor is on.
    pub fn is_active(&self) -> bool {
        *self != Constraints::default()
    }

    /// Applies the processors to `scores: (rows, V)` (logits or log-probabilities, on the
    /// CPU), row `i` continuing `seqs[i]`, in a generation that ends at `max_length`
    /// tokens of sequence; `eos` are the end ids.
    pub fn apply(&self, seqs: &[Vec<i64>], scores: Tensor, max_length: usize, eos: &[i64]) -> Result<Tensor> {
        if !self.is_active() {
            return Ok(scores);
        }
        let vocab = scores.size()[1];
        for (row, seq) in seqs.iter().enumerate() {
            let mut row_scores = scores.f_get(row as i64)?;
            let ban = |id: i64| -> Result<()> {
                if (0..vocab).contains(&id) {
                    let _ = row_scores.f_get(id)?.f_fill_(f64::NEG_INFINITY)?;
                }
                Ok(())
            };
            if self.no_repeat_ngram > 0 {
                banned_by_ngrams(seq, self.no_repeat_ngram).into_iter().try_for_each(&ban)?;
            }
            for word in &self.bad_words {
                let (last, prefix) = word.split_last().expect("bad words are not empty");
                if seq.ends_with(prefix) {
                    ban(*last)?;
                }
            }
            if seq.len() < self.min_length {
                eos.iter().try_for_each(|&id| ban(id))?;
            }
            // The forced end comes after the forced start, so it wins where both apply.
            let forced = match self.forced_bos {
                _ if !self.forced_eos.is_empty() && seq.len() + 1 == max_length => self.forced_eos.clone(),
                Some(bos) if seq.len() == 1 => vec![bos],
                _ => vec![],
            };
            if !forced.is_empty() {
                let _ = row_scores.f_fill_(f64::NEG_INFINITY)?;
                for &id in &forced {
                    let _ = row_scores.f_get(id)?.f_fill_(0.0)?;
                }
            }
        }
        if self.renormalize {
            return Ok(scores.f_log_softmax(-1, tch::Kind::Float)?);
        }
        Ok(scores)
    }
}

/// The tokens that would complete an n-gram of `seq` already in it
/// (`NoRepeatNGramLogitsProcessor`).
fn banned_by_ngrams(seq: &[i64], n: usize) -> Vec<i64> {
    if seq.len() < n {
        return vec![];
    }
    let prefix = &seq[seq.len() + 1 - n..];
    (0..=seq.len() - n).filter(|&i| seq[i..i + n - 1] == *prefix).map(|i| seq[i + n - 1]).collect()
}
