//! What a failed Rust cell shows: rustc's errors pointed at the cell's own lines, and
//! a panic's message without the runtime's backtrace.

use evcxr::CompilationError;

/// rustc's errors in its own layout, with line numbers counted in the cell.
pub(crate) fn compile_errors(errors: &[CompilationError], code: &str) -> String {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = String::new();
    for error in errors {
        let code_tag = error.code().map(|c| format!("[{c}]")).unwrap_or_default();
        out.push_str(&format!("{}{code_tag}: {}\n", error.level(), error.message()));
        for spanned in error.spanned_messages() {
            let Some(span) = spanned.span else { continue };
            let Some(text) = lines.get(span.start_line.wrapping_sub(1)) else { continue };
            let number = span.start_line.to_string();
            let gutter = " ".repeat(number.len());
            let width = if span.end_line == span.start_line { span.end_column.saturating_sub(span.start_column).max(1) } else { 1 };
            out.push_str(&format!("{gutter}--> cell line {}, column {}\n", span.start_line, span.start_column));
            out.push_str(&format!("{number} | {text}\n"));
            out.push_str(&format!("{gutter} | {}{} {}\n", " ".repeat(span.start_column.saturating_sub(1)), "^".repeat(width), spanned.label));
        }
        for help in error.help() {
            out.push_str(&format!("help: {help}\n"));
        }
        if let Some(hint) = error.evcxr_extra_hint() {
            out.push_str(&format!("note: {hint}\n"));
        }
    }
    out.trim_end().to_string()
}

/// Watches a cell's stderr for a panic: takes the panic's message out of the stream
/// (the cell's error shows it) and drops the backtrace evcxr's runtime asks for.
#[derive(Default)]
pub(crate) struct PanicFilter {
    message: Option<String>,
    state: PanicState,
    /// A blank line held back: the runtime writes one before a panic's report.
    blank: bool,
}

#[derive(Default, PartialEq)]
enum PanicState {
    #[default]
    Normal,
    Message,
    Backtrace,
}

impl PanicFilter {
    /// The lines to show for this line of stderr (none, one, or a held-back blank
    /// line and this one).
    pub(crate) fn filter(&mut self, line: String) -> Vec<String> {
        if let Some((_, location)) = line.split_once(" panicked at ").filter(|_| line.starts_with("thread '")) {
            self.state = PanicState::Message;
            self.blank = false;
            // Locations in the cell's generated crate mean nothing to the reader.
            let location = location.trim_end_matches(':');
            self.message = Some(if location.starts_with("src/lib.rs") { "panic:".to_string() } else { format!("panic at {location}:") });
            return vec![];
        }
        if self.state == PanicState::Normal && line.is_empty() && !self.blank {
            self.blank = true;
            return vec![];
        }
        let held = std::mem::take(&mut self.blank).then(String::new);
        held.into_iter().chain(self.filter_line(line)).collect()
    }

    /// A blank line still held back when the cell ends.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        std::mem::take(&mut self.blank).then(String::new).into_iter().collect()
    }

    fn filter_line(&mut self, line: String) -> Option<String> {
        match self.state {
            PanicState::Normal => Some(line),
            PanicState::Message if line.starts_with("stack backtrace:") => {
                self.state = PanicState::Backtrace;
                None
            }
            PanicState::Message if line.starts_with("note: run with `RUST_BACKTRACE") => {
                self.state = PanicState::Normal;
                None
            }
            PanicState::Message => {
                if let Some(m) = self.message.as_mut() {
                    m.push('\n');
                    m.push_str(&line);
                }
                None
            }
            PanicState::Backtrace => {
                if line.starts_with("note: Some details are omitted") {
                    self.state = PanicState::Normal;
                }
                None
            }
        }
    }

    /// The panic's message, if the cell panicked.
    pub(crate) fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_keeps_its_message_and_loses_its_backtrace() {
        let mut filter = PanicFilter::default();
        let lines = [
            "before",
            "",
            "thread '<unnamed>' panicked at src/lib.rs:40:1:",
            "index out of bounds",
            "stack backtrace:",
            "   0: rust_begin_unwind",
            "             at /rustc/library/std/src/panicking.rs:665:5",
            "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.",
            "after",
        ];
        let shown: Vec<String> = lines.iter().flat_map(|l| filter.filter(l.to_string())).collect();
        assert_eq!(shown, ["before", "after"]);
        assert_eq!(filter.message(), Some("panic:\nindex out of bounds"));
        filter.filter("thread 'main' panicked at /src/tchlab/lib/src/live.rs:9:5:".into());
        assert_eq!(filter.message(), Some("panic at /src/tchlab/lib/src/live.rs:9:5:"));
    }

    #[test]
    fn a_quiet_cell_has_no_panic() {
        let mut filter = PanicFilter::default();
        assert_eq!(filter.filter("warning: unused".into()), ["warning: unused"]);
        assert!(filter.filter(String::new()).is_empty());
        assert_eq!(filter.filter("next".into()), ["", "next"]);
        assert!(filter.filter(String::new()).is_empty());
        assert_eq!(filter.finish(), [""]);
        assert_eq!(filter.message(), None);
    }
}
