//! Shared test support: signatures, paths to the shared models, and a lock
//! around dspy-rs's process-global `configure`.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::LazyLock;

use dsrs_local::testing::task_model_path;

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

/// Cases of a property test: `default`, or `PROPTEST_CASES` for a longer run
/// (`PROPTEST_CASES=20000 cargo test --test suite -- mutated`; proptest's own
/// variable, which an explicit count would otherwise override).
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A `dsrs-local serve` process on the crate's own model, killed when dropped.
#[cfg_attr(not(any(feature = "llamacpp", feature = "candle")), allow(dead_code))]
pub struct Served {
    pub child: Child,
    pub base_url: String,
}

#[cfg_attr(not(any(feature = "llamacpp", feature = "candle")), allow(dead_code))]
impl Served {
    /// Starts `dsrs-local serve --port 0 ARGS… models/dsrs-tiny.gguf` and
    /// waits for the URL it prints.
    pub fn start(args: &[&str]) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dsrs-local"))
            .args(["serve", "--port", "0"])
            .args(args)
            .arg(task_model_path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("dsrs-local starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base_url = loop {
            let line = lines
                .next()
                .expect("dsrs-local printed its URL before exiting")
                .expect("readable stdout");
            if let Some(rest) = line.strip_prefix("serving at ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
            }
        };
        Served { child, base_url }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` held-out questions of the own model's short-answer families
/// ([`TaskStream::short_answers`](dsrs_local::testing::tasks::TaskStream::short_answers)),
/// as the OpenAI messages dspy-rs's `ChatAdapter` sends for them.
#[cfg_attr(not(feature = "llamacpp"), allow(dead_code))]
pub fn task_messages(count: usize) -> Vec<serde_json::Value> {
    use dspy_rs::adapter::Adapter;
    use dsrs_local::testing::tasks::TaskStream;
    TaskStream::held_out(2028)
        .short_answers(count)
        .into_iter()
        .map(|example| {
            let chat = dspy_rs::ChatAdapter.format(&example.signature, example.inputs.clone());
            serde_json::Value::from(
                chat.messages
                    .iter()
                    .map(dspy_rs::Message::to_json)
                    .collect::<Vec<_>>(),
            )
        })
        .collect()
}

/// Whether `reply` is three digits, a dash and two of `a`–`c`: what the
/// grammar `/[0-9]{3}-[a-c]{2}/` allows, which no model writes unbidden.
#[cfg_attr(not(feature = "llamacpp"), allow(dead_code))]
pub fn follows_code_grammar(reply: &str) -> bool {
    let bytes = reply.as_bytes();
    bytes.len() == 6
        && bytes[..3].iter().all(u8::is_ascii_digit)
        && bytes[3] == b'-'
        && bytes[4..].iter().all(|b| b"abc".contains(b))
}

/// A server's `/metrics` text; `root` is its address without `/v1`.
#[cfg_attr(not(feature = "llamacpp"), allow(dead_code))]
pub async fn metrics_text(http: &reqwest::Client, root: &str) -> String {
    let root = root.trim_end_matches("/v1");
    http.get(format!("{root}/metrics"))
        .send()
        .await
        .expect("the server answers")
        .text()
        .await
        .expect("a whole body")
}
