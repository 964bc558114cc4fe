//! Language-model corpora: a text file tokenised once into ids, split into training
//! and validation parts, read as random contiguous windows of `ctx + 1` tokens.

use std::path::{Path, PathBuf};

use tch::Tensor;

use super::Rng;
use crate::error::{invalid, Error, Result};
use crate::tokenize::Tokenizer;

/// A tokenised text corpus.
pub struct TextCorpus {
    /// The file it came from.
    pub path: PathBuf,
    train: Vec<i64>,
    val: Vec<i64>,
}

impl TextCorpus {
    /// Reads and tokenises `path`; the last `val_fraction` of the ids is for validation.
    pub fn from_file(path: &Path, tokenizer: &Tokenizer, val_fraction: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return invalid!("--val must be a fraction in [0, 1), got {val_fraction}");
        }
        let text = crate::limits::read_text(path, crate::limits::MAX_TEXT_BYTES)?;
        let ids = tokenizer.encode_corpus(&text).map_err(|e| match e {
            Error::Cancelled(_) => e,
            other => Error::format(path, other.to_string()),
        })?;
        let n_val = (ids.len() as f64 * val_fraction) as usize;
        let (train, val) = ids.split_at(ids.len() - n_val);
        Ok(TextCorpus { path: path.to_path_buf(), train: train.to_vec(), val: val.to_vec() })
    }

    /// Number of training and validation tokens.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// `batch` random windows of the training part: inputs and next-token targets,
    /// `(batch, ctx)` each.
    pub fn batch(&self, batch: usize, ctx: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        if self.train.len() < ctx + 1 {
            return invalid!("{}: {} training tokens are fewer than one window of {} (the context + 1)", self.path.display(), self.train.len(), ctx + 1);
        }
        let starts: Vec<usize> = (0..batch).map(|_| rng.below((self.train.len() - ctx) as u64) as usize).collect();
        Ok(windows(&self.train, &starts, ctx))
    }

    /// Consecutive windows of the validation part, at most `max_batches` batches; one
    /// window of all of it when it is shorter than `ctx + 1` tokens.
    pub fn val_batches(&self, batch: usize, ctx: usize, max_batches: usize) -> Vec<(Tensor, Tensor)> {
        let ctx = ctx.min(self.val.len().saturating_sub(1)).max(1);
        let starts: Vec<usize> = (0..).map(|i| i * ctx).take_while(|s| s + ctx < self.val.len()).take(batch * max_batches).collect();
        starts.chunks(batch).map(|chunk| windows(&self.val, chunk, ctx)).collect()
    }
}

fn windows(ids: &[i64], starts: &[usize], ctx: usize) -> (Tensor, Tensor) {
    let mut x = Vec::with_capacity(starts.len() * ctx);
    let mut y = Vec::with_capacity(starts.len() * ctx);
    for &s in starts {
        x.extend_from_slice(&ids[s..s + ctx]);
        y.extend_from_slice(&ids[s + 1..s + ctx + 1]);
    }
    let shape = [starts.len() as i64, ctx as i64];
    (Tensor::from_slice(&x).view(shape), Tensor::from_slice(&y).view(shape))
}
