//! The command line of alexnet-rs, as a library.
//!
//! ```text
//! cargo run --release --example alexnet                 # summary + a forward pass (GPU if any)
//! cargo run --release --example alexnet -- summary --net torchvision
//! cargo run --release --example alexnet -- infer --weights w.safetensors --input x.safetensors --output y.safetensors
//! cargo run --release --example alexnet -- train        # the small net on generated shapes
//! cargo run --release --example alexnet -- train --resume runs/small --epochs 12
//! cargo run --release --example alexnet -- eval         # top-1/top-5, centre and ten crops
//! cargo run --release --example alexnet -- classify photo.jpg
//! cargo run --release --example alexnet -- filters      # runs/small/filters.png
//! cargo run --release --example alexnet -- prepare --data ~/imagenet --out ~/imagenet-256
//! cargo run --release --example alexnet -- tune         # on a GPU: its table of GEMM tiles
//! ```
//!
//! The example `alexnet` is [`main`]; [`run`] runs a command line in-process and writes
//! what the commands print into any writer (the tests read it from a buffer):
//!
//! ```
//! let mut out = Vec::new();
//! alexnet_cli::run(["alexnet", "summary", "--net", "small"], &mut out)?;
//! assert!(String::from_utf8(out)?.contains("total parameters"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `cli.rs` holds the command line (its clap structs) and the inference commands (demo,
//! summary, infer, bench, kernels); `args.rs` the arguments several commands share
//! (`--net`, `--device`); `train.rs`, `evaluate.rs` (eval, classify, filters),
//! `data.rs` (which images), `prepare.rs` (an image folder decoded once into a prepared
//! set), `tune.rs` (the tiles of the generated GEMMs timed on a GPU), `pictures.rs` (PNG plots and filter grids) and `progress.rs`
//! (the progress bars) the rest.
//!
//! No command depends on the process's state beyond its arguments: relative paths are
//! relative to the current directory, which nothing here changes, and no environment
//! variable is set, so commands can run in parallel threads of one process.

mod args;
mod cli;
mod data;
mod evaluate;
mod pictures;
mod prepare;
mod progress;
mod train;
mod tune;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

use clap::Parser;

/// The error type of the commands: a message for the user.
type AnyError = Box<dyn std::error::Error + Send + Sync>;

/// Why a command line failed.
#[derive(Debug)]
pub enum Error {
    /// The arguments do not parse: clap's message, with the usage and a pointer to
    /// `--help`. ([`main`] prints it as clap does and exits with code 2.)
    Usage(clap::Error),
    /// The command failed; the message is one line for the user.
    Command(Box<dyn std::error::Error + Send + Sync>),
    /// The command was interrupted (SIGINT, SIGTERM, or [`run_until`]'s flag) and stopped
    /// cleanly: the message says what was saved and how to go on.
    Interrupted(String),
}

impl Error {
    /// The process exit code [`main`] gives this error: 2 for a usage error (as clap's
    /// own), 1 for a command that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Command(_) => 1,
            Error::Interrupted(_) => 130,
        }
    }
}

impl std::fmt::Display for Error {
    /// The message without the `error: ` prefix that [`main`] adds.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(e) => {
                let text = e.to_string();
                f.write_str(text.strip_prefix("error: ").unwrap_or(&text).trim_end())
            }
            Error::Command(e) => write!(f, "{e}"),
            Error::Interrupted(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(e) => Some(e),
            Error::Command(e) => Some(&**e),
            Error::Interrupted(_) => None,
        }
    }
}

impl From<AnyError> for Error {
    fn from(e: AnyError) -> Self {
        match e.downcast::<Interrupted>() {
            Ok(i) => Error::Interrupted(i.0),
            Err(e) => Error::Command(e),
        }
    }
}

/// A command that stopped because it was asked to (see [`Error::Interrupted`]).
#[derive(Debug)]
pub(crate) struct Interrupted(pub String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// Where the commands write: what they print (`out`, the program's stdout), their own
/// notices about single inputs (`err`, stderr; e.g. an image `classify` skips), and
/// whether progress bars are drawn (on stderr, and only on a terminal).
pub(crate) struct Ctx<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub bars: bool,
    /// Set when the command should stop at the next safe point (a signal, or the
    /// caller of [`run_until`]); `train` finishes its step and writes a checkpoint.
    pub stop: &'a AtomicBool,
}

impl Ctx<'_> {
    /// Whether the command has been asked to stop.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Runs the command line `args` (as clap takes them, the program's name first) and
/// writes everything the command prints to its stdout into `out`. Its notices about single
/// inputs go to stderr ([`run_with`] captures them too); no progress bars are drawn.
/// `--help` writes the help into `out` and returns `Ok`; arguments that do not parse are
/// [`Error::Usage`].
pub fn run<I, T>(args: I, out: &mut dyn Write) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, out, &mut std::io::stderr())
}

/// [`run`], with the commands' own notices (what they print to stderr, other than
/// progress bars and the runtime's one-line notices such as `Device::auto`'s CPU
/// fallback) written into `err`.
pub fn run_with<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_until(args, out, err, &AtomicBool::new(false))
}

/// [`run_with`], stopping at the next safe point once `stop` is set, as the program does
/// on SIGINT or SIGTERM: `train` finishes its step, writes a checkpoint from which
/// `--resume` goes on exactly where it stopped, and returns [`Error::Interrupted`].
pub fn run_until<I, T>(
    args: I,
    out: &mut dyn Write,
    err: &mut dyn Write,
    stop: &AtomicBool,
) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut ctx = Ctx {
        out,
        err,
        bars: false,
        stop,
    };
    match start(args, &mut ctx) {
        // --help: clap's text, which the program prints on stdout.
        Err(Error::Usage(e)) if e.exit_code() == 0 => {
            write!(ctx.out, "{}", e.render()).map_err(|e| Error::Command(e.into()))
        }
        result => result,
    }
}

/// Ends the process at once with `code`, running no exit handler: called from the
/// signal-handling thread while the command's threads (and OpenBLAS's, whose exit handler
/// frees what they use) are still running, where `std::process::exit` could crash the
/// process instead of giving `code`. Every file is replaced atomically, so nothing is torn.
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` takes no pointer and ends the process without touching memory that
    // other threads use; it is async-signal-safe.
    unsafe {
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// The program: runs the process's arguments with the commands' output on stdout and
/// progress bars on stderr. As clap's `parse`, `--help` prints the help (exit code 0)
/// and arguments that do not parse print clap's message on stderr (exit code 2); a
/// command that fails prints `error: <message>` on stderr (exit code 1).
///
/// SIGINT and SIGTERM ask the command to stop at its next safe point (`train`: after the
/// current step, with a checkpoint; exit code 130); a second signal exits at once (exit
/// code 130), which loses the steps since the last checkpoint but corrupts nothing, as
/// every file is replaced atomically.
pub fn main() -> ExitCode {
    static STOP: AtomicBool = AtomicBool::new(false);
    let handler = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nstopped at once (second signal)");
            exit_now(130);
        }
        eprintln!("\nstopping after this step (a second signal stops at once)");
    });
    if let Err(e) = handler {
        eprintln!("note: signals will stop the program at once ({e})");
    }
    let mut ctx = Ctx {
        out: &mut std::io::stdout(),
        err: &mut std::io::stderr(),
        bars: true,
        stop: &STOP,
    };
    match start(std::env::args_os(), &mut ctx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Parses `args` and runs the command.
fn start<I, T>(args: I, ctx: &mut Ctx) -> Result<(), Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let parsed = cli::Cli::try_parse_from(args).map_err(Error::Usage)?;
    cli::execute(parsed, ctx).map_err(Error::from)
}
