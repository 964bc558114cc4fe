//! Data sets for training: language-model corpora from text files, text
//! classification from CSV or JSONL, and synthetic sequence tasks. Every random choice
//! comes from an [`Rng`] the trainer owns, so a data set plus a generator state (the
//! data cursor) always yields the same batches.

pub mod chat;
pub mod classify;
pub mod pairs;
pub mod records;
pub mod synth;
pub mod text;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{invalid, Result};
use crate::tokenize::Tokenizer;

/// A small, fast, seedable generator (SplitMix64), so data are the same on every
/// machine for a given seed, independent of libtorch's generators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for data generation, and branch-free.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// `examples` shuffled with `seed` (Fisher–Yates), then split: the last `val_fraction`
/// of them (rounded) for validation.
pub(crate) fn shuffle_split<T>(mut examples: Vec<T>, val_fraction: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    let mut rng = Rng::new(seed);
    for i in (1..examples.len()).rev() {
        examples.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let n_val = (examples.len() as f64 * val_fraction).round() as usize;
    let val = examples.split_off(examples.len() - n_val);
    (examples, val)
}

/// How a data set was made: enough to make it again (checkpoints store this).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSpec {
    /// A synthetic task.
    Synth {
        /// copy, reverse, sort or add.
        task: String,
        /// Symbols per input.
        length: usize,
        /// Distinct symbols.
        symbols: usize,
        /// Source → target pairs for an encoder–decoder (`abc` → `cba`, the decoder
        /// starting from `=`) instead of one text to continue (`abc=cba`).
        #[serde(default)]
        seq2seq: bool,
    },
    /// A language-model corpus.
    Text {
        /// The text file.
        path: PathBuf,
        /// Fraction held out for validation.
        val_fraction: f64,
    },
    /// Labelled texts.
    Classify {
        /// The CSV or JSONL file.
        path: PathBuf,
        /// The field holding the text.
        text_field: String,
        /// The field holding the label.
        label_field: String,
        /// Fraction held out for validation.
        val_fraction: f64,
        /// Seed of the split.
        seed: u64,
    },
    /// Source → target pairs for an encoder–decoder.
    Pairs {
        /// The CSV, TSV or JSONL file.
        path: PathBuf,
        /// The field holding the source.
        source_field: String,
        /// The field holding the target.
        target_field: String,
        /// Fraction held out for validation.
        val_fraction: f64,
        /// Seed of the split.
        seed: u64,
    },
    /// Conversations or prompt–completion pairs (TRL's formats).
    Chat {
        /// The JSON-lines file.
        path: PathBuf,
        /// Fraction held out for validation.
        val_fraction: f64,
        /// Seed of the split.
        seed: u64,
        /// Every token carries loss, not only the assistant's (or the completion's).
        all_tokens: bool,
        /// The chat template conversations are rendered with (the model's).
        template: Option<crate::chat::Template>,
        /// The EOS text plain completions end with.
        eos: Option<String>,
    },
}

/// A data set ready to give batches.
pub enum Dataset {
    /// A synthetic task, with its fixed validation examples.
    Synth {
        /// The task.
        task: synth::Synth,
        /// Examples are source → target pairs ([`DataSpec::Synth::seq2seq`]).
        seq2seq: bool,
        /// Validation batches, drawn once from a fixed seed.
        val: Vec<Batch>,
    },
    /// A language-model corpus.
    Text(text::TextCorpus),
    /// Labelled texts.
    Classify(classify::Classification),
    /// Conversations or prompt–completion pairs.
    Chat(chat::ChatData),
    /// Source → target pairs.
    Pairs(pairs::Pairs),
}

/// One batch of training or validation data.
pub struct Batch {
    /// Token ids `(B, T)`: an encoder–decoder's decoder inputs.
    pub inputs: Tensor,
    /// Next-token ids `(B, T)` (-100 where ignored) for language models; class ids `(B)`
    /// for classifiers.
    pub targets: Tensor,
    /// Attention mask `(B, T)` for padded classification batches.
    pub mask: Option<Tensor>,
    /// An encoder–decoder's source ids `(B, S)`.
    pub source: Option<Tensor>,
}

impl Batch {
    /// A batch of `inputs` and `targets` with no mask or source.
    pub fn plain(inputs: Tensor, targets: Tensor) -> Self {
        Batch { inputs, targets, mask: None, source: None }
    }

    /// A copy sharing the tensors.
    pub fn shallow_clone(&self) -> Self {
        let copy = |t: &Option<Tensor>| t.as_ref().map(Tensor::shallow_clone);
        Batch { inputs: self.inputs.shallow_clone(), targets: self.targets.shallow_clone(), mask: copy(&self.mask), source: copy(&self.source) }
    }

    /// Number of input tokens, for throughput.
    pub fn tokens(&self) -> i64 {
        match &self.mask {
            Some(m) => m.sum(tch::Kind::Int64).int64_value(&[]),
            None => self.inputs.numel() as i64,
        }
    }
}

/// Validation examples drawn for a synthetic task.
const SYNTH_VAL_EXAMPLES: usize = 256;
/// Seed of synthetic validation examples: fixed, so every run is judged on the same ones.
const SYNTH_VAL_SEED: u64 = 0x5EED_0F_DA7A;

impl Dataset {
    /// Makes the data set `spec` describes, tokenised with `tokenizer`; examples longer
    /// than `max_len` tokens (the model's context) are cut. Pairs need the decoder's
    /// `start` id, which only an encoder–decoder has.
    pub fn from_spec(spec: &DataSpec, tokenizer: &Tokenizer, pad_id: i64, max_len: usize, start: Option<i64>) -> Result<Self> {
        Ok(match spec {
            DataSpec::Synth { task, length, symbols, seq2seq } => {
                let task = synth::Synth::new(synth::Task::parse(task)?, *length, *symbols)?;
                let mut rng = Rng::new(SYNTH_VAL_SEED);
                let val = (0..SYNTH_VAL_EXAMPLES / 64).map(|_| task.batch(64, *seq2seq, tokenizer, &mut rng)).collect::<Result<_>>()?;
                Dataset::Synth { task, seq2seq: *seq2seq, val }
            }
            DataSpec::Text { path, val_fraction } => Dataset::Text(text::TextCorpus::from_file(path, tokenizer, *val_fraction)?),
            DataSpec::Classify { path, text_field, label_field, val_fraction, seed } => {
                Dataset::Classify(classify::Classification::from_file(path, text_field, label_field, tokenizer, pad_id, *val_fraction, *seed)?)
            }
            DataSpec::Pairs { path, source_field, target_field, val_fraction, seed } => {
                let Some(start) = start else {
                    return invalid!("source → target pairs train an encoder–decoder (`%model t5`, `%model bart`, or `%load` a T5, BART or Marian model); this model reads one text");
                };
                let fit = pairs::PairsFit { pad_id, start, max_len };
                Dataset::Pairs(pairs::Pairs::from_file(path, (source_field, target_field), tokenizer, &fit, *val_fraction, *seed)?)
            }
            DataSpec::Chat { path, val_fraction, seed, all_tokens, template, eos } => {
                let reading = chat::Reading { tokenizer, template: template.as_ref(), eos: eos.clone(), all_tokens: *all_tokens, max_len, pad_id };
                Dataset::Chat(chat::ChatData::from_file(path, &reading, *val_fraction, *seed)?)
            }
        })
    }

    /// True for source → target pairs (an encoder–decoder's data).
    pub fn is_seq2seq(&self) -> bool {
        matches!(self, Dataset::Synth { seq2seq: true, .. } | Dataset::Pairs(_))
    }

    /// True for classification data.
    pub fn is_classification(&self) -> bool {
        matches!(self, Dataset::Classify(_))
    }

    /// A training batch of `batch` examples; language-model windows are `ctx` long.
    pub fn train_batch(&self, batch: usize, ctx: usize, tokenizer: &Tokenizer, rng: &mut Rng) -> Result<Batch> {
        if batch == 0 {
            return invalid!("the batch size must be at least 1");
        }
        Ok(match self {
            Dataset::Synth { task, seq2seq, .. } => task.batch(batch, *seq2seq, tokenizer, rng)?,
            Dataset::Text(corpus) => {
                let (inputs, targets) = corpus.batch(batch, ctx, rng)?;
                Batch::plain(inputs, targets)
            }
            Dataset::Classify(data) => {
                let (inputs, mask, targets) = data.batch(batch, rng)?;
                Batch { mask: Some(mask), ..Batch::plain(inputs, targets) }
            }
            Dataset::Chat(data) => {
                let (inputs, targets) = data.batch(batch, ctx, rng)?;
                Batch::plain(inputs, targets)
            }
            Dataset::Pairs(data) => data.batch(batch, rng)?,
        })
    }

    /// The validation batches, always the same ones, at most `max_batches`.
    pub fn val_batches(&self, batch: usize, ctx: usize, max_batches: usize) -> Vec<Batch> {
        match self {
            Dataset::Synth { val, .. } => val.iter().take(max_batches).map(Batch::shallow_clone).collect(),
            Dataset::Text(corpus) => corpus.val_batches(batch, ctx, max_batches).into_iter().map(|(inputs, targets)| Batch::plain(inputs, targets)).collect(),
            Dataset::Classify(data) => data
                .val_batches(batch)
                .into_iter()
                .take(max_batches)
                .map(|(inputs, mask, targets)| Batch { mask: Some(mask), ..Batch::plain(inputs, targets) })
                .collect(),
            Dataset::Chat(data) => data.val_batches(batch, ctx).into_iter().take(max_batches).map(|(inputs, targets)| Batch::plain(inputs, targets)).collect(),
            Dataset::Pairs(data) => data.val_batches(batch).into_iter().take(max_batches).collect(),
        }
    }

    /// The length of a synthetic example, which fixes the context it needs.
    pub fn example_len(&self) -> Option<usize> {
        match self {
            Dataset::Synth { task, .. } => Some(task.example_len()),
            _ => None,
        }
    }
}
