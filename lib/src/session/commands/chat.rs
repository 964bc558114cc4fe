//! Conversations (`%chat`) and what every generating command shares: the sampling
//! options and a reply streamed to the output as it is made.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{flag, opt_pos, option, Command};
use crate::chat::{stop_ids, Message};
use crate::generate::{generate_streaming, GenerateOptions};
use crate::models::Model;
use crate::session::output::{Bundle, CellError};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};
use crate::tokenize::Tokenizer;

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
    json: r#"{"text", "ids", "messages": [{"role", "content"}]}"#,
    run: chat,
};

fn chat(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if args.flag("reset") {
        s.conversation.turns.clear();
        s.conversation.system = None;
        ctx.result(Bundle::text("the conversation starts over").json(json!({ "messages": [] })));
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
        let ids = s.tokenizer_or_err()?.encode(&prompt)?;
        let value = json!({ "prompt": prompt, "ids": ids, "messages": conversation.messages(message.as_ref()) });
        ctx.result(Bundle::text(format!("{prompt}\n({} tokens)", ids.len())).json(value));
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
    let opts = generation_options(args, stop_ids(&model.config().eos_token_ids(), tokenizer), 256)?;
    let reply = stream(model, tokenizer, "", &prompt_ids, &opts, ctx)?;
    let text = reply.text.trim().to_string();
    conversation.turns.push(message);
    conversation.turns.push(Message::new("assistant", text.clone()));
    let value = json!({ "text": text, "ids": reply.ids, "messages": conversation.messages(None) });
    s.conversation = conversation;
    ctx.result(Bundle::text(reply.summary()).json(value));
    Ok(())
}

/// The sampling options of a generating command, stopping at `stop_ids`, adding at most
/// `default_max` tokens unless `--max-tokens` says otherwise.
pub(super) fn generation_options(args: &Args, stop_ids: Vec<i64>, default_max: usize) -> Result<GenerateOptions, CellError> {
    Ok(GenerateOptions {
        max_new_tokens: args.parse_as("max-tokens")?.unwrap_or(default_max),
        temperature: args.parse_as("temperature")?.unwrap_or(0.0),
        top_k: args.parse_as("top-k")?,
        top_p: args.parse_as("top-p")?,
        seed: args.parse_as("seed")?,
        stop_ids,
    })
}

/// A generated reply.
pub(super) struct Reply {
    /// The new ids, the stop token included when one came.
    pub ids: Vec<i64>,
    /// Their text, without the stop token.
    pub text: String,
    elapsed: Duration,
}

impl Reply {
    /// `[12 tokens in 0.84 s, 14.3 tokens/s]`.
    pub fn summary(&self) -> String {
        let seconds = self.elapsed.as_secs_f64();
        format!("[{} tokens in {seconds:.2} s, {:.1} tokens/s]", self.ids.len(), self.ids.len() as f64 / seconds.max(1e-9))
    }
}

/// How often streamed text is sent: often enough to read as it comes, seldom enough
/// that a notebook is not flooded with messages.
const STREAM_EVERY: Duration = Duration::from_millis(50);

/// What a streamed reply has shown so far.
struct Streamed<'a> {
    /// Written before the first piece of the reply (the prompt `%generate` continues).
    prefix: &'a str,
    /// Bytes of the reply's text shown; `None` until the prefix is out.
    written: Option<usize>,
    last_sent: Instant,
}

impl Streamed<'_> {
    /// Whether enough time has passed since the last piece.
    fn due(&self) -> bool {
        self.last_sent.elapsed() >= STREAM_EVERY
    }

    /// Writes what `text` (the reply so far) adds to what was shown. A token can end
    /// inside a multi-byte character: unless `complete`, the rest of it is waited for.
    fn show(&mut self, text: &str, complete: bool, ctx: &mut Ctx) {
        let prefix = self.prefix;
        let shown = *self.written.get_or_insert_with(|| {
            if !prefix.is_empty() {
                ctx.write(prefix);
            }
            0
        });
        let ready = if complete { text.len() } else { text.trim_end_matches('\u{FFFD}').len() };
        if ready > shown && text.is_char_boundary(shown) {
            ctx.write(&text[shown..ready]);
            self.written = Some(ready);
        }
        self.last_sent = Instant::now();
    }
}

/// Generates from `prompt_ids`, writing `prefix` and then the reply to stdout as it is
/// made (throttled), and a newline at the end. Nothing is written when generation is
/// refused before its first token (bad options).
pub(super) fn stream(
    model: &Model,
    tokenizer: &Tokenizer,
    prefix: &str,
    prompt_ids: &[i64],
    opts: &GenerateOptions,
    ctx: &mut Ctx,
) -> Result<Reply, CellError> {
    let started = Instant::now();
    let mut ids: Vec<i64> = vec![];
    let mut streamed = Streamed { prefix, written: None, last_sent: Instant::now() };
    let result = generate_streaming(model, prompt_ids, opts, &mut |id| {
        ids.push(id);
        if streamed.due() {
            let visible = ids.strip_suffix(&[id]).filter(|_| opts.stop_ids.contains(&id)).unwrap_or(&ids);
            streamed.show(&tokenizer.decode(visible)?, false, ctx);
        }
        Ok(())
    });
    let visible: Vec<i64> = ids.iter().copied().filter(|id| !opts.stop_ids.contains(id)).collect();
    let text = tokenizer.decode(&visible)?;
    if result.is_ok() || !ids.is_empty() {
        streamed.show(&text, true, ctx);
        ctx.write("\n");
    }
    Ok(Reply { ids: result?, text, elapsed: started.elapsed() })
}
