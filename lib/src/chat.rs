//! Conversations with an instruction-tuned model: messages rendered into a prompt by
//! the model's own chat template (Jinja, as `transformers`' `apply_chat_template`
//! renders it), and the tokens that end an assistant's turn.
//!
//! Templates run in `minijinja` with Python's string methods (`pycompat`) and the
//! `raise_exception` function Hugging Face templates call. A template is text from a
//! file, so rendering is bounded: minijinja's recursion limit and a fuel budget stop a
//! template that loops forever.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, Result};
use crate::tokenize::Tokenizer;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Message { role: role.to_string(), content: content.into() }
    }
}

/// The most instructions a template may execute per render (minijinja's fuel).
const TEMPLATE_FUEL: u64 = 50_000_000;

/// Renders `messages` with `template`, as `apply_chat_template(messages,
/// add_generation_prompt=..., tokenize=False)` does: `bos_token` and `eos_token` are the
/// tokenizer's, `add_generation_prompt` opens the assistant's turn.
pub fn render(template: &str, messages: &[Message], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    // transformers renders with trim_blocks and lstrip_blocks.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    let error = |e: minijinja::Error| crate::Error::Invalid(format!("the model's chat template fails: {e:#}"));
    env.add_template("chat", template).map_err(error)?;
    let context = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    env.get_template("chat").map_err(error)?.render(context).map_err(error)
}

/// Special tokens that end a turn in the chat formats tchlab has met (ChatML's
/// `<|im_end|>`, Llama 3's `<|eot_id|>`, end-of-text tokens).
const END_OF_TURN: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>"];

/// The ids generation stops at: the model's end-of-sequence ids, and every end-of-turn
/// token the tokenizer has.
pub fn stop_ids(eos_ids: &[i64], tokenizer: &Tokenizer) -> Vec<i64> {
    let mut ids: Vec<i64> = eos_ids.to_vec();
    ids.extend(END_OF_TURN.iter().filter_map(|t| tokenizer.token_id(t)));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A model's chat template with the special tokens it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Template {
    /// The Jinja source.
    pub source: String,
    /// The text of the beginning-of-sequence token (`bos_token` in the template).
    pub bos_token: String,
    /// The text of the end-of-sequence token (`eos_token` in the template).
    pub eos_token: String,
}

/// A conversation: its template and the turns so far.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// The template, when the model has one.
    pub template: Option<Template>,
    /// The system message, when one was given.
    pub system: Option<String>,
    /// User and assistant turns, in order.
    pub turns: Vec<Message>,
}

impl Conversation {
    /// Every message, the system message first, then `next` when given.
    pub fn messages(&self, next: Option<&Message>) -> Vec<Message> {
        let system = self.system.as_ref().map(|s| Message::new("system", s.clone()));
        system.into_iter().chain(self.turns.iter().cloned()).chain(next.cloned()).collect()
    }

    /// The prompt for the model's next reply to `next`.
    pub fn prompt(&self, next: Option<&Message>) -> Result<String> {
        let Some(t) = &self.template else {
            return invalid!("this model has no chat template (its files name none); `%generate` continues plain text");
        };
        render(&t.source, &self.messages(next), true, &t.bos_token, &t.eos_token)
    }
}
