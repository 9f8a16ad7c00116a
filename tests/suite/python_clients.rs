//! Python's clients against `dsrs-local serve` on the crate's own model: the
//! `openai` package and Python DSPy programs (`tests/python/clients.py`), on
//! each backend. The venv comes from `.ci/python-env` (run by `make test`);
//! without it the tests skip and say why.

use std::path::PathBuf;
use std::process::Command;

use crate::support::Served;

/// The venv's Python, when `.ci/python-env` has made it.
fn python() -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python");
    if python.is_file() {
        Some(python)
    } else {
        println!(
            "skipped: no {} (run `bash .ci/python-env`, as `make test` does)",
            python.display()
        );
        None
    }
}

fn serve(backend: &str, key: &str) -> Served {
    Served::start(&[
        "--api-key",
        key,
        "--model-name",
        "dsrs-tiny",
        "--backend",
        backend,
        "--parallel",
        "4",
        "--max-tokens",
        "200",
    ])
}

/// A question of the own model's tool family as the Python client sends it
/// (dspy-rs's messages, the tool as the model learned it), with the item it
/// must call the tool with and the code the tool gives.
fn tool_case() -> String {
    let item = "quiet garden";
    serde_json::json!({
        "messages": crate::support::item_code_messages(item),
        "tools": [dsrs_local::testing::tool_task::lookup_spec().to_openai()],
        "item": item,
        "code": dsrs_local::testing::tool_task::code_of(item),
    })
    .to_string()
}

fn run_clients(backend: &str) {
    let Some(python) = python() else {
        return;
    };
    let served = serve(backend, "test-key");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/clients.py");
    let output = Command::new(python)
        .arg(script)
        .args([served.base_url.as_str(), "dsrs-tiny", "test-key"])
        .env(
            "DSPY_CACHEDIR",
            std::env::temp_dir().join("dsrs-dspy-cache"),
        )
        .env("DSRS_TOOL_CASE", tool_case())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{backend}: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[cfg(feature = "llamacpp")]
#[test]
fn openai_and_dspy_python_clients_on_llama_cpp() {
    run_clients("llamacpp");
}

#[cfg(feature = "candle")]
#[test]
fn openai_and_dspy_python_clients_on_candle() {
    run_clients("candle");
}
