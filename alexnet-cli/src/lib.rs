//! The command line of alexnet-rs, as a library.
//!
//! ```text
//! cargo run --release --example alexnet                 # summary + a CPU forward pass
//! cargo run --release --example alexnet -- summary --net torchvision
//! cargo run --release --example alexnet -- infer --weights w.safetensors --input x.safetensors --output y.safetensors
//! cargo run --release --example alexnet -- train        # the small net on generated shapes
//! cargo run --release --example alexnet -- train --resume runs/small/state.safetensors --epochs 12
//! cargo run --release --example alexnet -- eval         # top-1/top-5, centre and ten crops
//! cargo run --release --example alexnet -- classify photo.jpg
//! cargo run --release --example alexnet -- filters      # runs/small/filters.png
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
//! `data.rs` (which images), `pictures.rs` (PNG plots and filter grids) and `progress.rs`
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
mod progress;
mod train;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

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
}

impl Error {
    /// The process exit code [`main`] gives this error: 2 for a usage error (as clap's
    /// own), 1 for a command that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Command(_) => 1,
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
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Usage(e) => Some(e),
            Error::Command(e) => Some(&**e),
        }
    }
}

impl From<AnyError> for Error {
    fn from(e: AnyError) -> Self {
        Error::Command(e)
    }
}

/// Where the commands write: what they print (`out`, the program's stdout), their own
/// notices about single inputs (`err`, stderr; e.g. an image `classify` skips), and
/// whether progress bars are drawn (on stderr, and only on a terminal).
pub(crate) struct Ctx<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub bars: bool,
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
    let mut ctx = Ctx {
        out,
        err,
        bars: false,
    };
    match start(args, &mut ctx) {
        // --help: clap's text, which the program prints on stdout.
        Err(Error::Usage(e)) if e.exit_code() == 0 => {
            write!(ctx.out, "{}", e.render()).map_err(|e| Error::Command(e.into()))
        }
        result => result,
    }
}

/// The program: runs the process's arguments with the commands' output on stdout and
/// progress bars on stderr. As clap's `parse`, `--help` prints the help (exit code 0)
/// and arguments that do not parse print clap's message on stderr (exit code 2); a
/// command that fails prints `error: <message>` on stderr (exit code 1).
pub fn main() -> ExitCode {
    let mut ctx = Ctx {
        out: &mut std::io::stdout(),
        err: &mut std::io::stderr(),
        bars: true,
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
    cli::execute(parsed, ctx).map_err(Error::Command)
}
