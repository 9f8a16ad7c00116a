//! The bare llama-cpp-2 decode loop: our engine's ceiling, with nothing of
//! the adapter (no prompt rendering, no Rust sampler, no grammar, no worker
//! thread). It runs in a child process (this benchmark started again with
//! `--bare-loop`) that talks to llama-cpp-2 directly, so nothing of
//! dsrs-local is loaded beside it and the crate hands out no llama.cpp
//! handles. Same context settings as `LlamaCppAdapter`'s defaults (one
//! unified KV cache, batch = ubatch).
//!
//! The child reads `TOKENS.json` (a list of prompts, each a list of token
//! ids) and, for each on a fresh context, reads the prompt and generates
//! exactly `GENERATED` tokens greedily (an end token does not stop it), then
//! prints one JSON line per prompt: `{"prefill_s": …, "decode_s": …}`.

use std::num::NonZeroU32;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{LogOptions, send_logs_to_tracing};

/// Time spent reading one prompt and generating the tokens asked for.
pub struct BareRun {
    pub prefill: Duration,
    pub decode: Duration,
}

/// Reads each prompt (token ids) and generates exactly `generated` tokens
/// greedily, each on a fresh context of `context_length` cells.
pub fn run(
    model: &Path,
    prompts: &[Vec<u32>],
    generated: usize,
    context_length: usize,
    gpu: bool,
) -> anyhow::Result<Vec<BareRun>> {
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("tokens.json");
    std::fs::write(&tokens, serde_json::to_string(prompts)?)?;
    let gpu_layers = if gpu { u32::MAX } else { 0 };
    let program = std::env::current_exe()?;
    let output = Command::new(&program)
        .arg("--bare-loop")
        .arg(model)
        .arg(&tokens)
        .args([
            generated.to_string(),
            context_length.to_string(),
            "512".into(),
            super::peers::threads().to_string(),
            gpu_layers.to_string(),
        ])
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "bare-loop failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let timing: serde_json::Value = serde_json::from_str(line)?;
            let seconds = |key: &str| {
                timing[key]
                    .as_f64()
                    .map(Duration::from_secs_f64)
                    .context("bare-loop printed no timing")
            };
            Ok(BareRun {
                prefill: seconds("prefill_s")?,
                decode: seconds("decode_s")?,
            })
        })
        .collect()
}

/// The child process: `args` are what follows `--bare-loop`.
pub(crate) fn child(args: &[String]) -> anyhow::Result<()> {
    let [
        model,
        tokens,
        generated,
        context,
        batch,
        threads,
        gpu_layers,
    ] = args
    else {
        anyhow::bail!(
            "usage: bench --bare-loop MODEL.gguf TOKENS.json GENERATED CONTEXT BATCH THREADS GPU_LAYERS"
        );
    };
    let prompts: Vec<Vec<i32>> = serde_json::from_str(&std::fs::read_to_string(tokens)?)?;
    let generated: usize = generated.parse()?;
    let context: u32 = context.parse()?;
    let batch_size: u32 = batch.parse()?;
    let threads: i32 = threads.parse()?;
    // llama.cpp's log lines go to `tracing`, which nothing here prints.
    send_logs_to_tracing(LogOptions::default());
    let backend = LlamaBackend::init()?;
    let params = LlamaModelParams::default().with_n_gpu_layers(gpu_layers.parse()?);
    let model = LlamaModel::load_from_file(&backend, model, &params).context("loading")?;

    for prompt in prompts {
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(context))
            .with_n_batch(batch_size)
            .with_n_ubatch(batch_size)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let mut context = model.new_context(&backend, params)?;
        let mut batch = LlamaBatch::new(batch_size as usize, 1);

        let started = Instant::now();
        let mut position = 0i32;
        for chunk in prompt.chunks(batch_size as usize) {
            batch.clear();
            for &token in chunk {
                let last = position as usize + 1 == prompt.len();
                batch.add(LlamaToken(token), position, &[0], last)?;
                position += 1;
            }
            context.decode(&mut batch).context("prefill")?;
        }
        let prefill = started.elapsed();

        let mut sampler = LlamaSampler::greedy();
        let started = Instant::now();
        for _ in 0..generated {
            let token = sampler.sample(&context, batch.n_tokens() - 1);
            batch.clear();
            batch.add(token, position, &[0], true)?;
            position += 1;
            context.decode(&mut batch).context("decode")?;
        }
        println!(
            "{}",
            serde_json::json!({
                "prefill_s": prefill.as_secs_f64(),
                "decode_s": started.elapsed().as_secs_f64(),
            })
        );
    }
    Ok(())
}
