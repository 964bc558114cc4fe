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
mod readiness;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use tchlab::session::output::{CellError, Output, Stream};
use tchlab::session::parse::{split_cell, Cell};
use tchlab::session::{Completeness, Completions, Session};

pub use evcxr::runtime_hook;
pub use readiness::Readiness;

use engine::Engine;

/// A session with Rust cells.
pub struct Lab {
    session: Session,
    engine: Option<Engine>,
    /// A start of Rust cells that an interrupt left running in the background.
    starting: Option<Receiver<Result<Engine, String>>>,
    interrupter: Interrupter,
}

/// Interrupts whatever a [`Lab`] is running, from another thread: a command stops at
/// its next check; a Rust cell's process is killed (and restarted by the next Rust
/// cell). An interrupt while no cell runs or is about to run does nothing, so it cannot
/// reach a later cell; one that arrives after a front end announced a cell
/// ([`Interrupter::cell_arriving`]) but before it started is kept for it.
#[derive(Clone)]
pub struct Interrupter {
    cancel: Arc<AtomicBool>,
    in_cell: Arc<Mutex<bool>>,
    rust: Arc<Mutex<Option<Arc<Mutex<Child>>>>>,
    rust_running: Arc<AtomicBool>,
    rust_killed: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Interrupter {
    /// Asks the running cell to stop; false when no cell is running or announced (the
    /// interrupt then does nothing).
    pub fn interrupt(&self) -> bool {
        let in_cell = lock(&self.in_cell);
        if !*in_cell {
            return false;
        }
        self.cancel.store(true, Ordering::SeqCst);
        if self.rust_running.load(Ordering::SeqCst) {
            if let Some(child) = lock(&self.rust).as_ref() {
                self.rust_killed.store(true, Ordering::SeqCst);
                let _ = lock(child).kill();
            }
        }
        true
    }

    /// Says that a cell is on its way (a kernel calls this when an execute request
    /// arrives, before queueing it): from now on, an interrupt is for that cell.
    pub fn cell_arriving(&self) {
        *lock(&self.in_cell) = true;
    }

    fn cell_done(&self) {
        let mut in_cell = lock(&self.in_cell);
        *in_cell = false;
        self.cancel.store(false, Ordering::SeqCst);
    }
}

/// How often a start of Rust cells looks for an interrupt.
const START_POLL: Duration = Duration::from_millis(50);
/// How often a long start of Rust cells says it is still going.
const START_PROGRESS: Duration = Duration::from_secs(30);

/// Compiles what Rust cells need (tch and the tchlab library, in the evcxr work
/// directory under the user's cache) unless it is built already and current, saying
/// what it does through `note`; returns the state found. `make rust-cells` runs this
/// through `tchlab prepare-rust-cells`, so that no cell and no test waits for it.
pub fn prepare_rust_cells(note: &mut dyn FnMut(&str)) -> Result<Readiness, String> {
    let (state, dir) = Engine::readiness()?;
    if state == Readiness::Ready {
        note(&format!("Rust cells are ready: {} holds a current build", dir.display()));
        return Ok(state);
    }
    let (notes_tx, notes) = crossbeam_channel::unbounded::<String>();
    let started = start_in_background(notes_tx).map_err(|e| e.message)?;
    let began = std::time::Instant::now();
    let mut said = began;
    loop {
        for line in notes.try_iter() {
            note(&line);
        }
        match started.recv_timeout(START_POLL) {
            Ok(engine) => {
                engine?;
                note(&format!("Rust cells are ready ({} in {})", dir.display(), readiness::minutes(began.elapsed())));
                return Ok(state);
            }
            Err(RecvTimeoutError::Disconnected) => return Err("preparing Rust cells stopped without a word".into()),
            Err(RecvTimeoutError::Timeout) if said.elapsed() >= START_PROGRESS => {
                note(&still_preparing(began.elapsed()));
                said = std::time::Instant::now();
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
    }
}

fn interrupted_while_preparing() -> CellError {
    CellError {
        name: "KeyboardInterrupt".into(),
        message: "interrupted while Rust cells were being prepared. The session is intact; the next Rust cell carries on with the preparation (what was compiled so far is kept).".into(),
    }
}

/// The line a long start of Rust cells writes now and then.
fn still_preparing(elapsed: Duration) -> String {
    let s = elapsed.as_secs();
    format!("… still preparing Rust cells ({}m{:02}s so far)", s / 60, s % 60)
}

/// Starts evcxr on a thread of its own; its notes go to `notes`, the engine (or why
/// not) to the receiver returned.
fn start_in_background(notes: crossbeam_channel::Sender<String>) -> Result<Receiver<Result<Engine, String>>, CellError> {
    let (done, started) = crossbeam_channel::bounded(1);
    std::thread::Builder::new()
        .name("tchlab-rust-start".into())
        .spawn(move || {
            let engine = Engine::start(&mut |note| {
                let _ = notes.send(note.to_string());
            });
            let _ = done.send(engine);
        })
        .map_err(|e| CellError { name: "RustUnavailable".into(), message: format!("could not start a thread for Rust cells: {e}") })?;
    Ok(started)
}

impl Lab {
    /// A lab over `session`; Rust starts when the first Rust cell runs.
    pub fn new(session: Session) -> Self {
        let interrupter = Interrupter {
            cancel: session.cancel_handle(),
            in_cell: Arc::default(),
            rust: Arc::default(),
            rust_running: Arc::default(),
            rust_killed: Arc::default(),
        };
        Lab { session, engine: None, starting: None, interrupter }
    }

    /// The session, for help and status.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// A handle that interrupts the running cell from another thread.
    pub fn interrupter(&self) -> Interrupter {
        self.interrupter.clone()
    }

    /// Runs a cell: commands in the session, anything else as Rust. Whatever happens
    /// (an error, an interrupt, a panic in tchlab), the lab is ready for the next cell.
    pub fn run_cell(&mut self, code: &str, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        self.interrupter.cell_arriving();
        let result = if matches!(split_cell(code), Ok(Cell::Rust(_))) {
            self.session.record_input(code);
            tchlab::interrupt::contain("this Rust cell", || self.run_rust(code, sink))
        } else {
            self.session.run_cell(code, sink)
        };
        self.interrupter.cell_done();
        result
    }

    /// Runs what an explorer's control asks ([`Session::panel_event`]), like a cell: an
    /// interrupt announced with [`Interrupter::cell_arriving`] is for it.
    pub fn panel_event(&mut self, panel: &str, event: tchlab::session::panel::PanelEvent, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        self.interrupter.cell_arriving();
        let result = self.session.panel_event(panel, event, sink);
        self.interrupter.cell_done();
        result
    }

    fn run_rust(&mut self, code: &str, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
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
            let engine = self.start_engine(sink)?;
            *lock(&self.interrupter.rust) = Some(engine.process_handle());
            self.engine = Some(engine);
        }
        let engine = self.engine.as_mut().expect("started above");
        engine.run(code, &mut self.session, &self.interrupter, sink)
    }

    /// Starts evcxr on a thread of its own, so that an interrupt returns at once: the
    /// start then goes on in the background (its compilation is not wasted) and the
    /// next Rust cell takes it over.
    fn start_engine(&mut self, sink: &mut dyn FnMut(Output)) -> Result<Engine, CellError> {
        let say = |sink: &mut dyn FnMut(Output), text: String| sink(Output::Stream { stream: Stream::Stderr, text: text + "\n" });
        let (notes_tx, notes) = crossbeam_channel::unbounded::<String>();
        // A start an interrupted cell left behind: in a kernel it went on compiling; in
        // a terminal, Ctrl-C reached the compiler too. Either way, what it finished is
        // kept, and a start that failed is tried once more from there.
        let (mut started, mut resumed) = match self.starting.take() {
            Some(started) => {
                say(sink, "Rust cells are still being prepared (an interrupted cell started it); waiting for it…".into());
                (started, true)
            }
            None => (start_in_background(notes_tx.clone())?, false),
        };
        let began = std::time::Instant::now();
        let mut said = began;
        loop {
            for note in notes.try_iter() {
                say(sink, note);
            }
            if said.elapsed() >= START_PROGRESS {
                say(sink, still_preparing(began.elapsed()));
                said = std::time::Instant::now();
            }
            match started.recv_timeout(START_POLL) {
                Ok(Err(_)) if resumed => {
                    resumed = false;
                    started = start_in_background(notes_tx.clone())?;
                }
                // In a terminal Ctrl-C reaches the compiler too, which then fails: that is
                // the interrupt, and the next Rust cell starts again from what was compiled.
                Ok(Err(_)) if self.interrupter.cancel.load(Ordering::SeqCst) => return Err(interrupted_while_preparing()),
                Ok(engine) => return engine.map_err(|message| CellError { name: "RustUnavailable".into(), message }),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(CellError { name: "RustUnavailable".into(), message: "starting Rust cells stopped without a word".into() })
                }
                Err(RecvTimeoutError::Timeout) if self.interrupter.cancel.load(Ordering::SeqCst) => {
                    self.starting = Some(started);
                    return Err(interrupted_while_preparing());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    /// Completion candidates: evcxr's for Rust once it has started, the session's
    /// otherwise; none if completion itself fails.
    pub fn complete(&mut self, code: &str, cursor: usize) -> Completions {
        let none = Completions { start: cursor, end: cursor, matches: vec![] };
        let found = tchlab::interrupt::contain("completion", || {
            Ok::<_, tchlab::Error>(match (&mut self.engine, split_cell(code)) {
                (Some(engine), Ok(Cell::Rust(_))) => engine.complete(code, cursor),
                _ => Some(self.session.complete(code, cursor)),
            })
        });
        found.ok().flatten().unwrap_or(none)
    }

    /// Help for the command at `cursor`, if any.
    pub fn inspect(&self, code: &str, cursor: usize) -> Option<String> {
        tchlab::interrupt::contain("inspection", || Ok::<_, tchlab::Error>(self.session.inspect(code, cursor))).ok().flatten()
    }

    /// Whether `code` is ready to run; a failure to tell counts as complete, so the
    /// front end runs it and shows the error.
    pub fn is_complete(&self, code: &str) -> Completeness {
        tchlab::interrupt::contain("checking the cell", || Ok::<_, tchlab::Error>(self.session.is_complete(code))).unwrap_or(Completeness::Complete)
    }
}
