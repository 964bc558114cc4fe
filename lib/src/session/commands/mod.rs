//! The command table: one declaration per command — name, arguments, help, example,
//! the JSON it returns, and its handler — from which parsing, `%help`, `CMD?`,
//! completion and the README's reference are all generated.
//!
//! Handlers live beside their kin: [`general`] (help, environment, timing),
//! [`model`] (models, checkpoints, tokenizers), [`adapt`] (LoRA adapters), [`compress`] (quantisation, pruning), [`training`] (data, hyperparameters,
//! training, the timeline, plots), [`explore`] (sweeps, the learning-rate range test,
//! comparisons), [`inference`] (generation, attention, embeddings, prediction) and
//! [`inside`] (hook points: the activation cache, logit lens, ablation, patching, head
//! scores, attribution).

mod adapt;
mod chat;
mod compress;
mod explore;
mod general;
mod inference;
mod inside;
mod model;
mod training;

use super::output::CellError;
use super::parse::Args;
use super::{Ctx, Session};

/// How an argument is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// A word in its place.
    Positional,
    /// All remaining words, options included (`%timeit %generate "1" --max-tokens 8`).
    Rest,
    /// Every positional word; options may stand anywhere among them.
    Words,
    /// `--name VALUE`; the string is the value's placeholder.
    Option(&'static str),
    /// `--name`.
    Flag,
    /// `key=value` pairs.
    Pairs,
}

/// What completion offers for an argument's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Complete {
    /// Nothing in particular.
    Nothing,
    /// Files and directories.
    Path,
    /// Hyperparameter names.
    HParam,
    /// Command names.
    Command,
}

/// One argument of a command.
#[derive(Debug, Clone, Copy)]
pub struct Arg {
    /// Its name (options without `--`).
    pub name: &'static str,
    /// How it is written.
    pub kind: ArgKind,
    /// Whether it must be given (positional and rest arguments).
    pub required: bool,
    /// The values a positional argument may take.
    pub choices: Option<&'static [&'static str]>,
    /// Values completion offers without requiring them (the other values being paths, say).
    pub suggest: &'static [&'static str],
    /// What completion offers.
    pub complete: Complete,
    /// One line of help.
    pub help: &'static str,
}

const fn arg(name: &'static str, kind: ArgKind, required: bool, help: &'static str) -> Arg {
    Arg { name, kind, required, choices: None, suggest: &[], complete: Complete::Nothing, help }
}

/// A required positional argument.
pub const fn pos(name: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Positional, true, help)
}

/// An optional positional argument.
pub const fn opt_pos(name: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Positional, false, help)
}

/// All remaining words (at least one).
pub const fn rest(name: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Rest, true, help)
}

/// Every positional word (at least one), with options anywhere among them.
pub const fn words(name: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Words, true, help)
}

/// An option with a value.
pub const fn option(name: &'static str, value: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Option(value), false, help)
}

/// A flag.
pub const fn flag(name: &'static str, help: &'static str) -> Arg {
    arg(name, ArgKind::Flag, false, help)
}

/// `key=value` pairs.
pub const fn pairs(help: &'static str) -> Arg {
    arg("k=v", ArgKind::Pairs, false, help)
}

impl Arg {
    /// Restricts a positional argument to these values.
    pub const fn choices(self, choices: &'static [&'static str]) -> Arg {
        Arg { choices: Some(choices), ..self }
    }

    /// Offers these values in completion, without requiring them.
    pub const fn suggest(self, values: &'static [&'static str]) -> Arg {
        Arg { suggest: values, ..self }
    }

    /// Completes with file paths.
    pub const fn path(self) -> Arg {
        Arg { complete: Complete::Path, ..self }
    }

    /// Completes with hyperparameter names.
    pub const fn hparams(self) -> Arg {
        Arg { complete: Complete::HParam, ..self }
    }

    /// Completes with command names.
    pub const fn commands(self) -> Arg {
        Arg { complete: Complete::Command, ..self }
    }

    /// Not required.
    pub const fn optional(self) -> Arg {
        Arg { required: false, ..self }
    }
}

/// What runs a command.
pub type Handler = fn(&mut Session, &Args, &mut Ctx) -> Result<(), CellError>;

/// One command.
pub struct Command {
    /// Its name, without `%`.
    pub name: &'static str,
    /// One line: what it does.
    pub summary: &'static str,
    /// Its arguments, in usage order.
    pub args: &'static [Arg],
    /// More help, when there is more to say.
    pub details: &'static str,
    /// An example invocation.
    pub example: &'static str,
    /// The type of the result's data (`application/vnd.tchlab.result+json`), when it
    /// returns data: [`returns`]`::<T>()`. `%help` shows its fields from its JSON Schema.
    pub returns: Option<Returns>,
    /// The handler.
    pub run: Handler,
}

impl Command {
    /// The usage line, e.g. `%generate PROMPT [--max-tokens N] ...`.
    pub fn usage(&self) -> String {
        let mut out = format!("%{}", self.name);
        for a in self.args {
            let part = match a.kind {
                ArgKind::Positional => {
                    let name = a.choices.map_or_else(|| a.name.to_uppercase(), |c| c.join("|"));
                    if a.required {
                        name
                    } else {
                        format!("[{name}]")
                    }
                }
                ArgKind::Rest | ArgKind::Words if a.required => format!("{}...", a.name.to_uppercase()),
                ArgKind::Rest | ArgKind::Words => format!("[{}...]", a.name.to_uppercase()),
                ArgKind::Option(value) => format!("[--{} {value}]", a.name),
                ArgKind::Flag => format!("[--{}]", a.name),
                ArgKind::Pairs => "[k=v ...]".to_string(),
            };
            out.push(' ');
            out.push_str(&part);
        }
        out
    }

    /// The full help text: usage, summary, arguments, details, example, JSON shape.
    pub fn help(&self) -> String {
        let mut out = format!("{}\n\n{}\n", self.usage(), self.summary);
        if !self.args.is_empty() {
            out.push('\n');
            for a in self.args {
                let name = match a.kind {
                    ArgKind::Option(v) => format!("--{} {v}", a.name),
                    ArgKind::Flag => format!("--{}", a.name),
                    ArgKind::Pairs => "k=v".into(),
                    _ => a.name.to_uppercase(),
                };
                out.push_str(&format!("  {name:<22} {}\n", a.help));
            }
        }
        if !self.details.is_empty() {
            out.push_str(&format!("\n{}\n", self.details));
        }
        out.push_str(&format!("\nexample: {}\n", self.example));
        if let Some(returns) = self.returns {
            out.push_str(&format!("\nreturns {}:\n{}", crate::session::output::RESULT_MIME, super::shape::describe(&(returns.schema)())));
        }
        out
    }
}

/// The type a command's result data has.
#[derive(Clone, Copy)]
pub struct Returns {
    /// The type's Rust name: [`Ctx::returns`](super::Ctx::returns) checks that a handler
    /// returns the type its command declares.
    pub type_name: fn() -> &'static str,
    /// The type's JSON Schema (field names, types, and the doc comments as descriptions).
    pub schema: fn() -> schemars::Schema,
}

/// Declares that a command's result data is a `T`.
pub const fn returns<T: schemars::JsonSchema + serde::Serialize + 'static>() -> Option<Returns> {
    Some(Returns { type_name: std::any::type_name::<T>, schema: schema_of::<T> })
}

fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::schema_for!(T)
}

impl std::fmt::Debug for Returns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.type_name)())
    }
}

/// Every command, in the order `%help` lists them.
pub static COMMANDS: &[Command] = &[
    general::HELP,
    general::ECHO,
    general::STATUS,
    general::DEVICE,
    general::PRECISION,
    general::SEED,
    general::THREADS,
    general::PARAMS,
    model::MODEL,
    model::LOAD,
    model::SAVE,
    model::TOKENIZER,
    model::TOKENIZE,
    model::WEIGHTS,
    adapt::LORA,
    compress::QUANTIZE,
    compress::PRUNE,
    training::DATA,
    training::SET,
    training::HPARAMS,
    training::STEP,
    training::TRAIN,
    training::EVAL,
    training::SNAPSHOT,
    training::REWIND,
    training::FORK,
    training::RUNS,
    training::PLOT,
    training::HISTORY,
    explore::EXPLORE,
    explore::SWEEP,
    explore::LR_FIND,
    explore::COMPARE,
    inference::GENERATE,
    chat::CHAT,
    inference::ATTENTION,
    inside::CACHE,
    inside::LOGIT_LENS,
    inside::ATTRIBUTE,
    inside::ABLATE,
    inside::PATCH,
    inside::HEADS,
    inference::EMBED,
    inference::SIMILARITY,
    inference::PREDICT,
    general::TIME,
    general::TIMEIT,
    general::WRITEFILE,
    general::CLEAR,
];

pub use inside::ActivationCache;

/// The command named `name`.
pub fn find(name: &str) -> Option<&'static Command> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// The command reference in Markdown, as the README shows it.
pub fn reference_markdown() -> String {
    let mut out = String::from("| command | what it does |\n| --- | --- |\n");
    for c in COMMANDS {
        out.push_str(&format!("| `{}` | {} |\n", c.usage().replace('|', "\\|"), c.summary));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_result_field_is_described_in_help() {
        for command in COMMANDS {
            if command.returns.is_none() {
                continue;
            }
            let help = command.help();
            let fields =
                help.split_once(crate::session::output::RESULT_MIME).map(|(_, rest)| rest).unwrap_or_else(|| panic!("%{}: no returns section", command.name));
            let lines: Vec<&str> = fields.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
            assert!(!lines.is_empty(), "%{}: no fields", command.name);
            for line in lines {
                // `  name  type  meaning`: three columns, the meaning from the field's doc comment.
                assert!(line.split("  ").filter(|c| !c.trim().is_empty()).count() >= 3, "%{}: undocumented field: {line:?}", command.name);
            }
        }
    }
}
