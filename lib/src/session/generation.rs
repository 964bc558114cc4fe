//! What every generating command shares: the sampling options read from its arguments,
//! and a reply streamed to the output as it is made.

use std::time::{Duration, Instant};

use crate::generate::{generate_streaming, GenerateOptions};
use crate::models::Model;
use crate::session::output::CellError;
use crate::session::parse::Args;
use crate::session::Ctx;
use crate::tokenize::Tokenizer;

/// The sampling options of a generating command, stopping at `stop_ids`, adding at most
/// `default_max` tokens unless `--max-tokens` or the model's generation config says
/// otherwise, with the processors that config turns on and `--no-repeat-ngram`'s ban.
pub(crate) fn generation_options(args: &Args, model: &Model, stop_ids: Vec<i64>, default_max: usize) -> Result<GenerateOptions, CellError> {
    let defaults = &model.generation;
    let decoder_prompt = if model.task() == crate::models::Task::Seq2Seq { 1 } else { 0 };
    let mut constraints = defaults.constraints(&stop_ids, model.config().vocab_size())?;
    if let Some(n) = args.parse_as::<usize>("no-repeat-ngram")? {
        constraints.no_repeat_ngram = n;
    }
    Ok(GenerateOptions {
        max_new_tokens: args.parse_as("max-tokens")?.or(defaults.max_new_tokens(decoder_prompt)).unwrap_or(default_max),
        temperature: args.parse_as("temperature")?.unwrap_or(0.0),
        top_k: args.parse_as("top-k")?,
        top_p: args.parse_as("top-p")?,
        seed: args.parse_as("seed")?,
        stop_ids,
        constraints,
    })
}

/// Where a continuation of plain text stops: the model's end-of-sequence ids (its
/// generation config's, else its config's) and the tokenizer's end-of-text token.
pub(crate) fn text_stop_ids(model: &Model, tokenizer: &Tokenizer) -> Vec<i64> {
    let mut stop = model.generation.eos_token_ids().unwrap_or_else(|| model.config().eos_token_ids());
    stop.extend(tokenizer.token_id(crate::tokenize::END_OF_TEXT));
    stop
}

/// A generated reply.
pub(crate) struct Reply {
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
pub(crate) fn stream(
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
