//! Source → target pairs for an encoder–decoder (`%data pairs FILE`): a source field and
//! a target field per record of a CSV, TSV or JSON-lines file, tokenised as transformers'
//! seq2seq examples are (`tokenizer(source)`, `tokenizer(text_target=target)`: the
//! tokenizer's own end token after each), a seeded train/validation split. A batch pads
//! the sources (with their mask) and gives the decoder the target shifted right behind
//! the model's start token, as `T5ForConditionalGeneration` does with `labels`.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::{Batch, Rng};
use crate::embedding::pad_batch;
use crate::error::{invalid, Error, Result};
use crate::tokenize::Tokenizer;

/// Source and target ids of one example.
type Example = (Vec<i64>, Vec<i64>);

/// Tokenised pairs.
pub struct Pairs {
    /// The file they came from.
    pub path: PathBuf,
    train: Vec<Example>,
    val: Vec<Example>,
    pad_id: i64,
    start: i64,
    /// Sources or targets longer than the model's positions, cut to them.
    pub truncated: usize,
    /// Records with a blank source or target, left out.
    pub dropped: usize,
}

/// What the model says about how pairs are read.
pub struct PairsFit {
    /// The padding id.
    pub pad_id: i64,
    /// The decoder's start id.
    pub start: i64,
    /// The most tokens a source or a target keeps.
    pub max_len: usize,
}

impl Pairs {
    /// Reads `path`, taking `source_field` and `target_field` from each record; `val_fraction`
    /// of the pairs (shuffled with `seed`) are for validation.
    pub fn from_file(path: &Path, fields: (&str, &str), tokenizer: &Tokenizer, fit: &PairsFit, val_fraction: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return invalid!("--val must be a fraction in [0, 1), got {val_fraction}");
        }
        let records = super::records::read(path, fields.0, fields.1)?;
        let (mut examples, mut truncated, mut dropped) = (Vec::with_capacity(records.len()), 0, 0);
        for (source, target) in &records {
            crate::interrupt::check("tokenizing the pairs")?;
            let (mut s, mut t) = match source.trim().is_empty() || target.trim().is_empty() {
                true => (vec![], vec![]),
                false => (encode_at_most(tokenizer, source, fit.max_len)?, encode_at_most(tokenizer, target, fit.max_len)?),
            };
            if s.is_empty() || t.is_empty() {
                dropped += 1;
                continue;
            }
            if s.len() > fit.max_len || t.len() > fit.max_len {
                truncated += 1;
                s.truncate(fit.max_len);
                t.truncate(fit.max_len);
            }
            examples.push((s, t));
        }
        if examples.is_empty() {
            return Err(Error::format(path, format!("no pairs with both a `{}` and a `{}`", fields.0, fields.1)));
        }
        let (train, val) = super::shuffle_split(examples, val_fraction, seed);
        Ok(Pairs { path: path.to_path_buf(), train, val, pad_id: fit.pad_id, start: fit.start, truncated, dropped })
    }

    /// Number of training and validation pairs.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// The most tokens in a source or a target.
    pub fn longest(&self) -> usize {
        self.train.iter().chain(&self.val).map(|(s, t)| s.len().max(t.len())).max().unwrap_or(0)
    }

    /// A random training batch.
    pub fn batch(&self, batch: usize, rng: &mut Rng) -> Result<Batch> {
        if self.train.is_empty() {
            return invalid!("{}: no training pairs left after the validation split", self.path.display());
        }
        let picked: Vec<&Example> = (0..batch).map(|_| &self.train[rng.below(self.train.len() as u64) as usize]).collect();
        Ok(self.collate(&picked))
    }

    /// The validation pairs in order, in batches of `batch`.
    pub fn val_batches(&self, batch: usize) -> Vec<Batch> {
        self.val.iter().collect::<Vec<_>>().chunks(batch).map(|c| self.collate(c)).collect()
    }

    /// Padded sources and their mask; the decoder's targets (the target, -100 on padding)
    /// and inputs, the targets shifted right behind the start id with padding for -100
    /// (`_shift_right`; a shorter row's last token is read where nothing is learnt).
    fn collate(&self, examples: &[&Example]) -> Batch {
        let sources: Vec<Vec<i64>> = examples.iter().map(|(s, _)| s.clone()).collect();
        let (source, mask) = pad_batch(&sources, self.pad_id);
        let width = examples.iter().map(|(_, t)| t.len()).max().unwrap_or(1);
        let (mut inputs, mut targets) = (Vec::with_capacity(examples.len() * width), Vec::with_capacity(examples.len() * width));
        for (_, t) in examples {
            inputs.extend(std::iter::once(self.start).chain(t.iter().copied()).chain(std::iter::repeat(self.pad_id)).take(width));
            targets.extend(t.iter().copied().chain(std::iter::repeat(-100)).take(width));
        }
        let rows = |ids: Vec<i64>| Tensor::from_slice(&ids).view([examples.len() as i64, width as i64]);
        Batch { mask: Some(mask), source: Some(source), ..Batch::plain(rows(inputs), rows(targets)) }
    }
}

/// The tokens of `text`, or, when it is far longer than `max_len` tokens can be, of a
/// prefix of it whose first `max_len` tokens are the text's (the caller keeps those):
/// tokenising a whole 1 GB record to keep 512 tokens would take tens of gigabytes. The
/// prefix starts at 16 bytes a token and grows fourfold until two prefixes in a row
/// agree on the first `max_len` tokens — a cut changes only the tokens next to it, and a
/// tokenizer that truncates by itself gives `max_len` either way.
fn encode_at_most(tokenizer: &Tokenizer, text: &str, max_len: usize) -> Result<Vec<i64>> {
    let mut cut = max_len.saturating_mul(16).max(64);
    let mut previous: Option<Vec<i64>> = None;
    loop {
        if cut >= text.len() {
            return tokenizer.encode(text);
        }
        let end = (0..=cut).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        let ids = tokenizer.encode(&text[..end])?;
        let kept = &ids[..ids.len().min(max_len)];
        if kept.len() == max_len && previous.as_deref() == Some(kept) {
            return Ok(ids);
        }
        previous = Some(kept.to_vec());
        cut = cut.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_keeps_the_tokens_the_whole_text_starts_with() {
        let text: String = (0..20_000).map(|i| format!("{} ", i % 97)).collect();
        let tokenizer = Tokenizer::char_level(&text).unwrap();
        let whole = tokenizer.encode(&text).unwrap();
        for max_len in [1, 7, 64, 500] {
            let cut = encode_at_most(&tokenizer, &text, max_len).unwrap();
            assert!(cut.len() >= max_len && cut.len() < whole.len(), "{max_len}: {} of {} tokens", cut.len(), whole.len());
            assert_eq!(cut[..max_len], whole[..max_len], "{max_len}");
        }
        assert_eq!(encode_at_most(&tokenizer, "12 3", 500).unwrap(), tokenizer.encode("12 3").unwrap(), "a short text whole");
    }
}
