//! evcxr, started on demand: a work directory that survives restarts (so the tchlab
//! library compiles once per machine), the prelude every cell sees, and one cell's run
//! with its output streamed and its `tchlab::live` requests served.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{select, Receiver};
use evcxr::{CommandContext, EvalContext};
use serde_json::Value;
use tchlab::live::SOCKET_VAR;
use tchlab::session::output::{Bundle, CellError, Output, Stream};
use tchlab::session::{Completions, Session};

use crate::diagnostics::{compile_errors, PanicFilter};
use crate::live_socket::LiveSocket;
use crate::readiness::{self, Readiness};
use crate::Interrupter;

/// Where the tchlab library's source was when this crate was built.
const LIB_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../lib");
/// The libtorch the front end links, which cells must link too.
const LIBTORCH_LIB: &str = env!("TCHLAB_LIBTORCH_LIB");
/// How many front ends may run Rust cells at once, each in its own work directory.
const SLOTS: usize = 8;

/// A running evcxr context with the tchlab prelude.
pub(crate) struct Engine {
    context: CommandContext,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    live: LiveSocket,
    source: PathBuf,
    _slot: Slot,
}

impl Engine {
    /// Starts evcxr and compiles the prelude; `note` tells the user what is happening.
    pub(crate) fn start(note: &mut dyn FnMut(&str)) -> Result<Engine, String> {
        let source = library_source()?;
        let slot = Slot::claim()?;
        let prelude = prelude_code(&source);
        let inputs = readiness::Inputs::of(&prelude, &source);
        let state = readiness::readiness(&slot.dir, &inputs);
        match readiness::notice(&state, readiness::estimate(&slot.dir, &state)) {
            Some(notice) => note(&notice),
            None => note("Starting Rust cells (evcxr)…"),
        }
        let started = std::time::Instant::now();
        let live = LiveSocket::open().map_err(|e| format!("could not open the socket for `tchlab::live`: {e}"))?;
        // evcxr takes its work directory from the environment, and the cargo it runs
        // inherits ours: torch-sys must find the front end's libtorch, not ask Python.
        std::env::set_var("EVCXR_TMPDIR", &slot.dir);
        std::env::remove_var("LIBTORCH_USE_PYTORCH");
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program to run cells in: {e}"))?;
        let mut child = std::process::Command::new(exe);
        child.env(SOCKET_VAR, live.socket()).env("LD_LIBRARY_PATH", library_path()?);
        let (context, outputs) = EvalContext::with_subprocess_command(child).map_err(|e| format!("evcxr did not start: {e}"))?;
        let mut context = CommandContext::with_eval_context(context);
        if let Err(e) = context.execute(&prelude) {
            let stderr: Vec<String> = outputs.stderr.try_iter().collect();
            return Err(format!("building the tchlab library for Rust cells failed in {}:\n{e}\n{}", slot.dir.display(), stderr.join("\n")));
        }
        readiness::record(&slot.dir, &inputs, &state, started.elapsed());
        Ok(Engine { context, stdout: outputs.stdout, stderr: outputs.stderr, live, source, _slot: slot })
    }

    /// How ready the work directory the next start would use is, and where it is.
    pub(crate) fn readiness() -> Result<(Readiness, PathBuf), String> {
        let source = library_source()?;
        let slot = Slot::claim()?;
        Ok((readiness::readiness(&slot.dir, &readiness::Inputs::of(&prelude_code(&source), &source)), slot.dir.clone()))
    }

    /// The child process, for interrupts.
    pub(crate) fn process_handle(&self) -> Arc<Mutex<Child>> {
        self.context.process_handle()
    }

    /// Runs one Rust cell. Its stdout and stderr stream to `sink` as they come; its
    /// final value (through `Show`, or `Debug`) becomes the cell's result.
    pub(crate) fn run(&mut self, code: &str, session: &mut Session, interrupter: &Interrupter, sink: &mut dyn FnMut(Output)) -> Result<(), CellError> {
        let variables: Vec<String> = self.context.variables_and_types().map(|(name, _)| name.to_string()).collect();
        let Engine { context, stdout, stderr, live, source, .. } = self;
        let mut panic = PanicFilter::default();
        let stream = |stream: Stream, line: String, panic: &mut PanicFilter, sink: &mut dyn FnMut(Output)| {
            let shown = if stream == Stream::Stderr { panic.filter(line) } else { vec![line] };
            for line in shown {
                sink(Output::Stream { stream, text: line + "\n" });
            }
        };
        interrupter.rust_killed.store(false, Ordering::SeqCst);
        interrupter.rust_running.store(true, Ordering::SeqCst);
        if interrupter.cancel.load(Ordering::SeqCst) {
            // Interrupted on its way in: an interrupt that saw no process to kill.
            interrupter.rust_running.store(false, Ordering::SeqCst);
            return Err(CellError {
                name: "KeyboardInterrupt".into(),
                message: "interrupted before the Rust cell started; nothing ran, and its variables are as they were".into(),
            });
        }
        let result = std::thread::scope(|scope| {
            let (done_tx, done_rx) = crossbeam_channel::bounded(1);
            let evaluating = &mut *context;
            scope.spawn(move || {
                let _ = done_tx.send(evaluating.execute(code));
            });
            loop {
                select! {
                    recv(stdout) -> line => if let Ok(line) = line { stream(Stream::Stdout, line, &mut panic, sink) },
                    recv(stderr) -> line => if let Ok(line) = line { stream(Stream::Stderr, line, &mut panic, sink) },
                    recv(live.requests()) -> request => if let Ok((line, reply)) = request {
                        let answer = session.serve_live(&line, live.dir(), sink);
                        let _ = reply.send(answer);
                    },
                    recv(done_rx) -> result => break result.expect("the evcxr thread always answers"),
                }
            }
        });
        interrupter.rust_running.store(false, Ordering::SeqCst);
        // stderr comes from a pipe of its own: give a panic's last lines a moment to arrive.
        while let Ok(line) = stderr.recv_timeout(Duration::from_millis(30)) {
            stream(Stream::Stderr, line, &mut panic, sink);
        }
        for line in panic.finish() {
            sink(Output::Stream { stream: Stream::Stderr, text: line + "\n" });
        }
        let killed = interrupter.rust_killed.swap(false, Ordering::SeqCst);
        let lost = if variables.is_empty() { "it held no variables".to_string() } else { format!("its variables are gone: {}", variables.join(", ")) };
        if killed {
            live.forget_pending();
            let ran = matches!(result, Err(evcxr::Error::SubprocessTerminated(_)));
            if !ran {
                // Killed while compiling: evcxr has not seen the process die, so start
                // afresh (`:clear` restarts it) and bring the prelude back.
                let restarted = context.execute(":clear").and_then(|_| context.execute(&prelude_code(source)));
                if let Err(e) = restarted {
                    sink(Output::Stream { stream: Stream::Stderr, text: format!("restarting Rust cells failed: {e}\n") });
                }
            }
            let when = if ran { "" } else { " before it ran (while compiling)" };
            return Err(CellError {
                name: "KeyboardInterrupt".into(),
                message: format!(
                    "the Rust cell was stopped{when} by killing its process, so {lost}. The session is intact: the model, optimizer, history and snapshots are as they were, and the next Rust cell starts a fresh process."
                ),
            });
        }
        match result {
            Ok(outputs) => {
                if let Some(message) = panic.message() {
                    return Err(CellError {
                        name: "RustPanic".into(),
                        message: format!("{message}\nThe cell stopped there. Variables it created are dropped (`:vars` lists what remains); the model, its training and history are unchanged."),
                    });
                }
                if let Some(timing) = outputs.timing {
                    sink(Output::Stream { stream: Stream::Stdout, text: format!("Took {}ms\n", timing.as_millis()) });
                }
                if !outputs.content_by_mime_type.is_empty() {
                    sink(Output::Result(bundle(outputs.content_by_mime_type)));
                }
                Ok(())
            }
            Err(evcxr::Error::CompilationErrors(errors)) => Err(CellError { name: "CompileError".into(), message: compile_errors(&errors, code) }),
            Err(evcxr::Error::SubprocessTerminated(why)) => {
                live.forget_pending();
                Err(CellError {
                name: "RustCrash".into(),
                message: format!("the process running Rust cells died ({why}), so {lost}. The session is intact: the model, optimizer and history live outside that process. The next Rust cell starts a fresh one."),
                })
            }
            Err(evcxr::Error::TypeRedefinedVariablesLost(names)) => Err(CellError {
                name: "RustError".into(),
                message: format!("a type was redefined, so these variables of the old type are gone: {}", names.join(", ")),
            }),
            Err(e) => Err(CellError { name: "RustError".into(), message: e.to_string() }),
        }
    }

    /// evcxr's completions (rust-analyzer's), in the session's form.
    pub(crate) fn complete(&mut self, code: &str, cursor: usize) -> Option<Completions> {
        let found = self.context.completions(code, cursor).ok()?;
        let mut matches: Vec<String> = found.completions.into_iter().map(|c| c.code).collect();
        matches.dedup();
        Some(Completions { start: found.start_offset, end: found.end_offset, matches })
    }
}

/// What every cell sees: tch, serde_json and the library (by path), and the names a
/// cell uses most.
fn prelude_code(source: &Path) -> String {
    format!(
        ":dep tch = \"=0.24.0\"\n:dep serde_json = \"1\"\n:dep tchlab = {{ path = \"{}\" }}\nuse tch::{{Device, Kind, Tensor}};\nuse tchlab::live::{{self, Show}};",
        source.display()
    )
}

/// evcxr's MIME blocks as a bundle; JSON arrives as text and is parsed back.
fn bundle(content: std::collections::HashMap<String, String>) -> Bundle {
    let mut data: BTreeMap<String, Value> = content
        .into_iter()
        .map(|(mime, text)| {
            let value = if mime.ends_with("json") { serde_json::from_str(&text).unwrap_or(Value::String(text)) } else { Value::String(text) };
            (mime, value)
        })
        .collect();
    data.entry("text/plain".into()).or_insert_with(|| Value::String(String::new()));
    Bundle(data)
}

/// Cells link Rust's standard library dynamically, and the relative run path rustc
/// writes points one directory off from where evcxr loads them: the child finds
/// `libstd` through the toolchain's library directory instead.
fn library_path() -> Result<std::ffi::OsString, String> {
    let output = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "target-libdir"])
        .output()
        .map_err(|e| format!("Rust cells need a Rust toolchain (rustc and cargo on PATH; see https://rustup.rs): {e}"))?;
    let dir = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let mut path = std::ffi::OsString::from(dir);
    if let Some(existing) = std::env::var_os("LD_LIBRARY_PATH").filter(|p| !p.is_empty()) {
        path.push(":");
        path.push(existing);
    }
    Ok(path)
}

/// The library's source: where it was at build time, or `$TCHLAB_SOURCE`.
fn library_source() -> Result<PathBuf, String> {
    let wanted = std::env::var_os("TCHLAB_SOURCE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(LIB_SOURCE));
    wanted.join("Cargo.toml").is_file().then(|| wanted.canonicalize().unwrap_or(wanted.clone())).ok_or_else(|| {
        format!(
            "Rust cells compile the tchlab library from its source, which is not at {} any more; set TCHLAB_SOURCE to the lib/ directory of a tchlab checkout",
            wanted.display()
        )
    })
}

/// A work directory of evcxr's, held with a lock while this process uses it.
struct Slot {
    dir: PathBuf,
    _lock: File,
}

impl Slot {
    /// The first free slot under `$TCHLAB_EVCXR_DIR` (default: the user's cache,
    /// `tchlab/evcxr`), with the cargo settings cells build with.
    fn claim() -> Result<Slot, String> {
        let root = std::env::var_os("TCHLAB_EVCXR_DIR").map(PathBuf::from).unwrap_or_else(|| tchlab::cache_dir().join("evcxr"));
        let io = |what: &Path, e: std::io::Error| format!("{}: {e}", what.display());
        write_cargo_config(&root).map_err(|e| io(&root, e))?;
        for i in 0..SLOTS {
            let dir = root.join(i.to_string());
            std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
            let lock_path = root.join(format!("{i}.lock"));
            let lock = File::create(&lock_path).map_err(|e| io(&lock_path, e))?;
            // SAFETY: flock on a descriptor we own; the lock lives as long as the file.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Slot { dir, _lock: lock });
            }
        }
        Err(format!("{SLOTS} other tchlab sessions are running Rust cells from {}; stop one, or set TCHLAB_EVCXR_DIR", root.display()))
    }
}

/// Cargo reads `.cargo/config.toml` from every directory above the crate it builds;
/// ours, above the slots, points torch-sys at the libtorch the front end links.
fn write_cargo_config(root: &Path) -> std::io::Result<()> {
    let libtorch = Path::new(LIBTORCH_LIB).parent().unwrap_or(Path::new(LIBTORCH_LIB));
    let config = format!(
        "# Written by tchlab: Rust cells link the libtorch of the front end that runs them.\n[env]\nLIBTORCH = {{ value = {:?}, force = true }}\nLIBTORCH_CXX11_ABI = {{ value = \"1\", force = true }}\n",
        libtorch.display().to_string()
    );
    let dir = root.join(".cargo");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("config.toml");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(config.as_str()) {
        std::fs::write(&path, config)?;
    }
    Ok(())
}
