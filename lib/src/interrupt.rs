//! Interrupts and containment: what keeps a session alive whatever a command meets.
//!
//! - **Interrupts.** A front end's interrupt (Jupyter's `interrupt_request`, Ctrl-C)
//!   sets the session's cancel flag from another thread. Long work in the library asks
//!   [`check`] at a fine grain — per generated token, per evaluation batch, per loaded
//!   tensor, per chunk read — and stops with [`Error::Cancelled`] before it changes
//!   anything. The flag is found through [`Scope`], which the session enters for each
//!   cell, so library functions need no extra parameter; outside a scope, `check` never
//!   interrupts.
//! - **Containment.** [`contain`] runs a closure and turns a panic (a bug, or a tch
//!   convenience function that `unwrap`s a libtorch error) into [`Error::Internal`]
//!   naming the message and where it happened, instead of ending the thread that owns
//!   the session. The panic is not printed: the error reports it.
//! - **Faults on purpose.** With `TCHLAB_FAULTS=1` in the environment, tests arm a
//!   panic at a named point ([`arm`], [`trip`]) to check that containment leaves the
//!   session as it was.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use crate::error::{Error, Result};

thread_local! {
    static FLAG: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
    static CONTAINED: Cell<usize> = const { Cell::new(0) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// While alive, [`check`] on this thread reads `flag`.
pub struct Scope {
    previous: Option<Arc<AtomicBool>>,
}

impl Scope {
    /// Makes `flag` the cancel flag of this thread until the scope is dropped.
    pub fn enter(flag: &Arc<AtomicBool>) -> Scope {
        Scope { previous: FLAG.with(|f| f.replace(Some(flag.clone()))) }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        FLAG.with(|f| *f.borrow_mut() = self.previous.take());
    }
}

/// Whether an interrupt is pending for this thread's work.
pub fn requested() -> bool {
    FLAG.with(|f| f.borrow().as_ref().is_some_and(|flag| flag.load(Ordering::SeqCst)))
}

/// `Err(Error::Cancelled)` when an interrupt is pending; `what` says what was under way
/// ("generating", "loading model.safetensors"), and the message says nothing changed.
pub fn check(what: &str) -> Result<()> {
    if requested() {
        return Err(cancelled(what));
    }
    Ok(())
}

/// The error of work stopped by an interrupt while doing `what`.
pub fn cancelled(what: &str) -> Error {
    Error::Cancelled(format!("interrupted while {what}; nothing was changed"))
}

fn install_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CONTAINED.with(Cell::get) == 0 {
                return default(info);
            }
            let message = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(format!("{message}{at}")));
        }));
    });
}

/// Runs `work`; a panic inside becomes [`Error::Internal`] saying what panicked, where,
/// and that the session is intact. `what` names the work ("%train", "completion").
///
/// Callers make their work transactional (check, then change), so that a panic part
/// way leaves nothing half-applied; the trainer's step also restores its data cursor
/// and gradients after one.
pub fn contain<T, E: From<Error>>(what: &str, work: impl FnOnce() -> std::result::Result<T, E>) -> std::result::Result<T, E> {
    install_hook();
    CONTAINED.with(|c| c.set(c.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(work));
    CONTAINED.with(|c| c.set(c.get() - 1));
    outcome.unwrap_or_else(|_| {
        let panic = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| "a panic".into());
        if is_out_of_memory(&panic) {
            // libtorch's allocation failure, unwrapped by a tch convenience function.
            return Err(Error::TooLarge(format!("{what} ran out of memory: {panic}. Nothing was changed; try a smaller model, batch or input")).into());
        }
        Err(Error::Internal(format!(
            "{what} failed inside tchlab: {panic}. This is a bug in tchlab, caught before it could end the session: \
             the session is intact and the next cell runs as usual. Please report the command that caused it."
        ))
        .into())
    })
}

/// Whether a libtorch error message is an allocation failure (CPU or CUDA).
pub fn is_out_of_memory(message: &str) -> bool {
    message.contains("out of memory") || message.contains("can't allocate memory") || message.contains("Cannot allocate memory")
}

static ARMED: Mutex<Option<String>> = Mutex::new(None);

/// Whether fault injection is enabled (`TCHLAB_FAULTS=1`): only tests set it.
pub fn faults_enabled() -> bool {
    std::env::var_os("TCHLAB_FAULTS").is_some_and(|v| v == "1")
}

/// Arms a one-shot panic at the point named `point` (tests only; see [`faults_enabled`]).
pub fn arm(point: &str) {
    *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(point.to_string());
}

/// Panics here when a test armed `point`; a no-op otherwise.
pub fn trip(point: &str) {
    let mut armed = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    if armed.as_deref() == Some(point) {
        *armed = None;
        drop(armed);
        panic!("fault injected at `{point}` by a test");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_thread_goes_on() {
        let err = contain("a test", || -> Result<()> { panic!("boom {}", 42) }).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Internal(_)) && text.contains("boom 42") && text.contains("interrupt.rs") && text.contains("intact"), "{text}");
        assert_eq!(contain("a test", || Ok::<_, Error>(7)).unwrap(), 7);
        let tch_panic = contain("a tch call", || Ok::<_, Error>(tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu)).view([7]))).unwrap_err();
        assert!(tch_panic.to_string().contains("shape"), "{tch_panic}");
        let oom = contain("an allocation", || -> Result<()> { panic!("CUDA out of memory. Tried to allocate 80.00 GiB") }).unwrap_err();
        assert!(matches!(oom, Error::TooLarge(_)) && oom.to_string().contains("Nothing was changed"), "{oom}");
    }

    #[test]
    fn check_reads_the_flag_of_the_current_scope_only() {
        let flag = Arc::new(AtomicBool::new(true));
        assert!(check("nothing").is_ok(), "outside a scope nothing interrupts");
        {
            let _scope = Scope::enter(&flag);
            let err = check("generating").unwrap_err().to_string();
            assert!(err.contains("while generating") && err.contains("nothing was changed"), "{err}");
        }
        assert!(check("nothing").is_ok());
    }
}
