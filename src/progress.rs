//! A progress bar for model loads, on the terminal only. Public so that a
//! backend outside this crate can show the same bar.
//!
//! indicatif draws to stderr and stays silent when stderr is not a terminal;
//! `show_progress: false` in the load options, or `DSRS_PROGRESS=0`, turns it off.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Steps of a determinate bar (progress is reported as a fraction).
const STEPS: u64 = 1000;

/// A bar for loading `name`: determinate when the backend reports progress.
pub fn load_bar(name: &str, enabled: bool, determinate: bool) -> ProgressBar {
    let off = !enabled || std::env::var("DSRS_PROGRESS").is_ok_and(|v| v == "0");
    if off {
        return ProgressBar::hidden();
    }
    let bar = if determinate {
        ProgressBar::with_draw_target(Some(STEPS), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    let template = if determinate {
        "{msg} [{bar:30}] {percent:>3}% {elapsed}"
    } else {
        "{msg} {spinner} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("loading {name}"));
    if !determinate {
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
    }
    bar
}

/// Sets a determinate bar to a fraction in [0, 1].
pub fn set_fraction(bar: &ProgressBar, fraction: f32) {
    bar.set_position((f64::from(fraction.clamp(0.0, 1.0)) * STEPS as f64) as u64);
}
