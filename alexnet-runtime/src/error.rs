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
    /// A weights file does not match the network: one line per missing, extra or
    /// mis-shaped tensor.
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
    /// A file could not be written (a full disk, a read-only folder, ...). Files are
    /// replaced atomically, so the one it was to replace, if any, is unchanged.
    Write {
        path: PathBuf,
        /// The bytes the new file needed.
        bytes: u64,
        source: std::io::Error,
    },
    /// A file is not valid safetensors.
    Format {
        path: Option<PathBuf>,
        message: String,
    },
    /// A valid safetensors file that is not what it was read as: a training state of
    /// another network, a tensor whose element type is not a float, metadata that is
    /// missing or out of range.
    Content {
        path: Option<PathBuf>,
        message: String,
    },
    /// A buffer handed to a backend is shorter than the operation needs.
    BufferTooSmall {
        /// The backend, the operation and the buffer, e.g. `cpu: conv1 input`.
        what: String,
        len: usize,
        needed: usize,
    },
    /// A GPU was asked for and there is none that can be used: why.
    NoGpu(String),
    /// The GPU ran out of memory.
    OutOfMemory {
        /// The GPU, e.g. `cuda:0`.
        device: String,
        /// What was being allocated or run.
        what: String,
    },
    /// NVRTC could not be loaded, or could not compile a generated kernel.
    Nvrtc {
        /// The translation unit (`conv1_fwd_c3_k96_r11_t128x96.cu`), if one was compiling.
        unit: Option<String>,
        /// NVRTC's message, with its log and the offending lines for a compile error.
        message: String,
    },
    /// A CUDA driver call failed (other than for memory).
    Driver {
        /// What was being done, e.g. `cuda:0: launching conv1_fwd_...`.
        what: String,
        /// The driver's error.
        message: String,
    },
    /// Something the project does not do (yet), e.g. kernels for a 16-bit element type.
    Unsupported(String),
    /// An argument is out of range or does not fit (a label, a learning rate, a
    /// schedule, a buffer of another device, ...).
    Invalid(String),
    /// A training step's loss or gradients were not finite; its update was not applied.
    NonFinite(NonFinite),
    /// A broken invariant of alexnet-rs itself: a bug to report.
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A step whose loss or gradients were not finite.
#[derive(Clone, Debug, PartialEq)]
pub struct NonFinite {
    /// The step's number (the steps taken before it).
    pub step: u64,
    /// The batch's mean loss.
    pub loss: f64,
    /// The first tensor, in the order of the layers, whose gradient was not finite.
    pub tensor: Option<String>,
}

impl std::fmt::Display for NonFinite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.step;
        match (&self.tensor, self.loss.is_finite()) {
            (Some(t), true) => write!(
                f,
                "step {s}: the gradient of `{t}` is not finite (loss {:.4})",
                self.loss
            ),
            (Some(t), false) => write!(
                f,
                "step {s}: the loss is {} and the gradient of `{t}` is not finite",
                self.loss
            ),
            (None, _) => write!(f, "step {s}: the loss is {}", self.loss),
        }
    }
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// This error of a buffer's reader as one of the file `path`: the file's errors
    /// ([`Error::Format`], [`Error::Content`], [`Error::Weights`]) name it; others are
    /// unchanged.
    pub(crate) fn in_file(self, path: &std::path::Path) -> Self {
        let path = Some(path.to_path_buf());
        match self {
            Error::Format { message, .. } => Error::Format { path, message },
            Error::Content { message, .. } => Error::Content { path, message },
            Error::Weights { problems, .. } => Error::Weights { path, problems },
            other => other,
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
            Error::Write {
                path,
                bytes,
                source,
            } => write!(
                f,
                "{}: could not write {bytes} bytes ({:.1} MB): {source}; the file it was to replace, if any, is unchanged",
                path.display(),
                *bytes as f64 / 1e6
            ),
            Error::Format { path, message } => match path {
                Some(p) => write!(
                    f,
                    "{}: not a valid safetensors file: {message}",
                    p.display()
                ),
                None => write!(f, "not a valid safetensors buffer: {message}"),
            },
            Error::Content { path, message } => match path {
                Some(p) => write!(f, "{}: {message}", p.display()),
                None => write!(f, "{message}"),
            },
            Error::BufferTooSmall { what, len, needed } => {
                write!(f, "{what} holds {len} values, {needed} needed")
            }
            Error::NoGpu(why) => write!(f, "{why}"),
            Error::OutOfMemory { device, what } => write!(f, "{device}: out of memory: {what}"),
            Error::Nvrtc {
                unit: Some(u),
                message,
            } => write!(f, "{u}: {message}"),
            Error::Nvrtc {
                unit: None,
                message,
            } => write!(f, "{message}"),
            Error::Driver { what, message } => write!(f, "{what}: {message}"),
            Error::Unsupported(m) | Error::Invalid(m) => write!(f, "{m}"),
            Error::NonFinite(nf) => write!(f, "{nf}; the update was not applied"),
            Error::Internal(m) => write!(f, "internal error (a bug in alexnet-rs): {m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } | Error::Write { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Formats a shape for messages: `[96, 3, 11, 11]`.
pub(crate) fn fmt_shape(d: &[usize]) -> String {
    dims(d)
}
