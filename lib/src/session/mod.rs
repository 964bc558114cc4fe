//! The session engine: the command language over the library, independent of any
//! front end. A front end hands a cell's text to [`Session::run_cell`] with a sink
//! for [`Output`] events, and calls [`Session::complete`] and [`Session::inspect`]
//! for completion and help. Everything a command does goes through the library;
//! everything it shows goes through the sink.
//!
//! State: the device, seed and hyperparameters; a tokenizer, a model and a data set,
//! and — once model and data are both there — a [`Trainer`] that owns all three.
//! Commands either finish or change nothing.

pub mod commands;
mod figures;
pub(crate) mod format;
mod generation;
mod live;
pub mod output;
pub mod panel;
pub mod parse;
mod shape;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tch::Device;

use crate::data::DataSpec;
use crate::embedding::Pooling;
use crate::interrupt;
use crate::models::Model;
use crate::suggest::did_you_mean;
use crate::tokenize::Tokenizer;
use crate::train::{HParams, Trainer};
use commands::{ArgKind, Complete, COMMANDS};
use output::{Bundle, CellError, Output, Stream};
use parse::{split_cell, Args, Cell, Invocation};

/// An interactive session: what is loaded, and the commands that act on it.
pub struct Session {
    device: Device,
    seed: u64,
    hp: HParams,
    tokenizer: Option<Tokenizer>,
    model: Option<Model>,
    data: Option<DataSpec>,
    trainer: Option<Trainer>,
    pooling: Option<Pooling>,
    model_source: Option<String>,
    cancel: Arc<AtomicBool>,
    inputs: Vec<String>,
    saved_at: Option<(String, i64)>,
    conversation: crate::chat::Conversation,
    activations: Option<commands::ActivationCache>,
    /// `%params`: values that `$name` stands for in command lines.
    params: std::collections::BTreeMap<String, String>,
    /// `%explore`'s open explorers, oldest first (at most [`panel::MAX_PANELS`]).
    panels: Vec<panel::Explorer>,
}

/// A glance at the session, for prompts and exit questions.
#[derive(Debug, Clone, PartialEq)]
pub struct Glance {
    /// `cpu`, `cuda:0`.
    pub device: String,
    /// Steps taken on the current branch.
    pub step: i64,
    /// Training progress not saved with `%save` (or loaded with `%load`).
    pub unsaved: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a command's output goes, with helpers for each kind of event.
pub struct Ctx<'a> {
    sink: &'a mut dyn FnMut(Output),
    /// The result type the running command declares.
    declared: Option<commands::Returns>,
}

static DISPLAY_IDS: AtomicU64 = AtomicU64::new(1);

impl Ctx<'_> {
    /// Text on stdout (a newline is added).
    pub fn out(&mut self, text: impl Into<String>) {
        (self.sink)(Output::Stream { stream: Stream::Stdout, text: text.into() + "\n" });
    }

    /// Text on stdout as it is, without a newline: a piece of a streamed reply.
    pub fn write(&mut self, text: impl Into<String>) {
        (self.sink)(Output::Stream { stream: Stream::Stdout, text: text.into() });
    }

    /// A note on stderr (a newline is added).
    pub fn note(&mut self, text: impl Into<String>) {
        (self.sink)(Output::Stream { stream: Stream::Stderr, text: text.into() + "\n" });
    }

    /// A display that will not change.
    pub fn display(&mut self, bundle: Bundle) {
        (self.sink)(Output::Display { id: None, bundle });
    }

    /// A display that later [`Ctx::update`]s replace; returns its id.
    pub fn live(&mut self, bundle: Bundle) -> String {
        let id = format!("tchlab-{}", DISPLAY_IDS.fetch_add(1, Ordering::Relaxed));
        (self.sink)(Output::Display { id: Some(id.clone()), bundle });
        id
    }

    /// Replaces a live display.
    pub fn update(&mut self, id: &str, bundle: Bundle) {
        (self.sink)(Output::Update { id: id.to_string(), bundle });
    }

    /// The command's result, for commands that return no data.
    pub fn result(&mut self, bundle: Bundle) {
        (self.sink)(Output::Result(bundle));
    }

    /// The command's result with its data: `data` must be of the type the command
    /// declares (`returns: returns::<T>()`), so that `%help`'s description is the truth.
    pub fn returns<T: serde::Serialize + 'static>(&mut self, bundle: Bundle, data: &T) {
        let declared = self.declared.map(|r| (r.type_name)());
        assert_eq!(declared, Some(std::any::type_name::<T>()), "a command returned data of a type it does not declare");
        let value = serde_json::to_value(data).expect("result types serialize");
        (self.sink)(Output::Result(bundle.json(value)));
    }

    /// Help for a pager.
    pub fn page(&mut self, text: String) {
        (self.sink)(Output::Page(text));
    }

    /// Clears the output.
    pub fn clear(&mut self, wait: bool) {
        (self.sink)(Output::Clear { wait });
    }
}

/// Whether a cell is ready to run (Jupyter's `is_complete`, the REPL's multi-line input).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completeness {
    /// Ready.
    Complete,
    /// Needs more lines: Rust with open brackets.
    Incomplete,
    /// Cannot run as it is: an unclosed quote in a command, unbalanced Rust brackets.
    Invalid,
}

/// Completion candidates replacing `code[start..end]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Completions {
    /// Start of the replaced text (byte offset).
    pub start: usize,
    /// End of the replaced text (the cursor).
    pub end: usize,
    /// Candidates, sorted.
    pub matches: Vec<String>,
}

fn no_model() -> CellError {
    CellError { name: "UsageError".into(), message: "no model yet: build one with `%model gpt` (after `%data ...`) or load one with `%load PATH`".into() }
}

impl Session {
    /// An empty session on the best device available (CUDA if present).
    pub fn new() -> Self {
        Session {
            device: crate::cuda::best_device(),
            seed: 0,
            hp: HParams::default(),
            tokenizer: None,
            model: None,
            data: None,
            trainer: None,
            pooling: None,
            model_source: None,
            cancel: Arc::new(AtomicBool::new(false)),
            inputs: vec![],
            saved_at: None,
            conversation: Default::default(),
            activations: None,
            params: Default::default(),
            panels: vec![],
        }
    }

    /// A flag that interrupts a running command at its next step boundary when set
    /// (the kernel's interrupt, the REPL's Ctrl-C).
    pub fn cancel_handle(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Runs a cell: each command line in order, stopping at the first error.
    ///
    /// An interrupt (the [`Session::cancel_handle`] flag) stops the running command at
    /// its next check; the flag is cleared when the cell ends, so an interrupt never
    /// reaches a later cell. A panic inside a command becomes an `InternalError` and the
    /// session goes on.
    pub fn run_cell(&mut self, cell: &str, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        self.record_input(cell);
        let _scope = interrupt::Scope::enter(&self.cancel);
        let mut ctx = Ctx { sink, declared: None };
        let result = match interrupt::contain("splitting the cell", || split_cell(cell)) {
            Err(e) => Err(e),
            Ok(Cell::Rust(_)) => Err(CellError {
                name: "UsageError".into(),
                message: "this cell is Rust code, which the tchlab kernel and REPL run (the tchlab-cells crate); commands start with `%` (`%help` lists them)"
                    .into(),
            }),
            Ok(Cell::Commands(invocations)) => invocations.iter().try_for_each(|inv| self.run_invocation(inv, &mut ctx)),
        };
        self.cancel.store(false, Ordering::SeqCst);
        result
    }

    /// Runs one command under [`interrupt::contain`]: a panic is the command's error.
    fn run_invocation(&mut self, inv: &Invocation, ctx: &mut Ctx) -> Result<(), CellError> {
        interrupt::contain(&format!("`{}`", inv.line), || self.run_uncontained(inv, ctx))
    }

    fn run_uncontained(&mut self, inv: &Invocation, ctx: &mut Ctx) -> Result<(), CellError> {
        if inv.name == "__fault" && interrupt::faults_enabled() {
            return inject_fault(&inv.words);
        }
        let Some(command) = commands::find(&inv.name) else {
            let close = did_you_mean(&inv.name, COMMANDS.iter().map(|c| c.name)).replace("mean ", "mean %").replace(", ", ", %");
            return Err(CellError { name: "UsageError".into(), message: format!("unknown command %{}{close}; `%help` lists them all", inv.name) });
        };
        if inv.help {
            ctx.page(command.help());
            return Ok(());
        }
        let words = inv.words.iter().map(|w| expand_params(w, &self.params)).collect::<Result<Vec<_>, _>>()?;
        let args = Args::parse(command, &words, inv.body.clone())?;
        // `%time CMD` runs CMD inside: each command declares its own result.
        let outer = std::mem::replace(&mut ctx.declared, command.returns);
        let result = (command.run)(self, &args, ctx);
        ctx.declared = outer;
        result
    }

    /// Adds a cell to the input history (what [`Session::run_cell`] does first), for
    /// cells that front ends run elsewhere.
    pub fn record_input(&mut self, cell: &str) {
        if !cell.trim().is_empty() {
            self.inputs.push(cell.to_string());
        }
    }

    /// Completion candidates at byte offset `cursor` of `code`.
    pub fn complete(&self, code: &str, cursor: usize) -> Completions {
        let cursor = char_boundary_at_or_before(code, cursor);
        let before = &code[..cursor];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = &before[line_start..];
        let word_start = line.char_indices().rev().find(|(_, c)| c.is_whitespace()).map_or(0, |(i, c)| i + c.len_utf8());
        let word = &line[word_start..];
        let start = line_start + word_start;
        let mut matches: Vec<String> = vec![];
        let trimmed = line.trim_start();
        if word_start == 0 || !trimmed.contains(char::is_whitespace) {
            if word.starts_with('%') || word.is_empty() {
                let bare = word.trim_start_matches('%');
                matches = COMMANDS.iter().filter(|c| c.name.starts_with(bare)).map(|c| format!("%{}", c.name)).collect();
            }
        } else if let Some(command) = commands::find(trimmed.trim_start_matches('%').split_whitespace().next().unwrap_or("").trim_end_matches('?')) {
            if let Some(option) = word.strip_prefix("--") {
                matches = command
                    .args
                    .iter()
                    .filter(|a| matches!(a.kind, ArgKind::Option(_) | ArgKind::Flag) && a.name.starts_with(option))
                    .map(|a| format!("--{}", a.name))
                    .collect();
            } else {
                let typed: Vec<&str> = line[..word_start].split_whitespace().skip(1).collect();
                let candidates = positional_at(command, &typed).into_iter().chain(command.args.iter().filter(|a| a.kind == ArgKind::Pairs));
                for a in candidates {
                    let values = a.choices.unwrap_or(&[]).iter().chain(a.suggest);
                    matches.extend(values.filter(|c| c.starts_with(word)).map(|c| c.to_string()));
                    match a.complete {
                        Complete::HParam => {
                            matches.extend(crate::train::hparams::KEYS.iter().filter(|(k, _)| k.starts_with(word)).map(|(k, _)| format!("{k}=")))
                        }
                        Complete::Command => {
                            matches.extend(COMMANDS.iter().filter(|c| format!("%{}", c.name).starts_with(word)).map(|c| format!("%{}", c.name)))
                        }
                        Complete::Path if !word.is_empty() => matches.extend(complete_path(word)),
                        _ => {}
                    }
                }
            }
        }
        matches.sort();
        matches.dedup();
        Completions { start, end: cursor, matches }
    }

    /// Help for the command on the line at `cursor`, if any.
    pub fn inspect(&self, code: &str, cursor: usize) -> Option<String> {
        let cursor = char_boundary_at_or_before(code, cursor);
        let line_start = code[..cursor].rfind('\n').map_or(0, |i| i + 1);
        let line = code[line_start..].lines().next().unwrap_or("");
        let name = line.trim_start().trim_start_matches('%').split_whitespace().next()?.trim_end_matches('?');
        commands::find(name).map(commands::Command::help)
    }

    /// Whether `code` is complete: command lines are when their quotes close; a `%%`
    /// cell always is; Rust is when its brackets balance.
    pub fn is_complete(&self, code: &str) -> Completeness {
        match split_cell(code) {
            Err(_) => Completeness::Invalid,
            Ok(Cell::Commands(_)) => Completeness::Complete,
            Ok(Cell::Rust(rust)) => {
                let mut depth = 0i64;
                for c in strip_rust_literals(&rust).chars() {
                    match c {
                        '(' | '[' | '{' => depth += 1,
                        ')' | ']' | '}' => depth -= 1,
                        _ => {}
                    }
                    if depth < 0 {
                        return Completeness::Invalid;
                    }
                }
                if depth > 0 {
                    Completeness::Incomplete
                } else {
                    Completeness::Complete
                }
            }
        }
    }

    /// Device, step, and whether training progress is unsaved.
    pub fn glance(&self) -> Glance {
        let position = self.trainer.as_ref().map(|t| (t.branch().to_string(), t.step_count()));
        Glance {
            device: crate::device::device_name(self.device),
            step: position.as_ref().map_or(0, |p| p.1),
            unsaved: position.is_some_and(|p| p.1 > 0 && Some(&p) != self.saved_at.as_ref()),
        }
    }

    /// The cells run so far, oldest first.
    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    // ---- state, for the handlers ----

    /// Applies `pairs` to the session's (and trainer's) hyperparameters: all or none.
    fn set_hparams(&mut self, pairs: &[(String, String)]) -> Result<(), CellError> {
        let mut hp = self.hparams().clone();
        for (k, v) in pairs {
            crate::train::check_setting(&mut hp, k, v)?;
        }
        if pairs.iter().any(|(k, _)| crate::models::lora::is_setting(k)) && self.trainer.is_none() {
            return Err(CellError {
                name: "UsageError".into(),
                message: "the lora_ settings change a model that trains: choose data first (`%data ...`), or add adapters with `%lora`".into(),
            });
        }
        if let Some(t) = self.trainer.as_mut() {
            t.check_hparams(&hp)?;
            for (k, v) in pairs {
                t.set(k, v)?;
            }
        }
        self.hp = hp;
        Ok(())
    }

    fn hparams(&self) -> &HParams {
        self.trainer.as_ref().map_or(&self.hp, Trainer::hparams)
    }

    fn model(&self) -> Option<&Model> {
        self.trainer.as_ref().map(Trainer::model).or(self.model.as_ref())
    }

    fn model_or_err(&self) -> Result<&Model, CellError> {
        self.model().ok_or_else(no_model)
    }

    /// Changes what of the model trains (LoRA adapters added, merged, dropped): with a
    /// trainer, through [`Trainer::change_model`] (a fresh optimiser; `what` in the
    /// history). Nothing changes when `change` fails.
    fn change_model<T>(&mut self, what: &str, change: impl FnOnce(&mut Model) -> crate::Result<T>) -> Result<T, CellError> {
        self.activations = None;
        match (self.trainer.as_mut(), self.model.as_mut()) {
            (Some(t), _) => Ok(t.change_model(what, change)?),
            (None, Some(m)) => Ok(change(m)?),
            (None, None) => Err(no_model()),
        }
    }

    /// Changes the model without changing what trains (adapters switched on or off).
    fn change_model_in_place<T>(&mut self, change: impl FnOnce(&mut Model) -> crate::Result<T>) -> Result<T, CellError> {
        self.activations = None;
        match (self.trainer.as_mut(), self.model.as_mut()) {
            (Some(t), _) => Ok(change(t.model_mut())?),
            (None, Some(m)) => Ok(change(m)?),
            (None, None) => Err(no_model()),
        }
    }

    fn tokenizer(&self) -> Option<&Tokenizer> {
        self.trainer.as_ref().map(Trainer::tokenizer).or(self.tokenizer.as_ref())
    }

    fn tokenizer_or_err(&self) -> Result<&Tokenizer, CellError> {
        self.tokenizer()
            .ok_or_else(|| CellError { name: "UsageError".into(), message: "no tokenizer yet: `%load` a model directory, or `%tokenizer char FILE`".into() })
    }

    /// Makes `trainer` (resumed from a checkpoint saved at `source`) the session's: its
    /// model, data and hyperparameters replace the session's.
    fn install_trainer(&mut self, mut trainer: Trainer, source: String) {
        trainer.set_cancel_handle(self.cancel.clone());
        self.data = Some(trainer.data_spec().clone());
        self.hp = trainer.hparams().clone();
        self.model = None;
        self.tokenizer = None;
        self.model_source = Some(source);
        self.conversation = Default::default();
        self.saved_at = Some((trainer.branch().to_string(), trainer.step_count()));
        self.trainer = Some(trainer);
    }

    fn trainer_or_err(&mut self) -> Result<&mut Trainer, CellError> {
        if self.trainer.is_none() {
            let message = match (self.model().is_some(), self.data.is_some()) {
                (false, false) => "nothing to train yet: choose data (`%data synth reverse`) and build a model (`%model gpt`)",
                (false, true) => "the data is ready but there is no model: `%model gpt` builds one sized for it",
                (true, _) => "the model has no data to train on: `%data synth reverse`, `%data text FILE` or `%data classify FILE`",
            };
            return Err(CellError { name: "UsageError".into(), message: message.into() });
        }
        Ok(self.trainer.as_mut().expect("checked"))
    }

    /// Takes a new model (with its tokenizer): it replaces the old one and any
    /// trainer. With data loaded, a trainer is made; data that does not fit the new
    /// model is dropped, with a note saying why.
    fn install_model(
        &mut self,
        mut model: Model,
        tokenizer: Option<Tokenizer>,
        pooling: Option<Pooling>,
        chat_template: Option<crate::chat::Template>,
        source: String,
        ctx: &mut Ctx,
    ) -> Result<(), CellError> {
        let tokenizer = tokenizer.or_else(|| self.tokenizer().cloned());
        self.conversation = crate::chat::Conversation { template: chat_template, ..Default::default() };
        self.activations = None;
        self.trainer = None;
        self.model = None;
        self.pooling = pooling;
        self.model_source = Some(source);
        if let (Some(spec), Some(tok)) = (self.data.clone(), tokenizer.clone()) {
            match Trainer::prepare(&model, &tok, &spec, &self.hp) {
                Ok(data) => {
                    let mut trainer = Trainer::assemble(model, tok, data, spec, self.hp.clone(), self.seed)?;
                    trainer.set_cancel_handle(self.cancel.clone());
                    self.trainer = Some(trainer);
                    self.tokenizer = None;
                    return Ok(());
                }
                Err(e) => {
                    ctx.note(format!("the data set was dropped: {e}"));
                    self.data = None;
                }
            }
        }
        model.vars.set_device(self.device);
        self.model = Some(model);
        self.tokenizer = tokenizer;
        Ok(())
    }

    /// Takes a new data set (read with `tokenizer`). With a model, the trainer is made
    /// or given the data; if they do not fit, nothing changes.
    fn install_data(&mut self, tokenizer: Tokenizer, spec: DataSpec) -> Result<(), CellError> {
        if let Some(trainer) = self.trainer.as_mut() {
            trainer.replace_data(tokenizer, spec.clone())?;
        } else if let Some(model) = self.model.as_ref() {
            let data = Trainer::prepare(model, &tokenizer, &spec, &self.hp)?;
            let model = self.model.take().expect("checked");
            let mut trainer = Trainer::assemble(model, tokenizer, data, spec.clone(), self.hp.clone(), self.seed)?;
            trainer.set_cancel_handle(self.cancel.clone());
            self.trainer = Some(trainer);
            self.tokenizer = None;
        } else {
            self.tokenizer = Some(tokenizer);
        }
        self.data = Some(spec);
        Ok(())
    }
}

/// `%__fault panic` panics at once; `%__fault arm POINT` arms a panic at a named point
/// of the library ([`interrupt::trip`]). Only with `TCHLAB_FAULTS=1`, for the tests
/// that check containment.
fn inject_fault(words: &[String]) -> Result<(), CellError> {
    match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["panic"] => panic!("fault injected by `%__fault panic`"),
        ["arm", point] => {
            interrupt::arm(point);
            Ok(())
        }
        _ => Err(CellError { name: "UsageError".into(), message: "%__fault panic | %__fault arm POINT".into() }),
    }
}

/// The longest word `$name` expansion may make.
const MAX_EXPANDED_WORD: usize = 1 << 20;

/// `word` with each `$name` or `${name}` of a `%params` parameter replaced by its value,
/// as IPython expands `$name` in magics: other `$`s stay as they are, `$$` is one `$`.
/// Values are not expanded again, and a word may not grow past [`MAX_EXPANDED_WORD`].
fn expand_params(word: &str, params: &std::collections::BTreeMap<String, String>) -> Result<String, CellError> {
    let is_name = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let (name, tail) = match after.strip_prefix('{').and_then(|b| b.split_once('}')) {
            Some((name, tail)) => (name, tail),
            None => {
                let end = after.find(|c: char| !is_name(c)).unwrap_or(after.len());
                (&after[..end], &after[end..])
            }
        };
        match params.get(name) {
            Some(value) => {
                if out.len() + value.len() > MAX_EXPANDED_WORD {
                    return Err(CellError {
                        name: "UsageError".into(),
                        message: format!("`${name}` makes a word longer than {} KiB; use fewer or shorter parameters", MAX_EXPANDED_WORD >> 10),
                    });
                }
                out.push_str(value);
                rest = tail;
            }
            None => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Rust source without string and character literals and comments, so that brackets
/// inside them do not count.
fn strip_rust_literals(code: &str) -> String {
    let mut out = String::with_capacity(code.len());
    let mut chars = code.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '/' if chars.peek() == Some(&'/') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '\'' => {
                // A char literal ('x', '\n') or a lifetime ('a): skip a literal only.
                let rest: String = chars.clone().take(3).collect();
                if rest.starts_with('\\') {
                    chars.by_ref().take_while(|&d| d != '\'').for_each(drop);
                } else if rest.chars().nth(1) == Some('\'') {
                    chars.next();
                    chars.next();
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// `cursor` moved back to the start of the character it falls in (and into the text):
/// front ends count positions in their own units, and a byte offset inside a
/// character must not panic a slice.
fn char_boundary_at_or_before(code: &str, cursor: usize) -> usize {
    let mut cursor = cursor.min(code.len());
    while !code.is_char_boundary(cursor) {
        cursor -= 1;
    }
    cursor
}

/// The positional argument the next word fills, given the words typed after the command.
fn positional_at(command: &commands::Command, typed: &[&str]) -> Option<&'static commands::Arg> {
    let mut index = 0;
    let mut words = typed.iter();
    while let Some(w) = words.next() {
        if let Some(name) = w.strip_prefix("--") {
            if command.args.iter().any(|a| a.name == name && matches!(a.kind, ArgKind::Option(_))) {
                words.next();
            }
        } else if !w.contains('=') {
            index += 1;
        }
    }
    let positionals: Vec<&'static commands::Arg> =
        command.args.iter().filter(|a| matches!(a.kind, ArgKind::Positional | ArgKind::Rest | ArgKind::Words)).collect();
    positionals.get(index).copied().or_else(|| positionals.last().copied().filter(|a| matches!(a.kind, ArgKind::Rest | ArgKind::Words)))
}

fn complete_path(word: &str) -> Vec<String> {
    let (dir, prefix) = match word.rfind('/') {
        Some(i) => (&word[..=i], &word[i + 1..]),
        None => ("", word),
    };
    let Ok(entries) = std::fs::read_dir(if dir.is_empty() { Path::new(".") } else { Path::new(dir) }) else { return vec![] };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let slash = if e.path().is_dir() { "/" } else { "" };
            (name.starts_with(prefix) && !name.starts_with('.')).then(|| format!("{dir}{name}{slash}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_expand_as_ipython_expands_magics() {
        let params: std::collections::BTreeMap<String, String> =
            [("steps", "200"), ("name", "run a")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let expand = |word: &str| expand_params(word, &params).unwrap();
        assert_eq!(expand("$steps"), "200");
        assert_eq!(expand("runs/$name.png"), "runs/run a.png");
        assert_eq!(expand("${steps}x"), "200x");
        assert_eq!(expand("$stepsx"), "$stepsx", "a longer name that is no parameter stays");
        assert_eq!(expand("costs $5 or $$steps"), "costs $5 or $steps");
        assert_eq!(expand("${unclosed"), "${unclosed");
        assert_eq!(expand("$"), "$");
        let wide: std::collections::BTreeMap<String, String> = [("w".to_string(), "w".repeat(1 << 19))].into();
        assert!(expand_params("$w$w", &wide).is_ok());
        assert!(expand_params("$w$w$w", &wide).unwrap_err().message.contains("longer than 1024 KiB"));
    }
}
