//! What commands emit: text on stdout or stderr, displays (MIME bundles), updates of
//! an earlier display by id, the command's result, explorers' panels, and requests to
//! clear the output.
//! Front ends map these to Jupyter messages or to the terminal; the session never
//! prints.

pub use crate::display::{escape_html, Bundle, Show, Table, ANSI_MIME, HEATMAP_MIME, RESULT_MIME};

/// Which text stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Normal output.
    Stdout,
    /// Notes and warnings.
    Stderr,
}

/// One event of a command's output.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Text on a stream.
    Stream {
        /// stdout or stderr.
        stream: Stream,
        /// The text, newlines included.
        text: String,
    },
    /// A display (a plot, a table, live progress); `id` lets later updates replace it.
    Display {
        /// Set for displays that will be updated.
        id: Option<String>,
        /// What to show.
        bundle: Bundle,
    },
    /// Replaces the display with this id.
    Update {
        /// The display's id.
        id: String,
        /// What to show now.
        bundle: Bundle,
    },
    /// The command's result, the cell's value (Jupyter's `execute_result`).
    Result(Bundle),
    /// Help text for a pager (Jupyter's `payload` for `CMD?`).
    Page(String),
    /// An explorer's controls and picture (`%explore`): shown the first time an id
    /// comes, redrawn each later time. Front ends without controls show the picture.
    Panel(super::panel::Panel),
    /// Clears the cell's output.
    Clear {
        /// Wait for the next output before clearing.
        wait: bool,
    },
}

/// A failed cell: a short name (as Python's exception names) and a message that says
/// what to do.
#[derive(Debug, Clone, PartialEq)]
pub struct CellError {
    /// `UsageError`, `FileError`, `ShapeError`, `NonFiniteError`, `KeyboardInterrupt`, `MemoryError`,
    /// `InternalError` (a caught panic), `TchlabError`.
    pub name: String,
    /// The message, usage line included where it helps.
    pub message: String,
}

impl std::fmt::Display for CellError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl From<crate::Error> for CellError {
    fn from(e: crate::Error) -> Self {
        use crate::Error;
        let name = match &e {
            Error::Io { .. } | Error::Format { .. } => "FileError",
            Error::ShapeMismatch { .. } => "ShapeError",
            Error::NonFinite(_) => "NonFiniteError",
            Error::Interrupted { .. } | Error::Cancelled(_) => "KeyboardInterrupt",
            Error::TooLarge(_) => "MemoryError",
            Error::Internal(_) => "InternalError",
            Error::Invalid(_) => "UsageError",
            Error::Torch(t) if crate::interrupt::is_out_of_memory(&t.to_string()) => "MemoryError",
            Error::Torch(_) => "TchlabError",
        };
        CellError { name: name.into(), message: e.to_string() }
    }
}
