//! The interactive session: rustyline with the session's completion, usage hints,
//! multi-line input, history kept in the user's data directory, Ctrl-C and Ctrl-D.

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::FileHistory;
use rustyline::validate::{ValidationContext, ValidationResult, Validator};
use rustyline::{Context, Editor};
use tchlab::session::{commands, Completeness, Session};
use tchlab_cells::Lab;

use crate::render::{Images, Renderer};

/// Ctrl-C while a cell runs interrupts it: training stops at its next step boundary
/// with its state kept; a Rust cell's process is stopped. (While a line is being
/// edited, the terminal is in raw mode and Ctrl-C reaches rustyline as a key instead.)
pub fn interrupt_on_ctrl_c(lab: &Lab) {
    let interrupter = lab.interrupter();
    let watch = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT]).and_then(|mut signals| {
        std::thread::Builder::new().name("tchlab-ctrl-c".into()).spawn(move || {
            signals.forever().for_each(|_| {
                interrupter.interrupt();
            })
        })
    });
    if let Err(e) = watch {
        eprintln!("tchlab: Ctrl-C will not interrupt commands: {e}");
    }
}

struct Helper {
    lab: Rc<RefCell<Lab>>,
}

impl Completer for Helper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _: &Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let c = self.lab.borrow_mut().complete(line, pos);
        Ok((c.start, c.matches))
    }
}

impl Hinter for Helper {
    type Hint = String;

    /// After a command's name and a space, the rest of its usage line.
    fn hint(&self, line: &str, pos: usize, _: &Context<'_>) -> Option<String> {
        if pos != line.len() || !line.starts_with('%') || !line.ends_with(' ') || line.trim_end().contains(char::is_whitespace) {
            return None;
        }
        let command = commands::find(line.trim().trim_start_matches('%'))?;
        let usage = command.usage();
        let rest = usage.split_once(' ').map(|(_, r)| r.to_string())?;
        Some(rest)
    }
}

impl Highlighter for Helper {
    fn highlight_hint<'h>(&self, hint: &'h str) -> Cow<'h, str> {
        Cow::Owned(format!("\x1b[2m{hint}\x1b[0m"))
    }
}

impl Validator for Helper {
    /// Rust with open brackets and `%%` cells (until a blank line) continue on the next line.
    fn validate(&self, ctx: &mut ValidationContext) -> rustyline::Result<ValidationResult> {
        let input = ctx.input();
        if input.trim_start().starts_with("%%") && !input.ends_with('\n') {
            return Ok(ValidationResult::Incomplete);
        }
        Ok(match self.lab.borrow().is_complete(input) {
            Completeness::Incomplete => ValidationResult::Incomplete,
            _ => ValidationResult::Valid(None),
        })
    }
}

impl rustyline::Helper for Helper {}

/// `$XDG_DATA_HOME/tchlab/history`, or `~/.local/share/tchlab/history`.
fn history_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    let dir = base.join("tchlab");
    std::fs::create_dir_all(&dir).ok()?;
    Some(dir.join("history"))
}

/// Runs the interactive session; returns the exit status.
pub fn run() -> i32 {
    let lab = Rc::new(RefCell::new(Lab::new(Session::new())));
    interrupt_on_ctrl_c(&lab.borrow());
    let mut editor: Editor<Helper, FileHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("tchlab: cannot start line editing: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(Helper { lab: lab.clone() }));
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    println!("tchlab {} — %help lists the commands, Tab completes, Ctrl-C interrupts, Ctrl-D leaves.", env!("CARGO_PKG_VERSION"));
    let images = Images::detect();
    loop {
        let glance = lab.borrow().session().glance();
        let prompt = format!("tchlab [{} · step {}]> ", glance.device, glance.step);
        match editor.readline(&prompt) {
            Ok(cell) => {
                if cell.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(cell.as_str());
                if let Some(path) = &history {
                    // Saved at once, so a killed session keeps its history too.
                    let _ = editor.save_history(path);
                }
                let mut renderer = Renderer::new(images, false);
                let result = lab.borrow_mut().run_cell(&cell, &mut |o| renderer.show(o));
                match result {
                    Ok(()) => renderer.finish(),
                    Err(e) => renderer.error(&e, ""),
                }
                if let Some(panel) = renderer.take_panel() {
                    crate::explorer::run(&mut lab.borrow_mut(), panel, images);
                }
            }
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => {
                if !lab.borrow().session().glance().unsaved {
                    return 0;
                }
                match editor.readline("Training progress since the last %save will be lost. Leave anyway? [y/N] ") {
                    Ok(answer) if answer.trim().eq_ignore_ascii_case("y") || answer.trim().eq_ignore_ascii_case("yes") => return 0,
                    Err(ReadlineError::Eof) => return 0,
                    _ => continue,
                }
            }
            Err(e) => {
                eprintln!("tchlab: {e}");
                return 1;
            }
        }
    }
}
