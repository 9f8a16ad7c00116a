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

/// An `LM`'s settings changed in place (its fields are public).
pub trait LmSettings {
    /// The same `LM` with this temperature and reply budget.
    fn with_settings(self, temperature: f32, max_tokens: u32) -> Self;
}

impl LmSettings for dspy_rs::LM {
    fn with_settings(mut self, temperature: f32, max_tokens: u32) -> Self {
        self.temperature = temperature;
        self.max_tokens = max_tokens;
        self
    }
}

/// With `DSRS_TEST_LOG` set (an `EnvFilter`, e.g. `error` or
/// `dsrs_local=debug`), log lines reach stderr, llama.cpp's among them: an
/// abort inside llama.cpp otherwise shows only its last line, the reason
/// having gone to `tracing` with no subscriber. Installed before `main`
/// (the test harness has no setup hook); Linux only.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array")]
static INSTALL_TEST_LOG: extern "C" fn() = install_test_log;

#[cfg(target_os = "linux")]
extern "C" fn install_test_log() {
    if let Ok(filter) = std::env::var("DSRS_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// A DSPy prompt for an item's code (the own model's tool family), as
/// dspy-rs's `ChatAdapter` writes it, in OpenAI messages.
#[cfg(any(feature = "llamacpp", feature = "candle"))]
pub fn item_code_messages(item: &str) -> Vec<serde_json::Value> {
    use dspy_rs::adapter::Adapter as _;
    let chat = dspy_rs::ChatAdapter.format(
        &crate::ItemCode::new(),
        dspy_rs::example! { "item": "input" => item.to_string() },
    );
    chat.messages
        .iter()
        .map(dspy_rs::Message::to_json)
        .collect()
}
