//! Test support, behind the `test-utils` feature: a scripted backend that
//! needs no model, and small GGUF models written on the fly. Not covered by
//! semver: it changes with the crate's own tests.

mod gguf_writer;
mod llama_server;
mod mock;
mod model_builder;
#[cfg(feature = "task-data")]
pub mod tasks;
#[cfg(any(feature = "candle", feature = "remote"))]
mod tokenizer;
#[cfg(feature = "task-data")]
pub mod tool_task;

use std::path::PathBuf;

pub use llama_server::{LlamaServerProcess, llama_server_binary};
pub use mock::ScriptedBackend;
pub use model_builder::{
    BYTE_LEVEL_SPECIAL_TOKENS, TEST_SLIDING_WINDOW, TestArchitecture, TestModelSpec, TestTokenizer,
    WeightType,
};
#[cfg(any(feature = "candle", feature = "remote"))]
pub use tokenizer::GgufTokenizer;

/// `<relative>` under the shared models folder, when present: the folder named
/// by `DSRS_SHARED_MODELS`, else `../shared/models` beside this checkout.
pub fn shared_model(relative: &str) -> Option<PathBuf> {
    let folder = std::env::var_os("DSRS_SHARED_MODELS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/models"),
        PathBuf::from,
    );
    let path = folder.join(relative);
    path.is_file().then_some(path)
}

/// The crate's own small model, trained on the task families of `tasks` by `tools/train-tiny`
/// and committed at `models/dsrs-tiny.gguf`: it answers those tasks
/// correctly, so tests and examples can check real answers.
pub fn task_model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/dsrs-tiny.gguf")
}

/// The tokenizer test chat models use: deepseek-coder's real vocabulary and
/// chat template from `../shared` when present, else the byte-level one.
pub fn chat_tokenizer() -> TestTokenizer {
    match shared_model("vocab/ggml-vocab-deepseek-coder-chat.gguf") {
        Some(path) => TestTokenizer::CopyFrom(path),
        None => TestTokenizer::ByteLevel,
    }
}
