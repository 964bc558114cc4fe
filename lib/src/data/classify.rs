//! Text classification data from CSV (with a header) or JSONL: a text field and a
//! label field per record, the label vocabulary sorted, a seeded train/validation split.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::Rng;
use crate::embedding::pad_batch;
use crate::error::{invalid, Error, Result};
use crate::tokenize::Tokenizer;

/// Labelled texts.
pub struct Classification {
    /// The file they came from.
    pub path: PathBuf,
    /// Class names; a label's id is its index.
    pub labels: Vec<String>,
    train: Vec<(Vec<i64>, i64)>,
    val: Vec<(Vec<i64>, i64)>,
    pad_id: i64,
}

impl Classification {
    /// Reads `path` (`.csv` or `.jsonl`), taking `text_field` and `label_field` from each
    /// record, tokenising the texts; `val_fraction` of the records (shuffled with
    /// `seed`) are for validation.
    pub fn from_file(path: &Path, text_field: &str, label_field: &str, tokenizer: &Tokenizer, pad_id: i64, val_fraction: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return invalid!("--val must be a fraction in [0, 1), got {val_fraction}");
        }
        let records = super::records::read(path, text_field, label_field)?;
        if records.is_empty() {
            return Err(Error::format(path, "no records"));
        }
        let mut labels: Vec<String> = records.iter().map(|(_, l)| l.clone()).collect();
        labels.sort();
        labels.dedup();
        let examples = records
            .iter()
            .map(|(text, label)| Ok((tokenizer.encode(text)?, labels.binary_search(label).expect("label is in the vocabulary") as i64)))
            .collect::<Result<Vec<_>>>()?;
        let (examples, val) = super::shuffle_split(examples, val_fraction, seed);
        Ok(Classification { path: path.to_path_buf(), labels, train: examples, val, pad_id })
    }

    /// The most tokens in one example, which a batch pads to.
    pub fn longest(&self) -> usize {
        self.train.iter().chain(&self.val).map(|(ids, _)| ids.len()).max().unwrap_or(0)
    }

    /// Number of training and validation examples.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// A random training batch: padded ids `(B, T)`, attention mask `(B, T)`, labels `(B)`.
    pub fn batch(&self, batch: usize, rng: &mut Rng) -> Result<(Tensor, Tensor, Tensor)> {
        if self.train.is_empty() {
            return invalid!("{}: no training examples left after the validation split", self.path.display());
        }
        let picked: Vec<&(Vec<i64>, i64)> = (0..batch).map(|_| &self.train[rng.below(self.train.len() as u64) as usize]).collect();
        Ok(self.collate(&picked))
    }

    /// The validation set in order, in batches of `batch`.
    pub fn val_batches(&self, batch: usize) -> Vec<(Tensor, Tensor, Tensor)> {
        self.val.iter().collect::<Vec<_>>().chunks(batch).map(|c| self.collate(c)).collect()
    }

    fn collate(&self, examples: &[&(Vec<i64>, i64)]) -> (Tensor, Tensor, Tensor) {
        let ids: Vec<Vec<i64>> = examples.iter().map(|(ids, _)| ids.clone()).collect();
        let (ids, mask) = pad_batch(&ids, self.pad_id);
        let labels: Vec<i64> = examples.iter().map(|(_, l)| *l).collect();
        (ids, mask, Tensor::from_slice(&labels))
    }
}
