//! Progress bars (indicatif) on stderr: drawn on a terminal by the program, hidden
//! otherwise and when the command line runs in-process ([`crate::run`]).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::Ctx;

/// A bar of `len` images with their rate and the time left.
pub fn bar(ctx: &Ctx, len: u64, prefix: &str) -> ProgressBar {
    ProgressBar::with_draw_target(Some(len), target(ctx))
        .with_style(style())
        .with_prefix(prefix.to_string())
}

/// The bars' line: at most 80 columns for prefixes up to 11 characters (`epoch 10/90`;
/// `epoch 100/100` makes it 82), up to 9,999,999 images, up to 99,999 images/s and a short
/// message (`loss 2.3026`), e.g.
/// `  epoch 1/8 [===>          ] 1,024/4,096 810 img/s ETA 4s loss 2.3026`.
fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>11} [{bar:14}] {human_pos}/{human_len} {rate} ETA {eta} {msg}",
    )
    .expect("a valid template")
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = w.write_str(&rate(s.per_sec()));
    })
    .progress_chars("=> ")
}

/// Images per second as a person reads them: whole numbers (`810 img/s`), one decimal
/// under 10, thousands from 100,000 (`250k img/s`).
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "- img/s".into()
    } else if per_sec < 9.95 {
        format!("{per_sec:.1} img/s")
    } else if per_sec < 99_999.5 {
        format!("{per_sec:.0} img/s")
    } else {
        format!("{:.0}k img/s", per_sec / 1e3)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A terminal that keeps the lines drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.0.lock().unwrap().push(s.to_string());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rates_are_rounded() {
        assert_eq!(rate(810.5476), "811 img/s");
        assert_eq!(rate(12_345.6), "12346 img/s");
        assert_eq!(rate(9.96), "10 img/s");
        assert_eq!(rate(3.125), "3.1 img/s");
        assert_eq!(rate(250_400.0), "250k img/s");
        assert_eq!(rate(f64::INFINITY), "- img/s");
    }

    #[test]
    fn a_bar_fits_80_columns() {
        for (prefix, len, pos) in [
            ("epoch 1/8", 4_096, 1_024),
            ("epoch 90/90", 1_281_167, 640_000),
            ("validation", 9_999_999, 9_999_999),
        ] {
            let screen = Screen::default();
            let bar = ProgressBar::with_draw_target(
                Some(len),
                ProgressDrawTarget::term_like(Box::new(screen.clone())),
            )
            .with_style(style())
            .with_prefix(prefix);
            bar.set_message("loss 2.3026");
            bar.set_position(pos);
            bar.abandon();
            // The last line drawn (the terminal is also given blank lines, to clear).
            let lines = screen.0.lock().unwrap().clone();
            let line = lines
                .iter()
                .rfind(|l| !l.trim().is_empty())
                .expect("a line drawn")
                .trim_end()
                .to_string();
            assert!(line.ends_with(" loss 2.3026"), "{line}");
            // The rate and the time left depend on the clock: counted at their widest,
            // `99999 img/s ETA 59m`.
            let (before, after) = line.split_once(" img/s ETA ").expect(&line);
            let (fixed, _rate) = before.rsplit_once(' ').expect(&line);
            let (_eta, msg) = after.split_once(' ').expect(&line);
            let widest = format!("{fixed} 99999 img/s ETA 59m {msg}");
            assert!(
                widest.chars().count() <= 80,
                "{} columns: {widest}",
                widest.chars().count()
            );
        }
    }
}
