//! Progress bars (indicatif) on stderr: drawn on a terminal by the program, hidden
//! otherwise and when the command line runs in-process ([`crate::run`]).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::Ctx;

/// A bar of `len` images with their rate and the time left.
pub fn bar(ctx: &Ctx, len: u64, prefix: &str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:32}] {human_pos}/{human_len} images, {per_sec}, ETA {eta} {msg}",
    )
    .expect("a valid template")
    .progress_chars("=> ");
    ProgressBar::with_draw_target(Some(len), target(ctx))
        .with_style(style)
        .with_prefix(prefix.to_string())
}

/// A spinner for work of unknown length.
pub fn spinner(ctx: &Ctx, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target(ctx)).with_message(msg.to_string());
    bar.set_style(ProgressStyle::default_spinner());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Stderr (where indicatif draws by default), or nowhere.
fn target(ctx: &Ctx) -> ProgressDrawTarget {
    if ctx.bars {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}
