//! Data, hyperparameters, training, the timeline, plots and the training history.

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use super::{flag, opt_pos, option, pairs, pos, returns, Command};
use crate::data::DataSpec;
use crate::plot::{line_chart, LineChart, Series};
use crate::session::figures::{loss_figure, save_figure};
use crate::session::output::{escape_html, Bundle, CellError, Table};
use crate::session::parse::Args;
use crate::session::{Ctx, Session};
use crate::tokenize::Tokenizer;
use crate::train::{EvalMetrics, HParams, Halt, History, StepRecord, Stop, Trainer};

use crate::checkpoint::find::expand_home;

pub const DATA: Command = Command {
    name: "data",
    summary: "choose the data: a synthetic task, a text corpus, labelled texts, conversations to instruction-tune on, or source → target pairs",
    args: &[
        pos("kind", "synth | text | classify | chat | pairs").choices(&["synth", "text", "classify", "chat", "pairs"]),
        pos("input", "synth: copy | reverse | sort | add; text, classify, chat, pairs: a file").path().suggest(&["copy", "reverse", "sort", "add"]),
        option("length", "N", "synth: symbols per input (default 6)"),
        option("symbols", "N", "synth: distinct symbols (default 10)"),
        option("val", "F", "text, classify, chat, pairs: validation fraction (default 0.1)"),
        option("text", "FIELD", "classify: the text column or field (default text)"),
        option("label", "FIELD", "classify: the label column or field (default label)"),
        option("source", "FIELD", "pairs: the source column or field (default source)"),
        option("target", "FIELD", "pairs: the target column or field (default target)"),
        flag("all-tokens", "chat: every token carries loss, not only the assistant's replies (or the completions)"),
        flag("seq2seq", "synth: source → target pairs for an encoder–decoder (`abc` → `cba`) instead of one text (`abc=cba`)"),
    ],
    details: "A text corpus without a tokenizer gets a character tokenizer built from it. Classification files are CSV with a header, or JSONL. \
              Chat files are JSON lines in TRL's formats: {\"messages\": [{\"role\", \"content\"}, ...]} or {\"prompt\", \"completion\"} (strings, or message lists), \
              rendered with the model's chat template; by default only the assistant's tokens (with each reply's end-of-turn token) carry loss, \
              as TRL's assistant_only_loss and completion_only_loss. The result shows one example with the tokens that carry loss marked. \
              Pairs (.csv, .tsv or .jsonl) train an encoder–decoder: each source and target tokenised with the tokenizer's end token, \
              the decoder reading the target behind its start token.",
    example: "%data synth reverse --length 6",
    returns: returns::<DataReady>(),
    run: data,
};

fn data(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let source = args.get("input").expect("required");
    let val: f64 = args.parse_as("val")?.unwrap_or(0.1);
    let (spec, tokenizer) = match args.get("kind").expect("required") {
        "synth" => {
            let task = crate::data::synth::Task::parse(source)?;
            let (length, symbols) = (args.parse_as("length")?.unwrap_or(6), args.parse_as("symbols")?.unwrap_or(10));
            let synth = crate::data::synth::Synth::new(task, length, symbols)?;
            (DataSpec::Synth { task: source.to_string(), length, symbols, seq2seq: args.flag("seq2seq") }, synth.tokenizer())
        }
        "text" => {
            let path = expand_home(source);
            let tokenizer = match s.tokenizer() {
                Some(t) => t.clone(),
                None => {
                    let text = crate::limits::read_text(&path, crate::limits::MAX_TEXT_BYTES)?;
                    ctx.note(format!("no tokenizer yet: using a character tokenizer built from {}", path.display()));
                    Tokenizer::char_level(&text)?
                }
            };
            (DataSpec::Text { path, val_fraction: val }, tokenizer)
        }
        "chat" => {
            let tokenizer = s.tokenizer_or_err()?.clone();
            let template = s.conversation.template.clone();
            let eos = s
                .model()
                .and_then(|m| m.config().eos_token_ids().first().map(|&id| tokenizer.piece(id)))
                .or_else(|| template.as_ref().map(|t| t.eos_token.clone()));
            let spec = DataSpec::Chat { path: expand_home(source), val_fraction: val, seed: s.seed, all_tokens: args.flag("all-tokens"), template, eos };
            (spec, tokenizer)
        }
        "pairs" => {
            let spec = DataSpec::Pairs {
                path: expand_home(source),
                source_field: args.get("source").unwrap_or("source").to_string(),
                target_field: args.get("target").unwrap_or("target").to_string(),
                val_fraction: val,
                seed: s.seed,
            };
            (spec, s.tokenizer_or_err()?.clone())
        }
        _ => {
            let spec = DataSpec::Classify {
                path: expand_home(source),
                text_field: args.get("text").unwrap_or("text").to_string(),
                label_field: args.get("label").unwrap_or("label").to_string(),
                val_fraction: val,
                seed: s.seed,
            };
            (spec, s.tokenizer_or_err()?.clone())
        }
    };
    s.install_data(tokenizer, spec)?;
    let vocab = s.tokenizer().map(Tokenizer::vocab_size);
    let (text, ready) = match s.trainer.as_ref().map(Trainer::data) {
        Some(crate::data::Dataset::Text(c)) => {
            let (train, val) = c.sizes();
            let ready = DataReady { kind: "text".into(), train: Some(train), val: Some(val), vocab, ..Default::default() };
            (format!("text corpus: {train} training tokens, {val} validation tokens"), ready)
        }
        Some(crate::data::Dataset::Pairs(p)) => {
            let (train, val) = p.sizes();
            let ready = DataReady { kind: "pairs".into(), train: Some(train), val: Some(val), vocab, ..Default::default() };
            let mut text = format!("{train} training and {val} validation pairs");
            if p.truncated > 0 {
                text.push_str(&format!("; {} longer than the model's {} positions were cut to them", p.truncated, s.model_or_err()?.config().max_positions()));
            }
            if p.dropped > 0 {
                text.push_str(&format!("; {} with an empty source or target were left out", p.dropped));
            }
            (text, ready)
        }
        Some(crate::data::Dataset::Classify(c)) => {
            let (train, val) = c.sizes();
            let ready = DataReady { kind: "classify".into(), train: Some(train), val: Some(val), labels: Some(c.labels.clone()), vocab, ..Default::default() };
            (format!("{train} training and {val} validation examples; labels: {}", c.labels.join(", ")), ready)
        }
        Some(crate::data::Dataset::Chat(c)) => return chat_ready(c, vocab, s.trainer.as_ref().map(Trainer::sizing), ctx),
        _ => {
            let example = match &s.data {
                Some(DataSpec::Synth { task, length, symbols, .. }) => {
                    let synth = crate::data::synth::Synth::new(crate::data::synth::Task::parse(task)?, *length, *symbols)?;
                    let (p, a) = synth.example(&mut crate::data::Rng::new(s.seed));
                    format!("; an example: {p}{a}")
                }
                _ => String::new(),
            };
            let next = if s.model().is_none() { " — now `%model gpt` builds a model for it" } else { "" };
            let ready = DataReady { kind: args.get("kind").expect("required").to_string(), vocab, ..Default::default() };
            (format!("data ready{example}{next}"), ready)
        }
    };
    ctx.returns(Bundle::text(text), &ready);
    Ok(())
}

/// `%data chat`'s result: how many examples and tokens, what was cut, and one example
/// with the stretches that carry loss marked (⟦…⟧ in text, highlighted in HTML and in
/// colour in a terminal).
fn chat_ready(c: &crate::data::chat::ChatData, vocab: Option<usize>, sizing: Option<&crate::train::Sizing>, ctx: &mut Ctx) -> Result<(), CellError> {
    let ((train, val), (trained, val_trained)) = (c.sizes(), c.trained_tokens());
    let mut text = format!("{train} training and {val} validation examples; {trained} training tokens carry loss ({val_trained} in validation)");
    if c.truncated > 0 {
        text.push_str(&format!("; {} examples longer than the model's context were cut to it", c.truncated));
    }
    if c.dropped > 0 {
        text.push_str(&format!("; {} examples with nothing left to learn were dropped", c.dropped));
    }
    if let Some(sizing) = sizing {
        text.push_str(&format!("\nwindow: {} tokens ({}); {} examples a forward pass", sizing.window, sizing.window_why, sizing.micro_batch));
    }
    let example = c.shown.as_ref().map(|shown| {
        let mut plain = String::new();
        let (mut html, mut ansi) = (String::new(), String::new());
        let mut at = 0;
        for &(start, end) in &shown.trained {
            let (before, marked) = (&shown.text[at..start], &shown.text[start..end]);
            plain.push_str(before);
            plain.push_str(&format!("⟦{marked}⟧"));
            html.push_str(&escape_html(before));
            html.push_str(&format!("<mark style='background:#c8f0c8'>{}</mark>", escape_html(marked)));
            ansi.push_str(before);
            ansi.push_str(&format!("\x1b[1;30;42m{marked}\x1b[0m"));
            at = end;
        }
        plain.push_str(&shown.text[at..]);
        html.push_str(&escape_html(&shown.text[at..]));
        ansi.push_str(&shown.text[at..]);
        (plain, html, ansi)
    });
    let ready = DataReady {
        kind: "chat".into(),
        train: Some(train),
        val: Some(val),
        vocab,
        trained_tokens: Some(trained),
        truncated: Some(c.truncated),
        dropped: Some(c.dropped),
        example: example.as_ref().map(|(plain, _, _)| plain.clone()),
        ..Default::default()
    };
    let bundle = match &example {
        Some((plain, html, ansi)) => {
            let head = "an example (what carries loss is marked):";
            Bundle::text(format!("{text}\n{head}\n{plain}"))
                .html(format!("<p>{}</p><p>{head}</p><pre style='white-space:pre-wrap'>{html}</pre>", escape_html(&text)))
                .ansi(format!("{text}\n{head}\n{ansi}"))
        }
        None => Bundle::text(text),
    };
    ctx.returns(bundle, &ready);
    Ok(())
}

/// What `%data` returns.
#[derive(Serialize, JsonSchema, Default)]
pub struct DataReady {
    /// `synth`, `text`, `classify` or `chat`.
    pub kind: String,
    /// Training tokens (text) or examples (classify, chat); null until a model is built for synthetic data.
    pub train: Option<usize>,
    /// Validation tokens or examples.
    pub val: Option<usize>,
    /// Classify: the labels, in class order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The tokenizer's vocabulary size.
    pub vocab: Option<usize>,
    /// Chat: training tokens that carry loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trained_tokens: Option<usize>,
    /// Chat: examples cut to the model's context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truncated: Option<usize>,
    /// Chat: examples dropped with nothing left to learn.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<usize>,
    /// Chat: the first training example, what carries loss between ⟦ and ⟧.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example: Option<String>,
}

pub const SET: Command = Command {
    name: "set",
    summary: "set hyperparameters (lr, batch, warmup, schedule, weight_decay, clip, ...)",
    args: &[pairs("hyperparameters").hparams()],
    details: "Changes apply from the next step and are recorded in the history. All are checked before any is applied.",
    example: "%set lr=3e-3 batch=64 schedule=cosine warmup=20",
    returns: returns::<HParamsSet>(),
    run: set,
};

fn set(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    if args.pairs.is_empty() {
        return Err(args.usage_error("nothing to set: give key=value pairs (`%hparams` lists the keys)"));
    }
    s.set_hparams(&args.pairs)?;
    let hp = s.hparams();
    let set = HParamsSet(args.pairs.iter().map(|(k, _)| (k.clone(), hp.get(k))).collect());
    let text = args.pairs.iter().map(|(k, _)| format!("{k}={}", hp.get(k).unwrap_or_default())).collect::<Vec<_>>().join(" ");
    ctx.returns(Bundle::text(text), &set);
    Ok(())
}

/// What `%set` returns: each hyperparameter it set, with its value as `%hparams` shows it.
#[derive(Serialize, JsonSchema)]
#[serde(transparent)]
pub struct HParamsSet(pub BTreeMap<String, Option<String>>);

pub const HPARAMS: Command = Command {
    name: "hparams",
    summary: "show every hyperparameter, its value and meaning, and how a step is sized from them",
    args: &[],
    details: "With a model and data, also the window each example is cut to and the examples one forward pass takes, and why (`ctx=0` lets the data and the model decide; a batch too big for memory runs in parts).",
    example: "%hparams",
    returns: returns::<HParamsShown>(),
    run: hparams,
};

fn hparams(s: &mut Session, _: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let hp = s.hparams().clone();
    let mut table = Table::new(["name", "value", "meaning"]);
    for (k, meaning) in crate::train::hparams::KEYS {
        table.row([k.to_string(), hp.get(k).unwrap_or_default(), meaning.to_string()]);
    }
    let sizing = s.trainer.as_ref().map(|t| t.sizing().clone());
    let bundle = match &sizing {
        Some(z) => {
            let micro = z.micro_why.as_ref().map_or_else(
                || format!("the whole batch of {} in one forward pass", hp.batch),
                |why| format!("{} examples a forward pass: {why}", z.micro_batch),
            );
            table.bundle_under(&format!("window: {} tokens ({})\nbatch: {micro}", z.window, z.window_why))
        }
        None => table.bundle(),
    };
    ctx.returns(bundle, &HParamsShown { hparams: hp, sizing });
    Ok(())
}

/// What `%hparams` returns: every hyperparameter, and how a step is sized from them.
#[derive(Serialize, JsonSchema)]
pub struct HParamsShown {
    /// The hyperparameters.
    #[serde(flatten)]
    pub hparams: HParams,
    /// With a model and data: the window and micro-batch a step uses, and why.
    pub sizing: Option<crate::train::Sizing>,
}

fn step_line(r: &StepRecord) -> String {
    let val = r.val.as_ref().map(|v| format!("  val loss {:.4}", v.loss)).unwrap_or_default();
    format!("step {:>5}  loss {:.4}  lr {:.2e}  grad-norm {:.3}  {:>9.0} tok/s{val}", r.step, r.loss, r.lr, r.grad_norm, r.tokens_per_s)
}

pub const STEP: Command = Command {
    name: "step",
    summary: "take N optimiser steps (default 1), printing each",
    args: &[opt_pos("n", "steps")],
    details: "",
    example: "%step 5",
    returns: returns::<StepRecord>(),
    run: step,
};

fn step(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let n: u64 = args.parse_as("n")?.unwrap_or(1);
    let trainer = s.trainer_or_err()?;
    let mut last = None;
    for _ in 0..n {
        let record = trainer.step()?;
        ctx.out(step_line(&record));
        last = Some(record);
    }
    if let Some(r) = last {
        ctx.returns(Bundle::text(step_line(&r)), &r);
    }
    Ok(())
}

pub const TRAIN: Command = Command {
    name: "train",
    summary: "train N steps, or for a time, with live progress and a growing loss plot",
    args: &[opt_pos("n", "steps"), option("time", "DUR", "train for a duration: 30s, 2m, 1h")],
    details: "Interrupting stops at the next step boundary; the model, optimiser and history stay consistent.",
    example: "%train 200",
    returns: returns::<Trained>(),
    run: train,
};

/// The longest `--time` accepted: a week.
const MAX_DURATION_S: f64 = 7.0 * 24.0 * 3600.0;

/// `500ms`, `30s`, `2m`, `1h`, up to a week.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().ok().filter(|n: &f64| *n >= 0.0 && n.is_finite())?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    (seconds <= MAX_DURATION_S).then(|| Duration::try_from_secs_f64(seconds).ok()).flatten()
}

/// Live display throttling: a few updates a second at most.
const UPDATE_EVERY: Duration = Duration::from_millis(250);

/// The live display of a training run: a progress bar, the latest metrics, the ETA,
/// and the loss plot so far.
fn progress(branch: &str, history: &History, stop: Stop, started: Instant, done: u64, last: Option<&StepRecord>, finished: bool) -> Bundle {
    let elapsed = started.elapsed().as_secs_f64();
    let (fraction, goal) = match stop {
        Stop::Steps(n) => (done as f64 / n.max(1) as f64, format!("{done}/{n}")),
        Stop::Time(d) => (elapsed / d.as_secs_f64().max(1e-9), format!("{done} steps, {elapsed:.0}/{:.0} s", d.as_secs_f64())),
    };
    let fraction = fraction.clamp(0.0, 1.0);
    let eta =
        if finished || fraction <= 0.0 { String::new() } else { format!("  ETA {}", crate::session::format::format_seconds(elapsed / fraction - elapsed)) };
    let bar: String = (0..30).map(|i| if (i as f64) < fraction * 30.0 { '█' } else { '░' }).collect();
    let metrics = last.map(|r| format!("  loss {:.4}  lr {:.2e}  {:.0} tok/s", r.loss, r.lr, r.tokens_per_s)).unwrap_or_default();
    let status = format!("{goal}{metrics}{eta}");
    let html = format!("<div><progress value='{fraction:.3}' max='1' style='width:24em'></progress> <code>{}</code></div>", escape_html(&status));
    let bundle = Bundle::text(format!("{bar} {status}")).html(html);
    match loss_figure(&[(branch, history)], 0.9, false) {
        Ok(figure) => bundle.figure(&figure),
        Err(_) => bundle,
    }
}

fn train(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let stop = match (args.parse_as::<u64>("n")?, args.get("time")) {
        (Some(n), None) => Stop::Steps(n),
        (None, Some(t)) => {
            Stop::Time(parse_duration(t).ok_or_else(|| args.usage_error(format!("--time expects a duration like 30s, 2m or 1h (at most a week), got `{t}`")))?)
        }
        (None, None) => return Err(args.usage_error("how long? give a number of steps or --time DUR")),
        (Some(_), Some(_)) => return Err(args.usage_error("give either a number of steps or --time, not both")),
    };
    let trainer = s.trainer_or_err()?;
    let (first_step, branch) = (trainer.step_count(), trainer.branch().to_string());
    let started = Instant::now();
    let id = ctx.live(progress(&branch, trainer.history(), stop, started, 0, None, false));
    let mut last_update = Instant::now();
    let mut last: Option<StepRecord> = None;
    let mut done = 0u64;
    let report = trainer.train(stop, &mut |record, history| {
        done += 1;
        last = Some(record.clone());
        if last_update.elapsed() >= UPDATE_EVERY {
            ctx.update(&id, progress(&branch, history, stop, started, done, Some(record), false));
            last_update = Instant::now();
        }
    });
    // The final state stays in the output.
    ctx.update(&id, progress(&branch, trainer.history(), stop, started, done, last.as_ref(), true));
    let report = report?;
    match report.halted {
        Some(Halt::Interrupted) => Err(CellError {
            name: "KeyboardInterrupt".into(),
            message: format!(
                "interrupted after step {} ({} of this %train's steps); the model, optimizer and history are as they were after that step",
                trainer.step_count(),
                trainer.step_count() - first_step
            ),
        }),
        Some(Halt::NonFinite(message)) => Err(CellError { name: "NonFiniteError".into(), message }),
        None => {
            if let Some(r) = last {
                ctx.returns(Bundle::text(step_line(&r)), &Trained { last: r, steps: report.steps });
            }
            Ok(())
        }
    }
}

/// What `%train` returns: its last step, and how many it took.
#[derive(Serialize, JsonSchema)]
pub struct Trained {
    /// The last step's record.
    #[serde(flatten)]
    pub last: StepRecord,
    /// Steps this `%train` took.
    pub steps: u64,
}

pub const EVAL: Command = Command {
    name: "eval",
    summary: "evaluate on the validation data: loss and perplexity, or accuracy, macro-F1 and a confusion matrix, or generation scores",
    args: &[
        option("beams", "N", "source → target pairs: generate with beam search of N beams (default greedy)"),
        option("max-tokens", "N", "source → target pairs: the most tokens generated for each (default: the longest target)"),
        flag("stem", "source → target pairs: ROUGE stems words with the Porter stemmer, as rouge_score's use_stemmer=True"),
    ],
    details: "On source → target pairs the model also writes a reply to each validation source, scored against its target: \
              exact match, ROUGE-1, ROUGE-2 and ROUGE-L (F-measure, as Google's rouge_score; with --stem, its Porter stemmer) and corpus BLEU \
              (as sacrebleu by default: 13a tokens, exponential smoothing).",
    example: "%eval",
    returns: returns::<EvalMetrics>(),
    run: eval,
};

fn eval(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    let mut metrics = trainer.evaluate()?;
    let (beams, max_tokens) = (args.parse_as::<usize>("beams")?, args.parse_as::<usize>("max-tokens")?);
    if trainer.data().is_seq2seq() {
        metrics.generated = Some(trainer.score_generations(beams, max_tokens, args.flag("stem"))?);
    } else if beams.is_some() || max_tokens.is_some() || args.flag("stem") {
        return Err(args.usage_error("--beams, --max-tokens and --stem are for source → target pairs, whose generations %eval scores"));
    }
    let mut table = Table::new(["metric", "value"]);
    table.row(["loss".to_string(), format!("{:.4}", metrics.loss)]);
    let generated = metrics.generated.as_ref();
    let scores = [
        ("perplexity", metrics.perplexity),
        ("accuracy", metrics.accuracy),
        ("macro_f1", metrics.macro_f1),
        ("exact_match", generated.map(|g| g.exact_match)),
        ("rouge1", generated.map(|g| g.rouge1)),
        ("rouge2", generated.map(|g| g.rouge2)),
        ("rougeL", generated.map(|g| g.rouge_l)),
        ("bleu", generated.map(|g| g.bleu)),
    ];
    for (name, v) in scores {
        if let Some(v) = v {
            table.row([name.to_string(), format!("{v:.4}")]);
        }
    }
    let mut bundle = table.bundle();
    if let (Some(confusion), Some(labels)) = (&metrics.confusion, &metrics.labels) {
        let mut c = Table::new(std::iter::once("true \\ predicted".to_string()).chain(labels.iter().cloned()));
        for (label, row) in labels.iter().zip(confusion) {
            c.row(std::iter::once(label.clone()).chain(row.iter().map(u64::to_string)));
        }
        bundle = Bundle::text(format!("{}\n\n{}", table.to_text(), c.to_text())).html(format!("{}<p>confusion matrix</p>{}", table.to_html(), c.to_html()));
    }
    if let Some(g) = &metrics.generated {
        let mut samples = Table::new(["target", "generated"]);
        for (target, prediction) in &g.samples {
            samples.row([target.clone(), prediction.clone()]);
        }
        let head = format!("{} validation sources generated for", g.examples);
        bundle = Bundle::text(format!("{}\n\n{head}\n{}", table.to_text(), samples.to_text())).html(format!(
            "{}<p>{head}</p>{}",
            table.to_html(),
            samples.to_html()
        ));
    }
    ctx.returns(bundle, &metrics);
    Ok(())
}

pub const SNAPSHOT: Command = Command {
    name: "snapshot",
    summary: "keep the training state in memory under a name, to rewind to or fork from",
    args: &[opt_pos("name", "a name (default snapshot-STEP)")],
    details: "`%set snapshot_every=N` takes automatic ones within `snapshot_budget_mb`.",
    example: "%snapshot before-warmup",
    returns: returns::<Snapshot>(),
    run: snapshot,
};

fn snapshot(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    let name = args.get("name").map_or_else(|| format!("snapshot-{}", trainer.step_count()), str::to_string);
    let snap = trainer.snapshot(&name)?;
    let (step, mb) = (snap.step, snap.bytes() as f64 / (1 << 20) as f64);
    let total = trainer.timeline().bytes() as f64 / (1 << 20) as f64;
    let text = format!("snapshot {name} at step {step} ({mb:.1} MiB; {total:.1} MiB in all)");
    ctx.returns(Bundle::text(text), &Snapshot { name, step, memory_mb: mb });
    Ok(())
}

/// What `%snapshot` returns.
#[derive(Serialize, JsonSchema)]
pub struct Snapshot {
    /// Its name.
    pub name: String,
    /// The step it holds.
    pub step: i64,
    /// Its memory, MiB.
    pub memory_mb: f64,
}

pub const REWIND: Command = Command {
    name: "rewind",
    summary: "go back to a snapshot (by name, or by step): weights, optimiser, data cursor, history",
    args: &[pos("target", "a snapshot's name or step")],
    details: "",
    example: "%rewind before-warmup",
    returns: returns::<Rewound>(),
    run: rewind,
};

fn rewind(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    trainer.rewind(args.get("target").expect("required"))?;
    let (step, branch) = (trainer.step_count(), trainer.branch().to_string());
    s.hp = s.hparams().clone();
    ctx.returns(Bundle::text(format!("rewound to step {step} on {branch}")), &Rewound { step, branch });
    Ok(())
}

/// What `%rewind` returns.
#[derive(Serialize, JsonSchema)]
pub struct Rewound {
    /// The step training is back at.
    pub step: i64,
    /// The branch it is on.
    pub branch: String,
}

pub const FORK: Command = Command {
    name: "fork",
    summary: "start a new branch from a snapshot (or from now) with changed hyperparameters",
    args: &[
        pos("name", "the new branch"),
        option("from", "SNAPSHOT", "where it starts (default: the current state)"),
        pairs("hyperparameters for the branch").hparams(),
    ],
    details: "The branch left behind keeps its history: `%runs` lists branches, `%plot loss --runs a,b` compares them.",
    example: "%fork high-lr --from before-warmup lr=1e-2",
    returns: returns::<Forked>(),
    run: fork,
};

fn fork(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    let name = args.get("name").expect("required");
    trainer.fork(name, args.get("from"), &args.pairs)?;
    let step = trainer.step_count();
    s.hp = s.hparams().clone();
    let changes = crate::session::format::pairs(&args.pairs);
    let text = format!("branch {name} from step {step}{}", if changes.is_empty() { String::new() } else { format!(" with {changes}") });
    ctx.returns(Bundle::text(text), &Forked { branch: name.to_string(), step, changes });
    Ok(())
}

/// What `%fork` returns.
#[derive(Serialize, JsonSchema)]
pub struct Forked {
    /// The new branch.
    pub branch: String,
    /// The step it starts from.
    pub step: i64,
    /// Its hyperparameter changes, `k=v` separated by spaces.
    pub changes: String,
}

pub const RUNS: Command = Command {
    name: "runs",
    summary: "the branches of training with their steps, losses and changes",
    args: &[],
    details: "",
    example: "%runs",
    returns: returns::<Vec<Run>>(),
    run: runs,
};

fn runs(s: &mut Session, _: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let trainer = s.trainer_or_err()?;
    let current = trainer.branch().to_string();
    let mut table = Table::new(["branch", "steps", "loss", "best val loss", "changes"]);
    let mut rows = vec![];
    for (name, h) in trainer.runs() {
        let loss = h.steps.last().map(|r| r.loss);
        let best = h.steps.iter().filter_map(|r| r.val.as_ref().map(|v| v.loss)).fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))));
        let changes = h.changes.iter().map(|c| format!("{}={}@{}", c.key, c.to, c.step)).collect::<Vec<_>>().join(" ");
        let marker = if name == current { " *" } else { "" };
        table.row([
            format!("{name}{marker}"),
            h.steps.len().to_string(),
            loss.map_or("—".into(), |l| format!("{l:.4}")),
            best.map_or("—".into(), |l| format!("{l:.4}")),
            changes.clone(),
        ]);
        rows.push(Run { branch: name.to_string(), steps: h.steps.len(), loss, best_val_loss: best, changes, current: name == current });
    }
    ctx.returns(table.bundle(), &rows);
    Ok(())
}

/// One branch, as `%runs` lists it.
#[derive(Serialize, JsonSchema)]
pub struct Run {
    /// Its name.
    pub branch: String,
    /// Steps in its history.
    pub steps: usize,
    /// Its last training loss.
    pub loss: Option<f64>,
    /// Its best validation loss.
    pub best_val_loss: Option<f64>,
    /// Its hyperparameter changes, `k=v@step` separated by spaces.
    pub changes: String,
    /// Whether it is the current branch.
    pub current: bool,
}

pub const PLOT: Command = Command {
    name: "plot",
    summary: "plot loss, learning rate, gradient norm or validation loss; several runs overlaid",
    args: &[
        pos("metric", "loss | lr | grad-norm | val").choices(&["loss", "lr", "grad-norm", "val"]),
        option("smooth", "A", "EMA smoothing factor in [0, 1) for the loss (default 0.9; 0: raw only)"),
        option("runs", "A,B", "branches to overlay (default: the current one; `all` for every one)"),
        flag("log", "logarithmic y axis"),
        option("save", "PATH", "also write the figure to a .png or .svg file"),
    ],
    details: "The loss plot shows the raw loss faintly, its debiased exponential moving average, and validation points.",
    example: "%plot loss --runs all --log",
    returns: None,
    run: plot,
};

fn plot(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let metric = args.get("metric").expect("required");
    let smooth: f64 = args.parse_as("smooth")?.unwrap_or(0.9);
    if !(0.0..1.0).contains(&smooth) {
        return Err(args.usage_error(format!("--smooth must be in [0, 1), got {smooth}")));
    }
    let trainer = s.trainer_or_err()?;
    let all = trainer.runs();
    let runs: Vec<(&str, &History)> = match args.get("runs") {
        None => vec![*all.last().expect("the current branch")],
        Some("all") => all.clone(),
        Some(list) => {
            list.split(',')
                .map(|name| {
                    all.iter().find(|(n, _)| *n == name.trim()).copied().ok_or_else(|| {
                        args.usage_error(format!("no branch `{name}`; there are: {}", all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")))
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let log_y = args.flag("log");
    let pick = |f: fn(&StepRecord) -> Option<f64>| -> Vec<Series> {
        runs.iter()
            .map(|(name, h)| Series {
                name: name.to_string(),
                points: h.steps.iter().filter_map(|r| f(r).map(|y| (r.step as f64, y))).collect(),
                markers: false,
                faint: false,
            })
            .collect()
    };
    let (figure, what) = match metric {
        "loss" => (loss_figure(&runs, smooth, log_y)?, "training loss"),
        "lr" => (
            line_chart(&LineChart {
                title: "learning rate".into(),
                x_label: "step".into(),
                y_label: "lr".into(),
                log_x: false,
                log_y,
                series: pick(|r| Some(r.lr)),
            })?,
            "learning rate",
        ),
        "grad-norm" => (
            line_chart(&LineChart {
                title: "gradient norm".into(),
                x_label: "step".into(),
                y_label: "norm".into(),
                log_x: false,
                log_y,
                series: pick(|r| Some(r.grad_norm)),
            })?,
            "gradient norm",
        ),
        _ => {
            let mut series = pick(|r: &StepRecord| r.val.as_ref().map(|v: &EvalMetrics| v.loss));
            series.iter_mut().for_each(|s| s.markers = s.points.len() < 2);
            if series.iter().all(|s| s.points.is_empty()) {
                return Err(args.usage_error("no validation points yet: `%set eval_every=N` evaluates while training"));
            }
            (
                line_chart(&LineChart { title: "validation loss".into(), x_label: "step".into(), y_label: "loss".into(), log_x: false, log_y, series })?,
                "validation loss",
            )
        }
    };
    if let Some(path) = args.get("save") {
        save_figure(&figure, path)?;
    }
    let steps: usize = runs.iter().map(|(_, h)| h.steps.len()).max().unwrap_or(0);
    ctx.display(Bundle::text(format!("<figure: {what}, {} run(s), {steps} steps>", runs.len())).figure(&figure));
    Ok(())
}

pub const HISTORY: Command = Command {
    name: "history",
    summary: "the last training steps as a table, or the whole history exported to .jsonl or .csv",
    args: &[option("last", "N", "how many steps to show (default 10)"), option("export", "PATH", "write the history to PATH (.jsonl or .csv)")],
    details: "",
    example: "%history --export runs/reverse.csv",
    returns: returns::<Vec<StepRecord>>(),
    run: history,
};

fn history(s: &mut Session, args: &Args, ctx: &mut Ctx) -> Result<(), CellError> {
    let last: usize = args.parse_as("last")?.unwrap_or(10);
    let trainer = s.trainer_or_err()?;
    let h = trainer.history();
    if let Some(path) = args.get("export") {
        let path = expand_home(path);
        h.export(&path)?;
        ctx.out(format!("wrote {} steps and {} changes to {}", h.steps.len(), h.changes.len(), path.display()));
    }
    let shown = &h.steps[h.steps.len().saturating_sub(last)..];
    let mut table = Table::new(["step", "loss", "lr", "grad-norm", "tok/s", "val loss"]);
    for r in shown {
        table.row([
            r.step.to_string(),
            format!("{:.4}", r.loss),
            format!("{:.2e}", r.lr),
            format!("{:.3}", r.grad_norm),
            format!("{:.0}", r.tokens_per_s),
            r.val.as_ref().map_or(String::new(), |v| format!("{:.4}", v.loss)),
        ]);
    }
    let shown = shown.to_vec();
    ctx.returns(table.bundle(), &shown);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
        assert_eq!(parse_duration("99999999999999999999"), None, "past a week");
        assert_eq!(parse_duration("1e400s"), None);
    }
}
