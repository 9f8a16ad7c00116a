//! What every example needs: the model to run on.

use std::path::PathBuf;

use dsrs_local::testing::{TestModelSpec, chat_tokenizer};

/// The model named by the first argument or `DSRS_MODEL`; without one, a
/// small test model with random weights written to a temporary folder (kept
/// alive by the returned guard), and a note saying its answers are random.
pub fn model_path() -> anyhow::Result<(PathBuf, Option<tempfile::TempDir>)> {
    if let Some(path) = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("DSRS_MODEL").ok())
    {
        return Ok((PathBuf::from(path), None));
    }
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("tiny-random.gguf");
    TestModelSpec::tiny(chat_tokenizer()).write(&path)?;
    println!(
        "No model given: using a small test model with random weights, so the answers are random."
    );
    println!("Pass a GGUF path (or set DSRS_MODEL) to use a real model.\n");
    Ok((path, Some(dir)))
}
