//! The runtime's error type. Every failure a user can cause (a wrong file, a wrong shape,
//! a missing GPU) is an [`Error`] with a message that names what was wrong; nothing panics.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// A tensor or batch has the wrong shape.
    Shape {
        what: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A weights file does not match the network: one line per missing, extra, mis-shaped
    /// or mistyped tensor.
    Weights {
        path: Option<PathBuf>,
        problems: Vec<String>,
    },
    /// A model built from one network was used as another.
    PlanMismatch { expected: String, found: String },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file is not valid safetensors.
    Format {
        path: Option<PathBuf>,
        message: String,
    },
    /// A backend could not run an operation.
    Backend(String),
    /// An argument is out of range (a label, a learning rate, a schedule, ...).
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

fn dims(d: &[usize]) -> String {
    format!(
        "[{}]",
        d.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape {
                what,
                expected,
                found,
            } => {
                write!(
                    f,
                    "{what}: expected shape {}, found {}",
                    dims(expected),
                    dims(found)
                )
            }
            Error::Weights { path, problems } => {
                match path {
                    Some(p) => write!(f, "weights {} do not match the network:", p.display())?,
                    None => write!(f, "weights do not match the network:")?,
                }
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            Error::PlanMismatch { expected, found } => {
                write!(f, "model was built for network `{found}`, not `{expected}`")
            }
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, message } => match path {
                Some(p) => write!(
                    f,
                    "{}: not a valid safetensors file: {message}",
                    p.display()
                ),
                None => write!(f, "not a valid safetensors buffer: {message}"),
            },
            Error::Backend(m) => write!(f, "{m}"),
            Error::Invalid(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Formats a shape for messages: `[96, 3, 11, 11]`.
pub(crate) fn fmt_shape(d: &[usize]) -> String {
    dims(d)
}
