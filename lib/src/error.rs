//! The library's one error type.
//!
//! Every variant carries what a person needs to act: the file, the tensor, the
//! shapes. Front ends print `Display` as is; it is written to be read, not parsed.

use std::path::{Path, PathBuf};

/// What can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        message: String,
    },
    /// A tensor has the wrong shape for the model it is loaded into.
    #[error("{path}: tensor `{name}` has shape {found:?}, but the model expects {expected:?}")]
    ShapeMismatch {
        /// The checkpoint file.
        path: PathBuf,
        /// The tensor's name in the model.
        name: String,
        /// The shape the model was built with.
        expected: Vec<i64>,
        /// The shape in the file.
        found: Vec<i64>,
    },
    /// An argument is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// A loss or gradient was NaN or infinite; the step was not taken.
    #[error("{0}")]
    NonFinite(String),
    /// A cancel request stopped the work at a step boundary.
    #[error("interrupted after step {step}; the model, optimizer and history are as they were after that step")]
    Interrupted {
        /// The last step completed.
        step: i64,
    },
    /// An interrupt stopped work that is not a training step; the message says what was
    /// stopped and that nothing changed.
    #[error("{0}")]
    Cancelled(String),
    /// A request is larger than this machine can hold, or than tchlab accepts; the
    /// message gives both numbers.
    #[error("{0}")]
    TooLarge(String),
    /// A bug in tchlab caught at a boundary (a panic); the message says where.
    #[error("{0}")]
    Internal(String),
    /// libtorch raised an error (its C++ exception, as text).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    /// A content error in `path`.
    pub fn format(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), message: message.into() }
    }
}

/// Shorthand for `Err(Error::Invalid(format!(...)))`.
macro_rules! invalid {
    ($($arg:tt)*) => { Err($crate::error::Error::Invalid(format!($($arg)*))) };
}
pub(crate) use invalid;
