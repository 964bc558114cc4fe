//! Conversations: `%chat`.

use schemars::JsonSchema;
use serde::Serialize;

use super::{flag, opt_pos, option, returns, Command};
use crate::chat::{stop_ids, Message};
use crate::session::generation::{generation_options, stream};
use crate::session::output::{Bundle, CellError};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};

pub const CHAT: Command = Command {
    name: "chat",
    summary: "talk to an instruction-tuned model; the conversation is kept",
    args: &[
        opt_pos("message", "what you say (quote it)"),
        option("system", "TEXT", "the system message (replaces the model's default)"),
        option("max-tokens", "N", "the longest reply, in tokens (default 256)"),
        option("temperature", "T", "0 for greedy (default), higher for more varied replies"),
        option("top-k", "K", "sample among the K likeliest tokens"),
        option("top-p", "P", "sample among the likeliest tokens totalling P"),
        option("seed", "S", "seed for sampling"),
        flag("reset", "forget the conversation (and the system message)"),
        flag("show", "print the prompt the model would read next, special tokens included"),
    ],
    details: "The prompt is the model's own chat template (from its GGUF file or tokenizer_config.json) rendered over every turn so far. \
              The reply appears as it is made and ends at the model's end-of-turn or end-of-text token. \
              An interrupted or failed reply leaves the conversation as it was.",
    example: "%chat \"What is the capital of France?\"",
    returns: returns::<ChatResult>(),
    run: chat,
};

fn chat(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if args.flag("reset") {
        s.conversation.turns.clear();
        s.conversation.system = None;
        ctx.returns(Bundle::text("the conversation starts over"), &ChatResult { text: None, prompt: None, ids: None, messages: vec![] });
        return Ok(());
    }
    // The conversation as the next reply would see it; it replaces the session's only
    // when the reply completes.
    let mut conversation = s.conversation.clone();
    if let Some(system) = args.get("system") {
        conversation.system = Some(system.to_string());
    }
    let message = args.get("message").map(|m| Message::new("user", m));
    if args.flag("show") || message.is_none() {
        let prompt = conversation.prompt(message.as_ref())?;
        // As the reply reads it: the template writes its own special tokens.
        let ids = s.tokenizer_or_err()?.encode_corpus(&prompt)?;
        let text = format!("{prompt}\n({} tokens)", ids.len());
        let shown = ChatResult { text: None, prompt: Some(prompt), ids: Some(ids), messages: conversation.messages(message.as_ref()) };
        ctx.returns(Bundle::text(text), &shown);
        return Ok(());
    }
    let message = message.expect("checked above");
    let model = s.model_or_err()?;
    let tokenizer = s.tokenizer_or_err()?;
    let prompt = conversation.prompt(Some(&message))?;
    let prompt_ids = tokenizer.encode_corpus(&prompt)?;
    let limit = model.config().max_positions() as usize;
    if prompt_ids.len() >= limit {
        return Err(
            args.usage_error(format!("the conversation is {} tokens, and the model reads at most {limit}; `%chat --reset` starts over", prompt_ids.len()))
        );
    }
    let opts = generation_options(args, model, stop_ids(&model.config().eos_token_ids(), tokenizer), 256)?;
    let reply = stream(model, tokenizer, "", &prompt_ids, &opts, ctx)?;
    let text = reply.text.trim().to_string();
    conversation.turns.push(message);
    conversation.turns.push(Message::new("assistant", text.clone()));
    let result = ChatResult { text: Some(text), prompt: None, ids: Some(reply.ids.clone()), messages: conversation.messages(None) };
    s.conversation = conversation;
    ctx.returns(Bundle::text(reply.summary()), &result);
    Ok(())
}

/// What `%chat` returns: the reply (`text`, `ids`), or with `--show` or no message the
/// prompt the model would read next (`prompt`, `ids`); the conversation either way.
#[derive(Serialize, JsonSchema)]
pub struct ChatResult {
    /// The reply, without its end-of-turn token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// `--show`: the prompt, special tokens included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The reply's ids (the stop token included when one came), or the prompt's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<i64>>,
    /// The conversation: the system message first, then every turn.
    pub messages: Vec<Message>,
}
