//! Rust code cells for tchlab's front ends. A [`Lab`] is a session plus Rust: command
//! cells go to the session, every other cell is Rust, compiled and run by evcxr in a
//! child process that starts at the first Rust cell. While a cell runs, the lab answers
//! the cell's `tchlab::live` requests from the session, so cells reach the live model
//! while the model itself never lives in the process a cell can crash.
//!
//! Binaries that host a `Lab` must call [`runtime_hook`] first thing in `main`: evcxr
//! runs cells in a copy of the current executable.
//!
//! Not here: Jupyter and terminals (the kernel and REPL crates) and tensors (the
//! library).

mod diagnostics;
mod engine;
mod live_socket;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tchlab::session::output::{CellError, Output, Stream};
use tchlab::session::parse::{split_cell, Cell};
use tchlab::session::{Completions, Session};

pub use evcxr::runtime_hook;

use engine::Engine;

/// A session with Rust cells.
pub struct Lab {
    session: Session,
    engine: Option<Engine>,
    interrupter: Interrupter,
}

/// Interrupts whatever a [`Lab`] is running, from another thread: a command stops at
/// its next step boundary; a Rust cell's process is killed (and restarted by the next
/// Rust cell).
#[derive(Clone)]
pub struct Interrupter {
    cancel: Arc<AtomicBool>,
    rust: Arc<Mutex<Option<Arc<Mutex<Child>>>>>,
    rust_running: Arc<AtomicBool>,
    rust_killed: Arc<AtomicBool>,
}

impl Interrupter {
    /// Asks the running cell to stop.
    pub fn interrupt(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if self.rust_running.load(Ordering::SeqCst) {
            if let Some(child) = self.rust.lock().expect("not poisoned").as_ref() {
                self.rust_killed.store(true, Ordering::SeqCst);
                let _ = child.lock().expect("not poisoned").kill();
            }
        }
    }
}

impl Lab {
    /// A lab over `session`; Rust starts when the first Rust cell runs.
    pub fn new(session: Session) -> Self {
        let interrupter = Interrupter { cancel: session.cancel_handle(), rust: Arc::default(), rust_running: Arc::default(), rust_killed: Arc::default() };
        Lab { session, engine: None, interrupter }
    }

    /// The session, for completion, help and status.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// A handle that interrupts the running cell from another thread.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Runs a cell: commands in the session, anything else as Rust.
    pub fn run_cell(&mut self, code: &str, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        if !matches!(split_cell(code), Ok(Cell::Rust(_))) {
            return self.session.run_cell(code, sink);
        }
        self.session.record_input(code);
        if let Some(line) =
            code.lines().find(|l| l.trim_start().strip_prefix('%').is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '%')))
        {
            return Err(CellError {
                name: "UsageError".into(),
                message: format!(
                    "this cell mixes a command (`{}`) with Rust; put commands and Rust in separate cells, or call `live::run(\"{}\")` from Rust",
                    line.trim(),
                    line.trim()
                ),
            });
        }
        if self.engine.is_none() {
            let engine = Engine::start(&mut |note| sink(Output::Stream { stream: Stream::Stderr, text: format!("{note}\n") }))
                .map_err(|message| CellError { name: "RustUnavailable".into(), message })?;
            *self.interrupter.rust.lock().expect("not poisoned") = Some(engine.process_handle());
            self.engine = Some(engine);
        }
        let engine = self.engine.as_mut().expect("started above");
        engine.run(code, &mut self.session, &self.interrupter, sink)
    }

    /// Completion candidates: evcxr's for Rust once it has started, the session's otherwise.
    pub fn complete(&mut self, code: &str, cursor: usize) -> Completions {
        match (&mut self.engine, split_cell(code)) {
            (Some(engine), Ok(Cell::Rust(_))) => engine.complete(code, cursor).unwrap_or_else(|| Completions { start: cursor, end: cursor, matches: vec![] }),
            _ => self.session.complete(code, cursor),
        }
    }
}
