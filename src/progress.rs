//! A progress bar for model loads, on the terminal only.
//!
//! indicatif draws to stderr and stays silent when stderr is not a terminal;
//! `show_progress: false` in the load options, or `DSRS_PROGRESS=0`, turns it off.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Steps of a determinate bar (progress is reported as a fraction).
const STEPS: u64 = 1000;

/// A bar for loading the file at `path`, moved by [`set_fraction`].
pub(crate) fn load_bar(path: &Path, enabled: bool) -> ProgressBar {
    let off = !enabled || std::env::var("DSRS_PROGRESS").is_ok_and(|v| v == "0");
    if off {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(STEPS), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{msg} [{bar:30}] {percent:>3}% {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    bar.set_message(format!("loading {name}"));
    bar
}

/// Sets a bar to a fraction in [0, 1].
pub(crate) fn set_fraction(bar: &ProgressBar, fraction: f32) {
    bar.set_position((f64::from(fraction.clamp(0.0, 1.0)) * STEPS as f64) as u64);
}
