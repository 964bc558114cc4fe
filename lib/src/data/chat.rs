//! Instruction tuning data in TRL's formats
//! (<https://github.com/huggingface/trl/blob/f2cd5771/trl/trainer/sft_trainer.py>,
//! `_prepare_dataset`), one JSON object a line:
//!
//! - `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation, rendered by
//!   the model's own chat template. By default only what the assistant says carries
//!   loss — each reply's content, its end-of-turn token and what the template puts after
//!   it within the turn — as TRL's `assistant_only_loss` marks it through a template's
//!   `{% generation %}` blocks. Templates rarely have those blocks (SmolLM2's has none),
//!   so a reply is found by rendering the conversation up to it twice, without and
//!   with it: the text between is the reply. That needs a template that renders every
//!   prefix of a conversation as a prefix of the whole, which is checked.
//! - `{"prompt": ..., "completion": ...}`: strings (the EOS token appended to the
//!   completion when it is not there, as TRL does) or message lists (rendered by the
//!   template, the prompt with the assistant's turn opened); the completion carries
//!   loss, as TRL's `completion_only_loss` default has it.
//!
//! With `all_tokens`, every token carries loss. Examples longer than the model's
//! context keep their start (TRL's `keep_start`); those left with no token to learn are
//! dropped, and both are counted. Batches pad to their longest example, with no loss on
//! the padding.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tch::Tensor;

use super::Rng;
use crate::chat::{Message, Template};
use crate::error::{invalid, Error, Result};
use crate::tokenize::Tokenizer;

/// The most messages one conversation may have.
pub const MAX_MESSAGES: usize = 1024;
/// The most examples a file may hold.
pub const MAX_EXAMPLES: usize = 1_000_000;
/// The largest file read.
const MAX_FILE_BYTES: u64 = 256 << 20;
/// The label of a token that carries no loss, as PyTorch's cross-entropy ignores it.
pub const IGNORE: i64 = -100;

/// One tokenised example: its ids and labels (the ids, or [`IGNORE`]), not yet shifted.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub ids: Vec<i64>,
    /// What each position is trained to be, or [`IGNORE`].
    pub labels: Vec<i64>,
}

/// An example as people read it: its text and the byte ranges of it that carry loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// The rendered text.
    pub text: String,
    /// `[start, end)` byte ranges of the tokens that carry loss, in order.
    pub trained: Vec<(usize, usize)>,
}

/// Conversations or prompt–completion pairs, tokenised.
pub struct ChatData {
    /// The file they came from.
    pub path: PathBuf,
    train: Vec<Example>,
    val: Vec<Example>,
    /// Examples cut to the model's context.
    pub truncated: usize,
    /// Examples dropped because no token of them is left to learn.
    pub dropped: usize,
    /// The first training example as read.
    pub shown: Option<Shown>,
    pad_id: i64,
}

/// What `%data chat` reads a file with.
pub struct Reading<'a> {
    /// The tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The model's chat template (conversations need it).
    pub template: Option<&'a Template>,
    /// The text of the model's EOS token, which plain completions end with.
    pub eos: Option<String>,
    /// Every token carries loss.
    pub all_tokens: bool,
    /// Examples are cut to this many tokens.
    pub max_len: usize,
    /// Padding id.
    pub pad_id: i64,
}

impl ChatData {
    /// Reads `path` (JSON lines), tokenises every example as [`Reading`] says, and
    /// holds `val_fraction` of them (shuffled with `seed`) out for validation.
    pub fn from_file(path: &Path, reading: &Reading, val_fraction: f64, seed: u64) -> Result<Self> {
        if !(0.0..1.0).contains(&val_fraction) {
            return invalid!("--val must be a fraction in [0, 1), got {val_fraction}");
        }
        let text = crate::limits::read_text(path, MAX_FILE_BYTES)?;
        let tokenizer = reading.tokenizer.untruncated()?;
        let (mut examples, mut truncated, mut dropped, mut shown) = (vec![], 0, 0, None);
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            crate::interrupt::check("reading the conversations")?;
            if examples.len() + dropped >= MAX_EXAMPLES {
                return Err(Error::format(path, format!("more than {MAX_EXAMPLES} examples; split the file")));
            }
            let at = |e: Error| match e {
                Error::Invalid(m) | Error::Format { message: m, .. } => Error::format(path, format!("line {}: {m}", i + 1)),
                other => other,
            };
            let record: Value =
                serde_json::from_str(line).map_err(|e| Error::format(path, format!("line {}: not a JSON object ({e}); each line is one example", i + 1)))?;
            let (rendered, mut example) = example(&record, &tokenizer, reading).map_err(at)?;
            if example.ids.len() > reading.max_len {
                example.ids.truncate(reading.max_len);
                example.labels.truncate(reading.max_len);
                truncated += 1;
            }
            if example.labels.iter().all(|&l| l == IGNORE) {
                dropped += 1;
                continue;
            }
            if shown.is_none() {
                shown = Some(rendered.shown(&example));
            }
            examples.push(example);
        }
        if examples.is_empty() {
            return Err(Error::format(path, if dropped > 0 { "no example has a token to learn (all were cut away by the context)" } else { "no examples" }));
        }
        let (examples, val) = super::shuffle_split(examples, val_fraction, seed);
        Ok(ChatData { path: path.to_path_buf(), train: examples, val, truncated, dropped, shown, pad_id: reading.pad_id })
    }

    /// The most tokens in one example.
    pub fn longest(&self) -> usize {
        self.train.iter().chain(&self.val).map(|e| e.ids.len()).max().unwrap_or(0)
    }

    /// Number of training and validation examples.
    pub fn sizes(&self) -> (usize, usize) {
        (self.train.len(), self.val.len())
    }

    /// Tokens that carry loss in the training and validation examples.
    pub fn trained_tokens(&self) -> (usize, usize) {
        let count = |v: &[Example]| v.iter().map(|e| e.labels.iter().filter(|&&l| l != IGNORE).count()).sum();
        (count(&self.train), count(&self.val))
    }

    /// The examples, for tests and inspection.
    pub fn examples(&self) -> (&[Example], &[Example]) {
        (&self.train, &self.val)
    }

    /// A random training batch, cut to `ctx + 1` tokens: inputs `(B, T)` and next-token
    /// targets `(B, T)`, [`IGNORE`] where no loss is taken.
    pub fn batch(&self, batch: usize, ctx: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
        if self.train.is_empty() {
            return invalid!("{}: no training examples left after the validation split", self.path.display());
        }
        let picked: Vec<&Example> = (0..batch).map(|_| &self.train[rng.below(self.train.len() as u64) as usize]).collect();
        Ok(self.collate(&picked, ctx))
    }

    /// The validation examples in order, in batches of `batch`.
    pub fn val_batches(&self, batch: usize, ctx: usize) -> Vec<(Tensor, Tensor)> {
        self.val.iter().collect::<Vec<_>>().chunks(batch.max(1)).map(|c| self.collate(c, ctx)).collect()
    }

    /// Right-padded to the longest: inputs are each example's ids but the last, targets
    /// its labels but the first.
    fn collate(&self, examples: &[&Example], ctx: usize) -> (Tensor, Tensor) {
        let len = examples.iter().map(|e| e.ids.len().min(ctx + 1)).max().unwrap_or(1).max(2) - 1;
        let (mut inputs, mut targets) = (Vec::with_capacity(examples.len() * len), Vec::with_capacity(examples.len() * len));
        for e in examples {
            let n = e.ids.len().min(ctx + 1);
            for t in 0..len {
                inputs.push(if t + 1 < n { e.ids[t] } else { self.pad_id });
                targets.push(if t + 1 < n { e.labels[t + 1] } else { IGNORE });
            }
        }
        let shape = [examples.len() as i64, len as i64];
        (Tensor::from_slice(&inputs).view(shape), Tensor::from_slice(&targets).view(shape))
    }
}

/// The text an example was made from, with the byte ranges that carry loss.
struct Rendered {
    text: String,
    /// `(start, end, byte offsets)` of each token, as encoded.
    offsets: Vec<(usize, usize)>,
}

impl Rendered {
    fn shown(&self, example: &Example) -> Shown {
        let mut trained: Vec<(usize, usize)> = vec![];
        for (&(start, end), &label) in self.offsets.iter().zip(&example.labels) {
            if label == IGNORE || start == end {
                continue;
            }
            match trained.last_mut() {
                Some(last) if last.1 >= start => last.1 = last.1.max(end),
                _ => trained.push((start, end)),
            }
        }
        Shown { text: self.text.clone(), trained }
    }
}

/// One record as an example: its rendered text and its ids and labels.
fn example(record: &Value, tokenizer: &Tokenizer, reading: &Reading) -> Result<(Rendered, Example)> {
    let Value::Object(fields) = record else {
        return invalid!("each line is an object with `messages`, or `prompt` and `completion`");
    };
    if let Some(messages) = fields.get("messages") {
        let messages = message_list(messages, "messages")?;
        if !messages.iter().any(|m| m.role == "assistant") && !reading.all_tokens {
            return invalid!("the conversation has no assistant message, so nothing in it would carry loss (use --all-tokens to train on all of it)");
        }
        return conversation(&messages, tokenizer, reading);
    }
    match (fields.get("prompt"), fields.get("completion")) {
        (Some(Value::String(prompt)), Some(Value::String(completion))) => plain_pair(prompt, completion, tokenizer, reading),
        (Some(prompt @ Value::Array(_)), Some(completion @ Value::Array(_))) => {
            conversational_pair(&message_list(prompt, "prompt")?, &message_list(completion, "completion")?, tokenizer, reading)
        }
        (Some(_), Some(_)) => invalid!("`prompt` and `completion` must both be strings, or both lists of messages"),
        (Some(_), None) => invalid!("a `prompt` without a `completion`"),
        (None, Some(_)) => invalid!("a `completion` without a `prompt`"),
        (None, None) => {
            let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
            invalid!(
                "no `messages`, and no `prompt` and `completion` (the keys are {}); tchlab reads TRL's conversational and prompt–completion formats",
                keys.join(", ")
            )
        }
    }
}

/// A list of `{"role", "content"}` messages, each checked.
fn message_list(value: &Value, key: &str) -> Result<Vec<Message>> {
    let Value::Array(list) = value else {
        return invalid!("`{key}` must be a list of messages, each {{\"role\": ..., \"content\": ...}}");
    };
    if list.is_empty() {
        return invalid!("`{key}` is an empty conversation");
    }
    if list.len() > MAX_MESSAGES {
        return invalid!("`{key}` has {} messages; tchlab reads conversations of up to {MAX_MESSAGES}", list.len());
    }
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.get("role") {
                Some(Value::String(r)) if matches!(r.as_str(), "system" | "user" | "assistant") => r.clone(),
                Some(Value::String(r)) => return invalid!("message {} of `{key}` has the role {r:?}; roles are system, user and assistant", i + 1),
                Some(_) => return invalid!("message {} of `{key}` has a role that is not a string", i + 1),
                None => return invalid!("message {} of `{key}` has no role", i + 1),
            };
            match m.get("content") {
                Some(Value::String(c)) => Ok(Message { role, content: c.clone() }),
                Some(Value::Null) | None => invalid!("message {} of `{key}` has no content", i + 1),
                Some(_) => invalid!("message {} of `{key}` has content that is not a string (tchlab reads text conversations)", i + 1),
            }
        })
        .collect()
}

fn template<'a>(reading: &'a Reading) -> Result<&'a Template> {
    reading.template.ok_or_else(|| {
        Error::Invalid(
            "conversations are rendered by the model's chat template, and this model has none; prompt–completion pairs of plain strings need no template"
                .into(),
        )
    })
}

/// Tokens of `text` with their byte ranges (no special tokens added: a template writes
/// its own).
fn encode(tokenizer: &Tokenizer, text: String, special: bool) -> Result<(Rendered, Vec<i64>)> {
    let encoded = tokenizer.encode_offsets(&text, special)?;
    let ids = encoded.iter().map(|&(id, _, _)| id).collect();
    Ok((Rendered { offsets: encoded.iter().map(|&(_, s, e)| (s, e)).collect(), text }, ids))
}

/// A conversation: the assistant's replies carry loss (or everything, `all_tokens`).
fn conversation(messages: &[Message], tokenizer: &Tokenizer, reading: &Reading) -> Result<(Rendered, Example)> {
    let t = template(reading)?;
    let render = |upto: usize, open: bool| crate::chat::render(&t.source, &messages[..upto], open, &t.bos_token, &t.eos_token);
    let full = render(messages.len(), false)?;
    let mut spans = vec![];
    if !reading.all_tokens {
        for i in (0..messages.len()).filter(|&i| messages[i].role == "assistant") {
            let (before, with) = (render(i, true)?, render(i + 1, false)?);
            if !with.starts_with(&before) || !full.starts_with(&with) {
                return invalid!(
                    "the chat template does not render a conversation's beginning as the beginning of the whole, so tchlab cannot tell which tokens are the assistant's reply {}; use --all-tokens",
                    i + 1
                );
            }
            spans.push((before.len(), with.len()));
        }
    }
    let (rendered, ids) = encode(tokenizer, full, false)?;
    let labels = if reading.all_tokens { ids.clone() } else { label_spans(&ids, &rendered.offsets, &spans) };
    Ok((rendered, Example { ids, labels }))
}

/// The ids whose tokens hold a byte of a span keep their label, as transformers marks
/// assistant tokens (`char_to_token` of each span's first and last character).
fn label_spans(ids: &[i64], offsets: &[(usize, usize)], spans: &[(usize, usize)]) -> Vec<i64> {
    let token_at = |byte: usize| offsets.iter().position(|&(s, e)| s <= byte && byte < e);
    let mut labels = vec![IGNORE; ids.len()];
    for &(start, end) in spans.iter().filter(|(s, e)| s < e) {
        let Some(first) = token_at(start) else { continue };
        let last = token_at(end - 1).unwrap_or(ids.len() - 1);
        for t in first..=last {
            labels[t] = ids[t];
        }
    }
    labels
}

/// Plain strings: `prompt + completion (+ EOS)`, the completion's tokens carrying loss
/// (counted as the tokens beyond the prompt's own, as TRL counts them).
fn plain_pair(prompt: &str, completion: &str, tokenizer: &Tokenizer, reading: &Reading) -> Result<(Rendered, Example)> {
    let eos = reading.eos.as_deref().filter(|e| !e.is_empty());
    let mut text = format!("{prompt}{completion}");
    if let Some(eos) = eos.filter(|e| !text.ends_with(e)) {
        text.push_str(eos);
    }
    let prompt_len = tokenizer.encode_offsets(prompt, true)?.len();
    let (rendered, ids) = encode(tokenizer, text, true)?;
    Ok((rendered, completion_labels(ids, prompt_len, reading.all_tokens)))
}

/// Message lists: the prompt rendered with the assistant's turn opened; the completion's
/// tokens carry loss.
fn conversational_pair(prompt: &[Message], completion: &[Message], tokenizer: &Tokenizer, reading: &Reading) -> Result<(Rendered, Example)> {
    let t = template(reading)?;
    let all: Vec<Message> = prompt.iter().chain(completion).cloned().collect();
    if all.len() > MAX_MESSAGES {
        return invalid!("the prompt and completion have {} messages; tchlab reads conversations of up to {MAX_MESSAGES}", all.len());
    }
    let prompt_text = crate::chat::render(&t.source, prompt, true, &t.bos_token, &t.eos_token)?;
    let prompt_len = tokenizer.encode_offsets(&prompt_text, false)?.len();
    let (rendered, ids) = encode(tokenizer, crate::chat::render(&t.source, &all, false, &t.bos_token, &t.eos_token)?, false)?;
    Ok((rendered, completion_labels(ids, prompt_len, reading.all_tokens)))
}

fn completion_labels(ids: Vec<i64>, prompt_len: usize, all_tokens: bool) -> Example {
    let labels = ids.iter().enumerate().map(|(i, &id)| if all_tokens || i >= prompt_len { id } else { IGNORE }).collect();
    Example { ids, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_label_every_token_that_holds_one_of_their_bytes() {
        let ids = [10, 11, 12, 13];
        let offsets = [(0, 3), (3, 5), (5, 9), (9, 10)];
        assert_eq!(label_spans(&ids, &offsets, &[(4, 6)]), [IGNORE, 11, 12, IGNORE]);
        assert_eq!(label_spans(&ids, &offsets, &[(9, 10), (0, 1)]), [10, IGNORE, IGNORE, 13]);
        assert_eq!(label_spans(&ids, &offsets, &[(5, 5)]), [IGNORE; 4], "an empty span labels nothing");
    }

    #[test]
    fn batches_pad_on_the_right_with_no_loss_there_and_cut_to_the_window() {
        let data = ChatData {
            path: PathBuf::from("x"),
            train: vec![Example { ids: vec![1, 2, 3, 4], labels: vec![IGNORE, IGNORE, 3, 4] }, Example { ids: vec![5, 6], labels: vec![IGNORE, 6] }],
            val: vec![],
            truncated: 0,
            dropped: 0,
            shown: None,
            pad_id: 0,
        };
        let (x, y) = data.collate(&[&data.train[0], &data.train[1]], 8);
        assert_eq!(Vec::<i64>::try_from(x.flatten(0, -1)).unwrap(), [1, 2, 3, 5, 0, 0]);
        assert_eq!(Vec::<i64>::try_from(y.flatten(0, -1)).unwrap(), [IGNORE, 3, 4, 6, IGNORE, IGNORE]);
        let (x, y) = data.collate(&[&data.train[0]], 2);
        assert_eq!((x.size(), Vec::<i64>::try_from(y.flatten(0, -1)).unwrap()), (vec![1, 2], vec![IGNORE, 3]));
    }
}
