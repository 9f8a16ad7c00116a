//! Shared test support: signatures, paths to the shared models, and a lock
//! around dspy-rs's process-global `configure`.

use std::path::PathBuf;
use std::sync::LazyLock;

/// `dspy_rs::configure` sets one global; tests that call it take this lock
/// for the whole configure-then-forward sequence.
pub static GLOBAL_CONFIG: LazyLock<tokio::sync::Mutex<()>> =
    LazyLock::new(|| tokio::sync::Mutex::new(()));

/// A file under `../shared/models/`, or `None` (with the reason printed) when
/// it is absent, as on a user's fresh clone.
pub fn shared_model(relative: &str) -> Option<PathBuf> {
    let found = dsrs_local::testing::shared_model(relative);
    if found.is_none() {
        println!(
            "skipped: ../shared/models/{relative} is absent (no ../shared beside this checkout)"
        );
    }
    found
}
